"""Gin for the command line: `--gin_file` / `--gin.X=Y` parsing for `jaxpt train` and friends.

Registration happens on import, as in T5X, so the gin files load with plain gin too:
  `import jaxpt`            jaxpt.preset, jaxpt.methods.<every METHODS class>,
                            jaxpt.methods.source_prompt / shared_prompt,
                            jaxpt.train.make_optimizer, jaxpt.assets.mini_t5_path / mini_gpt2_path
  `import jaxpt.cli.runs`   the runs jaxpt.train / evaluate / infer / export
  `import jaxpt.partitioning`   jaxpt.partitioning.PartitionConfig, logical_axis_rules
Each gin file under gin/ imports the modules whose configurables it binds. Importing this
module imports all of them (and `tasks`, for tasks.local.get_data_dir), so configs recorded
with `import jaxpt.cli.gin_flags` (older operative_config.gin files) still load.

`--gin_file` names resolve against the working directory, then --gin_search_paths, then
the repository's gin/. `include` lines inside gin files resolve through gin's own search path:
the working directory, the repository's gin/ (added by `import jaxpt`), then the
--gin_search_paths directories; give your own files names that differ from jaxpt's.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import pathlib
import re
from typing import List, Sequence, Set

import gin

import jaxpt  # noqa: F401  (registers the library's configurables)
import jaxpt.cli.runs  # noqa: F401  (registers the runs)
import jaxpt.partitioning  # noqa: F401  (registers PartitionConfig)
import tasks  # noqa: F401  (light; its gin-settable data directory)

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / 'gin'

_search_paths: Set[str] = set()


class _IncludeMisses(logging.Filter):
  """Drops gin's ERROR record for each search path an `include` is not under.

  gin tries its search paths in turn and its package-resource reader logs
  'Path not found' for every miss, also when a later path has the file; a file
  found nowhere still raises IOError naming every path searched.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return record.msg != 'Path not found: %s'


@contextlib.contextmanager
def _quiet_include_misses():
  root, quiet = logging.getLogger(), _IncludeMisses()
  root.addFilter(quiet)
  try:
    yield
  finally:
    root.removeFilter(quiet)


def _find(name: str, search_paths: Sequence[str]) -> str:
  if os.path.isfile(name):
    return name
  for root in search_paths:
    candidate = os.path.join(root, name)
    if os.path.isfile(candidate):
      return candidate
  known = []
  for root in search_paths:
    for dirpath, _, files in os.walk(root):
      known += [os.path.relpath(os.path.join(dirpath, f), root) for f in files
                if f.endswith('.gin')]
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  hint = f'; did you mean {" or ".join(close)}?' if close else ''
  raise FileNotFoundError(f'gin file {name!r} not found in {list(search_paths)}{hint}')


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> List[str]:
  """Parses gin files then `--gin.X=Y` bindings; errors name the bad file or binding."""
  paths = [p for p in search_paths if p] + ['.', str(REPO_GIN_DIR)]
  for path in paths:
    if path not in _search_paths:  # gin appends: add each once per process
      gin.add_config_file_search_path(path)
      _search_paths.add(path)
  files = [_find(f, paths) for f in gin_files]
  gin.clear_config()
  try:
    with _quiet_include_misses():
      gin.parse_config_files_and_bindings(files, None, finalize_config=False)
  except (ValueError, KeyError, SyntaxError, ImportError) as e:
    raise ValueError(f'in gin files {files}: {e}') from e
  macros = _macros()
  for binding in bindings:
    name = binding.split('=', 1)[0].strip()
    if _MACRO_NAME.fullmatch(name) and name not in macros:
      close = difflib.get_close_matches(name, sorted(macros), n=2, cutoff=0.6)
      hint = f'; did you mean {" or ".join(close)}?' if close else ''
      raise ValueError(f'bad gin override --gin.{binding}: {name} is not a macro of these gin '
                       f'files{hint}')
    try:
      gin.parse_config(binding)
    except (ValueError, KeyError, SyntaxError) as e:
      raise ValueError(f'bad gin override --gin.{binding}: {e}') from e
  return files


_MACRO_NAME = re.compile(r'[A-Z][A-Z0-9_]*')


def _macros() -> set:
  """Names of the macros the parsed gin files define.

  gin keeps a macro as the binding `MACRO/gin.macro.value`; it has no public
  listing, so this reads its config table (`gin.config._CONFIG`).
  """
  return {scope for scope, selector in gin.config._CONFIG if selector == 'gin.macro'}
