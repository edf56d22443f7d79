"""Training checkpoints: resumable state without the frozen backbone.

Each step directory (`<model_dir>/checkpoints/<step>/`, written by an Orbax
`CheckpointManager`) holds two items:

  state/     the step, the trainable parameters and the optimizer state (Orbax
             StandardCheckpointHandler; sharded arrays are written shard-wise).
  progress/  JSON: the step, the data position (batches consumed) and the
             base RNG key's data and implementation.

The frozen backbone is never written: it is reloaded from where it came from.
Saves are atomic: Orbax writes into a temporary directory and renames it to
`<step>` once complete; half-written temporaries are removed when the
directory is next opened, and `latest_step` only sees finished steps.

Retention is "the last `keep_checkpoints` plus the best": an Orbax
`AnyPreservationPolicy` of `LatestN(keep_checkpoints)` and `BestN(n=1)` over the validation metric. (The legacy
`max_to_keep` + `best_fn` options cannot do this: with `best_fn` set,
`max_to_keep` keeps the `max_to_keep` *best* checkpoints and the latest one
may be deleted.) Checkpoints saved without metrics count for `LatestN` only.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.checkpoints.errors import CheckpointError

MODES = ('max', 'min')


class _QuietUntrackedSaves(logging.Filter):
  """Drops Orbax's warning for saves without metrics (expected between evaluations)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'did not provide metrics' not in record.getMessage()


logging.getLogger('absl').addFilter(_QuietUntrackedSaves())


class Restored(NamedTuple):
  """What `TrainCheckpointer.restore` returns."""
  state: Any
  data_position: int
  rng: jax.Array
  step: int


def _key_to_json(rng: jax.Array) -> Dict[str, Any]:
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return {'impl': str(jax.random.key_impl(rng)),
            'data': np.asarray(jax.random.key_data(rng)).tolist()}
  return {'impl': None, 'data': np.asarray(rng).tolist(), 'dtype': np.asarray(rng).dtype.name}


def _key_from_json(d: Mapping[str, Any]) -> jax.Array:
  if d.get('impl'):
    return jax.random.wrap_key_data(jnp.asarray(d['data'], jnp.uint32), impl=d['impl'])
  return jnp.asarray(d['data'], d.get('dtype', 'uint32'))


def _metric_fn(name: str, mode: str):
  """Orbax metric getter: a missing or non-finite value ranks worst."""
  worst = -math.inf if mode == 'max' else math.inf

  def get(metrics: Mapping[str, Any]) -> float:
    value = metrics.get(name) if isinstance(metrics, Mapping) else None
    try:
      value = float(value)
    except (TypeError, ValueError):
      return worst
    return value if math.isfinite(value) else worst

  return get


