"""The training loop: resumable, logged, checkpointed, and stopped on divergence.

`train` runs `jaxpt.train.step` for `num_steps` steps over batches drawn by
position (`batches(k)` is the k-th batch), so a run resumed from a checkpoint
at data position k sees exactly the batches an uninterrupted run would have
seen, and its parameters continue bit for bit.

Files under `model_dir`:

  checkpoints/<step>/  training checkpoints (`jaxpt.checkpoints.training`):
                       the last `keep_checkpoints` and the best by `best_metric`.
  metrics.jsonl        one JSON line per logged step ({"split": "train"}) and
                       per evaluation ({"split": "eval"}).
  prompt/              a prompt checkpoint of the latest method parameters
  prompt_best/         ... and of the best ones (`jaxpt.checkpoints.prompts`),
                       written when only method parameters are trained.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpt.methods.prompt import check_task_ids
from jaxpt.partitioning import place
from jaxpt.methods.split import PROMPT_ONLY, combine, partition
from jaxpt.prompted.base import PromptedModel
from jaxpt.prompted.model import Model
from jaxpt.train.distill import TEACHER, make_distill_step
from jaxpt.train.sharding import sharded_train_step
from jaxpt.train.step import TrainState, init_state, make_train_step

Batch = Mapping[str, Any]
METRICS_FILE = 'metrics.jsonl'
CHECKPOINT_DIR = 'checkpoints'
PROMPT_DIR = 'prompt'
BEST_PROMPT_DIR = 'prompt_best'


class TrainingDiverged(RuntimeError):
  """A step's loss or gradients were not finite; training stopped before applying it.

  Attributes:
    step: the step (1-based) whose loss / gradient norm was not finite.
    data_position: the position of the batch that step used.
    last_good_step: the latest checkpoint on disk (None without one).
    last_good_checkpoint: its directory (None without one); it is kept.
  """

  def __init__(self, message: str, *, step: int, data_position: int,
               last_good_step: Optional[int], last_good_checkpoint: Optional[str]):
    super().__init__(message)
    self.step = step
    self.data_position = data_position
    self.last_good_step = last_good_step
    self.last_good_checkpoint = last_good_checkpoint


class TrainResult(NamedTuple):
  """What `train` returns.

  state: the final TrainState (trainable leaves and optimizer state only).
  params: the full tree {'backbone': ..., 'method': ...} with the trained leaves.
  method_params: `params['method']`.
  step: steps done in total (including those of a resumed run).
  data_position: batches consumed in total.
  history: every record written to metrics.jsonl by this call.
  resumed_from: the checkpoint step this call started from (None: from scratch).
  best_step: the best checkpoint by `best_metric` (None without one).
  checkpoint_dir: where training checkpoints are (None without `model_dir`).
  """
  state: TrainState
  params: Dict[str, Any]
  method_params: Dict[str, Any]
  step: int
  data_position: int
  history: List[Dict[str, Any]]
  resumed_from: Optional[int]
  best_step: Optional[int]
  checkpoint_dir: Optional[str]


def _make_step(model: PromptedModel, optimizer: optax.GradientTransformation,
               distillation: Any = None) -> Callable:
  """The task step, or the distillation step when `distillation` is given."""
  if distillation is None:
    return make_train_step(model, optimizer)
  return make_distill_step(model, distillation, optimizer)


@functools.lru_cache(maxsize=8)
def _jitted_step(model: PromptedModel, optimizer: optax.GradientTransformation,
                 distillation: Any = None) -> Callable:
  """The jitted step, state donated; cached so a resumed run in-process reuses the compile."""
  return jax.jit(_make_step(model, optimizer, distillation), donate_argnums=(0,))


# Prompt RMS / embedding RMS above which a run is told its prompt has blown up (trained
# prompts stay within a few times the embeddings; a learning rate of 1e9 gives 1e27).
PROMPT_NORM_WARNING = 100.0


def _rms(x: Any) -> float:
  return float(jnp.sqrt(jnp.mean(jnp.square(jnp.asarray(x, jnp.float32)))))


def _scalars(metrics: Mapping[str, Any]) -> Dict[str, float]:
  out = {}
  for k, v in metrics.items():
    arr = np.asarray(v)
    if arr.ndim == 0:
      out[k] = arr.item() if arr.dtype == bool else float(arr)
  return out


def _format_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  return str(datetime.timedelta(seconds=int(round(seconds))))


def _truncate_metrics(path: str, last_step: int) -> None:
  """Drops records of steps after `last_step` (written by a run that did not checkpoint them)."""
  if not os.path.isfile(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a crash
      if int(record.get('step', 0)) <= last_step:
        kept.append(json.dumps(record) + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _is_main_process() -> bool:
  """Files other than Orbax's (metrics.jsonl, prompt checkpoints) are written by process 0."""
  return jax.process_index() == 0


