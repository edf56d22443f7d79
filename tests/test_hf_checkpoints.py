"""HF transformers T5 directories: parity, round trip, formats and errors."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jaxpt  # noqa: E402
from tests import hf_fixtures  # noqa: E402


def _batch(vocab=96):
  rng = np.random.RandomState(0)
  enc = rng.randint(2, vocab, (3, 11)).astype(np.int32)
  enc[0, 7:] = 0
  enc[1, 3:] = 0
  dec = rng.randint(2, vocab, (3, 6)).astype(np.int32)
  dec[:, 0] = 0
  dec[2, 4:] = 0
  return enc, dec


def _torch_logits(hf_model, enc, dec):
  with torch.no_grad():
    return hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope='module', params=sorted(hf_fixtures.FIXTURES))
def saved(request, tmp_path_factory):
  hf_model = hf_fixtures.FIXTURES[request.param]()
  path = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(path)
  return request.param, hf_model, str(path)


def test_logits_match_transformers(saved):
  name, hf_model, path = saved
  model = jaxpt.load_model(path)
  enc, dec = _batch()
  ref = _torch_logits(hf_model, enc, dec)
  err = np.abs(model.logits(enc, dec) - ref).max()
  print(f'{name}: max |logit error| {err:.2e} (logit scale {np.abs(ref).max():.1f})')
  assert err <= 1e-4
  if name == 'umt5':
    assert model.config.per_layer_relpos_bias


def test_greedy_decoding_matches_generate(saved):
  name, hf_model, path = saved
  model = jaxpt.load_model(path)
  enc, _ = _batch()
  ours = model.generate(enc, 10)
  with torch.no_grad():
    ref = hf_model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                            attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                            max_new_tokens=10, do_sample=False, num_beams=1,
                            use_cache=False).numpy()[:, 1:]
  ref = np.pad(ref, ((0, 0), (0, 10 - ref.shape[1])))  # HF stops when every row hit EOS
  np.testing.assert_array_equal(ours, ref)
  assert (ours > 1).any(), 'decoding must be nontrivial'


def test_round_trip_gives_identical_weights(saved, tmp_path):
  name, hf_model, path = saved
  model = jaxpt.load_model(path)
  jaxpt.save_hf(model, tmp_path / 'out')
  cls = type(hf_model)
  reloaded = cls.from_pretrained(tmp_path / 'out').eval()
  ours, theirs = reloaded.state_dict(), hf_model.state_dict()
  assert ours.keys() == theirs.keys()
  for key in theirs:
    assert torch.equal(ours[key], theirs[key]), key
  enc, dec = _batch()
  np.testing.assert_array_equal(_torch_logits(reloaded, enc, dec),
                                _torch_logits(hf_model, enc, dec))


def test_jaxpt_model_exports_to_transformers(tmp_path):
  from jaxpt.models.t5 import init_params
  for config in (jaxpt.preset('t5_1_1', 'tiny', vocab_size=50, num_decoder_layers=3),
                 jaxpt.preset('t5_1_0', 'tiny', vocab_size=50),
                 jaxpt.preset('t5_1_1', 'tiny', vocab_size=50, per_layer_relpos_bias=True)):
    model = jaxpt.Model(config, init_params(config, jax.random.key(0)))
    out = tmp_path / str(hash(config))
    jaxpt.save_hf(model, out)
    auto = (transformers.UMT5ForConditionalGeneration if config.per_layer_relpos_bias
            else transformers.T5ForConditionalGeneration)
    reloaded = auto.from_pretrained(out).eval()
    enc, dec = _batch(50)
    np.testing.assert_allclose(_torch_logits(reloaded, enc, dec), model.logits(enc, dec),
                               atol=1e-4)


def test_sharded_bin_and_bf16_formats(tmp_path):
  hf_model = hf_fixtures.t5_1_1_odd()
  enc, dec = _batch()
  ref = _torch_logits(hf_model, enc, dec)
  hf_model.save_pretrained(tmp_path / 'sharded', max_shard_size='20KB')
  assert os.path.isfile(tmp_path / 'sharded' / 'model.safetensors.index.json')
  np.testing.assert_allclose(jaxpt.load_model(tmp_path / 'sharded').logits(enc, dec), ref,
                             atol=1e-4)
  bin_dir = tmp_path / 'bin'
  hf_model.save_pretrained(bin_dir)
  os.remove(bin_dir / 'model.safetensors')
  torch.save(hf_model.state_dict(), bin_dir / 'pytorch_model.bin')
  np.testing.assert_allclose(jaxpt.load_model(bin_dir).logits(enc, dec), ref, atol=1e-4)
  bf16 = hf_fixtures.t5_1_1_odd().to(torch.bfloat16)
  bf16.save_pretrained(tmp_path / 'bf16')
  loaded = jaxpt.load_model(tmp_path / 'bf16')
  want = bf16.shared.weight.detach().float().numpy()
  np.testing.assert_array_equal(loaded.params['token_embedder']['embedding'], want)


def test_load_into_shardings(saved):
  _, _, path = saved
  from jaxpt.checkpoints import hf
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  config, plain = hf.read_hf_checkpoint(path)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = jax.tree.map(lambda _: replicated, plain)
  _, sharded = hf.read_hf_checkpoint(path, shardings=shardings)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    assert isinstance(a, jax.Array) and a.sharding == replicated
    np.testing.assert_array_equal(np.asarray(a), b)


def test_errors_name_the_file(tmp_path):
  hf_model = hf_fixtures.t5_1_0()
  good = tmp_path / 'good'
  hf_model.save_pretrained(good)
  # truncated weights
  trunc = tmp_path / 'trunc'
  hf_model.save_pretrained(trunc)
  data = (trunc / 'model.safetensors').read_bytes()
  (trunc / 'model.safetensors').write_bytes(data[:len(data) // 2])
  with pytest.raises(jaxpt.CheckpointError, match=r'model.safetensors: truncated'):
    jaxpt.load_model(trunc)
  # config disagrees with the weights
  bad = tmp_path / 'bad'
  hf_model.save_pretrained(bad)
  cfg = json.loads((bad / 'config.json').read_text())
  cfg['d_model'] = 24
  (bad / 'config.json').write_text(json.dumps(cfg))
  with pytest.raises(jaxpt.CheckpointError,
                     match=r'shared.weight has shape \(96, 16\), config.json implies \(96, 24\)'):
    jaxpt.load_model(bad)
  # not a T5
  cfg['model_type'] = 'bert'
  (bad / 'config.json').write_text(json.dumps(cfg))
  with pytest.raises(jaxpt.CheckpointError, match=r"config.json: expected a T5 model_type.*'bert'"):
    jaxpt.load_model(bad)
  # no weights at all
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'config.json').write_text((good / 'config.json').read_text())
  with pytest.raises(jaxpt.CheckpointError, match='expected model.safetensors'):
    jaxpt.load_model(empty)