class TrainCheckpointer:
  """Saves and restores `TrainState` + data position + RNG under one directory.

  Args:
    directory: where step directories go (created if missing).
    keep_checkpoints: how many of the most recent checkpoints to keep (>= 1).
    best_metric: a key of the `metrics` passed to `save`; the best checkpoint
      by it is kept as well, whatever its age. None keeps only the last `keep_checkpoints`.
    best_mode: 'max' (accuracy) or 'min' (loss).
    async_save: write in a background thread after copying arrays to the host
      (`save` returns once the copy is done, so donated buffers are safe).
  """

  def __init__(self, directory: str, *, keep_checkpoints: int = 3,
               best_metric: Optional[str] = None,
               best_mode: str = 'max', async_save: bool = True):
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    if keep_checkpoints < 1:
      raise ValueError(f'keep_checkpoints must be at least 1, got {keep_checkpoints}')
    if best_mode not in MODES:
      raise ValueError(f'best_mode must be one of {MODES}, got {best_mode!r}')
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    self.best_mode = best_mode
    policies = [cm.LatestN(n=keep_checkpoints)]
    best_fn = None
    if best_metric is not None:
      best_fn = _metric_fn(best_metric, best_mode)
      policies.append(cm.BestN(get_metric_fn=best_fn, reverse=best_mode == 'min', n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        best_fn=best_fn, best_mode=best_mode,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=('state', 'progress'))
    except Exception as e:  # orbax raises many types for unreadable directories
      raise CheckpointError(f'{self.directory}: could not open the training checkpoints: '
                            f'{type(e).__name__}: {e}') from e
    self._ocp = ocp

  def __enter__(self) -> 'TrainCheckpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def all_steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the best `best_metric` (None without a metric or any saved)."""
    if self.best_metric is None:
      return None
    getter = _metric_fn(self.best_metric, self.best_mode)
    scored = [(getter(m), s) for s in self.all_steps()
              if (m := self._manager.metrics(s)) is not None]
    sign = 1.0 if self.best_mode == 'max' else -1.0
    scored = [(sign * v, s) for v, s in scored if math.isfinite(v)]
    return max(scored)[1] if scored else None  # ties: the later step

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, data_position: int, rng: jax.Array,
           metrics: Optional[Mapping[str, Any]] = None) -> None:
    """Writes checkpoint `step` (then applies retention).

    Args:
      step: the step number (the directory name).
      state: the train state (`step`, `trainable`, `opt_state`); only its arrays are
        written.
      data_position: batches consumed so far.
      rng: the run's base PRNG key (new-style or raw uint32).
      metrics: validation metrics (scalars) for best-checkpoint retention.
    """
    ocp = self._ocp
    tree = {'step': state.step, 'trainable': state.trainable, 'opt_state': state.opt_state}
    progress = {'step': int(step), 'data_position': int(data_position), 'rng': _key_to_json(rng)}
    if metrics is not None:
      metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), progress=ocp.args.JsonSave(progress)),
                       metrics=metrics, force=True)

  def restore(self, step: Optional[int] = None, *, like: Any) -> Restored:
    """Restores checkpoint `step`, or the latest one that can be read, into `like`'s structure.

    Args:
      step: which step; None for the latest complete one: a checkpoint that
        cannot be read (cut short by a crash, a full disk) is skipped with a
        warning naming it, and the one before it is restored.
      like: a train state (`jaxpt.train.step.TrainState`) with the same tree,
        shapes and dtypes (arrays or ShapeDtypeStructs); restored arrays take
        its shardings.

    Raises:
      CheckpointError: no checkpoint, or none that can be read (naming each
        step directory and why).
    """
    self._manager.wait_until_finished()
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f'{self.directory}: no training checkpoint to restore')
    if step is not None:
      if step not in steps:
        raise CheckpointError(f'{self.directory}: no checkpoint for step {step}; found {steps}')
      return self._restore(step, like)
    errors = []
    for candidate in sorted(steps, reverse=True):
      try:
        restored = self._restore(candidate, like)
      except CheckpointError as e:
        errors.append(str(e))
        logging.warning('%s; trying the checkpoint before it', e)
        print(f'WARNING: {e}; trying the checkpoint before it', flush=True)
        continue
      return restored
    raise CheckpointError(f'{self.directory}: no training checkpoint can be read: '
                          + ' | '.join(errors))

  def _restore(self, step: int, like: Any) -> Restored:
    ocp = self._ocp
    target = {'step': like.step, 'trainable': like.trainable, 'opt_state': like.opt_state}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    where = self.step_directory(step)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
      tree, progress = out['state'], out['progress']
      rng = _key_from_json(progress['rng'])
      data_position = int(progress['data_position'])
    except Exception as e:  # orbax / tensorstore raise many types for bad files
      first_line = (str(e).strip().splitlines() or [''])[0][:300]
      raise CheckpointError(f'{where}: could not restore the training checkpoint: '
                            f'{type(e).__name__}: {first_line}') from e
    state = like.replace(step=tree['step'], trainable=tree['trainable'],
                         opt_state=tree['opt_state'])
    return Restored(state=state, data_position=data_position, rng=rng, step=int(step))

  def wait(self) -> None:
    """Blocks until background saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
