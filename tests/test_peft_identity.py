"""peft adapters: jaxpt's exports carry the backbone's identity; bad adapter files are
CheckpointErrors naming the file."""

from __future__ import annotations

import os

import jax
import pytest

import jaxpt
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.methods import Backbone, PromptTuning
from jaxpt.models.t5 import init_params
from tests.tiny_configs import CONFIG


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp('peft')
  model = jaxpt.Model(CONFIG, init_params(CONFIG, jax.random.key(0)), source='tiny A')
  jaxpt.save_model(model, str(root / 'a'))
  other = jaxpt.Model(CONFIG, init_params(CONFIG, jax.random.key(1)), source='tiny B')
  jaxpt.save_model(other, str(root / 'b'))
  method = PromptTuning(length=4, initializer='uniform')
  params = method.init(jax.random.key(2), Backbone(CONFIG, None))
  jaxpt.export_peft(model, method, params, str(root / 'adapter'))
  return root


def test_an_export_attaches_to_its_own_backbone_only(exported):
  tuned = jaxpt.load_model(str(exported / 'a'), prompt=str(exported / 'adapter'))
  assert tuned.method.length == 4
  with pytest.raises(CheckpointError, match='exported from a backbone with fingerprint'):
    jaxpt.load_model(str(exported / 'b'), prompt=str(exported / 'adapter'))


def _copy(src, dst):
  os.makedirs(dst)
  for name in os.listdir(src):
    with open(os.path.join(src, name), 'rb') as f, open(os.path.join(dst, name), 'wb') as g:
      g.write(f.read())
  return dst


def test_garbled_config_truncated_tensor_and_missing_config_name_the_file(exported, tmp_path):
  garbled = _copy(exported / 'adapter', tmp_path / 'garbled')
  with open(os.path.join(garbled, 'adapter_config.json'), 'w') as f:
    f.write('{"peft_type": "PROMPT_TUNING",')
  with pytest.raises(CheckpointError, match='adapter_config.json: not valid JSON'):
    jaxpt.load_model(str(exported / 'a'), prompt=garbled)

  truncated = _copy(exported / 'adapter', tmp_path / 'truncated')
  path = os.path.join(truncated, 'adapter_model.safetensors')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match='adapter_model.safetensors: cannot read'):
    jaxpt.load_model(str(exported / 'a'), prompt=truncated)

  headless = _copy(exported / 'adapter', tmp_path / 'headless')
  os.remove(os.path.join(headless, 'adapter_config.json'))
  with pytest.raises(CheckpointError, match='jaxpt peft export without its adapter_config'):
    jaxpt.load_model(str(exported / 'a'), prompt=headless)
