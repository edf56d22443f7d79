"""T5X checkpoints: the real tiny checkpoint against transformers, both layouts, errors."""

from __future__ import annotations

import gzip
import shutil
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
  from tests import hf_fixtures
  cfg = hf_fixtures.t5_config(vocab_size=32128, d_model=8, d_kv=3, d_ff=16,
                              feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                              relative_attention_num_buckets=32)
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
  params = {'token_embedder': {'embedding': np.arange(12, dtype=np.float32).reshape(3, 4)},
            'encoder': {'encoder_norm': {'scale': np.linspace(0, 1, 4).astype(np.float32)}}}
  state = {'big': np.ones((50 * 2**20 // 4,), np.float32)}  # 50 MiB of optimizer state
  path = tmp_path / 'checkpoint'
  t5x.write_t5x_checkpoint(params, str(path), optimizer_state=state, step=7)
  del state
  tracemalloc.start()
  read = t5x.read_t5x_checkpoint(str(path))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  print(f'read peak {peak / 2**20:.3f} MiB for a 50 MiB optimizer state')
  assert peak < 10 * 2**20
  for a, b in zip(jax.tree.leaves(read), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # The file is a plain flax / T5X checkpoint.
  restored = serialization.msgpack_restore(path.read_bytes())
  assert int(restored['optimizer']['state']['step']) == 7
  assert restored['optimizer']['state']['param_states']['big'].shape == (50 * 2**20 // 4,)
  assert int(t5x.read_t5x_arrays(str(path), prefix='state/step')['']) == 7


def test_root_target_bfloat16_and_chunked_arrays(tmp_path, monkeypatch):
  """Newer layout (`target` at the root), bfloat16 ext arrays, `__msgpack_chunked_array__`."""
  bf16 = (np.arange(24, dtype=np.float32) / 7).astype(jax.numpy.bfloat16).reshape(4, 6)
  big = np.arange(40, dtype=np.float32).reshape(8, 5)
  monkeypatch.setattr(serialization, 'MAX_CHUNK_SIZE', 32)  # force chunking of `big`
  data = serialization.msgpack_serialize(
      {'state': {'m': np.zeros(3, np.float32)}, 'target': {'a': {'kernel': bf16}, 'big': big}})
  assert b'__msgpack_chunked_array__' in data
  path = tmp_path / 'new_layout'
  path.write_bytes(data)
  arrays = t5x.read_t5x_arrays(str(path))
  assert set(arrays) == {'a/kernel', 'big'}
  assert arrays['a/kernel'].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(arrays['a/kernel'], bf16)
  np.testing.assert_array_equal(arrays['big'], big)
  params = t5x.read_t5x_checkpoint(str(path))
  assert params['a']['kernel'].dtype == np.float32
  np.testing.assert_array_equal(params['a']['kernel'], bf16.astype(np.float32))


def _gunzip_float64(path):
  return np.frombuffer(gzip.decompress(path.read_bytes()), '<f8')


def test_tensorstore_layout(shared_data):
  ckpt = shared_data / 't5x/tiny_t5/checkpoint_1'
  arrays = t5x.read_t5x_arrays(str(ckpt), prefix=None)
  assert set(arrays) == {'version', 'optimizer/state/param_states/bias',
                         'optimizer/state/param_states/kernel',
                         'optimizer/state/param_states/step', 'optimizer/state/step'}
  kernel = arrays['optimizer/state/param_states/kernel']
  assert kernel.dtype == np.float64 and kernel.shape == (10, 5)
  # Independently: the zarr chunk is the gzipped little-endian C-order array.
  expected = _gunzip_float64(ckpt / 'state.param_states.kernel' / '0.0').reshape(10, 5)
  np.testing.assert_array_equal(kernel, expected)
  np.testing.assert_allclose(kernel[0, :2], [0.15038408, 0.70071733], rtol=1e-6)  # t5x tests
  np.testing.assert_array_equal(arrays['optimizer/state/param_states/bias'], np.ones(5))
  assert int(arrays['optimizer/state/param_states/step']) == 1
  assert int(arrays['optimizer/state/step']) == 1
  lazy = t5x.read_t5x_arrays(str(ckpt), prefix='state/param_states', lazy=True)
  assert lazy['kernel'].shape == (10, 5)
  np.testing.assert_array_equal(lazy['kernel'].read(np.s_[2:4, 1:3]), expected[2:4, 1:3])


def test_orbax_layout(shared_data):
  """Orbax-era T5X: placeholders in the index, zstd zarr arrays beside it.

  The shared copy lost its `.zarray` files (dotfiles); the reader says so, and with the
  metadata of the same toy state (recorded in the tensorstore sibling) reads equal values.
  """
  path = str(shared_data / 't5x/tiny_orbax/1')
  arrays = t5x.read_t5x_arrays(path, prefix=None, lazy=True)
  assert set(arrays) == {
      '_optimizer/state/param_states/bias', '_optimizer/state/param_states/kernel',
      '_optimizer/state/param_states/step', '_optimizer/state/step'}
  assert arrays['_optimizer/state/step'].location.endswith('_optimizer.state.step')
  with pytest.raises(jaxpt.CheckpointError, match=r'\.zarray.*missing'):
    arrays['_optimizer/state/param_states/kernel'].read()
  zstd = {'id': 'zstd', 'level': 1}
  meta = {'param_states/kernel': dict(shape=[10, 5], chunks=[10, 5], dtype='float64',
                                      compressor=zstd),
          'param_states/bias': dict(shape=[5], chunks=[5], dtype='float32', compressor=zstd),
          'param_states/step': dict(shape=[], chunks=[], dtype='int32', compressor=zstd),
          'step': dict(shape=[], chunks=[], dtype='int32', compressor=zstd)}
  arrays = t5x.read_t5x_arrays(path, prefix='state', array_metadata=meta)  # under _optimizer
  sibling = t5x.read_t5x_arrays(str(shared_data / 't5x/tiny_t5/checkpoint_1'), prefix='state')
  assert set(arrays) == set(sibling)
  for name in arrays:
    np.testing.assert_array_equal(arrays[name], sibling[name])
  assert int(arrays['step']) == 1


def _tensorstore_target_checkpoint(shared_data, tmp_path):
  """A tensorstore-layout checkpoint whose target is the toy kernel (float64 zarr)."""
  src = shared_data / 't5x/tiny_t5/checkpoint_1'
  ckpt = tmp_path / 'checkpoint_1'
  ckpt.mkdir()
  shutil.copytree(src / 'state.param_states.kernel', ckpt / 'target.dense.kernel')
  index = serialization.msgpack_restore((src / 'checkpoint').read_bytes())
  spec = dict(index['optimizer']['state']['param_states']['kernel'])
  spec['kvstore'] = dict(spec['kvstore'], path='target.dense.kernel/')
  index['optimizer']['target'] = {'dense': {'kernel': spec}}
  (ckpt / 'checkpoint').write_bytes(serialization.msgpack_serialize(index))
  return ckpt, _gunzip_float64(src / 'state.param_states.kernel' / '0.0').reshape(10, 5)


def test_sharded_read(shared_data, tmp_path):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None))
  scalar = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  path = str(shared_data / TINY)
  plain = t5x.read_t5x_checkpoint(path)
  shardings = jax.tree.map(lambda x: sharding if np.ndim(x) == 2 else scalar, plain)
  sharded = t5x.read_t5x_checkpoint(path, shardings=shardings)
  for a, b, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain), jax.tree.leaves(shardings)):
    assert isinstance(a, jax.Array) and a.sharding == s
    np.testing.assert_array_equal(np.asarray(a), b)
  # From tensorstore, through the per-slice callback.
  ckpt, expected = _tensorstore_target_checkpoint(shared_data, tmp_path)
  params = t5x.read_t5x_checkpoint(str(ckpt), shardings={'dense': {'kernel': sharding}})
  kernel = params['dense']['kernel']
  assert isinstance(kernel, jax.Array) and kernel.sharding == sharding
  np.testing.assert_array_equal(np.asarray(kernel), expected.astype(np.float32))


def test_gcs_spec():
  array = t5x.ZarrArray('gs://bucket/model/checkpoint_5',
                        {'driver': 'zarr', 'kvstore': {'driver': 'file',
                                                       'path': 'target.encoder.x.kernel/'}},
                        'encoder/x/kernel')
  assert array.kvstore_spec() == {'driver': 'gcs', 'bucket': 'bucket',
                                  'path': 'model/checkpoint_5/target.encoder.x.kernel/'}


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
  with pytest.raises(jaxpt.CheckpointError, match='missing_file'):
    t5x.read_t5x_checkpoint(str(tmp_path / 'missing_file'))
  # An index entry whose zarr directory is gone.
  ckpt, _ = _tensorstore_target_checkpoint(shared_data, tmp_path)
  shutil.rmtree(ckpt / 'target.dense.kernel')
  with pytest.raises(jaxpt.CheckpointError, match=r'dense/kernel.*target\.dense\.kernel'):
    t5x.read_t5x_checkpoint(str(ckpt))
  # A tree that disagrees with the config inferred from it (layer 1 narrower than layer 0).
  params = serialization.msgpack_restore(data)['optimizer']['target']
  query = params['encoder']['layers_1']['attention']['query']
  query['kernel'] = query['kernel'][:, :6]
  bad = tmp_path / 'bad_shapes'
  t5x.write_t5x_checkpoint(params, str(bad))
  with pytest.raises(jaxpt.CheckpointError,
                     match=r'(?s)bad_shapes.*encoder/layers_1/attention/query/kernel'):
    jaxpt.load_model(bad)
  # Missing key arrays for config inference.
  del params['encoder']['relpos_bias']
  with pytest.raises(jaxpt.CheckpointError, match='encoder/relpos_bias/rel_embedding'):
    t5x.config_from_t5x_params(params, source='somewhere')
