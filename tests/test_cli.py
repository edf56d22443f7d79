"""The `jaxpt` command: the README's main job and clean errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxpt.cli.main import main


def test_demo_tunes_a_prompt_offline(tmp_path, capsys):
  from jaxpt.cli import demo
  accuracy = demo.run(steps=300, out_dir=str(tmp_path))
  out = capsys.readouterr().out
  assert 'RANDOM' in out  # says honestly that the backbone is random
  assert 'zero-shot' in out and 'prompt-tuned' in out
  assert accuracy >= 0.9
  assert (tmp_path / 'prompt' / 'jaxpt_prompt.json').is_file()
  assert (tmp_path / 'backbone_hf').is_dir()


@pytest.mark.slow
def test_readme_first_command_beats_the_majority_class(tmp_path):
  """`make demo` runs `jaxpt demo`: here in a fresh process, offline, with a time limit."""
  import re
  env = dict(os.environ, JAXPT_SHARED_DATA='/nonexistent')  # needs no shared data
  proc = subprocess.run([sys.executable, '-m', 'jaxpt', 'demo'], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  match = re.search(r'majority class 50%\): zero-shot ([\d.]+)%, prompt-tuned ([\d.]+)%',
                    proc.stdout)
  assert match, proc.stdout
  print(proc.stdout)
  assert float(match[2]) > 50.0


def test_bad_path_exits_2_without_traceback(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'jaxpt', 'summary', str(tmp_path / 'nope')],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'no such file or directory' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_unknown_command_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as e:
    main(['tran'])
  assert e.value.code == 2
