"""benchmarks/interleave.py (the timing method), throughput.py's batching plans, and the
throughput and generation benchmarks' --quick runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))

import interleave  # noqa: E402
import throughput  # noqa: E402


def test_interleave_alternates_configs_and_times_each_round():
  calls = []
  runs = {name: (lambda name=name: calls.append(name)) for name in 'ABC'}
  times = interleave.interleave(runs, rounds=4, repeats=2, warmup=1)
  assert calls[:3] == ['A', 'B', 'C']  # warm-up, in order
  timed = calls[3:]
  # Round r starts at config r mod 3, each config called `repeats` times in a row.
  assert timed[:6] == ['A', 'A', 'B', 'B', 'C', 'C']
  assert timed[6:12] == ['B', 'B', 'C', 'C', 'A', 'A']
  assert timed[12:18] == ['C', 'C', 'A', 'A', 'B', 'B']
  assert {k: len(v) for k, v in times.items()} == {'A': 4, 'B': 4, 'C': 4}


def test_ratio_stats_are_per_round_ratios():
  slow = [2.0, 4.0, 3.0, 10.0, 2.0]
  fast = [1.0, 1.0, 2.0, 5.0, 1.0]  # ratios 2, 4, 1.5, 2, 2
  stats = interleave.ratio_stats(slow, fast)
  assert stats['median'] == 2.0 and stats['min'] == 1.5 and stats['max'] == 4.0
  assert stats['rounds'] == 5
  assert (stats['q1'], stats['q3']) == tuple(np.percentile([2, 4, 1.5, 2, 2], [25, 75]))
  # The ratio of medians would be 3 / 1 = 3: the per-round median is what is reported.
  assert interleave.median(slow) / interleave.median(fast) == 3.0
  assert '2.00x' in interleave.format_ratio(stats) and '1.50-4.00' in interleave.format_ratio(stats)


def test_a_run_above_load_one_and_a_half_is_labelled_noisy():
  quiet, busy = (0.2, 0.3, 0.4), (1.6, 0.3, 0.4)
  assert 'quiet' in interleave.footer(quiet, quiet, own=2)
  assert 'NOISY (load > 1.5)' in interleave.footer(busy, quiet, own=2)
  # At its end the load counts the run's own threads: 2 busy cores are not other work.
  assert 'quiet' in interleave.footer(quiet, (2.0, 1.0, 0.5), own=2)
  assert 'NOISY (load > 1.5)' in interleave.footer(quiet, (3.6, 1.0, 0.5), own=2)
  text = interleave.header(123.4, quiet)
  assert 'load avg: 0.20 0.30 0.40' in text and '123.4 GFLOP/s' in text
  assert interleave.cpu_name() in text


def test_budget_batches_stay_within_the_token_budget():
  rng = np.random.default_rng(0)
  lens = rng.integers(5, 120, 300)
  prompt, budget = 100, 1024
  batches = throughput.budget_batches(range(len(lens)), lens, prompt, budget)
  assert sorted(i for b in batches for i in b) == list(range(len(lens)))
  for b in batches:
    assert len(b) * (prompt + lens[b].max()) <= budget
  # Greedy: the next example would have broken the budget.
  for b, nxt in zip(batches, batches[1:]):
    grown = b + [nxt[0]]
    assert len(grown) * (prompt + lens[grown].max()) > budget


def test_grouped_order_sorts_within_chunks():
  lens = np.asarray([3, 50, 7, 20, 9, 40, 1, 30] * 40)
  order = throughput.grouped_order(lens, prompt=10, budget=100)
  assert sorted(order) == list(range(len(lens)))
  chunk = throughput.GROUP_BATCHES * max(1, 100 // (10 + int(lens.mean())))
  for start in range(0, len(lens), chunk):
    part = lens[order[start:start + chunk]]
    assert list(part) == sorted(part, reverse=True)


def test_plans_count_padding_against_the_same_examples():
  inputs = [np.arange(2, 2 + n, dtype=np.int32) for n in (10, 40, 20, 30)]
  targets = [np.asarray([5, 1], np.int32)] * 4
  plan = throughput.plans(inputs, targets, prompt=8, budget=96,
                          configs=('jaxpt_padded', 'peft_dynamic'))
  # Padded: every row is 8 + 40 positions and 2 targets; 96 // 48 = 2 rows per batch.
  assert plan['jaxpt_padded']['rows'] == 2
  assert len(plan['jaxpt_padded']['batches']) == 2
  used = (10 + 40 + 20 + 30) + 4 * 2 + 4 * 8
  assert plan['jaxpt_padded']['padding_share'] == pytest.approx(1 - used / (4 * (48 + 2)))
  batch = plan['jaxpt_padded']['batches'][0]
  assert batch['encoder_input_tokens'].shape == (2, 40)
  # Dynamic: [10, 40] would need 2 * 48 = 96 <= 96; then [20, 30]: 2 * 38.
  assert plan['peft_dynamic']['batches'] == [[0, 1], [2, 3]]
  total = 2 * (48 + 2) + 2 * (38 + 2)
  assert plan['peft_dynamic']['padding_share'] == pytest.approx(1 - used / total)


@pytest.mark.slow
def test_throughput_quick_prints_the_table_and_its_ratios(shared_data, tmp_path):
  out = tmp_path / 'throughput.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAXPT_DATA_DIR=str(shared_data))
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'benchmarks' / 'throughput.py'),
                         '--quick', '--json', str(out)], env=env, capture_output=True,
                        text=True, cwd=REPO_ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  header = '| ' + ' | '.join(throughput.TABLE_COLUMNS) + ' |'
  assert header in proc.stdout
  record = json.loads(out.read_text())
  configs = [r['config'] for r in record['rows']]
  assert {'jaxpt_padded', 'peft_dynamic', 'peft_grouped'} <= set(configs)
  for r in record['rows']:
    assert r['examples/s'] > 0 and r['real tokens/s'] > r['examples/s']
    assert 0 <= r['padding share %'] < 100
    assert len(r['times']) == record['args']['rounds']
  assert 'rte/mini: jaxpt_padded vs peft_dynamic' in record['ratios']
  for stats in record['ratios'].values():
    assert stats['min'] <= stats['median'] <= stats['max'] and stats['median'] > 0
  assert 'load avg' in proc.stdout and 'run: ' in proc.stdout


@pytest.mark.slow  # ~70 s on 2 busy CPU cores
def test_generation_quick_times_every_config_on_the_same_tokens(tmp_path):
  pytest.importorskip('peft')
  out = tmp_path / 'generation.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'benchmarks' / 'generation.py'),
                         '--quick', '--json', str(out)], env=env, capture_output=True,
                        text=True, cwd=REPO_ROOT, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| config | compile / first call s | median call s | tokens/s |' in proc.stdout
  record = json.loads(out.read_text())
  import generation
  assert [r['config'] for r in record['rows']] == list(generation.CONFIGS)
  for r in record['rows']:
    assert r['tokens/s'] > 0 and len(r['times']) == record['args']['rounds']
  assert set(record['ratios']) == {f'{a} vs {b}' for a, b in generation.RATIOS}
  # Cached and re-encoded decoding (and peft without its cache) pick the same tokens.
  same = record['same_tokens']
  assert same['jaxpt_prompt_cached vs jaxpt_prompt_reencode']
  assert same['jaxpt_prefix_cached vs jaxpt_prefix_reencode']
  assert same['jaxpt_prompt_cached vs peft_prompt_nocache']
  assert 'load avg' in proc.stdout and 'run: ' in proc.stdout


def test_packed_plan_holds_every_example_once_with_less_padding():
  pytest.importorskip('jaxpt.data.packing')
  rng = np.random.default_rng(1)
  inputs = [np.arange(2, 2 + n, dtype=np.int32) for n in rng.integers(5, 60, 40)]
  targets = [np.asarray([5, 1], np.int32)] * 40
  plan = throughput.plans(inputs, targets, prompt=8, budget=256,
                          configs=('jaxpt_packed', 'jaxpt_padded'), pack_factor=2)
  packed = plan['jaxpt_packed']
  assert packed['length'] == 2 * plan['jaxpt_padded']['length']
  segments = sum(len(set(row[row > 0].tolist())) for b in packed['batches']
                 for row in b['encoder_segment_ids'])
  assert segments == len(inputs)
  assert packed['batches'][0]['encoder_input_tokens'].shape == (packed['rows'], packed['length'])
  assert packed['padding_share'] < plan['jaxpt_padded']['padding_share']
