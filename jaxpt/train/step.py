"""The training step: gradients and optimizer state for the trainable leaves only.

Parameters live in one tree {'backbone': T5 params, 'method': method params},
split by `jaxpt.methods.split.partition` into `trainable` and `frozen`. The
step differentiates a function of `trainable` alone, with `frozen` a plain
(non-donated) argument: XLA never materializes gradients of frozen weights,
the optimizer state has only trainable leaves, and frozen arrays are never
copied between steps.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxpt.methods.interface import Method
from jaxpt.methods.split import combine
from jaxpt.models.config import T5Config
from jaxpt.models.t5 import T5
from jaxpt.train.loss import loss_and_metrics

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


def _prepared(config: T5Config, method: Method, params: Dict[str, Any], batch: Batch,
              deterministic: bool, rng: Optional[Array]):
  """(soft inputs, T5 module, dropout rngs) for a forward pass over `batch`."""
  enc = batch['encoder_input_tokens']
  soft = method.soft_inputs(params.get('method', {}), config, enc.shape[0],
                            batch.get('task_ids'))
  rngs = {'dropout': rng} if (rng is not None and not deterministic) else {}
  return soft, T5(config, soft.prefix_position), rngs


def forward(config: T5Config, method: Method, params: Dict[str, Any], batch: Batch, *,
            deterministic: bool = True, rng: Optional[Array] = None) -> Array:
  """Teacher-forced logits of `batch` with the method's prompt / prefixes."""
  soft, module, rngs = _prepared(config, method, params, batch, deterministic, rng)
  return module.apply({'params': params['backbone']}, batch['encoder_input_tokens'],
                      batch['decoder_input_tokens'], prompt=soft.prompt, prefixes=soft.prefixes,
                      deterministic=deterministic, rngs=rngs)


def forward_hidden(config: T5Config, method: Method, params: Dict[str, Any], batch: Batch, *,
                   deterministic: bool = True, rng: Optional[Array] = None
                   ) -> Tuple[Array, Array, Array]:
  """(logits, encoded [batch, P + length, d], valid [batch, P + length]) of `batch`.

  The same pass as `forward`, also returning the encoder's output; its first
  `method.prompt_length` positions are the prompt's (hidden-state distillation
  compares the input positions after them).
  """
  soft, module, rngs = _prepared(config, method, params, batch, deterministic, rng)
  variables = {'params': params['backbone']}
  encoded, valid = module.apply(variables, batch['encoder_input_tokens'], soft.prompt,
                                soft.prefixes, deterministic, method=T5.encode, rngs=rngs)
  logits = module.apply(variables, encoded, valid, batch['decoder_input_tokens'], soft.prefixes,
                        deterministic, method=T5.decode, rngs=rngs)
  return logits, encoded, valid


def loss_weights(batch: Batch) -> Array:
  """`decoder_loss_weights`, or 1 on every non-padding target token."""
  if 'decoder_loss_weights' in batch:
    return batch['decoder_loss_weights']
  return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)


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


def make_train_step(config: T5Config, method: Method, optimizer: optax.GradientTransformation,
                    *, label_smoothing: float = 0.0, z_loss: float = 0.0
                    ) -> Callable[[TrainState, Any, Batch, Array], Tuple[TrainState, Dict]]:
  """Returns `step(state, frozen, batch, rng) -> (state, metrics)` (jit it yourself).

  The objective is the task's token cross-entropy (`jaxpt.train.loss`); see
  `make_step` for the non-finite guard.
  """

  def objective(params, batch, rng):
    logits = forward(config, method, params, batch, deterministic=False, rng=rng)
    return loss_and_metrics(logits, batch['decoder_target_tokens'], loss_weights(batch),
                            label_smoothing=label_smoothing, z_loss=z_loss)

  return make_step(objective, optimizer)


def make_eval_step(config: T5Config, method: Method, *, label_smoothing: float = 0.0,
                   z_loss: float = 0.0) -> Callable[[Any, Any, Batch], Dict]:
  """Returns `eval_step(trainable, frozen, batch) -> metrics` (no dropout)."""

  def eval_step(trainable, frozen, batch):
    logits = forward(config, method, combine(trainable, frozen), batch)
    _, metrics = loss_and_metrics(logits, batch['decoder_target_tokens'], loss_weights(batch),
                                  label_smoothing=label_smoothing, z_loss=z_loss)
    return metrics

  return eval_step
