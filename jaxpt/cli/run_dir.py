"""A training run's directory: its identity, checked on resume, and a lock against two runs.

`jaxpt train` resumes from whatever MODEL_DIR holds. That is right for the same run and
silently wrong for another one (another backbone, data, method, seed, batch or optimizer
would continue from foreign checkpoints). The first run records what makes its result
(`run.json`); a later run compares, and refuses a mismatch naming each difference, unless it
is told to start fresh, which moves the old run aside (nothing is deleted). Settings that only
extend or observe a run (TRAIN_STEPS, evaluation and logging intervals) may change.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
from typing import Any, Dict, Iterator, Mapping

IDENTITY_FILE = 'run.json'
LOCK_FILE = '.lock'
# What a run writes (moved aside together by a fresh start).
RUN_FILES = ('checkpoints', 'prompt', 'prompt_best', 'model', 'metrics.jsonl', 'train', 'eval',
             'config.gin', 'operative_config.gin', IDENTITY_FILE)


class RunDirError(ValueError):
  """MODEL_DIR holds another run, or is in use."""


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> Dict[str, Any]:
  keys = sorted(set(old) | set(new))
  return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def check_identity(model_dir: str, identity: Mapping[str, Any], start_fresh: bool) -> None:
  """Records `identity` in a new run directory, or checks it against the recorded one.

  Raises:
    RunDirError: the directory holds a run with another identity (and `start_fresh`
      is false), naming what differs.
  """
  path = os.path.join(model_dir, IDENTITY_FILE)
  identity = json.loads(json.dumps(identity, default=str))  # the form it is stored in
  has_run = any(os.path.exists(os.path.join(model_dir, n)) for n in RUN_FILES)
  if os.path.isfile(path) and not start_fresh:
    with open(path) as f:
      recorded = json.load(f)
    diff = _differences(recorded, identity)
    if diff:
      shown = '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in
                        ((k, v[0], v[1]) for k, v in list(diff.items())[:4]))
      raise RunDirError(
          f'{model_dir} holds another run ({shown}); resuming would continue it with these '
          f'settings. Use a new MODEL_DIR, or start over here with '
          f'--gin.jaxpt.train.start_fresh=True (the old run is moved aside, not deleted)')
    return
  if has_run and (start_fresh or not os.path.isfile(path)):
    if start_fresh:
      _move_aside(model_dir)
    # else: a run directory from before identities were recorded: adopt it
  with open(path + '.tmp', 'w') as f:
    json.dump(identity, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)


def _move_aside(model_dir: str) -> str:
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  target = os.path.join(model_dir, f'replaced-{stamp}')
  os.makedirs(target, exist_ok=True)
  for name in RUN_FILES:
    source = os.path.join(model_dir, name)
    if os.path.exists(source):
      os.replace(source, os.path.join(target, name))
  print(f'start_fresh: the previous run in {model_dir} is now in {target}', flush=True)
  return target


@contextlib.contextmanager
def locked(model_dir: str) -> Iterator[None]:
  """Holds an exclusive lock on MODEL_DIR for the run (local directories; released on exit).

  Raises:
    RunDirError: another process holds it.
  """
  import fcntl

  path = os.path.join(model_dir, LOCK_FILE)
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise RunDirError(f'{model_dir} is in use by {holder}: two runs in one MODEL_DIR would '
                        f'interleave metrics and overwrite checkpoints') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {os.uname().nodename}')
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)
