"""The training step: gradients and optimizer state for the trainable leaves only.

Parameters live in one tree {'backbone': backbone params, 'method': method params},
split by `jaxpt.methods.split.partition` into `trainable` and `frozen`. The
step differentiates a function of `trainable` alone, with `frozen` a plain
(non-donated) argument: XLA never materializes gradients of frozen weights,
the optimizer state has only trainable leaves, and frozen arrays are never
copied between steps.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxpt.methods.split import combine
from jaxpt.prompted.base import PromptedModel

Array = jax.Array
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything a training checkpoint holds besides the data position."""
  step: Array
  trainable: Any
  opt_state: Any


def init_state(trainable: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=optimizer.init(trainable))


def make_step(objective: Callable[[Dict[str, Any], Batch, Array], Tuple[Array, Dict]],
              optimizer: optax.GradientTransformation
              ) -> Callable[[TrainState, Any, Batch, Array], Tuple[TrainState, Dict]]:
  """`step(state, frozen, batch, rng) -> (state, metrics)` minimizing `objective`.

  `objective(params, batch, rng) -> (loss, metrics)` sees the whole tree
  (trainable and frozen combined); only `state.trainable` is differentiated.
  A step whose loss or gradients are not finite leaves the state unchanged
  and reports `metrics['finite'] = False`; the loop stops on it.
  """

  def loss_fn(trainable, frozen, batch, rng):
    return objective(combine(trainable, frozen), batch, rng)

  def step(state: TrainState, frozen: Any, batch: Batch, rng: Array):
    rng = jax.random.fold_in(rng, state.step)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, frozen, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + finite.astype(jnp.int32),
                           trainable=keep(trainable, state.trainable),
                           opt_state=keep(opt_state, state.opt_state))
    return new_state, dict(metrics, grad_norm=grad_norm, finite=finite)

  return step


def make_train_step(model: PromptedModel, optimizer: optax.GradientTransformation
                    ) -> Callable[[TrainState, Any, Batch, Array], Tuple[TrainState, Dict]]:
  """Returns `step(state, frozen, batch, rng) -> (state, metrics)` (jit it yourself).

  The objective is `model.loss` with dropout; see `make_step` for the
  non-finite guard.
  """
  return make_step(model.loss, optimizer)
