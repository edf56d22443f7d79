"""Root pytest configuration: the README's and docs' Python blocks run as tests.

pytest-markdown-docs (`--markdown-docs`, set in pyproject.toml) turns every ```python block
of README.md and docs/*.md into a test. They are end-to-end (loading backbones, training a
few steps), so they carry the `slow` marker: CI runs them, `-m 'not slow'` skips them. Each
runs in a fresh temporary directory holding links to the repository's examples, so the files
a block writes (out/, runs/) land there, and blocks of one file share it in order (a later
block may read what an earlier one wrote, as a reader following along would).
"""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent
_WORKDIRS = {}


def pytest_collection_modifyitems(items):
  for item in items:
    if type(item).__name__.startswith('Markdown'):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _markdown_block_workdir(request, tmp_path_factory, monkeypatch):
  if not type(request.node).__name__.startswith('Markdown'):
    yield
    return
  source = str(request.node.path)
  if source not in _WORKDIRS:
    workdir = tmp_path_factory.mktemp(pathlib.Path(source).stem)
    for name in ('examples', 'jaxpt', 'gin'):
      os.symlink(REPO / name, workdir / name)
    _WORKDIRS[source] = workdir
  monkeypatch.chdir(_WORKDIRS[source])
  yield
