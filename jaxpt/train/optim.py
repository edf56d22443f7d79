"""Optimizer recipes (optax). The default is Lester et al.'s prompt-tuning recipe."""

from __future__ import annotations

from typing import Optional

import optax

OPTIMIZERS = ('adafactor', 'adamw', 'sgd')


def schedule(learning_rate: float, warmup_steps: int = 0,
             decay_steps: Optional[int] = None) -> optax.Schedule:
  """Constant (the paper's), optionally after a linear warmup and with a linear decay to 0."""
  if decay_steps:
    main = optax.linear_schedule(learning_rate, 0.0, decay_steps)
  else:
    main = optax.constant_schedule(learning_rate)
  if warmup_steps:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps), main], [warmup_steps])
  return main


def make_optimizer(name: str = 'adafactor', learning_rate: float = 0.3, *,
                   weight_decay: float = 1e-5, decay_rate: float = 0.8,
                   clip_norm: Optional[float] = None, warmup_steps: int = 0,
                   decay_steps: Optional[int] = None, b1: float = 0.9,
                   b2: float = 0.999) -> optax.GradientTransformation:
  """An optax optimizer for the trainable leaves.

  adafactor (default, the paper's prompt recipe): constant learning rate 0.3,
    weight decay 1e-5, second-moment decay rate 0.8, no parameter scaling.
  adamw: decoupled weight decay (use a smaller learning_rate, e.g. 1e-3).
  sgd: plain gradient descent (tests, ablations).
  `clip_norm` clips the global gradient norm first.
  """
  lr = schedule(learning_rate, warmup_steps, decay_steps)
  if name == 'adafactor':
    tx = optax.adafactor(lr, decay_rate=decay_rate, multiply_by_parameter_scale=False,
                         weight_decay_rate=weight_decay or None, clipping_threshold=1.0)
  elif name == 'adamw':
    tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  elif name == 'sgd':
    tx = optax.sgd(lr)
  else:
    raise ValueError(f'unknown optimizer {name!r}; expected one of {OPTIMIZERS}')
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx
