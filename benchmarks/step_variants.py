"""Variants of the jaxpt training step, for A/B timing in one run (prompt_tuning_step.py).

Each entry of VARIANTS is a context manager factory that patches the library while the step
is traced; the compiled step keeps the variant after the patch is undone. They exist to
measure a candidate change against the library's current code in the same interleaved run.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


VARIANTS: Dict[str, Callable[[], contextlib.AbstractContextManager]] = {}  # filled below

# XLA_FLAGS sets for `NAME@SET` configs (each runs in its own process). jax 0.10's XLA:CPU
# runs dots through YNNPACK fusions by default; an empty fusion type falls back to Eigen.
XLA_FLAG_SETS: Dict[str, str] = {
    'default': '',
    'eigen_dot': '--xla_cpu_experimental_ynn_fusion_type=',
    'onednn': '--xla_cpu_use_onednn=true',
    'no_thunks': '--xla_cpu_use_thunk_runtime=false',
    'single_thread_eigen': '--xla_cpu_multi_thread_eigen=false',
}


def _attention_class(core):
  """A MultiHeadAttention subclass whose scores/softmax/values part is `core(query, key,
  value, bias, cfg) -> [batch, q_len, heads, head_dim]` (no dropout: benchmarks run at 0);
  same parameters, same names."""
  import flax.linen as nn
  import jax.numpy as jnp

  from jaxpt.models.attention import MultiHeadAttention
  from jaxpt.models.layers import Dense, normal

  def call(self, inputs_q, inputs_kv, bias, prefix=None):
    cfg = self.config
    heads, head_dim = cfg.num_heads, cfg.head_dim
    joined = heads * head_dim

    def project(name, x, stddev):
      y = Dense(joined, ('embed', 'joined_kv'), normal(stddev), cfg, name=name)(x)
      return y.reshape(y.shape[:2] + (heads, head_dim))

    query = project('query', inputs_q, (cfg.emb_dim * head_dim) ** -0.5)
    key = project('key', inputs_kv, cfg.emb_dim ** -0.5)
    value = project('value', inputs_kv, cfg.emb_dim ** -0.5)
    if self.decode:
      key, value, bias = self._update_cache(key, value, bias)
    if prefix is not None:
      batch = key.shape[0]
      pk, pv = (jnp.broadcast_to(p, (batch,) + p.shape[1:]) for p in prefix)
      key = jnp.concatenate([pk.astype(key.dtype), key], axis=1)
      value = jnp.concatenate([pv.astype(value.dtype), value], axis=1)
    out = core(query, key, value, bias, cfg)
    out = out.reshape(out.shape[:2] + (joined,))
    return Dense(cfg.emb_dim, ('joined_kv', 'embed'), normal(joined ** -0.5), cfg,
                 name='out')(out)

  return type('MultiHeadAttention', (MultiHeadAttention,), {'__call__': nn.compact(call)})


def _dpa_core(query, key, value, bias, cfg):
  """jax.nn.dot_product_attention (XLA implementation), T5's unscaled scores, float32 bias."""
  import jax
  import jax.numpy as jnp
  batch, heads = query.shape[0], query.shape[2]
  bias = jnp.broadcast_to(bias, (bias.shape[0], heads) + bias.shape[2:])
  if bias.shape[0] not in (1, batch):
    raise ValueError(f'bias batch {bias.shape[0]} vs {batch}')
  return jax.nn.dot_product_attention(query, key, value, bias=bias.astype(query.dtype),
                                      scale=1.0, implementation='xla')


def _heads_major_core(query, key, value, bias, cfg):
  """Scores and outputs with heads-major operands ([b, h, len, d]): the transposes are
  explicit, so XLA places them once per operand."""
  import jax
  import jax.numpy as jnp
  q, k, v = (jnp.transpose(x, (0, 2, 1, 3)) for x in (query, key, value))
  scores = jnp.einsum('bhqd,bhkd->bhqk', q, k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(scores + bias, axis=-1).astype(cfg.compute_dtype)
  out = jnp.einsum('bhqk,bhkd->bhqd', probs, v)
  return jnp.transpose(out, (0, 2, 1, 3))


def _attention_variant(core):
  def factory():
    from jaxpt.models import t5
    return _patched(t5, 'MultiHeadAttention', _attention_class(core))
  return factory


VARIANTS.update({
    'dot_product_attention': _attention_variant(_dpa_core),
    'heads_major': _attention_variant(_heads_major_core),
})
