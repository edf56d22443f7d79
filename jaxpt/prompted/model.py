"""`Model`: a loaded backbone (config + parameters) with numpy-in, numpy-out calls."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.models.config import T5Config, find_preset
from jaxpt.models.decoder_config import DecoderConfig, find_decoder_preset
from jaxpt.models.t5 import T5
from jaxpt.prompted.base import PromptedModel, prompted_model


@functools.lru_cache(maxsize=None)
def _compiled(model: PromptedModel):
  """Jitted (logits, generate) of a prompted model."""

  def logits(params, enc, dec):
    if dec is None:  # decoder-only: `enc` is the sequence; real positions are its non-0 ids
      return model.logits(params, {'decoder_input_tokens': enc, 'decoder_target_tokens': enc})
    return model.logits(params, {'encoder_input_tokens': enc, 'decoder_input_tokens': dec})

  def generate(params, enc, n, strategy, rng, num_beams, length_penalty, temperature, top_k,
               top_p):
    return model.generate(params, enc, n, strategy=strategy, rng=rng, num_beams=num_beams,
                          length_penalty=length_penalty, temperature=temperature, top_k=top_k,
                          top_p=top_p)

  return jax.jit(logits), jax.jit(generate, static_argnums=(2, 3, 5, 8))


def _check_tokens(name: str, tokens: Any, vocab_size: int, min_id: int = 0) -> np.ndarray:
  arr = np.asarray(tokens)
  if arr.ndim != 2:
    raise ValueError(f'{name} must be a 2-D [batch, length] array of token ids, '
                     f'got shape {arr.shape}')
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f'{name} must hold integer token ids, got dtype {arr.dtype}')
  if arr.size and (arr.min() < min_id or arr.max() >= vocab_size):
    raise ValueError(f'{name} has ids outside [{min_id}, {vocab_size}): '
                     f'min {arr.min()}, max {arr.max()}')
  return arr.astype(np.int32)


@dataclasses.dataclass
class Model:
  """A T5 backbone: `config`, `params` (a pytree of arrays) and where it came from.

  With `method` and `method_params` (a prompt or prefix, e.g. attached by
  `load_model(path, prompt=...)`), `logits` and `generate` include them.
  """

  config: T5Config
  params: Any
  source: str = ''
  method: Any = None
  method_params: Any = None

  @property
  def prompted(self) -> PromptedModel:
    """The pure-functional model (`jaxpt.prompted.base`) behind these calls."""
    return prompted_model(self.config, self.method)

  @property
  def all_params(self) -> dict:
    """{'backbone': params, 'method': method_params}, what `prompted` takes."""
    return {'backbone': self.params, 'method': self.method_params or {}}

  def _min_input_id(self) -> int:
    """Negative ids mark placed prompt rows (P-tuning templates), -1..-length."""
    return -self.method.length if self.method is not None and self.method.places_prompt else 0

  @property
  def module(self) -> T5:
    return self.prompted.network

  def logits(self, encoder_input_tokens: Any, decoder_input_tokens: Any = None) -> np.ndarray:
    """Teacher-forced logits.

    A T5 backbone takes both arrays; a decoder-only (GPT-2 / Llama) backbone takes one,
    `model.logits(tokens)`: int [batch, length] with 0 as padding on either side (and
    P-tuning template markers -(k + 1) where prompt row k goes), the logits of every
    position (after any soft prompt), as transformers gives them with
    `attention_mask = tokens != 0` and `position_ids = cumsum(mask) - 1`.

    Args:
      encoder_input_tokens: int [batch, input_len], 0 is padding (decoder-only: the tokens).
      decoder_input_tokens: int [batch, target_len], starting with the decoder
        start token (0); causal attention makes trailing padding harmless.

    Returns:
      float32 numpy array [batch, target_len (decoder-only: length), vocab].
    """
    if isinstance(self.config, DecoderConfig):
      if decoder_input_tokens is not None:
        raise ValueError('a decoder-only backbone takes one token array: model.logits(tokens)')
      tokens = _check_tokens('tokens', encoder_input_tokens, self.config.vocab_size,
                             self._min_input_id())
      logits, _ = _compiled(self.prompted)
      return np.asarray(logits(self.all_params, jnp.asarray(tokens), None), np.float32)
    if decoder_input_tokens is None:
      raise ValueError('a T5 backbone takes encoder_input_tokens and decoder_input_tokens')
    enc = _check_tokens('encoder_input_tokens', encoder_input_tokens, self.config.vocab_size,
                        self._min_input_id())
    dec = _check_tokens('decoder_input_tokens', decoder_input_tokens, self.config.vocab_size)
    if enc.shape[0] != dec.shape[0]:
      raise ValueError(f'batch sizes differ: encoder {enc.shape[0]}, decoder {dec.shape[0]}')
    logits, _ = _compiled(self.prompted)
    return np.asarray(logits(self.all_params, jnp.asarray(enc), jnp.asarray(dec)), np.float32)

  def generate(self, encoder_input_tokens: Any, max_length: int = 32, *,
               strategy: str = 'greedy', num_beams: int = 4, length_penalty: float = 1.0,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               seed: int = 0) -> np.ndarray:
    """Decodes up to `max_length` tokens: int32 [batch, max_length], 0 after EOS.

    `strategy` is 'greedy' (the default), 'sample' (`temperature`, `top_k`, `top_p`,
    PRNG `seed`) or 'beam' (`num_beams`, `length_penalty`; the best beam,
    as transformers' `generate(num_beams=...)`). See `jaxpt.prompted.decoding`.
    """
    enc = _check_tokens('encoder_input_tokens', encoder_input_tokens, self.config.vocab_size,
                        self._min_input_id())
    if max_length <= 0:
      raise ValueError(f'max_length must be positive, got {max_length}')
    if strategy == 'beam' and num_beams <= 0:
      raise ValueError(f'num_beams must be positive, got {num_beams}')
    if strategy not in ('greedy', 'sample', 'beam'):
      raise ValueError(f"strategy must be 'greedy', 'sample' or 'beam', got {strategy!r}")
    _, generate = _compiled(self.prompted)
    out = generate(self.all_params, jnp.asarray(enc), int(max_length), strategy,
                   jax.random.key(seed), int(num_beams), float(length_penalty),
                   float(temperature), int(top_k), float(top_p))
    return np.asarray(out)

  def num_params(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

  def summary(self) -> str:
    """A few human-readable lines: variant, sizes, parameter count, source."""
    cfg = self.config
    if isinstance(cfg, DecoderConfig):
      known = find_decoder_preset(cfg)
      variant = f'{known[0]}/{known[1]}' if known else 'custom'
      return '\n'.join([
          f'{cfg.family} ({variant}) from {self.source or "memory"}',
          f'  layers {cfg.num_layers}, d_model {cfg.emb_dim}, heads {cfg.num_heads}x'
          f'{cfg.head_dim} ({cfg.num_kv_heads} kv), mlp {cfg.mlp_dim} '
          f'({"+".join(cfg.mlp_activations)}), vocab {cfg.vocab_size}',
          f'  logits {"tied" if cfg.tie_embeddings else "untied"}, compute {cfg.dtype}, '
          f'params {cfg.param_dtype}',
          f'  {self.num_params():,} parameters',
      ])
    known = find_preset(cfg)
    variant = f'{known[0]}/{known[1]}' if known else 'custom'
    mlp = 'gated ' + cfg.mlp_activations[0] if cfg.gated else cfg.mlp_activations[0]
    return '\n'.join([
        f'T5 ({variant}) from {self.source or "memory"}',
        f'  layers {cfg.num_encoder_layers}+{cfg.num_decoder_layers}, d_model {cfg.emb_dim}, '
        f'heads {cfg.num_heads}x{cfg.head_dim}, mlp {cfg.mlp_dim} ({mlp}), vocab {cfg.vocab_size}',
        f'  logits {"tied (scaled)" if cfg.logits_via_embedding else "untied"}, '
        f'position bias {"per layer" if cfg.per_layer_relpos_bias else "shared"}, '
        f'compute {cfg.dtype}, params {cfg.param_dtype}',
        f'  {self.num_params():,} parameters',
    ])
