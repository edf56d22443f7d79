"""HF transformers T5 directories: parity, round trip, formats, shardings and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jaxpt  # noqa: E402
from jaxpt.checkpoints import hf  # noqa: E402
from tests import hf_fixtures  # noqa: E402
from tests.tiny_configs import tiny_config  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(vocab: int = hf_fixtures.VOCAB):
  """Encoder rows padded to different lengths; decoder rows start with 0, one padded."""
  rng = np.random.RandomState(0)
  enc = rng.randint(2, vocab, (3, 11)).astype(np.int32)
  enc[0, 7:] = 0
  enc[1, 3:] = 0
  dec = rng.randint(2, vocab, (3, 6)).astype(np.int32)
  dec[:, 0] = 0
  dec[2, 4:] = 0
  return enc, dec


def _torch_logits(hf_model, enc, dec) -> np.ndarray:
  with torch.no_grad():
    return hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.float().numpy()


def _state(hf_model):
  return {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}


def _read_safetensors(path):
  from safetensors.numpy import load_file
  return load_file(str(path))


def _write_safetensors(path, tensors):
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
            metadata={'format': 'pt'})


@pytest.fixture(scope='module', params=sorted(hf_fixtures.FIXTURES))
def saved(request, tmp_path_factory):
  """(name, torch model, its save_pretrained directory, jaxpt.load_model of it)."""
  hf_model = hf_fixtures.FIXTURES[request.param]()
  path = tmp_path_factory.mktemp(request.param)
  hf_model.save_pretrained(path)
  return request.param, hf_model, str(path), jaxpt.load_model(path)


@pytest.fixture(scope='module')
def t5_1_0_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('t5_1_0_plain')
  hf_fixtures.t5_1_0().save_pretrained(path)
  return path


# ----------------------------------------------------------------------------- parity


def test_logits_match_transformers(saved):
  name, hf_model, _, model = saved
  enc, dec = _batch()
  ref = _torch_logits(hf_model, enc, dec)
  err = np.abs(model.logits(enc, dec) - ref).max()
  print(f'{name}: max |logit error| {err:.2e} (logit scale {np.abs(ref).max():.1f})')
  assert err <= 1e-4
  assert model.config.per_layer_relpos_bias == (name == 'umt5')
  assert model.config.logits_via_embedding == (name == 't5_1_0')


def _long_batch(vocab: int = hf_fixtures.VOCAB, enc_len: int = 72, dec_len: int = 68):
  """64+ encoder and decoder tokens, padded rows on both sides.

  T5's relative-position buckets of the causal decoder (32 buckets, 16 exact) and of the
  bidirectional encoder (16 per direction, 8 exact) first differ at distance 9, and the
  logarithmic buckets start at 8 / 16: `_batch`'s short rows never reach them.
  """
  rng = np.random.RandomState(1)
  enc = rng.randint(2, vocab, (3, enc_len)).astype(np.int32)
  enc[0, 65:] = 0
  enc[1, 20:] = 0
  dec = rng.randint(2, vocab, (3, dec_len)).astype(np.int32)
  dec[:, 0] = 0
  dec[1, 64:] = 0
  dec[2, 30:] = 0
  return enc, dec


def test_long_sequences_match_transformers(saved):
  """Logits at 64+ encoder and decoder positions, where every relative-position bucket of
  both directions (and the decoder's causal bucketing) is in use."""
  name, hf_model, _, model = saved
  enc, dec = _long_batch()
  assert (enc[0] != 0).sum() >= 64 and (dec[0] != 0).sum() >= 64
  ref = _torch_logits(hf_model, enc, dec)
  err = np.abs(model.logits(enc, dec) - ref).max()
  print(f'{name}: max |logit error| {err:.2e} at {enc.shape[1]} x {dec.shape[1]} tokens')
  assert err <= 1e-4


def test_greedy_decoding_matches_generate(saved):
  _, hf_model, _, model = saved
  enc, _ = _batch()
  ours = np.asarray(model.generate(enc, 10))
  with torch.no_grad():  # use_cache=False: HF's cache breaks when the stack depths differ
    ref = hf_model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                            attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                            max_new_tokens=10, do_sample=False, num_beams=1,
                            use_cache=False).numpy()[:, 1:]
  # HF stops once every row has emitted EOS and pads finished rows with pad (0);
  # jaxpt always returns 10 tokens, 0 after EOS.
  ref = np.pad(ref, ((0, 0), (0, 10 - ref.shape[1])))
  assert ours.shape == (3, 10)
  np.testing.assert_array_equal(ours, ref)
  assert (ours != 0).any() and len(np.unique(ours[:, 0])) > 1, f'decoding is trivial: {ours}'


