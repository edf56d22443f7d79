"""MODEL_DIR: a resume with other settings is refused, start_fresh moves the old run aside,
two runs cannot share the directory."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from jaxpt.cli import run_dir
from jaxpt.cli.run_dir import RunDirError


def test_same_identity_resumes_other_identity_is_refused(tmp_path):
  ident = {'backbone': 'bf16-sha256:aa', 'seed': 0, 'data': {'task': 'rte'}}
  run_dir.check_identity(str(tmp_path), ident, start_fresh=False)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1}\n')
  run_dir.check_identity(str(tmp_path), dict(ident), start_fresh=False)  # the same run
  with pytest.raises(RunDirError, match=r"seed: 0 -> 1.*start_fresh=True"):
    run_dir.check_identity(str(tmp_path), dict(ident, seed=1), start_fresh=False)
  with pytest.raises(RunDirError, match=r"data: \{'task': 'rte'\} -> \{'task': 'cb'\}"):
    run_dir.check_identity(str(tmp_path), dict(ident, data={'task': 'cb'}), start_fresh=False)


def test_start_fresh_moves_the_old_run_aside(tmp_path):
  ident = {'backbone': 'x', 'seed': 0}
  run_dir.check_identity(str(tmp_path), ident, start_fresh=False)
  (tmp_path / 'metrics.jsonl').write_text('old\n')
  (tmp_path / 'checkpoints').mkdir()
  run_dir.check_identity(str(tmp_path), dict(ident, seed=1), start_fresh=True)
  aside = [p for p in tmp_path.iterdir() if p.name.startswith('replaced-')]
  assert len(aside) == 1
  assert (aside[0] / 'metrics.jsonl').read_text() == 'old\n'
  assert (aside[0] / 'checkpoints').is_dir() and not (tmp_path / 'checkpoints').exists()
  run_dir.check_identity(str(tmp_path), dict(ident, seed=1), start_fresh=False)  # the new run


def _hold(directory, ready, release):
  with run_dir.locked(directory):
    ready.set()
    release.wait(60)


def test_a_second_run_in_the_same_directory_is_refused(tmp_path):
  ctx = multiprocessing.get_context('spawn')
  ready, release = ctx.Event(), ctx.Event()
  holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
  holder.start()
  try:
    assert ready.wait(60)
    with pytest.raises(RunDirError, match=f'in use by pid {holder.pid}'):
      with run_dir.locked(str(tmp_path)):
        pass
  finally:
    release.set()
    holder.join(60)
  with run_dir.locked(str(tmp_path)):  # free again once the first run ends
    assert os.path.isfile(tmp_path / run_dir.LOCK_FILE)
