"""The T5 encoder-decoder as pure-functional Flax modules.

One implementation covers T5 1.0 (ReLU, tied logits), T5 1.1 / LM-adapted /
Flan-T5 / mT5 (gated GELU, untied logits) and UMT5-style per-layer position
bias. Parameter names are T5X's (see docs/param_layout.md), so T5X checkpoints
load without renaming.

Soft-prompt methods enter through two arguments and never by editing the
backbone: `prompt` (embeddings prepended to the encoder input, Lester et al.,
or a `PlacedPrompt` whose rows go where the input marks them, P-tuning's
templates) and `prefixes` (keys/values prepended in attention layers, Li &
Liang).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.models.attention import NEG_INF, MultiHeadAttention, Prefix, RelativePositionBias
from jaxpt.models.config import T5Config
from jaxpt.models.layers import MLP, Dense, Embed, RMSNorm, normal, remat_layer

Array = jax.Array
# Stacked per-layer prefixes: name -> (keys, values), each
# [layers, batch (or 1), prefix_len, heads, head_dim]. Names: 'encoder',
# 'decoder_self', 'decoder_cross'; any may be missing.
Prefixes = Mapping[str, Tuple[Array, Array]]

PREFIX_POSITIONS = ('none', 'offset')


class PlacedPrompt(NamedTuple):
  """Soft vectors placed inside the encoder input instead of before it.

  vectors: [P, d] or [batch, P, d]; with `task_ids`, [num_tasks, P, d].
  task_ids: optional [batch, length] task of each encoder token (packed rows
    of mixed tasks): a marked token takes row k of its own task's prompt.
  The encoder input marks where row k goes with the id `prompt_marker(k)` =
  -(k + 1); those positions are ordinary sequence positions (attended,
  relative positions as for any token).
  """
  vectors: Array
  task_ids: Optional[Array] = None


class Segments(NamedTuple):
  """Packed rows: which example (segment) and task every position belongs to.

  encoder, decoder: [batch, length] segment ids, 1.. per example, 0 on padding.
  encoder_tasks, decoder_tasks: [batch, length] task ids, or None (one task).
  prefix_tasks: (static) the prefixes hold this many per-task blocks side by
    side; a query attends only to its own task's block.
  Attention never crosses segments, so T5's relative position bias (row
  offsets) equals each example's own.
  """
  encoder: Array
  decoder: Array
  encoder_tasks: Optional[Array] = None
  decoder_tasks: Optional[Array] = None
  prefix_tasks: int = 1


def _prefix_mask(query_tasks: Optional[Array], prefix_len: int, num_blocks: int,
                 shape: Tuple[int, int]) -> Array:
  """[batch, q, prefix_len]: query sees prefix block t only when its task is t."""
  if query_tasks is None or num_blocks == 1:
    return jnp.ones(shape + (prefix_len,), bool)
  block = np.repeat(np.arange(num_blocks), prefix_len // num_blocks)
  return query_tasks[:, :, None] == jnp.asarray(block)[None, None, :]


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """[batch, q, k]: same segment and the key is not padding."""
  return ((query_segments[:, :, None] == key_segments[:, None, :])
          & (key_segments[:, None, :] > 0))


def prompt_marker(k: int) -> int:
  """The encoder input id that stands for row k of a `PlacedPrompt`."""
  return -(k + 1)


def place_prompt(x: Array, tokens: Array, vectors: Array,
                 task_ids: Optional[Array] = None) -> Array:
  """`x` [B, L, d] with each marked position replaced by its prompt row
  (of its own task's prompt `vectors[task_ids]` when `task_ids` [B, L] is given)."""
  marked = tokens < 0
  index = jnp.clip(-tokens - 1, 0, vectors.shape[-2] - 1)  # [B, L]
  if task_ids is not None:
    rows = vectors[jnp.clip(task_ids, 0, vectors.shape[0] - 1), index]
  elif vectors.ndim == 2:
    rows = vectors[index]
  else:
    rows = jnp.take_along_axis(vectors, index[..., None], axis=1)
  return jnp.where(marked[..., None], rows.astype(x.dtype), x)


@dataclasses.dataclass(frozen=True)
class Positions:
  """Static query/key positions of one attention, for per-layer position bias."""
  query: Tuple[int, ...]
  key: Tuple[int, ...]
  prefix_len: int = 0
  bidirectional: bool = True
  prefix_position: str = 'none'


def position_bias(module: RelativePositionBias, positions: Positions) -> Array:
  """[1, heads, q, prefix + k] bias; prefix columns per `positions.prefix_position`.

  'none' (Li & Liang): prefix keys carry no position, bias 0.
  'offset' (HF past_key_values, hence peft): prefix keys sit at positions
  -prefix_len..-1 before the sequence.
  """
  query = np.asarray(positions.query)
  key = np.asarray(positions.key)
  p = positions.prefix_len
  if p and positions.prefix_position == 'offset':
    return module(query + p, np.concatenate([np.arange(p), key + p]))
  bias = module(query, key)
  if p:
    bias = jnp.concatenate([jnp.zeros(bias.shape[:3] + (p,), bias.dtype), bias], axis=-1)
  return bias


class EncoderLayer(nn.Module):
  """Self-attention and MLP, each pre-normed with a residual."""

  config: T5Config
  deterministic: bool = True
  positions: Optional[Positions] = None  # set when the layer owns its position bias
  scanned: bool = False

  @nn.compact
  def __call__(self, x: Array, bias: Array, prefix: Optional[Prefix] = None):
    cfg = self.config
    if self.positions is not None:
      bias = bias + position_bias(
          RelativePositionBias(cfg, bidirectional=True, name='relpos_bias'), self.positions)
    drop = nn.Dropout(cfg.dropout_rate)
    h = RMSNorm(cfg, name='pre_attention_layer_norm')(x)
    h = MultiHeadAttention(cfg, self.deterministic, name='attention')(h, h, bias, prefix)
    x = x + drop(h, deterministic=self.deterministic)
    h = RMSNorm(cfg, name='pre_mlp_layer_norm')(x)
    h = MLP(cfg, self.deterministic, name='mlp')(h)
    x = x + drop(h, deterministic=self.deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  """Causal self-attention, cross-attention and MLP."""

  config: T5Config
  deterministic: bool = True
  decode: bool = False
  positions: Optional[Positions] = None
  scanned: bool = False

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               self_prefix: Optional[Prefix] = None, cross_prefix: Optional[Prefix] = None):
    cfg = self.config
    if self.positions is not None:
      self_bias = self_bias + position_bias(
          RelativePositionBias(cfg, bidirectional=False, name='relpos_bias'), self.positions)
    drop = nn.Dropout(cfg.dropout_rate)
    h = RMSNorm(cfg, name='pre_self_attention_layer_norm')(y)
    h = MultiHeadAttention(cfg, self.deterministic, self.decode, name='self_attention')(
        h, h, self_bias, self_prefix)
    y = y + drop(h, deterministic=self.deterministic)
    h = RMSNorm(cfg, name='pre_cross_attention_layer_norm')(y)
    h = MultiHeadAttention(cfg, self.deterministic, name='encoder_decoder_attention')(
        h, encoded, cross_bias, cross_prefix)
    y = y + drop(h, deterministic=self.deterministic)
    h = RMSNorm(cfg, name='pre_mlp_layer_norm')(y)
    h = MLP(cfg, self.deterministic, name='mlp')(h)
    y = y + drop(h, deterministic=self.deterministic)
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    return (y, None) if self.scanned else y


def _run_stack(parent: nn.Module, layer_cls, num_layers: int, carry: Array,
               broadcast_args: Tuple, scanned_args: Tuple, **layer_kwargs) -> Array:
  """Runs `num_layers` layers named layers_i, or one nn.scan named 'layers'.

  `scanned_args` hold per-layer values with a leading layer axis (or None).
  """
  cfg = parent.config
  cls = remat_layer(layer_cls, cfg)
  if cfg.scan_layers:
    in_axes = (nn.broadcast,) * len(broadcast_args) + tuple(
        nn.broadcast if a is None else 0 for a in scanned_args)
    stack = nn.scan(
        cls, variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True}, in_axes=in_axes,
        length=num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
    carry, _ = stack(cfg, scanned=True, name='layers', parent=parent, **layer_kwargs)(
        carry, *broadcast_args, *scanned_args)
    return carry
  for i in range(num_layers):
    layer = cls(cfg, name=f'layers_{i}', parent=parent, **layer_kwargs)
    carry = layer(carry, *broadcast_args,
                  *(None if a is None else jax.tree.map(lambda t: t[i], a) for a in scanned_args))
  return carry


class Encoder(nn.Module):
  """Embeds (with an optional prepended prompt) and encodes the inputs."""

  config: T5Config
  shared_embedding: nn.Module
  prefix_position: str = 'none'

  @nn.compact
  def __call__(self, tokens: Array, prompt: Union[None, Array, PlacedPrompt] = None,
               prefix: Optional[Tuple[Array, Array]] = None,
               deterministic: bool = True,
               segments: Optional[Segments] = None) -> Tuple[Array, Array]:
    """Returns (encoded [batch, prompt + length, emb], valid [batch, prompt + length]).

    A `PlacedPrompt` takes no extra positions: its rows replace the marked ids.
    With `segments` (packed rows) attention stays inside each segment and a
    prompt must be placed.
    """
    cfg = self.config
    if segments is not None and prompt is not None and not isinstance(prompt, PlacedPrompt):
      raise ValueError('packed rows take a PlacedPrompt (markers at each segment start), not '
                       'a prompt prepended to the row')
    if isinstance(prompt, PlacedPrompt):
      x = place_prompt(self.shared_embedding(jnp.maximum(tokens, 0)), tokens, prompt.vectors,
                       prompt.task_ids)
      valid = tokens != 0
    else:
      x = self.shared_embedding(tokens)
      valid = tokens > 0
    if prompt is not None and not isinstance(prompt, PlacedPrompt):
      prompt = jnp.broadcast_to(prompt, (tokens.shape[0],) + prompt.shape[-2:]).astype(x.dtype)
      x = jnp.concatenate([prompt, x], axis=1)
      valid = jnp.concatenate([jnp.ones(prompt.shape[:2], bool), valid], axis=1)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

    length = x.shape[1]
    prefix_len = 0 if prefix is None else prefix[0].shape[2]
    positions = Positions(tuple(range(length)), tuple(range(length)), prefix_len, True,
                          self.prefix_position)
    if segments is None:
      key_valid = jnp.concatenate([jnp.ones((x.shape[0], prefix_len), bool), valid], axis=1)
      bias = jnp.where(key_valid, 0.0, NEG_INF)[:, None, None, :]
    else:
      mask = jnp.concatenate(
          [_prefix_mask(segments.encoder_tasks, prefix_len, segments.prefix_tasks,
                        (x.shape[0], length)),
           segment_mask(segments.encoder, segments.encoder)], axis=-1)
      bias = jnp.where(mask, 0.0, NEG_INF)[:, None]
    if not cfg.per_layer_relpos_bias:
      bias = bias + position_bias(
          RelativePositionBias(cfg, bidirectional=True, name='relpos_bias'), positions)
    x = _run_stack(self, EncoderLayer, cfg.num_encoder_layers, x, (bias,), (prefix,),
                   deterministic=deterministic,
                   positions=positions if cfg.per_layer_relpos_bias else None)
    x = RMSNorm(cfg, name='encoder_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic), valid


class Decoder(nn.Module):
  """Causal decoder with cross-attention and the output projection."""

  config: T5Config
  shared_embedding: nn.Module
  prefix_position: str = 'none'

  @nn.compact
  def __call__(self, encoded: Array, encoder_valid: Array, tokens: Array,
               self_prefix: Optional[Tuple[Array, Array]] = None,
               cross_prefix: Optional[Tuple[Array, Array]] = None,
               deterministic: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None,
               segments: Optional[Segments] = None) -> Array:
    """Returns float32 logits [batch, length, vocab].

    In decode mode `tokens` is one step [batch, 1] (after the initializing
    call) and `max_decode_length` is the cache length. With `segments`
    (packed rows, no decode mode) self-attention is causal within a segment
    and cross-attention sees the same segment's encoder positions.
    """
    if segments is not None and decode:
      raise ValueError('decode mode runs on unpacked rows')
    cfg = self.config
    y = self.shared_embedding(tokens)
    y = nn.with_logical_constraint(y, ('batch', 'length', 'embed'))
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)

    length = max_decode_length if decode and max_decode_length else tokens.shape[1]
    self_prefix_len = 0 if self_prefix is None else self_prefix[0].shape[2]
    positions = Positions(tuple(range(length)), tuple(range(length)), self_prefix_len, False,
                          self.prefix_position)
    causal = np.tril(np.ones((length, length), bool))
    causal = np.concatenate([np.ones((length, self_prefix_len), bool), causal], axis=1)
    cross_prefix_len = 0 if cross_prefix is None else cross_prefix[0].shape[2]
    if segments is None:
      self_bias = jnp.asarray(np.where(causal, 0.0, NEG_INF), jnp.float32)[None, None]
      cross_valid = jnp.concatenate(
          [jnp.ones((encoder_valid.shape[0], cross_prefix_len), bool), encoder_valid], axis=1)
      cross_bias = jnp.where(cross_valid, 0.0, NEG_INF)[:, None, None, :]
    else:
      shape = tokens.shape[:2]
      self_mask = jnp.concatenate(
          [_prefix_mask(segments.decoder_tasks, self_prefix_len, segments.prefix_tasks, shape),
           segment_mask(segments.decoder, segments.decoder) & causal[None, :, self_prefix_len:]],
          axis=-1)
      self_bias = jnp.where(self_mask, 0.0, NEG_INF)[:, None]
      cross_mask = jnp.concatenate(
          [_prefix_mask(segments.decoder_tasks, cross_prefix_len, segments.prefix_tasks, shape),
           segment_mask(segments.decoder, segments.encoder) & encoder_valid[:, None, :]],
          axis=-1)
      cross_bias = jnp.where(cross_mask, 0.0, NEG_INF)[:, None]
    if not cfg.per_layer_relpos_bias:
      self_bias = self_bias + position_bias(
          RelativePositionBias(cfg, bidirectional=False, name='relpos_bias'), positions)

    y = _run_stack(self, DecoderLayer, cfg.num_decoder_layers, y,
                   (encoded, self_bias, cross_bias), (self_prefix, cross_prefix),
                   deterministic=deterministic, decode=decode,
                   positions=positions if cfg.per_layer_relpos_bias else None)
    y = RMSNorm(cfg, name='decoder_norm')(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y * (cfg.emb_dim ** -0.5))
    else:
      logits = Dense(cfg.vocab_size, ('embed', 'vocab'), normal(cfg.emb_dim ** -0.5), cfg,
                     name='logits_dense')(y)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return logits.astype(jnp.float32)


class T5(nn.Module):
  """Encoder-decoder T5. `prefix_position` picks how prefix keys see positions."""

  config: T5Config
  prefix_position: str = 'none'

  def setup(self):
    if self.prefix_position not in PREFIX_POSITIONS:
      raise ValueError(f'prefix_position must be one of {PREFIX_POSITIONS}, '
                       f'got {self.prefix_position!r}')
    self.token_embedder = Embed(self.config)
    self.encoder = Encoder(self.config, self.token_embedder, self.prefix_position)
    self.decoder = Decoder(self.config, self.token_embedder, self.prefix_position)

  def encode(self, encoder_tokens: Array, prompt: Optional[Array] = None,
             prefixes: Optional[Prefixes] = None, deterministic: bool = True,
             segments: Optional[Segments] = None) -> Tuple[Array, Array]:
    prefixes = prefixes or {}
    return self.encoder(encoder_tokens, prompt, prefixes.get('encoder'), deterministic,
                        segments)

  def decode(self, encoded: Array, encoder_valid: Array, decoder_tokens: Array,
             prefixes: Optional[Prefixes] = None, deterministic: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None,
             segments: Optional[Segments] = None) -> Array:
    prefixes = prefixes or {}
    return self.decoder(encoded, encoder_valid, decoder_tokens, prefixes.get('decoder_self'),
                        prefixes.get('decoder_cross'), deterministic, decode, max_decode_length,
                        segments)

  def __call__(self, encoder_tokens: Array, decoder_tokens: Array,
               prompt: Optional[Array] = None, prefixes: Optional[Prefixes] = None,
               deterministic: bool = True, segments: Optional[Segments] = None) -> Array:
    """Teacher-forced logits [batch, target_len, vocab] (float32); `segments` for packed rows."""
    encoded, valid = self.encode(encoder_tokens, prompt, prefixes, deterministic, segments)
    return self.decode(encoded, valid, decoder_tokens, prefixes, deterministic,
                       segments=segments)


def init_params(config: T5Config, rng: Array) -> Dict:
  """Random parameters (unboxed) for `config`."""
  tokens = jnp.ones((1, 2), jnp.int32)
  variables = T5(config).init(rng, tokens, tokens)
  return nn.unbox(variables['params'])


def logical_axes(config: T5Config) -> Dict:
  """The pytree of logical axis names (PartitionSpec of names) of every parameter."""
  tokens = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  abstract = jax.eval_shape(lambda t: T5(config).init(jax.random.key(0), t, t), tokens)
  return nn.get_partition_spec(abstract['params'])


def abstract_params(config: T5Config) -> Dict:
  """ShapeDtypeStructs of every parameter, without allocating any."""
  return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