# ------------------------------------------------------------------------- round trip


def test_round_trip_gives_identical_weights(saved, tmp_path):
  _, hf_model, _, model = saved
  jaxpt.save_hf(model, tmp_path / 'out')
  reloaded = type(hf_model).from_pretrained(tmp_path / 'out').eval()
  ours, theirs = reloaded.state_dict(), hf_model.state_dict()
  assert ours.keys() == theirs.keys()
  for key in theirs:
    assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
  enc, dec = _batch()
  np.testing.assert_array_equal(_torch_logits(reloaded, enc, dec),
                                _torch_logits(hf_model, enc, dec))
  # and back into jaxpt: the same parameters
  again = jaxpt.load_model(tmp_path / 'out')
  assert again.config == model.config
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(model.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('overrides', [
    dict(family='t5_1_1', num_decoder_layers=3),
    dict(family='t5_1_0', mlp_activations=('silu',), num_encoder_layers=3),
    dict(family='t5_1_1', per_layer_relpos_bias=True),
    dict(family='t5_1_1', mlp_activations=('gelu_exact', 'linear')),
], ids=['t5_1_1', 't5_1_0_silu', 'umt5', 'gated_exact_gelu'])
def test_jaxpt_model_exports_to_transformers(overrides, tmp_path):
  from jaxpt.models.t5 import init_params
  overrides = dict(overrides)
  config = tiny_config(overrides.pop('family'), vocab_size=50, **overrides)
  model = jaxpt.Model(config, init_params(config, jax.random.key(0)))
  jaxpt.save_hf(model, tmp_path / 'out')
  auto = (transformers.UMT5ForConditionalGeneration if config.per_layer_relpos_bias
          else transformers.T5ForConditionalGeneration)
  reloaded = auto.from_pretrained(tmp_path / 'out').eval()
  enc, dec = _batch(50)
  err = np.abs(_torch_logits(reloaded, enc, dec) - model.logits(enc, dec)).max()
  assert err <= 1e-4, err
  assert jaxpt.load_model(tmp_path / 'out').config == config


def test_bf16_params_export_as_bf16(tmp_path):
  from jaxpt.models.t5 import init_params
  config = tiny_config(vocab_size=50)
  params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16),
                        init_params(config, jax.random.key(1)))
  hf.write_hf_checkpoint(config, params, str(tmp_path))
  header = (tmp_path / 'model.safetensors').read_bytes()
  header = json.loads(header[8:8 + int.from_bytes(header[:8], 'little')])
  assert header['shared.weight']['dtype'] == 'BF16'
  assert json.loads((tmp_path / 'config.json').read_text())['dtype'] == 'bfloat16'
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
  assert reloaded.shared.weight.dtype == torch.bfloat16
  _, back = hf.read_hf_checkpoint(str(tmp_path))
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, np.asarray(b, np.float32))


# ---------------------------------------------------------------------------- formats


@pytest.fixture(scope='module')
def odd_model(tmp_path_factory):
  """(torch model, its jaxpt params read from a plain model.safetensors directory)."""
  hf_model = hf_fixtures.t5_1_1_odd()
  path = tmp_path_factory.mktemp('odd_plain')
  hf_model.save_pretrained(path)
  return hf_model, jaxpt.load_model(path).params


def _assert_same_params(path, want):
  """`path` loads to exactly `want` (logits parity of `want` is tested above)."""
  got = jaxpt.load_model(path).params
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_loaded_params_are_jax_arrays_not_file_views(odd_model, tmp_path):
  # numpy memmap views would keep the file mapped and be copied (transposed) into every step.
  hf_model, params = odd_model
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
  hf_model.save_pretrained(tmp_path)
  _, read = hf.read_hf_checkpoint(str(tmp_path))
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(read))


def test_sharded_safetensors(odd_model, tmp_path):
  hf_model, want = odd_model
  hf_model.save_pretrained(tmp_path, max_shard_size='20KB')
  index = json.loads((tmp_path / 'model.safetensors.index.json').read_text())
  assert len(set(index['weight_map'].values())) > 1
  assert not (tmp_path / 'model.safetensors').exists()
  _assert_same_params(tmp_path, want)


