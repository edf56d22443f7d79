"""T5 attention: relative position bias and one multi-head attention that takes
an additive bias, optional key/value prefixes and an autoregressive cache.

Positions are static under `jit`, so bucket indices are computed in numpy at
trace time and only the bias lookup runs on device.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.models.config import T5Config
from jaxpt.models.layers import Dense, normal

Array = jax.Array
# A key/value prefix for one attention: two [batch, prefix_len, heads, head_dim] arrays.
Prefix = Tuple[Array, Array]

NEG_INF = -1e10


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bucketing of `key_position - query_position` (Mesh TF / HF arithmetic)."""
  relative_position = np.asarray(relative_position, dtype=np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  with np.errstate(divide='ignore', invalid='ignore'):
    large = max_exact + (
        np.log(distance.astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """Learned per-head bias indexed by bucketed relative position."""

  config: T5Config
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: np.ndarray, key_positions: np.ndarray) -> Array:
    """Returns the [1, heads, len(query_positions), len(key_positions)] bias."""
    cfg = self.config
    table = self.param(
        'rel_embedding',
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
            ('heads', 'relpos_buckets')),
        (cfg.num_heads, cfg.relative_attention_num_buckets), jnp.dtype(cfg.param_dtype))
    relative = np.asarray(key_positions)[None, :] - np.asarray(query_positions)[:, None]
    buckets = relative_position_bucket(relative, self.bidirectional,
                                       cfg.relative_attention_num_buckets,
                                       cfg.relative_attention_max_distance)
    bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets, jnp.int32), axis=1)
    return bias[None]


class MultiHeadAttention(nn.Module):
  """Multi-head attention with T5's unscaled dot products.

  Attributes:
    config: the model config.
    deterministic: disables attention dropout.
    decode: autoregressive mode; keys and values of past steps live in the
      'cache' collection. The first (initializing) call sees the full target
      length, later calls one token each.
  """

  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array,
               prefix: Optional[Prefix] = None) -> Array:
    """Attends from `inputs_q` to `[prefix; inputs_kv]`.

    Args:
      inputs_q: [batch, q_len, emb].
      inputs_kv: [batch, kv_len, emb].
      bias: additive float32 bias broadcastable to
        [batch, heads, q_len, prefix_len + kv_len] (position bias and masks).
        In decode mode it spans the whole cache: [.., max_len, prefix_len + max_len].
      prefix: optional key/value prefix, each [batch, prefix_len, heads, head_dim].
    """
    cfg = self.config
    heads, head_dim = cfg.num_heads, cfg.head_dim
    joined = heads * head_dim

    def project(name, x, stddev):
      y = Dense(joined, ('embed', 'joined_kv'), normal(stddev), cfg, name=name)(x)
      y = y.reshape(y.shape[:2] + (heads, head_dim))
      return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

    query = project('query', inputs_q, (cfg.emb_dim * head_dim) ** -0.5)
    key = project('key', inputs_kv, cfg.emb_dim ** -0.5)
    value = project('value', inputs_kv, cfg.emb_dim ** -0.5)

    if self.decode:
      key, value, bias = self._update_cache(key, value, bias)

    if prefix is not None:
      prefix_key, prefix_value = prefix
      batch = key.shape[0]
      prefix_key = jnp.broadcast_to(prefix_key, (batch,) + prefix_key.shape[1:])
      prefix_value = jnp.broadcast_to(prefix_value, (batch,) + prefix_value.shape[1:])
      key = jnp.concatenate([prefix_key.astype(key.dtype), key], axis=1)
      value = jnp.concatenate([prefix_value.astype(value.dtype), value], axis=1)

    scores = jnp.einsum('bqhd,bkhd->bhqk', query, key, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(cfg.compute_dtype)
    probs = nn.Dropout(cfg.dropout_rate)(probs, deterministic=self.deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, value)
    out = out.reshape(out.shape[:2] + (joined,))
    return Dense(cfg.emb_dim, ('joined_kv', 'embed'), normal(joined ** -0.5), cfg,
                 name='out')(out)

  def _update_cache(self, key: Array, value: Array, bias: Array):
    initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialized:
      return key, value, bias
    if key.shape[1] != 1:
      raise ValueError(f'decode mode takes one token per step, got length {key.shape[1]}')
    index = cache_index.value
    key = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
    value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + 1
    bias = jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=2)
    return key, value, bias
