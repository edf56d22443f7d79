"""Token cross-entropy as in T5X: targets only, padding masked, label smoothing, z-loss."""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, weights: Array, *,
                  label_smoothing: float = 0.0, z_loss: float = 0.0) -> Tuple[Array, Array]:
  """Per-token (loss, z_loss), both [batch, length] and already multiplied by `weights`.

  The loss includes the z-loss term `z_loss * log(Z)**2` (T5X's stabilizer);
  the second output reports that term alone. With label smoothing the minimum
  of the loss is 0 (the smoothed distribution's entropy is subtracted), as in
  T5X's `cross_entropy_with_logits`.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20))
    mean_logit = jnp.sum(logits, axis=-1)
    loss = (log_z - (confidence - low) * target_logit - low * mean_logit) - entropy
  else:
    loss = log_z - target_logit
  z_term = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  return (loss + z_term) * weights, z_term * weights


def loss_and_metrics(logits: Array, targets: Array, weights: Array, *,
                     label_smoothing: float = 0.0, z_loss: float = 0.0
                     ) -> Tuple[Array, Dict[str, Array]]:
  """Mean loss over weighted target tokens, plus metrics for logging."""
  token_loss, token_z = cross_entropy(logits, targets, weights,
                                      label_smoothing=label_smoothing, z_loss=z_loss)
  num_tokens = jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)
  loss = jnp.sum(token_loss) / num_tokens
  correct = (jnp.argmax(logits, axis=-1) == targets) * weights
  return loss, {
      'loss': loss,
      'z_loss': jnp.sum(token_z) / num_tokens,
      'token_accuracy': jnp.sum(correct) / num_tokens,
      'num_tokens': num_tokens,
  }