def test_pytorch_bin_single_and_sharded(odd_model, tmp_path):
  hf_model, want = odd_model
  # transformers 5 ignores safe_serialization=False, so write the .bin files ourselves.
  single = tmp_path / 'single'
  hf_model.save_pretrained(single)
  os.remove(single / 'model.safetensors')
  torch.save(hf_model.state_dict(), single / 'pytorch_model.bin')  # holds the tied copies too
  _assert_same_params(single, want)

  sharded = tmp_path / 'sharded'
  hf_model.save_pretrained(sharded)
  os.remove(sharded / 'model.safetensors')
  state = hf_model.state_dict()
  names = sorted(state)
  weight_map = {}
  for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
    shard = f'pytorch_model-0000{i + 1}-of-00002.bin'
    torch.save({k: state[k].clone() for k in part}, sharded / shard)
    weight_map.update({k: shard for k in part})
  (sharded / 'pytorch_model.bin.index.json').write_text(
      json.dumps({'metadata': {}, 'weight_map': weight_map}))
  _assert_same_params(sharded, want)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_half_precision_safetensors(dtype, tmp_path):
  hf_model = hf_fixtures.t5_1_1_odd().to(getattr(torch, dtype))
  hf_model.save_pretrained(tmp_path)
  config, params = hf.read_hf_checkpoint(str(tmp_path))
  assert config.param_dtype == 'float32'
  state = _state(hf_model)  # exact: half -> float32 widening
  for path, (name, transpose) in hf._param_map(config, 'shared.weight').items():
    leaf = params
    for part in path.split('/'):
      leaf = leaf[part]
    assert leaf.dtype == np.float32
    np.testing.assert_array_equal(leaf, state[name].T if transpose else state[name])


def test_untied_lm_head_with_scaling_folds_the_scale(t5_1_0_dir, tmp_path):
  """A T5 1.0 config (scaled) with a distinct lm_head: transformers unties, jaxpt folds."""
  tensors = _read_safetensors(t5_1_0_dir / 'model.safetensors')
  tensors['lm_head.weight'] = np.random.RandomState(3).randn(
      *tensors['shared.weight'].shape).astype(np.float32)
  for name in ('config.json', 'generation_config.json'):
    (tmp_path / name).write_text((t5_1_0_dir / name).read_text())
  _write_safetensors(tmp_path / 'model.safetensors', tensors)
  ref_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  assert ref_model.config.scale_decoder_outputs
  assert ref_model.lm_head.weight.data_ptr() != ref_model.shared.weight.data_ptr()
  model = jaxpt.load_model(tmp_path)
  assert not model.config.logits_via_embedding
  enc, dec = _batch()
  np.testing.assert_allclose(model.logits(enc, dec), _torch_logits(ref_model, enc, dec),
                             atol=1e-4)


# -------------------------------------------------------------------------- shardings


def test_load_into_shardings(saved):
  _, _, path, _ = saved
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  config, plain = hf.read_hf_checkpoint(path)
  P = jax.sharding.PartitionSpec
  shardings = jax.tree.map(
      lambda x: jax.sharding.NamedSharding(mesh, P(*(['data'] + [None] * (x.ndim - 1)))), plain)
  _, sharded = hf.read_hf_checkpoint(path, shardings=shardings)
  assert jax.tree.structure(sharded) == jax.tree.structure(plain)
  for a, b, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain),
                     jax.tree.leaves(shardings)):
    assert isinstance(a, jax.Array) and a.sharding == s and a.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(a), b)


_MULTI_DEVICE = textwrap.dedent('''
    import sys, numpy as np, jax
    from jaxpt.checkpoints import hf
    path = sys.argv[1]
    assert len(jax.devices()) == 4, jax.devices()
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ('data', 'model'))
    P = jax.sharding.PartitionSpec
    _, plain = hf.read_hf_checkpoint(path)
    def spec(x):
      axes = [a if d % 2 == 0 else None for a, d in zip(('data', 'model'), x.shape)]
      return jax.sharding.NamedSharding(mesh, P(*axes[:x.ndim]))
    shardings = jax.tree.map(spec, plain)
    _, sharded = hf.read_hf_checkpoint(path, shardings=shardings)
    split = 0
    for a, b, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain),
                       jax.tree.leaves(shardings)):
      assert a.sharding == s
      np.testing.assert_array_equal(np.asarray(a), b)
      for shard in a.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), b[shard.index])
        split += shard.data.shape != b.shape
    assert split > 0
    print('ok', split)
''')


def test_load_into_four_device_shardings(tmp_path):
  """Each device's slice of the transposed tensor, on a 2x2 CPU mesh (in a subprocess)."""
  path = str(tmp_path)
  hf_fixtures.t5_1_1_odd().save_pretrained(path, max_shard_size='20KB')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', _MULTI_DEVICE, path], env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith('ok')


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize('keys', [
    {}, {'tie_word_embeddings': True}, {'tie_word_embeddings': False},
    {'scale_decoder_outputs': False}, {'tie_word_embeddings': True, 'scale_decoder_outputs': False},
    {'tie_word_embeddings': False, 'scale_decoder_outputs': True}])
