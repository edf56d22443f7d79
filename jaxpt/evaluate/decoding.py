"""Autoregressive decoding with a per-step key/value cache."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxpt.models.t5 import T5, Prefixes

Array = jax.Array


def greedy_decode(module: T5, params: Any, encoder_tokens: Array, max_length: int, *,
                  prompt: Optional[Array] = None, prefixes: Optional[Prefixes] = None) -> Array:
  """Greedy decoding; returns [batch, max_length] ids, padded with 0 after EOS.

  Matches HF `generate(do_sample=False, num_beams=1)` minus its leading decoder
  start token. Jit-compatible (`module` static).
  """
  cfg = module.config
  variables = {'params': params}
  encoded, valid = module.apply(variables, encoder_tokens, prompt, prefixes, method=T5.encode)
  batch = encoder_tokens.shape[0]

  def decode_step(cache, tokens):
    logits, updated = module.apply(
        {'params': params, 'cache': cache}, encoded, valid, tokens, prefixes, decode=True,
        max_decode_length=max_length, method=T5.decode, mutable=['cache'])
    return logits[:, -1], updated['cache']

  # The initializing call sizes the cache from a full-length dummy target.
  _, init = module.apply(variables, encoded, valid, jnp.zeros((batch, max_length), jnp.int32),
                         prefixes, decode=True, max_decode_length=max_length,
                         method=T5.decode, mutable=['cache'])
  cache = jax.tree.map(jnp.zeros_like, init['cache'])

  def body(i, state):
    cache, out, last, done = state
    logits, cache = decode_step(cache, last[:, None])
    token = jnp.where(done, cfg.pad_token_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    out = out.at[:, i].set(token)
    return cache, out, token, done | (token == cfg.eos_token_id)

  start = jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32)
  out = jnp.zeros((batch, max_length), jnp.int32)
  _, out, _, _ = jax.lax.fori_loop(0, max_length, body,
                                   (cache, out, start, jnp.zeros((batch,), bool)))
  return out
