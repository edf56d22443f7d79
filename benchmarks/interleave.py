"""A timing method that survives a shared machine: configurations alternated in one process.

Every benchmark here times its configurations with `interleave`: round r runs each
configuration once (`repeats` calls, their median is the round's time), starting the round
at configuration r mod n, so A B, B A, A B, ... A slow spell of the machine then hits the
configurations of the same rounds alike, and the per-round ratio cancels it; the median of
those ratios, with its spread, is the number to quote. `header` prints the CPU model, the
load average and this run's own f32 matmul peak; a run that other work loaded above 1.5
(before it, or beyond its own threads at its end) is labelled NOISY.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

NOISY_LOAD = 1.5


def median(xs: Sequence[float]) -> float:
  xs = sorted(xs)
  n = len(xs)
  if not n:
    return float('nan')
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def quartiles(xs: Sequence[float]) -> Tuple[float, float]:
  """(25th, 75th) percentiles, linear interpolation (numpy's default)."""
  xs = sorted(xs)
  if not xs:
    return float('nan'), float('nan')

  def at(q):
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

  return at(0.25), at(0.75)


def cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (the platform's name elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def load_average() -> Tuple[float, float, float]:
  try:
    return os.getloadavg()
  except OSError:
    return (float('nan'),) * 3


def matmul_peak_gflops(n: int = 2048, reps: int = 5, dtype: str = 'float32') -> float:
  """Median GFLOP/s of a jitted [n, n] @ [n, n] (f32 by default) on jax's default device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / median(times) / 1e9


def interleave(runs: Mapping[str, Callable[[], Any]], rounds: int, repeats: int = 1,
               warmup: int = 1, log: Callable[[str], None] | None = None
               ) -> Dict[str, List[float]]:
  """Per-round seconds of each configuration: {name: [round 0, round 1, ...]}.

  `runs[name]()` does one unit of work and returns when it is finished (block on device
  results inside it). Each is called `warmup` times first (untimed, in order), then
  `rounds` rounds of `repeats` calls each; a round's time is the median of its calls.
  """
  names = list(runs)
  for name in names:
    for _ in range(warmup):
      runs[name]()
  times: Dict[str, List[float]] = {name: [] for name in names}
  for r in range(rounds):
    for i in range(len(names)):
      name = names[(r + i) % len(names)]
      calls = []
      for _ in range(repeats):
        t = time.perf_counter()
        runs[name]()
        calls.append(time.perf_counter() - t)
      times[name].append(median(calls))
    if log:
      log(f'round {r + 1}/{rounds}: ' + ', '.join(f'{n} {times[n][-1]:.3f} s' for n in names))
  return times


def ratio_stats(numerator: Sequence[float], denominator: Sequence[float]) -> Dict[str, float]:
  """Median, min, max and quartiles of the per-round ratios numerator[r] / denominator[r]."""
  ratios = [a / b for a, b in zip(numerator, denominator)]
  q1, q3 = quartiles(ratios)
  return {'median': median(ratios), 'min': min(ratios), 'max': max(ratios), 'q1': q1,
          'q3': q3, 'rounds': len(ratios)}


def format_ratio(stats: Mapping[str, float]) -> str:
  return (f'{stats["median"]:.2f}x (rounds {stats["rounds"]}, min-max {stats["min"]:.2f}-'
          f'{stats["max"]:.2f}, IQR {stats["q1"]:.2f}-{stats["q3"]:.2f})')


def noisy(load_start: Sequence[float], load_end: Sequence[float],
          own: Optional[int] = None) -> bool:
  """True when other work loaded the machine: the 1-minute load above NOISY_LOAD before the
  run, or above NOISY_LOAD plus the run's own runnable threads (`own`, default one per
  visible core: the benchmark keeps them busy) at its end."""
  own = cores() if own is None else own
  return load_start[0] > NOISY_LOAD or load_end[0] > NOISY_LOAD + own


def header(peak_gflops: float, load_start: Sequence[float], matmul_n: int = 2048,
           dtype: str = 'float32') -> str:
  """The lines that open every benchmark's report: machine, load, matmul peak."""
  return (f'machine : {cpu_name()}, {cores()} cores visible, {platform.system()} '
          f'{platform.release()}, python {platform.python_version()}\n'
          f'load avg: {" ".join(f"{x:.2f}" for x in load_start)} (1/5/15 min) at start\n'
          f'matmul  : {dtype} {matmul_n}^3 jnp.dot, median of 5: {peak_gflops:.1f} GFLOP/s '
          f'(this run)')


def footer(load_start: Sequence[float], load_end: Sequence[float],
           own: Optional[int] = None) -> str:
  """Load at the end (the run's own threads included) and the run's label: quiet, or NOISY
  (other load > 1.5, see `noisy`)."""
  label = (f'NOISY (load > {NOISY_LOAD}): ratios hold, absolute times do not'
           if noisy(load_start, load_end, own) else f'quiet (other load <= {NOISY_LOAD})')
  return (f'load avg: {" ".join(f"{x:.2f}" for x in load_end)} (1/5/15 min) at end, this '
          f'run\'s own threads included; run: {label}')


class Served:
  """A configuration that runs in its own process (e.g. under other XLA_FLAGS), driven over
  pipes so it can take its turns in `interleave` like an in-process one.

  The child prints `READY <json>` once built, then answers each `step` line on its stdin
  with `DONE` after one unit of work, and `quit` with `INFO <json>` before exiting
  (`serve` is that loop).
  """

  def __init__(self, cmd: Sequence[str], env: Mapping[str, str], cwd: str | None = None):
    import json
    import subprocess
    self.proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, bufsize=1)
    self.info = json.loads(self._expect('READY'))

  def _expect(self, word: str) -> str:
    while True:
      line = self.proc.stdout.readline()
      if not line:
        raise RuntimeError(f'served process exited (code {self.proc.wait()}) before {word}')
      if line.startswith(word):
        return line[len(word):].strip()

  def __call__(self) -> None:
    self.proc.stdin.write('step\n')
    self.proc.stdin.flush()
    self._expect('DONE')

  def close(self) -> Dict[str, Any]:
    """Stops the child; returns its final facts (the INFO line)."""
    import json
    self.proc.stdin.write('quit\n')
    self.proc.stdin.flush()
    info = json.loads(self._expect('INFO') or '{}')
    self.proc.wait()
    return info


def serve(run: Callable[[], Any], info: Callable[[], Mapping[str, Any]]) -> None:
  """The child side of `Served`: READY, then one `run()` per `step` line, INFO on `quit`."""
  import json
  import sys
  print('READY ' + json.dumps(dict(info())), flush=True)
  for line in sys.stdin:
    if line.strip() == 'step':
      run()
      print('DONE', flush=True)
    elif line.strip() == 'quit':
      break
  print('INFO ' + json.dumps(dict(info())), flush=True)
