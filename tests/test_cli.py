"""The `jaxpt` command: the README's main job and clean errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jaxpt.cli.main import main


DEMO_RESULT = re.compile(
    r'majority class ([\d.]+)%\): zero-shot ([\d.]+)%, prompt-tuned ([\d.]+)%')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The README's first command, run once for the module: `python -m jaxpt demo` (300 steps
  on the committed mini backbone, about 2 minutes on 2 cores) in a fresh process, offline,
  with a time limit; (completed process, its output directory runs/demo)."""
  cwd = tmp_path_factory.mktemp('demo')
  proc = subprocess.run([sys.executable, '-m', 'jaxpt', 'demo'], cwd=cwd,
                        env=dict(os.environ), capture_output=True, text=True, timeout=600)
  print(proc.stdout)
  return proc, cwd / 'runs' / 'demo'


@pytest.mark.slow
def test_demo_tunes_a_prompt_on_the_mini_backbone(demo_run):
  from jaxpt.checkpoints import prompts
  proc, out_dir = demo_run
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert "jaxpt's mini T5" in out and 'A toy, not T5' in out  # says what the backbone is
  assert 'synthetic two-class task' in out
  match = DEMO_RESULT.search(out)
  assert match, out
  # demo.run's return value, as it records it in the prompt checkpoint's metrics
  accuracy = prompts.read_manifest(str(out_dir / 'prompt'))['metrics']['accuracy']
  assert float(match[3]) == pytest.approx(100 * accuracy, abs=0.06)
  assert accuracy >= 0.9 and 100 * accuracy > float(match[1]) + 20
  assert 'predictions match' in out
  assert (out_dir / 'prompt' / 'jaxpt_prompt.json').is_file()
  assert (out_dir / 'backbone_hf' / 'config.json').is_file()


def test_demo_rejects_an_unknown_task():
  from jaxpt.cli import demo
  with pytest.raises(ValueError, match="'auto', 'sst2' or 'synthetic'"):
    demo.load_task('sst5')


@pytest.mark.slow
def test_readme_first_command_beats_the_majority_class(demo_run):
  """`make demo` runs `jaxpt demo`: the default task (synthetic two-class text) on the
  committed mini backbone, in a fresh process (the module's one demo run)."""
  proc, _ = demo_run
  assert proc.returncode == 0, proc.stderr[-2000:]
  match = DEMO_RESULT.search(proc.stdout)
  assert match, proc.stdout
  assert float(match[3]) > float(match[1]) + 20


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
