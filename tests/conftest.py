"""Shared fixtures: the real data beside the repository, and tiny configs."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get('JAXPT_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """`../shared/data` (or $JAXPT_SHARED_DATA); skips the test when it is absent."""
  if not (SHARED_DATA / 'README.md').is_file():
    pytest.skip(f'shared data not found at {SHARED_DATA}: put the shared/ folder beside the '
                f'repository or set JAXPT_SHARED_DATA')
  return SHARED_DATA


@pytest.fixture(scope='session')
def vocab_path(shared_data) -> pathlib.Path:
  """The original T5 SentencePiece model (32000 pieces + 100 extra ids)."""
  path = shared_data / 'vocab' / 't5_spiece.model'
  if not path.is_file():
    pytest.skip(f'T5 SentencePiece vocabulary not found at {path}')
  return path


@pytest.fixture(scope='module')
def backbone():
  """Random parameters (seed 0) of `tests.tiny_configs.CONFIG`, built once per module (the
  tiny configurations themselves are constants in tests/tiny_configs.py)."""
  import jax

  from jaxpt.models.t5 import init_params
  from tests.tiny_configs import CONFIG
  return init_params(CONFIG, jax.random.key(0))
