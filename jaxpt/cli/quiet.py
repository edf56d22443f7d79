"""Keeps TensorFlow's start-up lines off the console of the `jaxpt` command.

TensorFlow is only a data and logging layer here (SeqIO, TensorBoard). On a machine
without a GPU it prints CUDA-stub lines while its libraries load (before its log level
applies) and a cuInit error when it first runs an op. `quiet_tensorflow` sets
TF_CPP_MIN_LOG_LEVEL=3 unless the user set it, and silences file descriptor 2 while
`tensorflow` is imported, whoever imports it (SeqIO, a task module named in gin).
Setting TF_CPP_MIN_LOG_LEVEL (e.g. to 0) shows everything again.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from typing import Any, Optional

LOG_LEVEL_VAR = 'TF_CPP_MIN_LOG_LEVEL'


@contextlib.contextmanager
def stderr_silenced():
  """Sends file descriptor 2 (C++ logging included) to /dev/null for the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(null)
    os.close(saved)


class _SilentLoader(importlib.abc.Loader):
  """A module loader that runs another's `exec_module` with stderr silenced."""

  def __init__(self, loader: Any, finder: '_SilentImport'):
    self._loader, self._finder = loader, finder

  def create_module(self, spec: Any) -> Optional[Any]:
    return self._loader.create_module(spec)

  def exec_module(self, module: Any) -> None:
    if self._finder in sys.meta_path:  # loaded once: the finder's job is done
      sys.meta_path.remove(self._finder)
    with stderr_silenced():
      self._loader.exec_module(module)

  def __getattr__(self, name: str) -> Any:  # resource readers, get_data, ...
    return getattr(self._loader, name)


class _SilentImport(importlib.abc.MetaPathFinder):
  """Finds `name` as the other finders do, and loads it silenced (the first load removes
  this finder; a mere `importlib.util.find_spec` probe does not)."""

  def __init__(self, name: str):
    self.name = name

  def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
    if fullname != self.name:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, 'find_spec'):
        continue
      spec = finder.find_spec(fullname, path, target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _SilentLoader(spec.loader, self)
        return spec
    return None


def quiet_tensorflow(user_level: Optional[str]) -> None:
  """TF_CPP_MIN_LOG_LEVEL=3 and a silent `import tensorflow`, unless the user set the
  level (`user_level`: its value before jax, which sets '1' on import, was loaded)."""
  if user_level is not None:
    os.environ[LOG_LEVEL_VAR] = user_level
    return
  os.environ[LOG_LEVEL_VAR] = '3'
  if 'tensorflow' not in sys.modules and not any(
      isinstance(f, _SilentImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _SilentImport('tensorflow'))