def test_decoder_scaling_follows_transformers(keys):
  base = dict(vocab_size=32, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2)
  for model_type, cls in (('t5', transformers.T5Config), ('umt5', transformers.UMT5Config)):
    d = dict(base, model_type=model_type, **keys)
    assert hf.scales_decoder_outputs(d) == cls.from_dict(d).scale_decoder_outputs
    assert hf.config_from_hf(d).logits_via_embedding == cls.from_dict(d).scale_decoder_outputs
  assert not hf.config_from_hf(dict(base, model_type='mt5', **keys)).logits_via_embedding


@pytest.mark.parametrize('proj, acts, hf_act', [
    ('relu', ('relu',), 'relu'), ('gated-gelu', ('gelu', 'linear'), 'gelu_new'),
    ('gelu', ('gelu_exact',), 'gelu'), ('gated-gelu_new', ('gelu', 'linear'), 'gelu_new'),
    ('gated-silu', ('silu', 'linear'), 'silu'), ('gelu_new', ('gelu',), 'gelu_new'),
    ('gated-gelu_python', ('gelu_exact', 'linear'), 'gelu_python')])
def test_feed_forward_proj(proj, acts, hf_act):
  d = dict(model_type='t5', vocab_size=32, d_model=8, d_kv=2, d_ff=8, num_layers=1,
           num_heads=2, feed_forward_proj=proj, eos_token_id=[1, 2], num_decoder_layers=None)
  config = hf.config_from_hf(d)
  assert config.mlp_activations == acts
  assert config.num_decoder_layers == 1 and config.eos_token_id == 1
  assert transformers.T5Config.from_dict(d).dense_act_fn == hf_act
  back = hf.config_to_hf(config)
  assert hf.config_from_hf(back) == config
  theirs = transformers.T5Config.from_dict(back)
  assert hf._FROM_HF_ACT[theirs.dense_act_fn] == hf._FROM_HF_ACT[hf_act]
  assert theirs.is_gated_act == (len(acts) == 2)


def test_config_errors():
  d = dict(model_type='t5', vocab_size=32, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2)
  with pytest.raises(jaxpt.CheckpointError,
                     match=r"x/config.json: unsupported feed_forward_proj 'gated-tanh'"):
    hf.config_from_hf(dict(d, feed_forward_proj='gated-tanh'), 'x/config.json')
  with pytest.raises(jaxpt.CheckpointError, match=r"config.json: missing T5 config field 'd_ff'"):
    hf.config_from_hf({k: v for k, v in d.items() if k != 'd_ff'})
  with pytest.raises(jaxpt.CheckpointError, match='no HF feed_forward_proj'):
    hf.config_to_hf(tiny_config(mlp_activations=('gelu', 'relu')))


# ----------------------------------------------------------------------------- errors


def _copy_config(src, dst, **changes):
  dst.mkdir(exist_ok=True)
  cfg = json.loads((src / 'config.json').read_text())
  cfg.update(changes)
  (dst / 'config.json').write_text(json.dumps(cfg))
  return dst


def test_error_missing_path(tmp_path):
  with pytest.raises(jaxpt.CheckpointError, match=r'nope: no such file or directory'):
    jaxpt.load_model(tmp_path / 'nope')
  with pytest.raises(jaxpt.CheckpointError, match=r'nope: no such directory'):
    hf.read_hf_checkpoint(str(tmp_path / 'nope'))


def test_error_unknown_directory(tmp_path):
  (tmp_path / 'notes.txt').write_text('hi')
  with pytest.raises(jaxpt.CheckpointError, match=r"unknown checkpoint directory.*notes.txt"):
    jaxpt.load_model(tmp_path)


