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
  row = {'dataset': 'webnlg', 'method': 'prefix tuning (MLP) P=10', 'trainable': 1383936,
         'stored': 23040, 'share': 0.595, 'train_seconds': 12.0, 'bleu_ci95': [10.1, 12.3],
         'scores': {'all': {'bleu': 11.2, 'chrf': 40.0, 'rouge_l': 30.5},
                    'seen': {'bleu': 14.0}, 'unseen': {'bleu': 8.0}}}
  line = table_to_text.markdown([row]).splitlines()[-1]
  assert line == ('| webnlg | prefix tuning (MLP) P=10 | 1,383,936 | 23,040 (0.595%) | 12 | '
                  '11.2 (10.1-12.3) | 40.0 | 30.5 | 14.0 / 8.0 |')


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
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'benchmarks' / 'table_to_text.py'),
                         '--quick', '--datasets', 'e2e', '--only', 'no tuning|prefix',
                         '--backbone', 'mini_gpt2', '--strategy', 'greedy',
                         '--out_dir', str(tmp_path)], env=env, capture_output=True, text=True,
                        timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads((tmp_path / 'results.json').read_text())['rows']
  assert [r['method'] for r in rows] == ['no tuning', 'prefix tuning (MLP) P=10']
  assert rows[1]['trainable'] > rows[1]['stored'] > 0
  table = (tmp_path / 'table.md').read_text()
  assert 'Backbone mini_gpt2' in table and 'greedy' in table


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
  assert [(r['dataset'], r['method']) for r in rows] == [
      (d, m) for d in ('e2e', 'webnlg') for m in methods]
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
