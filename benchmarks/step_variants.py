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

# XLA_FLAGS sets for `NAME@SET` configs (each runs in its own process). jax 0.10's XLA:CPU
# runs dots through YNNPACK fusions by default; an empty fusion type falls back to Eigen.
XLA_FLAG_SETS: Dict[str, str] = {
    'default': '',
    'eigen_dot': '--xla_cpu_experimental_ynn_fusion_type=',
    'onednn': '--xla_cpu_use_onednn=true',
    'no_thunks': '--xla_cpu_use_thunk_runtime=false',
    'single_thread_eigen': '--xla_cpu_multi_thread_eigen=false',
}
