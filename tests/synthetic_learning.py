"""Tuning a method on the synthetic two-class task: the loop the learning tests share."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import numpy as np

from jaxpt.prompted.base import prompted_model
from jaxpt.data.toy import two_class_batch
from jaxpt.methods import PROMPT_ONLY, Backbone, combine, partition
from jaxpt.models.t5 import init_params
from jaxpt.train.optim import make_optimizer
from jaxpt.train.step import init_state, make_train_step
from tests.tiny_configs import LEARN_CONFIG


def learn(method, learning_rate: float, steps: int,
          prepare: Callable = lambda batch: batch,
          frozen_dtype: Optional[str] = None) -> Tuple[float, float, float]:
  """AdamW on batches of 32; (mean loss of the first 5 steps, of the last 20, held-out
  accuracy on 256 examples). `prepare` rewrites each batch (e.g. a template);
  `frozen_dtype` stores the frozen backbone in that dtype (e.g. 'bfloat16')."""
  backbone = init_params(LEARN_CONFIG, jax.random.key(0))
  if frozen_dtype is not None:
    backbone = jax.tree.map(lambda x: x.astype(frozen_dtype), backbone)
  params = {'backbone': backbone, 'method': method.init(
      jax.random.key(1), Backbone(LEARN_CONFIG, backbone['token_embedder']['embedding']))}
  trainable, frozen = partition(params, PROMPT_ONLY)
  optimizer = make_optimizer('adamw', learning_rate, weight_decay=0.0)
  state = init_state(trainable, optimizer)
  step = jax.jit(make_train_step(prompted_model(LEARN_CONFIG, method), optimizer), donate_argnums=0)
  losses = []
  for i in range(steps):
    state, metrics = step(state, frozen, prepare(two_class_batch(32, i)[0]), jax.random.key(2))
    losses.append(float(metrics['loss']))
  test, label = two_class_batch(256, 10_000)
  logits = prompted_model(LEARN_CONFIG, method).logits(combine(state.trainable, frozen), prepare(test))
  accuracy = float(np.mean((logits[:, 0, 10] > logits[:, 0, 11]) == (label == 1)))
  return float(np.mean(losses[:5])), float(np.mean(losses[-20:])), accuracy
