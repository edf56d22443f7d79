"""Running a test module's scenario in a child process with 8 simulated CPU devices.

XLA_FLAGS must be set before JAX starts, and the suite itself runs on one device, so tests that
need a mesh re-run their own file as a script (`python tests/test_x.py SCENARIO TMP`), which
prints its result as JSON on the last line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Dict

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_scenario(script: pathlib.Path, scenario: str, tmp: pathlib.Path,
                 devices: int = 8, timeout: int = 1200) -> Dict[str, Any]:
  """The JSON result of `python script scenario tmp` on `devices` simulated CPU devices."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu',  # and `tests` importable from the script
             PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, str(script), scenario, str(tmp)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, f'{scenario} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}'
  return json.loads(out.stdout.strip().splitlines()[-1])