def _host_copy(tree: Any) -> Any:
  """`tree` with every array readable on this process (gathered from the others if needed)."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                      if isinstance(x, jax.Array) and not x.is_fully_addressable else x, tree)


def _is_better(value: float, best: Optional[float], mode: str) -> bool:
  if value is None or not np.isfinite(value):
    return False
  if best is None:
    return True
  return value > best if mode == 'max' else value < best


def _read_best(directory: str, metric: str) -> Optional[float]:
  """The metric recorded in an existing best-prompt checkpoint (to resume the comparison)."""
  from jaxpt.checkpoints import prompts
  from jaxpt.checkpoints.errors import CheckpointError

  if not prompts.is_prompt_directory(directory):
    return None
  try:
    value = (prompts.read_manifest(directory).get('metrics') or {}).get(metric)
  except CheckpointError:
    return None
  return None if value is None else float(value)


def train(model: PromptedModel, backbone_params: Any, method_params: Any,
          batches: Callable[[int], Batch], *, optimizer: optax.GradientTransformation,
          num_steps: int, rng: jax.Array, trainable_rules: Sequence[str] = PROMPT_ONLY,
          model_dir: Optional[str] = None, checkpoint_every: int = 1000, keep_checkpoints: int = 3,
          eval_fn: Optional[Callable[[Dict[str, Any], int], Mapping[str, Any]]] = None,
          eval_every: Optional[int] = None, best_metric: Optional[str] = None,
          best_mode: str = 'max', log_every: int = 100,
          on_metrics: Optional[Callable[[Dict[str, Any]], None]] = None,
          backbone_source: str = '', async_checkpoints: bool = True,
          print_fn: Optional[Callable[[str], None]] = print,
          partitioning: Optional[Any] = None, distillation: Optional[Any] = None,
          teacher_params: Any = None) -> TrainResult:
  """Trains `method_params` (or whatever `trainable_rules` selects) on a frozen backbone.

  Args:
    model: the prompted model (backbone config, method, loss settings); the
      step minimizes `model.loss`.
    backbone_params: the backbone's parameters (never modified unless
      `trainable_rules` selects them).
    method_params: its initial parameters (`method.init(...)`); not donated.
    batches: data position k -> the k-th batch, a dict of numpy arrays with
      encoder_input_tokens, decoder_input_tokens, decoder_target_tokens and
      optionally task_ids / decoder_loss_weights, or packed rows
      (`jaxpt.data.packing`: segment ids, positions, per-token task ids). Must be
      deterministic in k.
      On several processes (`jax.distributed`), this process's rows of the
      global batch (`jaxpt.data.seqio_batches.TrainBatches` reads them).
    optimizer: an optax optimizer (`jaxpt.train.optim.make_optimizer`).
    num_steps: total steps; a resumed run stops at the same total.
    rng: base PRNG key (dropout); each step folds in its step number. A
      resumed run uses the key stored in the checkpoint.
    trainable_rules: regexes over 'backbone/...' / 'method/...' paths
      (`split.PROMPT_ONLY`, `split.EVERYTHING`).
    model_dir: where checkpoints, metrics.jsonl and prompt checkpoints go; the
      latest checkpoint there is resumed from. None: nothing is written.
    checkpoint_every: steps between checkpoints (the last step, and every
      evaluation step, are checkpointed too).
    keep_checkpoints: how many recent checkpoints to keep (plus the best by `best_metric`).
    eval_fn: (params {'backbone', 'method'}, step) -> scalar metrics.
    eval_every: steps between evaluations (and the last step); None: never.
    best_metric: a key of eval_fn's metrics that ranks checkpoints.
    best_mode: 'max' or 'min' for `best_metric`.
    log_every: steps between progress lines / metrics.jsonl records.
    on_metrics: called with each record written to metrics.jsonl.
    backbone_source: where the backbone came from, recorded in prompt checkpoints.
    async_checkpoints: write checkpoints in the background.
    print_fn: where progress lines go (None: silent).
    partitioning: a `jaxpt.partitioning.PartitionConfig` (or anything with
      `mesh()` and `rules()`): shard the run over its ('data', 'model') mesh by
      its logical axis rules. None: the default single-program jit.
    distillation: a `jaxpt.train.distill.Distillation`: train on the task loss
      plus distillation from its (frozen) teachers, whose parameters are
      `teacher_params` (kept under params['teacher'], never trained).
    teacher_params: the teachers' method parameters (with `distillation` only).

  Returns:
    A TrainResult.

  Raises:
    TrainingDiverged: a step's loss or gradient norm was not finite (the
      message names the step and the last good checkpoint, which is kept).
    CheckpointError: the checkpoint to resume from cannot be read.
  """
  from jaxpt.checkpoints import prompts
  from jaxpt.checkpoints.training import TrainCheckpointer

  if num_steps < 0:
    raise ValueError(f'num_steps must be non-negative, got {num_steps}')
  for name, value in (('checkpoint_every', checkpoint_every), ('log_every', log_every),
                      ('eval_every', eval_every)):
    if value is not None and value <= 0:
      raise ValueError(f'{name} must be positive, got {value}')
  if best_metric is not None and eval_fn is None:
    raise ValueError(f'best_metric={best_metric!r} needs an eval_fn to compute it')
  say = print_fn or (lambda _: None)
  if jax.process_count() > 1 and partitioning is None:
    raise ValueError(f'this is one of {jax.process_count()} processes (jax.distributed): '
                     f'training over several processes needs a partitioning (add '
                     f'--gin_file=partitioning/pjit.gin)')

  if (distillation is None) != (teacher_params is None):
    raise ValueError('distillation and teacher_params go together: pass both or neither')
  config, method = model.config, model.method
  num_task_prompts = method.num_prompts if method.num_prompts > 1 else None
  params = {'backbone': backbone_params, 'method': method_params or {}}
  if distillation is not None:
    params[TEACHER] = teacher_params
  trainable, frozen = partition(params, trainable_rules)
  if distillation is not None and TEACHER in trainable:
    raise ValueError(f'trainable_rules {list(trainable_rules)} select teacher parameters; '
                     f'teachers must stay frozen (train r"method/.*")')
  # The state is donated to each step: copy so the caller's arrays stay valid.
  trainable = jax.tree.map(jnp.copy, trainable)
  state = init_state(trainable, optimizer)
  sharded_step = None
  if partitioning is not None:
    sharded_step, shardings = sharded_train_step(
        model, params, optimizer, trainable_rules, partitioning,
        step=_make_step(model, optimizer, distillation))
    state, frozen = place(state, shardings.state), place(frozen, shardings.frozen)
    state = jax.tree.map(jnp.copy, state)  # never donate the caller's arrays
  export_prompts = (model_dir is not None and 'backbone' not in trainable
                    and bool(jax.tree.leaves(trainable.get('method', {}))))

  start, data_position, resumed_from = 0, 0, None
  checkpointer = None
  metrics_path = None
  best_value = None
  backbone = None
  if model_dir is not None:
    model_dir = os.path.abspath(os.fspath(model_dir))
    os.makedirs(model_dir, exist_ok=True)
    checkpointer = TrainCheckpointer(os.path.join(model_dir, CHECKPOINT_DIR), keep_checkpoints=keep_checkpoints,
                                     best_metric=best_metric, best_mode=best_mode,
                                     async_save=async_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
      restored = checkpointer.restore(like=state)  # the latest that can be read
      state, data_position, rng = restored.state, restored.data_position, restored.rng
      start = resumed_from = restored.step
      say(f'resuming from {checkpointer.step_directory(start)} (step {start}, data position '
          f'{data_position})')
    metrics_path = os.path.join(model_dir, METRICS_FILE) if _is_main_process() else None
    if metrics_path is not None:
      _truncate_metrics(metrics_path, start)
    if export_prompts and _is_main_process():
      backbone = Model(config, backbone_params, source=backbone_source)
      if best_metric is not None:
        best_value = _read_best(os.path.join(model_dir, BEST_PROMPT_DIR), best_metric)

  # Commit every state array to its current sharding: a restored state is committed, so a
  # fresh one must be too, or the two would compile separately.
  state = jax.tree.map(lambda x: jax.device_put(x, x.sharding), state)
  try:
    step_fn = sharded_step or _jitted_step(model, optimizer, distillation)
  except TypeError:  # an unhashable method or optimizer: compile for this call only
    step_fn = jax.jit(_make_step(model, optimizer, distillation), donate_argnums=(0,))
  history: List[Dict[str, Any]] = []

  def record(entry: Dict[str, Any]) -> None:
    history.append(entry)
    if metrics_path is not None:
      with open(metrics_path, 'a') as f:
        f.write(json.dumps(entry) + '\n')
    if on_metrics is not None:
      on_metrics(entry)

  def check(step: int, metrics: Mapping[str, Any]) -> None:
    if bool(metrics['finite']):
      return
    last = None
    if checkpointer is not None:
      checkpointer.wait()
      last = checkpointer.latest_step()
    where = checkpointer.step_directory(last) if last is not None else None
    kept = (f'the last good checkpoint is {where} (step {last}); it is kept'
            if where else 'there is no checkpoint to go back to' +
            ('' if model_dir else ' (model_dir was not set)'))
    if checkpointer is not None:
      checkpointer.close()
    raise TrainingDiverged(
        f'training diverged at step {step} (data position {step - 1}): loss '
        f'{float(metrics["loss"])}, gradient norm {float(metrics["grad_norm"])} are not '
        f'finite, so the update was not applied; {kept}. Lower the learning rate, clip '
        f'gradients (clip_norm) or inspect batch {step - 1}.',
        step=step, data_position=step - 1, last_good_step=last, last_good_checkpoint=where)

  t_last, s_last = time.perf_counter(), start
  examples = 0  # examples since t_last (packed rows hold several)
  watch_norm = method.has_prompt_vectors and 'method' in trainable
  embedding_rms = (_rms(backbone_params['token_embedder']['embedding'])
                   if watch_norm and 'token_embedder' in backbone_params else None)
  norm_warned = False
  pending = None  # (step, metrics) not yet checked for finiteness
  try:
    for s in range(start + 1, num_steps + 1):
      batch = batches(data_position)
      for key in ('task_ids', 'encoder_task_ids'):  # unpacked / packed rows
        if num_task_prompts is not None and key in batch:
          try:
            check_task_ids(batch[key], num_task_prompts)
          except ValueError as e:
            raise ValueError(f'batch at data position {data_position}: {e}') from None
      if 'decoder_segment_ids' in batch:  # packed: a row's last segment id counts its examples
        examples += int(np.asarray(batch['decoder_segment_ids']).max(axis=1).sum())
      else:
        examples += int(np.shape(batch['encoder_input_tokens'])[0])
      state, metrics = step_fn(state, frozen, dict(batch), rng)
      data_position += 1
      if s == start + 1 and s != num_steps and log_every > 1:
        # The first step compiles: report it apart, so examples/s is the steady rate.
        jax.block_until_ready(metrics)
        say(f'step {s}: compiled and ran the first step in {time.perf_counter() - t_last:.1f} s '
            f'(not counted in examples/s)')
        t_last, s_last, examples = time.perf_counter(), s, 0
      if pending is not None:
        check(*pending)  # the previous step, while this one runs
      pending = (s, metrics)
      last = s == num_steps
      do_log = s % log_every == 0 or last
      do_eval = eval_fn is not None and eval_every is not None and (s % eval_every == 0 or last)
      do_save = checkpointer is not None and (s % checkpoint_every == 0 or last or do_eval)
      if not (do_log or do_eval or do_save):
        continue
      check(*pending)
      pending = None

      if do_log:
        now = time.perf_counter()
        rate = examples * jax.process_count() / max(now - t_last, 1e-9)
        eta = (num_steps - s) * (now - t_last) / max(s - s_last, 1)
        values = _scalars(metrics)
        values.pop('finite', None)
        entry = {'step': s, 'split': 'train', **values, 'examples_per_second': rate,
                 'time': time.time()}
        say(f'step {s}/{num_steps}  loss {values["loss"]:.4f}  accuracy '
            f'{values.get("token_accuracy", float("nan")):.3f}  {rate:.1f} examples/s  '
            f'ETA {_format_eta(eta)}')
        record(entry)
        t_last, s_last, examples = now, s, 0
        if embedding_rms and not norm_warned:
          ratio = _rms(method.task_prompts(state.trainable['method'])) / embedding_rms
          if ratio > PROMPT_NORM_WARNING:
            norm_warned = True
            say(f'WARNING: at step {s} the prompt vectors are {ratio:.3g}x the size of the '
                f'token embeddings (RMS): the learning rate is likely too high for this '
                f'optimizer (the prompt has left the embedding space)')

      eval_metrics = None
      if do_eval:
        eval_metrics = _scalars(eval_fn(_host_copy(combine(state.trainable, frozen)), s))
        shown = '  '.join(f'{k} {v:.4f}' for k, v in sorted(eval_metrics.items()))
        say(f'eval at step {s}: {shown}')
        record({'step': s, 'split': 'eval', **eval_metrics, 'time': time.time()})
        if best_metric is not None and best_metric not in eval_metrics:
          raise ValueError(f'eval_fn returned {sorted(eval_metrics)}, without best_metric '
                           f'{best_metric!r}')

      if do_save:
        checkpointer.save(s, state, data_position, rng, metrics=eval_metrics)
        if backbone is not None:
          # The exported prompt never runs ahead of the committed training checkpoint (a
          # prompt-only state is small, so waiting for it costs little).
          checkpointer.wait()
          method_now = state.trainable['method']
          prompts.save_prompt(os.path.join(model_dir, PROMPT_DIR), method, method_now, backbone,
                              step=s, metrics=eval_metrics)
          if (best_metric is not None and eval_metrics is not None
              and _is_better(eval_metrics[best_metric], best_value, best_mode)):
            best_value = eval_metrics[best_metric]
            prompts.save_prompt(os.path.join(model_dir, BEST_PROMPT_DIR), method, method_now,
                                backbone, step=s, metrics=eval_metrics)
    if pending is not None:
      check(*pending)
  except BaseException:
    if checkpointer is not None:
      try:
        checkpointer.close()
      except Exception:  # already closed by `check`, or the original error matters more
        pass
    raise

  best_step = None
  if checkpointer is not None:
    checkpointer.wait()
    best_step = checkpointer.best_step()
    checkpointer.close()
  full = combine(state.trainable, frozen)
  return TrainResult(state=state, params=full, method_params=full.get('method', {}), step=int(
      state.step), data_position=data_position, history=history, resumed_from=resumed_from,
                     best_step=best_step,
                     checkpoint_dir=checkpointer.directory if checkpointer else None)
