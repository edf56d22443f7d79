"""Distillation from frozen teacher prompts (MPT's step (b), Wang et al. 2023).

The objective adds, to the task loss of `jaxpt.prompted.loss`, two terms that pull
the student's outputs towards the teachers' on the same batch:

  kl_weight     * KL(teacher || student) of the output distributions at
                  `temperature` (times temperature², as Hinton et al.), per
                  weighted target token;
  hidden_weight * mean squared difference of the encoder outputs at the input
                  positions (the prompt positions are left out, so teacher and
                  student prompts may differ in length).

Teacher parameters live in the parameter tree under 'teacher', beside
'backbone' and 'method'; the trainable rules (`r'method/.*'`) never match
them, so they are frozen like the backbone: no gradients, no optimizer state.
Batches mixing tasks carry `task_ids`, and each example reads its own
teacher (e.g. `jaxpt.methods.multitask.stack_teachers`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from jaxpt.prompted.base import PromptedModel, is_packed, loss_weights
from jaxpt.train.step import TrainState, make_step

Array = jax.Array
Batch = Mapping[str, Array]
TEACHER = 'teacher'


@dataclasses.dataclass(frozen=True)
class Distillation:
  """The teacher method and the weights of the distillation terms.

  Attributes:
    teacher: the teachers' method (its params go under params['teacher']).
    kl_weight: weight of the KL on output distributions.
    hidden_weight: weight of the MSE on encoder hidden states.
    temperature: softmax temperature of both distributions in the KL.
  """

  teacher: Any
  kl_weight: float = 1.0
  hidden_weight: float = 1.0
  temperature: float = 1.0

  def __post_init__(self):
    for name in ('kl_weight', 'hidden_weight'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be non-negative, got {getattr(self, name)}')
    if self.temperature <= 0:
      raise ValueError(f'temperature must be positive, got {self.temperature}')


def kl_divergence(student_logits: Array, teacher_logits: Array, weights: Array,
                  temperature: float = 1.0) -> Array:
  """Mean over weighted tokens of KL(softmax(t/T) || softmax(s/T)) * T²."""
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  per_token = jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature ** 2
  weights = weights.astype(jnp.float32)
  return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def hidden_mse(student_encoded: Array, teacher_encoded: Array, input_valid: Array) -> Array:
  """Mean squared difference over valid input positions and features ([batch, length, d])."""
  mask = input_valid.astype(jnp.float32)[..., None]
  sq = jnp.square(student_encoded.astype(jnp.float32) - teacher_encoded.astype(jnp.float32))
  denom = jnp.maximum(jnp.sum(mask) * student_encoded.shape[-1], 1.0)
  return jnp.sum(sq * mask) / denom


def distillation_loss(student: PromptedModel, distillation: Distillation,
                      params: Dict[str, Any], batch: Batch, *, deterministic: bool = True,
                      rng: Optional[Array] = None) -> Tuple[Array, Dict[str, Array]]:
  """(loss, metrics) = task loss + weighted KL + weighted hidden MSE.

  Args:
    student: the prompted model being trained (its method's params are
      params['method']; its label smoothing and z-loss make the task loss).
    distillation: the teachers' method (params['teacher']) and weights.
    params: {'backbone', 'method', 'teacher'}.
    batch: T5X features (with `task_ids` for per-task teachers).

  Returns:
    The total loss and metrics: 'loss' (total), 'task_loss', 'kl', 'hidden_mse'
    and the task loss's own metrics.
  """
  if TEACHER not in params:
    raise ValueError(f"distillation needs the teachers' params under params[{TEACHER!r}]; "
                     f'found keys {sorted(params)}')
  logits, encoded, valid = student.logits_and_hidden(params, batch, deterministic=deterministic,
                                                     rng=rng)
  teacher = dataclasses.replace(student, method=distillation.teacher)
  teacher_params = {'backbone': params['backbone'], 'method': params[TEACHER]}
  t_logits, t_encoded, _ = jax.lax.stop_gradient(
      teacher.logits_and_hidden(teacher_params, batch))
  task_loss, metrics = student.loss_of_logits(logits, batch)
  kl = kl_divergence(logits, t_logits, loss_weights(batch), distillation.temperature)
  student_p, teacher_p = student.method.prompt_length, distillation.teacher.prompt_length
  if is_packed(batch):  # prompts sit inside packed rows, in the packer's marker slots
    if student_p != teacher_p:
      raise ValueError(f'packed rows hold one prompt length per segment: the student\'s '
                       f'{student_p} and the teachers\' {teacher_p} differ; train unpacked')
    mse = hidden_mse(encoded, t_encoded, batch['encoder_input_tokens'] > 0)
  else:
    mse = hidden_mse(encoded[:, student_p:], t_encoded[:, teacher_p:], valid[:, student_p:])
  loss = task_loss + distillation.kl_weight * kl + distillation.hidden_weight * mse
  return loss, dict(metrics, loss=loss, task_loss=task_loss, kl=kl, hidden_mse=mse)


def make_distill_step(student: PromptedModel, distillation: Distillation,
                      optimizer: optax.GradientTransformation
                      ) -> Callable[[TrainState, Any, Batch, Array], Tuple[TrainState, Dict]]:
  """`jaxpt.train.step.make_step` with `distillation_loss` as the objective.

  `frozen` must hold params['teacher'] (it does when the tree is split with
  the usual `r'method/.*'` rules).
  """

  def objective(params, batch, rng):
    return distillation_loss(student, distillation, params, batch, deterministic=False,
                             rng=rng)

  return make_step(objective, optimizer)
