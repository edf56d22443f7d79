"""The Flax T5 backbone: position buckets, scan/remat, dtypes, padding, presets, axes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpt
from jaxpt.models.attention import relative_position_bucket
from jaxpt.models.config import T5Config, preset, preset_names
from jaxpt.models.scan import stack_layers, unstack_layers
from jaxpt.models.t5 import T5, abstract_params, init_params, logical_axes
from tests.tiny_configs import DEEP_DECODER_CONFIG, PER_LAYER_BIAS_CONFIG


def _batch(vocab, seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, (3, 9)).astype(np.int32)
  enc[0, 6:] = 0
  enc[2, 2:] = 0
  dec = rng.randint(2, vocab, (3, 5)).astype(np.int32)
  dec[:, 0] = 0
  return enc, dec


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 20)])
def test_relative_position_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
  torch = pytest.importorskip('torch')
  from transformers.models.t5.modeling_t5 import T5Attention
  relative = np.arange(-400, 401)[None, :] - np.zeros((1, 1), np.int64)
  ours = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
  ref = T5Attention._relative_position_bucket(
      torch.tensor(relative), bidirectional=bidirectional, num_buckets=num_buckets,
      max_distance=max_distance).numpy()
  np.testing.assert_array_equal(ours, ref)


@pytest.fixture(scope='module')
def tiny():
  return DEEP_DECODER_CONFIG, init_params(DEEP_DECODER_CONFIG, jax.random.key(0))


@pytest.mark.parametrize('policy', ['none', 'full', 'minimal'])
def test_scan_and_remat_equal_unscanned(tiny, policy):
  config, params = tiny
  enc, dec = _batch(config.vocab_size)

  def loss(cfg, p):
    return jnp.sum(T5(cfg).apply({'params': p}, enc, dec) ** 2)

  ref_loss, ref_grad = jax.jit(jax.value_and_grad(lambda p: loss(config, p)))(params)
  scanned = config.replace(scan_layers=True, remat_policy=policy)
  got_loss, got_grad = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(
      stack_layers(params))
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(unstack_layers(got_grad)), jax.tree.leaves(ref_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_stack_unstack_round_trip(tiny):
  config, params = tiny
  stacked = stack_layers(params)
  assert stacked['encoder']['layers']['attention']['query']['kernel'].shape == (2, 8, 12)
  assert jax.tree.structure(unstack_layers(stacked)) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(unstack_layers(stacked)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_every_parameter_has_logical_axes(tiny):
  config, _ = tiny
  for cfg in (config, config.replace(scan_layers=True)):
    shapes = abstract_params(cfg)
    axes = logical_axes(cfg)
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree.leaves(shapes)
    assert len(flat_axes) == len(flat_shapes)
    for spec, shape in zip(flat_axes, flat_shapes):
      assert len(spec) == len(shape.shape), (spec, shape.shape)
      assert all(isinstance(name, str) for name in spec)
  scanned = logical_axes(config.replace(scan_layers=True))
  assert tuple(scanned['encoder']['layers']['attention']['query']['kernel']) == (
      'layers', 'embed', 'joined_kv')
  assert tuple(logical_axes(config)['decoder']['logits_dense']['kernel']) == ('embed', 'vocab')
  assert tuple(logical_axes(config)['token_embedder']['embedding']) == ('vocab', 'embed')


def test_padding_does_not_change_logits(tiny):
  config, params = tiny
  model = jaxpt.Model(config, params)
  enc, dec = _batch(config.vocab_size)
  padded = np.concatenate([enc, np.zeros((3, 5), np.int32)], axis=1)
  np.testing.assert_allclose(model.logits(padded, dec), model.logits(enc, dec), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params(tiny):
  config, params = tiny
  enc, dec = _batch(config.vocab_size)
  ref = jaxpt.Model(config, params).logits(enc, dec)
  bf16 = jaxpt.Model(config.replace(dtype='bfloat16'), params)
  got = bf16.logits(enc, dec)
  assert got.dtype == np.float32
  assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
  assert not np.array_equal(got, ref)  # bf16 compute really ran
  init = init_params(config.replace(dtype='bfloat16'), jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init))


def test_dropout_is_active_only_in_training(tiny):
  config, params = tiny
  cfg = config.replace(dropout_rate=0.5)
  enc, dec = _batch(config.vocab_size)
  train = jax.jit(lambda key: T5(cfg).apply({'params': params}, enc, dec, deterministic=False,
                                            rngs={'dropout': key}))
  a, b = train(jax.random.key(1)), train(jax.random.key(2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, train(jax.random.key(1)))  # explicit keys: reproducible
  c = jaxpt.Model(cfg, params).logits(enc, dec)
  np.testing.assert_allclose(c, jaxpt.Model(config, params).logits(enc, dec), atol=1e-6)


def test_per_layer_position_bias_parameters():
  shapes = abstract_params(PER_LAYER_BIAS_CONFIG)
  assert 'relpos_bias' not in shapes['encoder']
  assert shapes['encoder']['layers_1']['relpos_bias']['rel_embedding'].shape == (4, 32)
  assert shapes['decoder']['layers_0']['relpos_bias']['rel_embedding'].shape == (4, 32)


# Parameter counts of the public checkpoints (transformers' num_parameters()).
PUBLIC_COUNTS = {
    ('t5_1_0', 'small'): 60_506_624,
    ('t5_1_0', 'base'): 222_903_552,
    ('t5_1_0', 'large'): 737_668_096,
    ('t5_1_1', 'small'): 76_961_152,
    ('t5_1_1', 'base'): 247_577_856,
    ('t5_1_1', 'xxl'): 11_135_332_352,
    ('mt5', 'small'): 300_176_768,
}


@pytest.mark.parametrize('family,size', sorted(PUBLIC_COUNTS))
def test_presets_have_public_parameter_counts(family, size):
  shapes = abstract_params(preset(family, size))
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert count == PUBLIC_COUNTS[(family, size)]


def test_every_family_has_every_size():
  families = {f for f, _ in preset_names()}
  assert families == {'t5_1_0', 't5_1_1', 'lm_adapt', 'flan_t5', 'mt5'}
  for family in families:
    for size in ('tiny', 'small', 'base', 'large', 'xl', 'xxl'):
      assert preset(family, size).emb_dim > 0
  assert preset('t5_1_0', 'xxl') == preset('t5_1_0', '11b')
  assert preset('mt5', 'xxl').vocab_size == 250112


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match='mlp_activations|activation'):
    T5Config(mlp_activations=('swish2',))
  with pytest.raises(ValueError, match='emb_dim'):
    T5Config(emb_dim=0)
  with pytest.raises(ValueError, match='remat_policy'):
    T5Config(remat_policy='some')
  with pytest.raises(ValueError, match='unknown T5 family'):
    preset('t6', 'small')
  with pytest.raises(ValueError, match='unknown size'):
    preset('t5_1_1', 'huge')
  with pytest.raises(ValueError, match='unknown T5Config fields'):
    T5Config.from_dict({'d_model': 3})
  cfg = preset('t5_1_1', 'tiny')
  assert T5Config.from_dict(cfg.to_dict()) == cfg


def test_model_rejects_bad_tokens(tiny):
  config, params = tiny
  model = jaxpt.Model(config, params)
  enc, dec = _batch(config.vocab_size)
  with pytest.raises(ValueError, match='2-D'):
    model.logits(enc[0], dec)
  with pytest.raises(ValueError, match='outside'):
    model.logits(enc + 100, dec)
  with pytest.raises(ValueError, match='integer'):
    model.logits(enc.astype(np.float32), dec)
  with pytest.raises(ValueError, match='batch sizes differ'):
    model.logits(enc, dec[:2])
