"""Held-out loss of a backbone (or backbone + prompt) on fixed batches."""

from __future__ import annotations

from typing import Dict, Sequence

import jax
import numpy as np

from jaxpt.prompted.model import Model


def mean_loss(model: Model, batches: Sequence[Dict[str, np.ndarray]]) -> float:
  """Token-weighted mean cross-entropy (nats per target token, EOS included, no z-loss)."""
  prompted = model.prompted
  loss = jax.jit(lambda params, batch: prompted.loss(params, batch)[1])
  total, count = 0.0, 0.0
  for batch in batches:
    metrics = loss(model.all_params, batch)
    total += float(metrics['loss']) * float(metrics['num_tokens'])
    count += float(metrics['num_tokens'])
  if not count:
    raise ValueError('no target tokens to measure a loss on')
  return total / count