def test_error_config_without_weights(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  (tmp_path / 'README.md').write_text('hi')
  with pytest.raises(jaxpt.CheckpointError,
                     match=r'expected model.safetensors.*found \[.README.md., .config.json.\]'):
    jaxpt.load_model(tmp_path)


def test_error_truncated_safetensors(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  data = (t5_1_0_dir / 'model.safetensors').read_bytes()
  for cut in (len(data) // 2, 20, 4):
    (tmp_path / 'model.safetensors').write_bytes(data[:cut])
    with pytest.raises(jaxpt.CheckpointError, match=r'model.safetensors: truncated safetensors'):
      jaxpt.load_model(tmp_path)


def test_error_truncated_bin(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  torch.save(hf_fixtures.t5_1_0().state_dict(), tmp_path / 'full.bin')
  data = (tmp_path / 'full.bin').read_bytes()
  (tmp_path / 'pytorch_model.bin').write_bytes(data[:len(data) // 2])
  with pytest.raises(jaxpt.CheckpointError, match=r'pytorch_model.bin: could not read'):
    jaxpt.load_model(tmp_path)


def test_error_missing_shard(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  (tmp_path / 'model.safetensors.index.json').write_text(
      json.dumps({'weight_map': {'shared.weight': 'model-00001-of-00002.safetensors'}}))
  with pytest.raises(jaxpt.CheckpointError,
                     match=r'index.json: lists shard model-00001-of-00002.safetensors'):
    jaxpt.load_model(tmp_path)


def test_error_config_disagrees_with_weights(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path, d_model=24)
  os.symlink(t5_1_0_dir / 'model.safetensors', tmp_path / 'model.safetensors')
  with pytest.raises(jaxpt.CheckpointError) as e:
    jaxpt.load_model(tmp_path)
  msg = str(e.value)
  assert ('model.safetensors: tensor shared.weight has shape (96, 16), config.json implies '
          '(96, 24)') in msg
  assert ('decoder.block.0.layer.0.SelfAttention.k.weight has shape (16, 16), config.json '
          'implies (16, 24)') in msg
  assert 'weights do not match' in msg and msg.endswith('... and 25 more')


def test_error_missing_and_unexpected_tensors(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  tensors = _read_safetensors(t5_1_0_dir / 'model.safetensors')
  name = 'decoder.block.1.layer.2.DenseReluDense.wo.weight'
  tensors['decoder.block.1.layer.2.DenseReluDense.wx.weight'] = tensors.pop(name)
  _write_safetensors(tmp_path / 'model.safetensors', tensors)
  with pytest.raises(jaxpt.CheckpointError) as e:
    jaxpt.load_model(tmp_path)
  msg = str(e.value)
  assert (f'model.safetensors: missing tensor {name} (for decoder/layers_1/mlp/wo/kernel); '
          f'expected shape (16, 32) from config.json') in msg
  assert ('model.safetensors: unexpected tensor decoder.block.1.layer.2.DenseReluDense.wx.weight'
          ' with shape (16, 32)') in msg


def test_error_untied_input_embeddings(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  tensors = _read_safetensors(t5_1_0_dir / 'model.safetensors')
  tensors['encoder.embed_tokens.weight'] = tensors['shared.weight'] + 1
  _write_safetensors(tmp_path / 'model.safetensors', tensors)
  with pytest.raises(jaxpt.CheckpointError,
                     match='encoder.embed_tokens.weight differs from shared.weight'):
    jaxpt.load_model(tmp_path)
  tensors['encoder.embed_tokens.weight'] = tensors['shared.weight']  # an equal copy is fine
  _write_safetensors(tmp_path / 'model.safetensors', tensors)
  jaxpt.load_model(tmp_path)


def test_error_not_t5(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path, model_type='bert')
  os.symlink(t5_1_0_dir / 'model.safetensors', tmp_path / 'model.safetensors')
  with pytest.raises(jaxpt.CheckpointError,
                     match=r"config.json: expected a T5 model_type .*found 'bert'"):
    jaxpt.load_model(tmp_path)


def test_read_safetensors_slice_reads_one_slice(tmp_path):
  """`read_safetensors_slice` (safetensors' get_slice): a device's slice, bf16 and empty too."""
  import ml_dtypes
  full = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
  path = tmp_path / 'x.safetensors'
  _write_safetensors(path, {'w': full, 'b': full.astype(ml_dtypes.bfloat16),
                            'e': np.zeros((0, 4), np.float32)})
  index = (slice(2, 4), slice(4, 8))
  np.testing.assert_array_equal(hf.read_safetensors_slice(path, 'w', index), full[index])
  half = hf.read_safetensors_slice(path, 'b', index)
  assert half.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(half, full[index].astype(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(hf.read_safetensors_slice(path, 'w'), full)
  assert hf.read_safetensors_slice(path, 'e', (slice(0, 0), slice(1, 3))).shape == (0, 2)


def test_error_garbled_safetensors_header(t5_1_0_dir, tmp_path):
  _copy_config(t5_1_0_dir, tmp_path)
  (tmp_path / 'model.safetensors').write_bytes((64).to_bytes(8, 'little') + b'{x' + b' ' * 80)
  with pytest.raises(jaxpt.CheckpointError, match=r'model.safetensors: corrupt safetensors'):
    jaxpt.load_model(tmp_path)
