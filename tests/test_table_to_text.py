"""benchmarks/table_to_text.py: the table's rows and one --quick run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))


def test_markdown_row_shows_kept_share_interval_and_seen_unseen():
  import table_to_text
  row = {'backbone': 'mini_t5', 'dataset': 'webnlg', 'method': 'prefix tuning (MLP) P=10',
         'trainable': 1383936, 'stored': 23040, 'share': 0.595, 'train_seconds': 12.0,
         'bleu_ci95': [10.1, 12.3],
         'scores': {'all': {'bleu': 11.2, 'chrf': 40.0, 'rouge_l': 30.5},
                    'seen': {'bleu': 14.0}, 'unseen': {'bleu': 8.0}}}
  line = table_to_text.markdown([row]).splitlines()[-1]
  assert line == ('| mini_t5 | webnlg | prefix tuning (MLP) P=10 | 1,383,936 | 23,040 (0.595%) '
                  '| 12 | 11.2 (10.1-12.3) | 40.0 | 30.5 | 14.0 / 8.0 |')


def test_backbone_names_and_decoder_only_training_batches():
  import numpy as np
  import table_to_text
  from jaxpt.assets import mini_gpt2_path, mini_t5_path
  from jaxpt.models.config import T5Config
  from jaxpt.models.decoder_config import decoder_preset
  assert table_to_text.backbone_path('mini_gpt2') == mini_gpt2_path()
  assert table_to_text.backbone_path('mini_t5') == mini_t5_path()
  assert table_to_text.backbone_path('/some/dir') == '/some/dir'
  data = {'train_inputs': np.array([[5, 6, 1, 0], [7, 1, 0, 0]], np.int32),
          'train_rows': np.arange(2),
          'train_targets': np.array([[8, 9, 1], [10, 1, 0]], np.int32)}
  seq2seq = table_to_text.training_batches(T5Config(), data, 0)(0)
  causal = table_to_text.training_batches(decoder_preset('gpt2', 'tiny'), data, 0)(0)
  assert 'encoder_input_tokens' in seq2seq and 'encoder_input_tokens' not in causal
  for row in range(table_to_text.BATCH):
    inputs, targets = seq2seq['encoder_input_tokens'][row], seq2seq['decoder_target_tokens'][row]
    n_in, n_out = int((inputs != 0).sum()), int((targets != 0).sum())
    np.testing.assert_array_equal(causal['decoder_target_tokens'][row][:n_in + n_out],
                                  np.concatenate([inputs[:n_in], targets[:n_out]]))
    np.testing.assert_array_equal(causal['decoder_loss_weights'][row][:n_in + n_out],
                                  [0] * n_in + [1] * n_out)


@pytest.mark.slow
def test_quick_run_on_the_mini_gpt2_decodes_greedily(shared_data, tmp_path):
  if not (shared_data / 'nlg').is_dir():
    pytest.skip(f'no NLG data at {shared_data / "nlg"}')
  env = dict(os.environ, JAXPT_DATA_DIR=str(shared_data))
  command = [sys.executable, str(REPO_ROOT / 'benchmarks' / 'table_to_text.py'), '--quick',
             '--datasets', 'e2e', '--only', 'no tuning|prefix', '--backbone', 'mini_gpt2',
             '--strategy', 'greedy', '--out_dir', str(tmp_path)]
  proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads((tmp_path / 'results.json').read_text())['rows']
  # 'prefix' also picks the peft row: peft trains the same MLP prefix, jaxpt decodes it.
  assert [r['method'] for r in rows] == ['no tuning', 'prefix tuning (MLP) P=10',
                                         'peft prefix tuning (MLP) P=10']
  for r in rows[1:]:
    assert r['trainable'] > r['stored'] == 10240  # P * 2 * layers * d_model, as kept
  peft_row = json.loads((tmp_path / 'rows' / 'mini-gpt2.e2e.peft-prefix-tuning-mlp-p-10.json')
                        .read_text())
  assert peft_row['final_loss'] > 0 and len(peft_row['texts']) == 8 == peft_row['num_test']
  table = (tmp_path / 'table.md').read_text()
  assert 'Backbones mini_gpt2' in table and 'greedy' in table
  assert '- peft prefix tuning (MLP) P=10: ' in table
  assert (tmp_path / 'plot.svg').read_text().startswith('<svg')
  # A rerun reuses every finished row (--render fails if one is missing) ...
  kept = {p.name: p.read_text() for p in (tmp_path / 'rows').iterdir()}
  assert len(kept) == 3
  rerun = subprocess.run(command + ['--render'], env=env, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (tmp_path / 'table.md').read_text() == table
  assert {p.name: p.read_text() for p in (tmp_path / 'rows').iterdir()} == kept
  # ... and only rows run with the same settings.
  other = subprocess.run(command + ['--render', '--strategy', 'beam'], env=env,
                         capture_output=True, text=True, timeout=600)
  assert other.returncode == 2 and 'no finished row' in other.stderr


@pytest.mark.slow
def test_quick_run_scores_every_method_on_both_datasets(shared_data, tmp_path):
  if not (shared_data / 'nlg').is_dir():
    pytest.skip(f'no NLG data at {shared_data / "nlg"}')
  env = dict(os.environ, JAXPT_DATA_DIR=str(shared_data))
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'benchmarks' / 'table_to_text.py'),
                         '--quick', '--out_dir', str(tmp_path)], env=env, capture_output=True,
                        text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads((tmp_path / 'results.json').read_text())['rows']
  methods = ['no tuning', 'prefix tuning (MLP) P=10', 'prompt tuning P=100', 'deep prompts P=10',
             'full fine-tuning']
  assert [(r['backbone'], r['dataset'], r['method']) for r in rows] == [
      ('mini_t5', d, m) for d in ('e2e', 'webnlg') for m in methods]
  for r in rows:
    low, high = r['bleu_ci95']
    assert 0 <= low <= round(r['scores']['all']['bleu'], 1) <= high <= 100
  webnlg = [r for r in rows if r['dataset'] == 'webnlg']
  assert all({'all', 'seen', 'unseen'} <= set(r['scores']) for r in webnlg)
  by_method = {r['method']: r for r in rows if r['dataset'] == 'e2e'}
  # The prefix keeps its merged keys/values, not the MLP it trained through.
  assert by_method['prefix tuning (MLP) P=10']['stored'] < by_method[
      'prefix tuning (MLP) P=10']['trainable']
  assert by_method['no tuning']['trainable'] == 0
  table = (tmp_path / 'table.md').read_text()
  assert 'QUICK RUN' in table and table.count('- full fine-tuning: ') == 2


def test_docs_table_and_plot_are_the_scripts_output_byte_for_byte(tmp_path):
  """docs/table_to_text holds the finished rows of the documented run; `--render` from them
  must give the committed table.md and plot.svg exactly, and docs/generation.md shows that
  table as is."""
  import shutil
  import table_to_text
  docs = REPO_ROOT / 'docs' / 'table_to_text'
  args = json.loads((docs / 'results.json').read_text())['args']
  shutil.copytree(docs / 'rows', tmp_path / 'rows')
  argv = ['--render', '--out_dir', str(tmp_path)]
  for key in ('datasets', 'steps', 'beams', 'max_test', 'bootstrap', 'max_decode',
              'backbones', 'strategy'):
    argv += [f'--{key}', str(args[key])]
  table_to_text.main(argv)
  table = (tmp_path / 'table.md').read_text()
  assert table == (docs / 'table.md').read_text()
  assert (tmp_path / 'plot.svg').read_text() == (docs / 'plot.svg').read_text()
  rows = json.loads((tmp_path / 'results.json').read_text())['rows']
  assert {(r['backbone'], r['dataset']) for r in rows} == {
      (b, d) for b in ('mini_t5', 'mini_gpt2') for d in ('e2e', 'webnlg')}
  assert len(rows) == 2 * (5 + 1) + 2 * 5  # the mini GPT-2 also has the peft prefix
  lines = [line for line in table.splitlines() if line.startswith('|')]
  assert '\n'.join(lines) in (REPO_ROOT / 'docs' / 'generation.md').read_text()
