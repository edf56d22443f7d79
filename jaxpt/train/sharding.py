"""The training step over a device mesh: where state, frozen weights and batches live.

`sharded_train_step` is the one builder of the partitioned step: `jaxpt train`
(`jaxpt.train.loop`) runs it and `jaxpt plan` compiles it ahead of time, so the
plan describes the program that trains.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpt import partitioning as pt
from jaxpt.methods.split import partition
from jaxpt.prompted.base import PromptedModel
from jaxpt.train.step import TrainState, init_state, make_train_step

@dataclasses.dataclass(frozen=True)
class TrainShardings:
  """Where everything of a training step lives.

  Attributes:
    state: a TrainState of shardings (step, trainable, opt_state).
    frozen: shardings of the frozen parameters.
    batch: the sharding of every batch feature (a pytree prefix).
    replicated: for the RNG key and the metrics.
    mesh: the mesh.
    rules: the logical axis rules.
  """

  state: Any
  frozen: Any
  batch: NamedSharding
  replicated: NamedSharding
  mesh: Mesh
  rules: pt.LogicalRules


def train_shardings(config: Any, params: Mapping[str, Any], optimizer: Any,
                    trainable_rules: Sequence[str], mesh: Mesh, rules: pt.LogicalRules,
                    large_leaf_bytes: int = pt.LARGE_LEAF_BYTES) -> TrainShardings:
  """Shardings of the TrainState, frozen params and batch of one training run.

  Args:
    config: the backbone's config (`scan_layers` must match `params`).
    params: `{'backbone', 'method'}` arrays or ShapeDtypeStructs (nothing is
      allocated or moved).
    optimizer: the optax optimizer (its state shapes come from `eval_shape`).
    trainable_rules: regexes of `jaxpt.methods.split.partition`.
    mesh: the ('data', 'model') mesh.
    rules: logical axis rules.
    large_leaf_bytes: see `tree_shardings`.
  """
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), dict(params))
  full = pt.params_shardings(config, abstract, mesh, rules, large_leaf_bytes)
  trainable, _ = partition(abstract, trainable_rules)
  trainable_sh, frozen_sh = partition(full, trainable_rules)
  state = jax.eval_shape(lambda t: init_state(t, optimizer), trainable)
  replicated = NamedSharding(mesh, P())
  state_sh = TrainState(step=replicated, trainable=trainable_sh,
                        opt_state=pt.opt_state_shardings(state.opt_state, trainable, trainable_sh,
                                                      mesh))
  return TrainShardings(state=state_sh, frozen=frozen_sh, batch=pt.batch_sharding(mesh, rules),
                        replicated=replicated, mesh=mesh, rules=tuple(rules))


class ShardedStep:
  """A jitted `step(state, frozen, batch, rng)` with in/out shardings and the rules context.

  Call it like the step; `lower(...)` lowers it (arrays or ShapeDtypeStructs
  with shardings) for ahead-of-time compilation and memory analysis.
  """

  def __init__(self, step: Callable, shardings: TrainShardings, donate: bool = True):
    self.shardings = shardings
    sh = shardings
    self._jitted = jax.jit(step, in_shardings=(sh.state, sh.frozen, sh.batch, sh.replicated),
                           out_shardings=(sh.state, sh.replicated),
                           donate_argnums=(0,) if donate else ())

  def __call__(self, state: Any, frozen: Any, batch: Mapping[str, Any], rng: jax.Array):
    with pt.axis_rules_context(self.shardings.mesh, self.shardings.rules):
      return self._jitted(state, frozen, pt.shard_batch(batch, self.shardings.batch), rng)

  def lower(self, *args: Any) -> Any:
    with pt.axis_rules_context(self.shardings.mesh, self.shardings.rules):
      return self._jitted.lower(*args)


def shard_train_step(step: Callable, shardings: TrainShardings, donate: bool = True
                     ) -> ShardedStep:
  """Jits `jaxpt.train.step.make_train_step(...)`'s step over `shardings.mesh`."""
  return ShardedStep(step, shardings, donate)


def sharded_train_step(model: PromptedModel, params: Mapping[str, Any], optimizer: Any,
                       trainable_rules: Sequence[str], partitioning: Any, *,
                       step: Callable = None, donate: bool = True
                       ) -> Tuple[ShardedStep, TrainShardings]:
  """The partitioned training step of `model` and where its arguments live.

  Args:
    model: the prompted model (its loss is the objective).
    params: `{'backbone', 'method'}` arrays or ShapeDtypeStructs.
    optimizer: the optax optimizer.
    trainable_rules: regexes of `jaxpt.methods.split.partition`.
    partitioning: a `jaxpt.partitioning.PartitionConfig` (mesh and rules).
    step: the unjitted step (default: `make_train_step(model, optimizer)`).
    donate: donate the state to the step.
  """
  mesh, rules = partitioning.mesh(), partitioning.rules()
  shardings = train_shardings(model.config, params, optimizer, trainable_rules, mesh, rules)
  step = step if step is not None else make_train_step(model, optimizer)
  return ShardedStep(step, shardings, donate), shardings
