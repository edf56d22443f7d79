"""T5X checkpoints: the real tiny checkpoint against transformers, both layouts, errors."""

from __future__ import annotations

import tracemalloc

import jax
import numpy as np
import pytest
from flax import serialization

import jaxpt
from jaxpt.checkpoints import t5x

TINY = 't5x/test_t5_tiny.checkpoint_0'


def _hf_reference(target):
  """The checkpoint's raw arrays mapped into transformers' PyTorch T5 by this test alone."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  cfg = transformers.T5Config(vocab_size=32128, d_model=8, d_kv=3, d_ff=16, num_layers=2,
                              num_heads=4, feed_forward_proj='gated-gelu',
                              tie_word_embeddings=False, relative_attention_num_buckets=32,
                              dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                              eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  t = lambda x: torch.tensor(np.asarray(x, np.float32))
  sd = {'shared.weight': t(target['token_embedder']['embedding'])}
  for stack in ('encoder', 'decoder'):
    sd[f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'] = t(
        target[stack]['relpos_bias']['rel_embedding']).T
    sd[f'{stack}.final_layer_norm.weight'] = t(target[stack][f'{stack}_norm']['scale'])
    attentions = ([('attention', 'SelfAttention')] if stack == 'encoder' else
                  [('self_attention', 'SelfAttention'), ('encoder_decoder_attention',
                                                          'EncDecAttention')])
    norms = (['pre_attention_layer_norm', 'pre_mlp_layer_norm'] if stack == 'encoder' else
             ['pre_self_attention_layer_norm', 'pre_cross_attention_layer_norm',
              'pre_mlp_layer_norm'])
    for i in range(2):
      layer = target[stack][f'layers_{i}']
      for j, norm in enumerate(norms):
        sd[f'{stack}.block.{i}.layer.{j}.layer_norm.weight'] = t(layer[norm]['scale'])
      for j, (ours, theirs) in enumerate(attentions):
        for a, b in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
          sd[f'{stack}.block.{i}.layer.{j}.{theirs}.{b}.weight'] = t(layer[ours][a]['kernel']).T
      for name in ('wi_0', 'wi_1', 'wo'):
        sd[f'{stack}.block.{i}.layer.{len(norms) - 1}.DenseReluDense.{name}.weight'] = t(
            layer['mlp'][name]['kernel']).T
  model.load_state_dict(sd, strict=False)
  model.lm_head.weight = torch.nn.Parameter(t(target['decoder']['logits_dense']['kernel']).T)
  assert not torch.equal(model.lm_head.weight, model.shared.weight)
  return model


def test_real_t5x_checkpoint_matches_transformers(shared_data):
  torch = pytest.importorskip('torch')
  path = shared_data / TINY
  raw = serialization.msgpack_restore(path.read_bytes())['optimizer']['target']
  model = jaxpt.load_model(path)
  cfg = model.config
  assert (cfg.vocab_size, cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim) == (
      32128, 8, 4, 3, 16)
  assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.logits_via_embedding) == (2, 2, False)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 32000, (3, 9)).astype(np.int32)
  enc[0, 5:] = 0
  dec = rng.randint(2, 32000, (3, 5)).astype(np.int32)
  dec[:, 0] = 0
  hf = _hf_reference(raw)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(enc).long(), attention_mask=torch.tensor(enc != 0).long(),
             decoder_input_ids=torch.tensor(dec).long()).logits.numpy()
  err = np.abs(model.logits(enc, dec) - ref).max()
  print(f'T5X tiny checkpoint: max |logit error| vs transformers {err:.2e}')
  assert err <= 1e-4
  assert model.generate(enc, 4).shape == (3, 4)


def test_optimizer_state_is_skipped_without_loading(tmp_path):
  params = {'token_embedder': {'embedding': np.arange(12, dtype=np.float32).reshape(3, 4)}}
  state = {'big': np.ones((50 * 2**20 // 4,), np.float32)}  # 50 MB of optimizer state
  path = tmp_path / 'checkpoint'
  t5x.write_t5x_checkpoint(params, str(path), optimizer_state=state, step=7)
  tracemalloc.start()
  read = t5x.read_t5x_checkpoint(str(path))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  print(f'read peak {peak / 2**20:.2f} MiB for a 50 MiB optimizer state')
  assert peak < 10 * 2**20
  np.testing.assert_array_equal(read['token_embedder']['embedding'],
                                params['token_embedder']['embedding'])


def test_tensorstore_layout(shared_data):
  arrays = t5x.read_t5x_arrays(str(shared_data / 't5x/tiny_t5/checkpoint_1'), root=None)
  kernel = arrays['optimizer/state/param_states/kernel']
  assert kernel.shape == (10, 5)
  values = kernel.read()
  assert values.dtype == np.float64 and values.shape == (10, 5)
  np.testing.assert_allclose(values[0, :2], [0.15038408, 0.70071733], rtol=1e-6)
  np.testing.assert_array_equal(arrays['optimizer/state/param_states/bias'].read(), np.ones(5))
  assert int(arrays['optimizer/state/param_states/step'].read()) == 1
  assert int(arrays['optimizer/state/step']) == 1
  np.testing.assert_array_equal(kernel.read(np.s_[2:4, 1:3]), values[2:4, 1:3])


def test_orbax_layout(shared_data):
  """Orbax-era T5X: placeholders in the index, zstd zarr arrays beside it.

  The shared copy lost its `.zarray` files (dotfiles); the reader says so, and with the
  metadata of the same toy state (recorded in the tensorstore sibling) reads equal values.
  """
  path = str(shared_data / 't5x/tiny_orbax/1')
  arrays = t5x.read_t5x_arrays(path, root=None)
  assert {k for k in arrays if k.startswith('_optimizer')} == {
      '_optimizer/state/param_states/bias', '_optimizer/state/param_states/kernel',
      '_optimizer/state/param_states/step', '_optimizer/state/step'}
  with pytest.raises(jaxpt.CheckpointError, match=r'\.zarray.*missing'):
    arrays['_optimizer/state/param_states/kernel'].read()
  zstd = {'id': 'zstd', 'level': 1}
  meta = {'_optimizer/state/param_states/kernel': dict(shape=[10, 5], chunks=[10, 5],
                                                       dtype='float64', compressor=zstd),
          '_optimizer/state/param_states/bias': dict(shape=[5], chunks=[5], dtype='float32',
                                                     compressor=zstd)}
  arrays = t5x.read_t5x_arrays(path, root=None, array_metadata=meta)
  sibling = t5x.read_t5x_arrays(str(shared_data / 't5x/tiny_t5/checkpoint_1'), root=None)
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(arrays[f'_optimizer/state/param_states/{name}'].read(),
                                  sibling[f'optimizer/state/param_states/{name}'].read())


def test_sharded_read(shared_data):
  path = str(shared_data / TINY)
  plain = t5x.read_t5x_checkpoint(path)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sharded = t5x.read_t5x_checkpoint(path, shardings=jax.tree.map(lambda _: sharding, plain))
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    assert a.sharding == sharding
    np.testing.assert_array_equal(np.asarray(a), b)


def test_errors(shared_data, tmp_path):
  data = (shared_data / TINY).read_bytes()
  cut = tmp_path / 'cut.checkpoint'
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(jaxpt.CheckpointError, match=r'cut.checkpoint: corrupt or truncated'):
    jaxpt.load_model(cut)
  no_target = tmp_path / 'no_target'
  no_target.write_bytes(serialization.msgpack_serialize({'version': 3, 'state': {}}))
  with pytest.raises(jaxpt.CheckpointError, match='no_target: expected a T5X checkpoint'):
    jaxpt.load_model(no_target)
