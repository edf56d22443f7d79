"""Variants of the jaxpt training step, for A/B timing in one run (prompt_tuning_step.py).

Each entry of VARIANTS is a context manager factory that patches the library while the step
is traced; the compiled step keeps the variant after the patch is undone. They exist to
measure a candidate change against the library's current code in the same interleaved run.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


VARIANTS: Dict[str, Callable[[], contextlib.AbstractContextManager]] = {}
