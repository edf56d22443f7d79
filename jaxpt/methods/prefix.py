"""Prefix tuning (Li & Liang 2021): trainable keys and values in attention layers.

`style='paper'` puts a prefix in every attention (`config.prefix_kinds`: T5's
encoder self, decoder self and decoder cross; a decoder-only model's
self-attention, `num_kv_heads` heads under grouped-query attention), each kind
with its own reparameterization: a [P, d] embedding through Linear -> tanh -> Linear (mid width 512) to all layers' keys and values.
Prefix keys carry no relative position (bias 0).

`style='peft'` is Hugging Face peft's variant, kept for interop: one [P, 2L*H*Dh]
tensor, prefix keys at positions before the sequence (tokens start at P). On T5
L = encoder depth and only decoder self-attention reads it, decoder layer i
reading layer slot (2i mod L); on a decoder-only model (GPT-2, Llama) layer i
reads slot i and H = num_kv_heads (peft's grouped-query token_dim). Its
reparameterization is peft's: Embedding(P, H*Dh) -> Linear -> tanh -> Linear.

Either way a stored prefix row is laid out [layers, 2 (key, value), heads,
head_dim], peft's layout; `merge` replaces the MLP by its output.

Deep prompt tuning (P-tuning v2, Liu et al. 2022) is `style='paper'` without the
reparameterization: `deep_prompt_tuning(length)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxpt.methods.interface import Backbone, SoftInputs
from jaxpt.models.config import T5Config

Array = jax.Array
STYLES = ('paper', 'peft')


def linear_init(rng: Array, fan_in: int, fan_out: int) -> Dict[str, Array]:
  """torch.nn.Linear's default init (kernel [in, out]), so peft-style starts alike."""
  k1, k2 = jax.random.split(rng)
  bound = 1.0 / math.sqrt(fan_in)
  return {'kernel': jax.random.uniform(k1, (fan_in, fan_out), jnp.float32, -bound, bound),
          'bias': jax.random.uniform(k2, (fan_out,), jnp.float32, -bound, bound)}


def reparameterize(params: Dict[str, Any]) -> Array:
  """embedding [P, e] -> tanh MLP -> [P, F] (the paper's MLP reparameterization)."""
  h = jnp.tanh(params['embedding'] @ params['hidden']['kernel'] + params['hidden']['bias'])
  return h @ params['output']['kernel'] + params['output']['bias']


