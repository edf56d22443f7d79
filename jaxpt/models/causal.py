"""Decoder-only causal LMs (GPT-2, the Llama architecture) as pure-functional Flax.

One module, `CausalLM`, for both families (`DecoderConfig.family`). Parameter
names follow the T5 decoder's where the role is the same (`token_embedder`,
`decoder/layers_i/self_attention/{query,key,value,out}`, `mlp/wi_0|wi_1|wi|wo`,
`decoder_norm`, `logits_dense`), each with T5X logical axis names, so
`jaxpt.partitioning`, `jaxpt.models.scan` and the loaders treat them alike.
GPT-2 adds `position_embedder` [max_positions, d] ('abspos_buckets', 'embed') and
`bias` leaves beside kernels and norm scales.

Positions and masks. A row is `[soft prompt (P); tokens (L)]`; `valid` marks
real tokens (padding anywhere, left or right, is masked out as a key). Each
position is the number of valid positions before it, so soft prompt rows take
positions 0..P-1 and the first real token P, whatever the padding: left- and
right-padded rows give the same per-token results. The soft prompt goes before
everything the caller passes, BOS included (as peft does). A `PlacedPrompt`
(P-tuning templates) adds no rows: its vectors replace the tokens marked
`prompt_marker(k)` (negative ids, valid like real tokens), so a placed vector
takes the position of the token it stands in for (GPT-2: that row of the
learned table is added to it; Llama: its query/key are rotated by it) and
attends / is attended to causally like that token. Prefix keys/values
(prefix tuning) take no position: they enter attention as given (no RoPE), and
tokens start at position 0 (`prefix_position='offset'`: at P, as
transformers' `past_key_values`).

Cached decoding: a `KVCache` holds every layer's keys/values for S slots; a
call with a cache writes its n new positions at `cache.index` and attends to
every valid slot up to each query's own. Prefixes are written into the first
slots once (`init_cache`), never re-sent per step.
"""

from __future__ import annotations

import functools
from typing import Dict, NamedTuple, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.models.attention import NEG_INF
from jaxpt.models.decoder_config import DecoderConfig
from jaxpt.models.layers import (MLP, Dense, Embed, LayerNorm, RMSNorm, normal,
                                 remat_layer)
from jaxpt.models.t5 import PlacedPrompt, place_prompt

Array = jax.Array
# Stacked per-layer keys and values, each [layers, batch (or 1), prefix_len, kv_heads, head_dim].
Prefix = Tuple[Array, Array]
PREFIX_POSITIONS = ('none', 'offset')


class KVCache(NamedTuple):
  """Keys/values of every layer for `S` slots, and where the next call writes.

  keys, values: [layers, batch, S, kv_heads, head_dim].
  valid: [batch, S] slots holding a real key (prefix or valid token).
  index: int32 scalar, the next slot to write.
  position: int32 [batch], the position of each row's next valid token.
  """
  keys: Array
  values: Array
  valid: Array
  index: Array
  position: Array


class Output(NamedTuple):
  """logits [batch, P + L, vocab] (float32), hidden [batch, P + L, d] after the final
  norm, valid [batch, P + L], and the updated cache (None without one)."""
  logits: Array
  hidden: Array
  valid: Array
  cache: Optional[KVCache]


def init_cache(config: DecoderConfig, batch: int, length: int,
               prefix: Optional[Prefix] = None, prefix_position: str = 'none') -> KVCache:
  """An empty cache of `length` slots after an optional prefix (written in slots 0..P-1)."""
  p = 0 if prefix is None else prefix[0].shape[2]
  shape = (config.num_layers, batch, p + length, config.num_kv_heads, config.head_dim)
  keys = jnp.zeros(shape, config.compute_dtype)
  values = jnp.zeros(shape, config.compute_dtype)
  if prefix is not None:
    pk = jnp.broadcast_to(prefix[0], shape[:2] + prefix[0].shape[2:]).astype(keys.dtype)
    pv = jnp.broadcast_to(prefix[1], shape[:2] + prefix[1].shape[2:]).astype(keys.dtype)
    keys = keys.at[:, :, :p].set(pk)
    values = values.at[:, :, :p].set(pv)
  valid = jnp.zeros((batch, p + length), bool).at[:, :p].set(True)
  start = p if prefix_position == 'offset' else 0
  return KVCache(keys, values, valid, jnp.array(p, jnp.int32),
                 jnp.full((batch,), start, jnp.int32))


