"""Every shell block of README.md and docs/*.md runs as written, or says why it cannot.

A block fenced ```` ```bash notest: REASON ```` (network, TPU, hours of compute) is not run;
the reason must be given. The others run in order, one bash process per block with `-e`, in a
fresh directory per file that holds links to the repository's `examples/`, `jaxpt/`, `gin/` and
`benchmarks/` and a `../shared` beside it, as a reader's checkout would. The README's Python
blocks run through pytest-markdown-docs (conftest.py).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import List, Tuple

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
DOCS = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
FENCE = re.compile(r'^```(?:bash|sh|shell)([^\n]*)\n(.*?)^```', re.S | re.M)


def shell_blocks(path: pathlib.Path) -> List[Tuple[int, str, str]]:
  """(line, info after the language, body) of every shell block of a markdown file."""
  text = path.read_text()
  return [(text[:m.start()].count('\n') + 1, m.group(1).strip(), m.group(2))
          for m in FENCE.finditer(text)]


def _cases():
  for path in DOCS:
    runnable = [(line, body) for line, info, body in shell_blocks(path)
                if not info.startswith('notest')]
    if runnable:
      yield pytest.param(path, runnable, id=path.name)


def test_every_skipped_block_says_why():
  for path in DOCS:
    for line, info, _ in shell_blocks(path):
      if info.startswith('notest'):
        reason = info[len('notest'):].lstrip(':').strip()
        assert len(reason) > 10, f'{path.name}:{line}: a notest block must say why'


@pytest.mark.slow
@pytest.mark.parametrize('path, blocks', list(_cases()))
def test_shell_blocks_run_as_written(path, blocks, tmp_path):
  needs_shared = any('../shared' in body for _, body in blocks)
  if needs_shared and not (SHARED / 'data').is_dir():
    pytest.skip(f'{path.name} reads ../shared/data, which is not beside the repository')
  workdir = tmp_path / 'checkout'
  workdir.mkdir()
  for name in ('examples', 'jaxpt', 'gin', 'benchmarks'):
    os.symlink(REPO / name, workdir / name)
  if SHARED.is_dir():
    os.symlink(SHARED, tmp_path / 'shared')
  env = dict(os.environ, PATH=f'{pathlib.Path(sys.executable).parent}{os.pathsep}'
             f'{os.environ.get("PATH", "")}')
  for line, body in blocks:
    out = subprocess.run(['bash', '-e', '-c', body], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, (f'{path.name}:{line} exited {out.returncode}:\n'
                                 f'{out.stdout[-3000:]}\n{out.stderr[-3000:]}')