@dataclasses.dataclass(frozen=True)
class PrefixTuning:
  """Trainable key/value prefixes of `length` positions.

  Attributes:
    length: prefix positions per attention.
    style: 'paper' (every attention) or 'peft' (peft's variant: decoder
      self-attention only, tokens positioned after the prefix).
    reparameterize: train through the MLP (the paper's recipe); `merge` folds it.
    hidden_dim: the MLP's mid width (512 in the paper).
    num_prompts: prefixes kept side by side (mixed-task batches).
  """

  length: int = 10
  style: str = 'paper'
  reparameterize: bool = True
  hidden_dim: int = 512
  num_prompts: int = 1
  name: str = 'prefix_tuning'

  def __post_init__(self):
    if self.length <= 0:
      raise ValueError(f'prefix length must be positive, got {self.length}')
    if self.style not in STYLES:
      raise ValueError(f'unknown prefix style {self.style!r}; expected one of {STYLES}')
    if self.num_prompts <= 0:
      raise ValueError(f'num_prompts must be positive, got {self.num_prompts}')

  prompt_length = 0
  places_prompt = False
  has_prompt_vectors = False

  @property
  def prefix_position(self) -> str:
    return 'offset' if self.style == 'peft' else 'none'

  def kinds(self, config: T5Config) -> Dict[str, int]:
    """Attention kind -> number of layer slots it stores."""
    if self.style == 'peft':
      if not config.is_encoder_decoder:
        return dict(config.prefix_kinds)  # every layer's self-attention, as 'paper'
      if config.num_decoder_layers > config.num_encoder_layers:
        raise ValueError(
            f"peft-style prefixes need num_decoder_layers <= num_encoder_layers (peft's layout "
            f'has encoder-depth slots); got {config.num_encoder_layers}+'
            f'{config.num_decoder_layers}')
      return {'decoder_self': config.num_encoder_layers}
    return dict(config.prefix_kinds)

  def _init_one(self, rng: Array, config: T5Config) -> Dict[str, Any]:
    token_dim = config.num_kv_heads * config.head_dim
    params = {}
    for kind, layers in self.kinds(config).items():
      rng, k_emb, k_hidden, k_out = jax.random.split(rng, 4)
      width = layers * 2 * token_dim
      if not self.reparameterize:
        params[kind] = {'prefix': jax.random.normal(k_emb, (self.length, width), jnp.float32)}
        continue
      emb_dim = token_dim if self.style == 'peft' else config.emb_dim
      params[kind] = {
          'embedding': jax.random.normal(k_emb, (self.length, emb_dim), jnp.float32),
          'hidden': linear_init(k_hidden, emb_dim, self.hidden_dim),
          'output': linear_init(k_out, self.hidden_dim, width),
      }
    return params

  def init(self, rng: Array, backbone: Backbone) -> Dict[str, Any]:
    if self.num_prompts == 1:
      return self._init_one(rng, backbone.config)
    trees = [self._init_one(k, backbone.config) for k in jax.random.split(rng, self.num_prompts)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

  def flat_prefixes(self, params: Dict[str, Any]) -> Dict[str, Array]:
    """Attention kind -> [(num_prompts,) P, layers * 2 * heads * head_dim]."""
    out = {}
    for kind, p in params.items():
      if 'prefix' in p:
        out[kind] = p['prefix']
      elif p['embedding'].ndim == 3:
        out[kind] = jax.vmap(reparameterize)(p)
      else:
        out[kind] = reparameterize(p)
    return out

  def task_prompts(self, params: Dict[str, Any]) -> Array:
    raise ValueError('prefix_tuning keeps keys and values, not prompt vectors')

  def merge(self, params: Dict[str, Any]) -> Dict[str, Any]:
    return {kind: {'prefix': flat} for kind, flat in self.flat_prefixes(params).items()}

  def soft_inputs(self, params: Dict[str, Any], config: T5Config, batch_size: int,
                  task_ids: Optional[Array] = None) -> SoftInputs:
    prefixes = {}
    for kind, flat in self.flat_prefixes(params).items():
      if flat.ndim == 3:
        if task_ids is None:
          raise ValueError(f'{flat.shape[0]} prefixes are kept: each example needs a task id')
        flat = jnp.take(flat, task_ids, axis=0)  # [B, P, F]
      else:
        flat = jnp.broadcast_to(flat, (batch_size,) + flat.shape)
      prefixes[kind] = self._to_keys_values(kind, flat, config)
    return SoftInputs(prefixes=prefixes, prefix_position=self.prefix_position)

  def _to_keys_values(self, kind: str, flat: Array,
                      config: T5Config) -> Tuple[Array, Array]:
    """[B, P, L*2*H*D] -> (keys, values), each [layers, B, P, H, D]."""
    b, p, width = flat.shape
    slots = width // (2 * config.num_kv_heads * config.head_dim)
    kv = flat.reshape(b, p, slots, 2, config.num_kv_heads, config.head_dim)
    if self.style == 'peft' and kind == 'decoder_self' and config.is_encoder_decoder:
      # peft's EncoderDecoderCache split: decoder layer i reads layer slot (2i mod L).
      kv = kv[:, :, [(2 * i) % slots for i in range(config.num_decoder_layers)]]
    kv = jnp.transpose(kv, (2, 3, 0, 1, 4, 5))  # [L, 2, B, P, H, D]
    return kv[:, 0], kv[:, 1]


def deep_prompt_tuning(length: int = 20, num_prompts: int = 1) -> PrefixTuning:
  """P-tuning v2 (Liu et al. 2022): trainable prompts in every layer.

  That is prefix tuning in every attention with no reparameterization, so this
  returns exactly `PrefixTuning(length, style='paper', reparameterize=False)`.
  """
  return PrefixTuning(length=length, style='paper', reparameterize=False,
                      num_prompts=num_prompts)