def take_rows(cache: KVCache, rows: Array) -> KVCache:
  """The cache whose batch row i is `cache`'s row `rows[i]` (repeats rows to beams, or
  follows beam search's chosen parents); `rows` may be longer than the batch."""
  return KVCache(jnp.take(cache.keys, rows, axis=1), jnp.take(cache.values, rows, axis=1),
                 jnp.take(cache.valid, rows, axis=0), cache.index,
                 jnp.take(cache.position, rows, axis=0))


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding of x [B, L, heads, D] at positions [B, L] (transformers' half split)."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float32) / d))
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, L, D/2]
  cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., d // 2:], x32[..., :d // 2]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class CausalAttention(nn.Module):
  """Scaled dot-product attention with grouped-query heads, RoPE (llama), a prefix or a cache."""

  config: DecoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, prefix: Optional[Prefix],
               cache: Optional[Prefix], cache_index: Optional[Array]
               ) -> Tuple[Array, Optional[Prefix]]:
    """Returns (output [B, n, d], updated (keys, values) when `cache` is given).

    mask: bool [B, 1, n, keys]: keys are `[prefix; x]`, or the cache's slots.
    prefix: (keys, values) [B or 1, P, kv_heads, D]; cache: [B, S, kv_heads, D] each.
    """
    cfg = self.config
    heads, kv_heads, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def project(name, n):
      y = Dense(n * d, ('embed', 'joined_kv'), normal(cfg.emb_dim ** -0.5), cfg,
                cfg.attention_bias, name=name)(x)
      y = y.reshape(y.shape[:2] + (n, d))
      return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

    query, key, value = project('query', heads), project('key', kv_heads), project('value', kv_heads)
    if cfg.family == 'llama':
      query, key = rope(query, positions, cfg.rope_theta), rope(key, positions, cfg.rope_theta)
    new_cache = None
    if cache is not None:
      key = jax.lax.dynamic_update_slice(cache[0], key.astype(cache[0].dtype),
                                         (0, cache_index, 0, 0))
      value = jax.lax.dynamic_update_slice(cache[1], value.astype(cache[1].dtype),
                                           (0, cache_index, 0, 0))
      new_cache = (key, value)
    elif prefix is not None:
      batch = key.shape[0]
      pk = jnp.broadcast_to(prefix[0], (batch,) + prefix[0].shape[1:]).astype(key.dtype)
      pv = jnp.broadcast_to(prefix[1], (batch,) + prefix[1].shape[1:]).astype(value.dtype)
      key, value = jnp.concatenate([pk, key], 1), jnp.concatenate([pv, value], 1)

    b, n = query.shape[:2]
    query = query.reshape(b, n, kv_heads, heads // kv_heads, d)
    scores = jnp.einsum('bqhgd,bkhd->bhgqk', query, key,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    scores = jnp.where(mask[:, :, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
    probs = nn.Dropout(cfg.dropout_rate)(probs, deterministic=self.deterministic)
    out = jnp.einsum('bhgqk,bkhd->bqhgd', probs, value.astype(cfg.compute_dtype))
    out = out.reshape(b, n, heads * d)
    out = Dense(cfg.emb_dim, ('joined_kv', 'embed'), normal((heads * d) ** -0.5), cfg,
                cfg.attention_out_bias, name='out')(out)
    return out, new_cache


def _norm(cfg: DecoderConfig, name: str) -> nn.Module:
  return LayerNorm(cfg, name=name) if cfg.family == 'gpt2' else RMSNorm(cfg, name=name)


class CausalLayer(nn.Module):
  """Pre-norm self-attention and MLP, each with a residual."""

  config: DecoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, cache_index: Optional[Array],
               prefix: Optional[Prefix], cache: Optional[Prefix]
               ) -> Tuple[Array, Optional[Prefix]]:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    h = _norm(cfg, 'pre_self_attention_layer_norm')(x)
    h, new_cache = CausalAttention(cfg, self.deterministic, name='self_attention')(
        h, positions, mask, prefix, cache, cache_index)
    x = x + drop(h, deterministic=self.deterministic)
    h = _norm(cfg, 'pre_mlp_layer_norm')(x)
    h = MLP(cfg, self.deterministic, cfg.dense_bias, name='mlp')(h)
    x = x + drop(h, deterministic=self.deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return x, new_cache


class Decoder(nn.Module):
  """The layer stack (`layers_i`, or one scanned `layers`), final norm and logits."""

  config: DecoderConfig
  token_embedder: nn.Module
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, cache_index: Optional[Array],
               prefix: Optional[Prefix], cache: Optional[Prefix]
               ) -> Tuple[Array, Array, Optional[Prefix]]:
    cfg = self.config
    cls = remat_layer(CausalLayer, cfg)
    if cfg.scan_layers:
      in_axes = (nn.broadcast, nn.broadcast, nn.broadcast,
                 nn.broadcast if prefix is None else 0, nn.broadcast if cache is None else 0)
      stack = nn.scan(cls, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                     'dropout': True},
                      in_axes=in_axes, length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x, new_cache = stack(cfg, self.deterministic, name='layers')(
          x, positions, mask, cache_index, prefix, cache)
    else:
      outs = []
      for i in range(cfg.num_layers):
        pick = lambda t, i=i: None if t is None else (t[0][i], t[1][i])
        x, c = cls(cfg, self.deterministic, name=f'layers_{i}')(
            x, positions, mask, cache_index, pick(prefix), pick(cache))
        outs.append(c)
      new_cache = None
      if cache is not None:
        new_cache = (jnp.stack([c[0] for c in outs]), jnp.stack([c[1] for c in outs]))
    hidden = _norm(cfg, 'decoder_norm')(x)
    y = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
    if cfg.tie_embeddings:
      logits = self.token_embedder.attend(y)
    else:
      logits = Dense(cfg.vocab_size, ('embed', 'vocab'), normal(cfg.emb_dim ** -0.5), cfg,
                     name='logits_dense')(y)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return logits.astype(jnp.float32), hidden, new_cache


def token_positions(valid: Array, start: Array) -> Array:
  """Position of each entry: `start` [B] + the number of valid entries before it."""
  before = jnp.cumsum(valid.astype(jnp.int32), axis=1) - valid.astype(jnp.int32)
  return start[:, None] + before


class CausalLM(nn.Module):
  """GPT-2 / Llama with an optional soft prompt, prefix or KV cache (see the module doc)."""

  config: DecoderConfig
  prefix_position: str = 'none'

  @nn.compact
  def __call__(self, tokens: Array, valid: Array,
               prompt: Union[None, Array, PlacedPrompt] = None,
               prefix: Optional[Prefix] = None, cache: Optional[KVCache] = None,
               deterministic: bool = True) -> Output:
    """Logits of `[prompt; tokens]` (see `Output`).

    Args:
      tokens: int [B, L]; valid: bool [B, L] (False: padding, masked as a key).
        With a `PlacedPrompt`, ids -(k + 1) mark where its row k goes (valid).
      prompt: soft prompt [P, d] or [B, P, d], before the tokens; or a
        `PlacedPrompt`, whose rows replace the marked tokens (no extra rows).
      prefix: stacked per-layer (keys, values) [layers, B or 1, P, kv_heads, D];
        not with `cache` (`init_cache` holds it then).
      cache: a `KVCache`; the new positions are written at `cache.index`.
    """
    cfg = self.config
    if self.prefix_position not in PREFIX_POSITIONS:
      raise ValueError(f'prefix_position must be one of {PREFIX_POSITIONS}, '
                       f'got {self.prefix_position!r}')
    if prefix is not None and cache is not None:
      raise ValueError('a cached call takes its prefix from init_cache, not `prefix`')
    embedder = Embed(cfg, 0.02, name='token_embedder')  # transformers' initializer_range
    valid = valid.astype(bool)
    if isinstance(prompt, PlacedPrompt):
      x = place_prompt(embedder(jnp.maximum(tokens, 0)), tokens, prompt.vectors,
                       prompt.task_ids)
      prompt = None
    else:
      x = embedder(tokens)
    if prompt is not None:
      prompt = jnp.broadcast_to(prompt, (tokens.shape[0],) + prompt.shape[-2:]).astype(x.dtype)
      x = jnp.concatenate([prompt, x], axis=1)
      valid = jnp.concatenate([jnp.ones(prompt.shape[:2], bool), valid], axis=1)
    b, n = valid.shape
    if cache is None:
      p = 0 if prefix is None else prefix[0].shape[2]
      start = jnp.full((b,), p if self.prefix_position == 'offset' else 0, jnp.int32)
      positions = token_positions(valid, start)
      causal = np.concatenate([np.ones((n, p), bool), np.tril(np.ones((n, n), bool))], 1)
      key_valid = jnp.concatenate([jnp.ones((b, p), bool), valid], axis=1)
      mask = key_valid[:, None, None, :] & causal[None, None]
      cache_kv, index = None, None
    else:
      positions = token_positions(valid, cache.position)
      key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index))
      slots = jnp.arange(key_valid.shape[1])
      causal = slots[None, :] <= cache.index + jnp.arange(n)[:, None]
      mask = key_valid[:, None, None, :] & causal[None, None]
      cache_kv, index = (cache.keys, cache.values), cache.index
    if cfg.family == 'gpt2':
      table = self.param('position_embedder', nn.with_logical_partitioning(
          normal(0.02), ('abspos_buckets', 'embed')), (cfg.max_positions, cfg.emb_dim),
          jnp.dtype(cfg.param_dtype))
      x = x + jnp.take(table, positions, axis=0, mode='clip').astype(x.dtype)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    logits, hidden, new_kv = Decoder(cfg, embedder, deterministic, name='decoder')(
        x, positions, mask, index, prefix, cache_kv)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(new_kv[0], new_kv[1], key_valid, cache.index + n,
                          cache.position + jnp.sum(valid, axis=1, dtype=jnp.int32))
    return Output(logits, hidden, valid, new_cache)


def _init_variables(config: DecoderConfig, rng: Array) -> Dict:
  tokens = jnp.ones((1, 2), jnp.int32)
  return CausalLM(config).init(rng, tokens, tokens > 0)


def init_params(config: DecoderConfig, rng: Array) -> Dict:
  """Random parameters (unboxed) for `config`."""
  return nn.unbox(_init_variables(config, rng)['params'])


def logical_axes(config: DecoderConfig) -> Dict:
  """The pytree of logical axis names (PartitionSpec of names) of every parameter."""
  abstract = jax.eval_shape(functools.partial(_init_variables, config), jax.random.key(0))
  return nn.get_partition_spec(abstract['params'])


def abstract_params(config: DecoderConfig) -> Dict:
  """ShapeDtypeStructs of every parameter, without allocating any."""
  return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
