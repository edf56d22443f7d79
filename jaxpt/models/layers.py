"""Small building blocks of T5 and the decoder-only models: dense, embedding, RMSNorm,
LayerNorm and the MLP.

Every parameter carries T5X logical axis names through
`nn.with_logical_partitioning`; `jaxpt.partitioning` maps them to a mesh.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpt.models.config import T5Config

Array = jax.Array
Initializer = Callable[..., Array]


def normal(stddev: float) -> Initializer:
  return nn.initializers.normal(stddev=stddev)


class Dense(nn.Module):
  """A dense layer with a 2-D `[in, out]` kernel, as in T5X; bias-free unless `use_bias`
  (GPT-2, Qwen2), the bias on the output axis."""

  features: int
  kernel_axes: Tuple[str, str]
  kernel_init: Initializer
  config: T5Config
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        (x.shape[-1], self.features), jnp.dtype(self.config.param_dtype))
    dtype = self.config.compute_dtype
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                             self.kernel_axes[-1:]),
                        (self.features,), jnp.dtype(self.config.param_dtype))
      y = y + bias.astype(dtype)
    return y


class Embed(nn.Module):
  """Token embedding; `attend` gives tied logits."""

  config: T5Config
  init_stddev: float = 1.0  # T5X's; transformers' GPT-2 / Llama use 0.02

  def setup(self):
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(normal(self.init_stddev), ('vocab', 'embed')),
        (self.config.vocab_size, self.config.emb_dim), jnp.dtype(self.config.param_dtype))

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(self.config.compute_dtype)

  def attend(self, x: Array) -> Array:
    dtype = self.config.compute_dtype
    return jnp.dot(x.astype(dtype), self.embedding.astype(dtype).T)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, computed in float32."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (x.shape[-1],), jnp.dtype(self.config.param_dtype))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
                              + self.config.layer_norm_epsilon)
    return (x32 * scale.astype(jnp.float32)).astype(self.config.compute_dtype)


class LayerNorm(nn.Module):
  """GPT-2's layer norm: mean and variance, scale and bias, computed in float32."""

  config: T5Config

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dim, dtype = x.shape[-1], jnp.dtype(self.config.param_dtype)
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (dim,), dtype)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      (dim,), dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    x32 = (x32 - mean) * jax.lax.rsqrt(var + self.config.layer_norm_epsilon)
    return (x32 * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(
        self.config.compute_dtype)


def activation(name: str) -> Callable[[Array], Array]:
  """T5 activation by name; 'gelu' is the tanh approximation (HF 'gelu_new')."""
  return {
      'relu': jax.nn.relu,
      'gelu': lambda x: jax.nn.gelu(x, approximate=True),
      'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
      'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
      'silu': jax.nn.silu,
      'linear': lambda x: x,
  }[name]


class MLP(nn.Module):
  """T5 feed-forward: `wo(act(wi x))`, or gated `wo(act0(wi_0 x) * act1(wi_1 x))`."""

  config: T5Config
  deterministic: bool = True
  use_bias: bool = False  # GPT-2

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    acts: Sequence[str] = cfg.mlp_activations
    hidden = None
    for i, act in enumerate(acts):
      name = 'wi' if len(acts) == 1 else f'wi_{i}'
      h = activation(act)(Dense(cfg.mlp_dim, ('embed', 'mlp'), normal(cfg.emb_dim ** -0.5),
                                cfg, self.use_bias, name=name)(x))
      hidden = h if hidden is None else hidden * h
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
    return Dense(cfg.emb_dim, ('mlp', 'embed'), normal(cfg.mlp_dim ** -0.5), cfg, self.use_bias,
                 name='wo')(hidden)


def remat_layer(cls: Any, config: Any) -> Any:
  """`cls` under `config.remat_policy` ('none', 'full', or 'minimal': keep the dots without
  batch dims), for T5 and decoder-only layer stacks alike."""
  if config.remat_policy == 'none':
    return cls
  policy = (None if config.remat_policy == 'full'
            else jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims)
  return nn.remat(cls, policy=policy, prevent_cse=not config.scan_layers)
