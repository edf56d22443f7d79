"""benchmarks/paper_comparison.py: its statistics, its plot, and one end-to-end run on SST-2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

import accuracy_plot  # noqa: E402


def _paper_comparison():
  import paper_comparison
  return paper_comparison


def test_wilson_interval_matches_the_closed_form():
  wilson = _paper_comparison().wilson
  low, high = wilson(50, 100)
  # p = 0.5, n = 100: centre 0.5, half-width 1.96 * sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100)
  half = 1.96 * math.sqrt(0.0025 + 1.96 ** 2 / 40000) / (1 + 1.96 ** 2 / 100)
  assert low == pytest.approx(100 * (0.5 - half)) and high == pytest.approx(100 * (0.5 + half))
  low, high = wilson(0, 20)
  assert low == pytest.approx(0.0, abs=1e-9) and 0 < high < 20


def test_steps_are_one_number_or_one_per_benchmark():
  parse_steps = _paper_comparison().parse_steps
  assert parse_steps('500', ['sst2', 'rte']) == {'sst2': 500, 'rte': 500}
  assert parse_steps('sst2=2000,rte=200', ['sst2', 'rte']) == {'sst2': 2000, 'rte': 200}
  with pytest.raises(ValueError, match=r"no steps for \['rte'\]"):
    parse_steps('sst2=2000', ['sst2', 'rte'])


def test_plot_is_svg_with_a_point_per_row_and_the_majority_line():
  rows = [{'task': t, 'method': m, 'trainable': n, 'accuracy': a, 'majority': 50.9}
          for t in ('sst2', 'rte')
          for m, n, a in (('prompt tuning P=20, uniform', 2560, 61.0),
                          ('prompt tuning P=100, uniform', 12800, 63.5),
                          ('peft prompt tuning P=20', 5120, 60.2),
                          ('prefix tuning P=10', 120000, 58.0),
                          ('full model tuning', 3869056, 75.0))]
  root = ET.fromstring(accuracy_plot.svg(rows, 'title'))
  ns = '{http://www.w3.org/2000/svg}'
  marks = root.findall(f'{ns}circle') + root.findall(f'{ns}rect')
  # 8 circles + 2 squares of data, 4 legend circles, the background and 2 panel frames
  assert len(root.findall(f'{ns}circle')) == 8 + 4 and len(marks) == 8 + 4 + 2 + 1 + 2
  texts = [t.text for t in root.iter(f'{ns}text')]
  assert texts.count('majority class 50.9') == 2 and 'sst2' in texts and 'rte' in texts
  with pytest.raises(ValueError, match='no rows'):
    accuracy_plot.svg([{'task': 'x', 'method': 'm', 'trainable': 0, 'accuracy': 1,
                        'majority': 1}])


@pytest.mark.slow
def test_the_script_runs_end_to_end_and_writes_its_outputs(shared_data, tmp_path):
  """The one command, cut to two rows and a few steps: jaxpt and peft from the same start."""
  out = tmp_path / 'out'
  env = dict(os.environ, JAXPT_DATA_DIR=str(shared_data))
  proc = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'benchmarks' / 'paper_comparison.py'), '--steps', '4',
       '--benchmarks', 'sst2', '--only', 'P=20, class_labels', '--out_dir', str(out)],
      env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / 'results.json').read_text())
  methods = [r['method'] for r in result['rows']]
  assert methods == ['prompt tuning P=20, class_labels',
                     'peft prompt tuning P=20, class_labels (same init, batches, Adam)']
  jaxpt_row, peft_row = result['rows']
  assert jaxpt_row['n'] == peft_row['n'] == 872 and jaxpt_row['trainable'] == 20 * 128
  assert peft_row['trainable'] == 2 * 20 * 128  # peft keeps 2P rows for T5
  assert result['steps'] == {'sst2': 4}
  assert result['lr_schedule'] == 'decaying linearly to 0 over the run'
  # Same weights, init, batches, optimizer and schedule (a constant learning rate on one side
  # moves the loss by far more than 1e-3): after 4 steps the two agree almost everywhere.
  assert peft_row['agreement_with_jaxpt'] > 0.97
  assert abs(jaxpt_row['final_train_loss'] - peft_row['final_train_loss']) < 1e-3
  assert 'GFLOP/s' in result['machine']
  table = (out / 'table.md').read_text()
  assert '| sst2 | majority class | 0 | - | - | 50.9 | - |' in table
  ET.fromstring((out / 'accuracy_vs_parameters.svg').read_text())


def test_readme_table_is_the_scripts_recorded_output():
  """The benchmarks page's comparison table is `table.md` of the recorded run, byte for byte."""
  recorded = (REPO_ROOT / 'docs' / 'paper_comparison.md').read_text()
  header, table = recorded.split('\n\n', 1)
  assert header.startswith('Steps per run (batch 32): sst2 2000, rte 200;') and 'GFLOP/s' in header
  assert table.strip() in (REPO_ROOT / 'docs' / 'benchmarks.md').read_text()
  ET.fromstring((REPO_ROOT / 'docs' / 'paper_comparison.svg').read_text())
