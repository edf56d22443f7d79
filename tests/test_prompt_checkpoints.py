"""Prompt checkpoints: round trips, size, the backbone fingerprint and load_model(prompt=...)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import jaxpt
from jaxpt.checkpoints import prompts
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.methods import Backbone, PrefixTuning, PromptTuning
from jaxpt.models.scan import stack_layers
from jaxpt.models.t5 import init_params
from tests.tiny_configs import CONFIG


@pytest.fixture(scope='module')
def model(backbone):
  return jaxpt.Model(CONFIG, backbone, source='tiny-seed-0')


def _backbone(model):
  return Backbone(model.config, model.params['token_embedder']['embedding'])


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _dir_size(path):
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


@pytest.mark.parametrize('method', [
    PromptTuning(length=20, initializer='uniform'),
    PrefixTuning(length=4, hidden_dim=16),
    PrefixTuning(length=3, style='peft', reparameterize=False),
], ids=['prompt', 'prefix', 'prefix_peft'])
def test_round_trip(model, method, tmp_path):
  params = method.init(jax.random.key(1), _backbone(model))
  prompts.save_prompt(tmp_path / 'p', method, params, model, step=7, metrics={'acc': 0.75})
  loaded_method, loaded, manifest = prompts.load_prompt(tmp_path / 'p', model)
  _leaves_equal(loaded, params)
  assert manifest['step'] == 7 and manifest['metrics'] == {'acc': 0.75}
  assert manifest['backbone']['source'] == 'tiny-seed-0'
  assert manifest['backbone']['config'] == model.config.to_dict()
  assert 'array' not in manifest['method']['hyperparameters']
  if isinstance(method, PromptTuning):
    assert manifest['method']['hyperparameters']['initializer'] == 'uniform'
    assert loaded_method.initializer == 'array'
    # The reloaded method re-creates the saved prompt (e.g. to continue training).
    _leaves_equal(loaded_method.init(jax.random.key(9), _backbone(model)), params)
    assert loaded_method.length == method.length
  else:
    assert loaded_method == method


def test_prompt_checkpoint_is_a_few_kb(model, tmp_path):
  method = PromptTuning(length=20, initializer='sampled_vocab')
  params = method.init(jax.random.key(1), _backbone(model))
  assert params['prompt'].shape == (20, 8)
  prompts.save_prompt(tmp_path / 'p', method, params, model)
  size = _dir_size(tmp_path / 'p')
  print(f'[20, 8] prompt checkpoint: {size} bytes in {sorted(os.listdir(tmp_path / "p"))}')
  assert size < 64 * 1024


def test_fingerprint_is_deterministic_and_layout_independent(model):
  fp = prompts.fingerprint(model.params)
  assert fp.startswith(prompts.FINGERPRINT_PREFIX) and fp == prompts.fingerprint(model.params)
  numpy_params = jax.tree.map(np.asarray, model.params)
  assert prompts.fingerprint(numpy_params) == fp
  assert prompts.fingerprint(stack_layers(model.params)) == fp
  other = init_params(model.config, jax.random.key(1))
  assert prompts.fingerprint(other) != fp


def test_fingerprint_sees_every_value_and_matches_a_bfloat16_copy(model):
  fp = prompts.fingerprint(model.params)
  # a change far from row 0 (the old fingerprint sampled only x[0, ..., :64])
  wi = np.array(model.params['decoder']['layers_1']['mlp']['wi_0']['kernel'])
  wi[-1, -1] += 0.5
  changed = jax.tree.map(lambda x: x, model.params)
  changed['decoder']['layers_1']['mlp']['wi_0']['kernel'] = wi
  assert prompts.fingerprint(changed) != fp
  assert prompts._sampled_fingerprint(changed) == prompts._sampled_fingerprint(model.params)
  # frozen weights kept in bfloat16 are the same backbone
  assert prompts.fingerprint(jax.tree.map(lambda x: x.astype('bfloat16'), model.params)) == fp


def test_prompts_with_the_previous_sampled_fingerprint_still_attach(model, tmp_path):
  method = PromptTuning(length=5, initializer='uniform')
  params = method.init(jax.random.key(1), _backbone(model))
  prompts.save_prompt(tmp_path / 'p', method, params, model)
  path = tmp_path / 'p' / prompts.MANIFEST
  manifest = json.loads(path.read_text())
  manifest['backbone']['fingerprint'] = prompts._sampled_fingerprint(model.params)
  path.write_text(json.dumps(manifest))
  prompts.load_prompt(tmp_path / 'p', model)
  other = jaxpt.Model(model.config, init_params(model.config, jax.random.key(1)))
  with pytest.raises(CheckpointError, match='fingerprint'):
    prompts.load_prompt(tmp_path / 'p', other)


def test_other_backbone_is_refused(model, tmp_path):
  method = PromptTuning(length=5, initializer='uniform')
  params = method.init(jax.random.key(1), _backbone(model))
  prompts.save_prompt(tmp_path / 'p', method, params, model)
  other = jaxpt.Model(model.config, init_params(model.config, jax.random.key(1)),
                      source='tiny-seed-1')
  with pytest.raises(CheckpointError) as err:
    prompts.load_prompt(tmp_path / 'p', other)
  message = str(err.value)
  assert prompts.fingerprint(model.params) in message
  assert prompts.fingerprint(other.params) in message
  assert 'tiny-seed-0' in message
  prompts.load_prompt(tmp_path / 'p')  # without a model nothing is checked


def test_corrupt_and_missing_files(model, tmp_path):
  method = PromptTuning(length=5, initializer='uniform')
  params = method.init(jax.random.key(1), _backbone(model))
  prompts.save_prompt(tmp_path / 'p', method, params, model)
  tensor = tmp_path / 'p' / prompts.PARAMS_FILE
  data = bytearray(tensor.read_bytes())
  data[-3] ^= 0xFF
  tensor.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match=prompts.PARAMS_FILE):
    prompts.load_prompt(tmp_path / 'p', model)
  tensor.write_bytes(b'garbage')
  with pytest.raises(CheckpointError, match=prompts.PARAMS_FILE):
    prompts.load_prompt(tmp_path / 'p')
  tensor.unlink()
  with pytest.raises(CheckpointError, match=prompts.PARAMS_FILE):
    prompts.load_prompt(tmp_path / 'p')
  (tmp_path / 'p' / prompts.MANIFEST).write_text('{not json')
  with pytest.raises(CheckpointError, match=prompts.MANIFEST):
    prompts.load_prompt(tmp_path / 'p')
  (tmp_path / 'p' / prompts.MANIFEST).unlink()
  with pytest.raises(CheckpointError, match=prompts.MANIFEST):
    prompts.load_prompt(tmp_path / 'p')


def test_unknown_method_in_manifest(model, tmp_path):
  method = PromptTuning(length=5, initializer='uniform')
  prompts.save_prompt(tmp_path / 'p', method, method.init(jax.random.key(1), _backbone(model)),
                      model)
  path = tmp_path / 'p' / prompts.MANIFEST
  manifest = json.loads(path.read_text())
  manifest['method']['name'] = 'lora'
  path.write_text(json.dumps(manifest))
  with pytest.raises(CheckpointError, match='lora'):
    prompts.load_prompt(tmp_path / 'p')


@pytest.mark.parametrize('method', [PromptTuning(length=6, initializer='uniform'),
                                    PrefixTuning(length=3, hidden_dim=16)],
                         ids=['prompt', 'prefix'])
def test_load_model_attaches_prompt(model, method, tmp_path):
  params = method.init(jax.random.key(2), _backbone(model))
  jaxpt.save_model(model, tmp_path / 'model')
  prompts.save_prompt(tmp_path / 'prompt', method, params, model)
  attached = jaxpt.load_model(tmp_path / 'model', prompt=tmp_path / 'prompt')
  enc = np.array([[5, 6, 7, 1], [8, 9, 1, 0]], np.int32)
  dec = np.array([[0, 4, 5], [0, 6, 1]], np.int32)
  direct = jaxpt.Model(model.config, model.params, method=method, method_params=params)
  np.testing.assert_array_equal(attached.logits(enc, dec), direct.logits(enc, dec))
  assert not np.allclose(attached.logits(enc, dec), model.logits(enc, dec))


def test_load_model_refuses_prompt_of_other_backbone(model, tmp_path):
  method = PromptTuning(length=4, initializer='uniform')
  prompts.save_prompt(tmp_path / 'prompt', method,
                      method.init(jax.random.key(2), _backbone(model)), model)
  other = jaxpt.Model(model.config, init_params(model.config, jax.random.key(5)))
  jaxpt.save_model(other, tmp_path / 'other')
  with pytest.raises(CheckpointError, match='fingerprint'):
    jaxpt.load_model(tmp_path / 'other', prompt=tmp_path / 'prompt')
