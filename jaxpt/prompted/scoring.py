"""Rank classification: score every label string, pick the most likely.

As in Lester et al. (2021) (and T0 / the T5 paper's rank classification), a
classifier reads the model's log-likelihood of each label's token sequence
given the input, instead of trusting free-form decoding to emit a label.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxpt.prompted.decoding import repeat_prefixes, repeat_rows
from jaxpt.models.t5 import T5, Prefixes

Array = jax.Array


def _shift_right(targets: Array, start: int) -> Array:
  """Decoder inputs: targets shifted right by one, starting with `start`."""
  return jnp.concatenate(
      [jnp.full(targets.shape[:1] + (1,), start, targets.dtype), targets[:, :-1]], axis=1)


def _target_log_likelihood(logits: Array, targets: Array) -> Array:
  """Summed log-probabilities [rows] of `targets` [rows, T]; ids <= 0 are padding."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(jnp.where(targets > 0, picked, 0.0), axis=-1)


def score_targets(module: T5, params: Any, encoder_tokens: Array, target_tokens: Array, *,
                  prompt: Optional[Array] = None,
                  prefixes: Optional[Prefixes] = None) -> Array:
  """Total log-likelihood of each target given its input.

  Args:
    module: the T5 module (static under jit).
    params: its parameters.
    encoder_tokens: int [batch, length], 0 is padding.
    target_tokens: int [batch, T]: each target ends with EOS and is padded
      with 0. The decoder input is the targets shifted right behind the decoder
      start token; padded positions do not count.
    prompt: optional soft prompt [P, d] or [batch, P, d].
    prefixes: optional attention prefixes.

  Returns:
    float32 [batch]: sum over target positions of log p(token | input, prefix).
  """
  targets = jnp.asarray(target_tokens, jnp.int32)
  decoder_tokens = _shift_right(targets, module.config.decoder_start_token_id)
  logits = module.apply({'params': params}, encoder_tokens, decoder_tokens, prompt, prefixes)
  return _target_log_likelihood(logits, targets)


def rank_classify(module: T5, params: Any, encoder_tokens: Array, label_tokens: Array, *,
                  prompt: Optional[Array] = None,
                  prefixes: Optional[Prefixes] = None) -> Tuple[Array, Array]:
  """Scores every label for every example and picks the most likely.

  The encoder runs once per example; its output (with the mask and any
  per-example decoder prefixes) is repeated per label, so one batched decoder
  pass scores all batch x labels pairs.

  Args:
    module: the T5 module (static under jit).
    params: its parameters.
    encoder_tokens: int [batch, length], 0 is padding.
    label_tokens: int [num_labels, T]: each label's tokens, ending with EOS,
      padded with 0.
    prompt: optional soft prompt [P, d] or per-example [batch, P, d].
    prefixes: optional attention prefixes (batch axis 1 or batch).

  Returns:
    (predictions int32 [batch]: index of the most likely label;
     scores float32 [batch, num_labels]: each label's total log-likelihood).
  """
  labels = jnp.asarray(label_tokens, jnp.int32)
  batch, num_labels = encoder_tokens.shape[0], labels.shape[0]
  encoded, valid = module.apply({'params': params}, encoder_tokens, prompt, prefixes,
                                method=T5.encode)
  encoded, valid = repeat_rows(encoded, num_labels), repeat_rows(valid, num_labels)
  targets = jnp.tile(labels, (batch, 1))  # row b * num_labels + j holds label j
  decoder_tokens = _shift_right(targets, module.config.decoder_start_token_id)
  logits = module.apply({'params': params}, encoded, valid, decoder_tokens,
                        repeat_prefixes(prefixes, num_labels), method=T5.decode)
  scores = _target_log_likelihood(logits, targets).reshape(batch, num_labels)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores
