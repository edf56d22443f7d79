"""T5's span corruption and prefix-LM preprocessors (pure numpy) and the offline corpus."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import objectives

VOCAB = 32100  # T5's SentencePiece ids with the 100 extra ids


def _decorrupt(inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> np.ndarray:
  """Puts each target span back in place of its sentinel in the inputs."""
  spans, current = {}, None
  for t in targets.tolist():
    if t >= vocab_size - 100:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs.tolist():
    out += spans[t] if t >= vocab_size - 100 else [t]
  return np.asarray(out)


def test_noise_mask_density_and_span_length_match_t5():
  rng = np.random.default_rng(0)
  fractions, span_lengths = [], []
  for _ in range(500):
    length = int(rng.integers(50, 600))
    mask = objectives.random_spans_noise_mask(length, rng)
    fractions.append(mask.mean())
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    span_lengths.append(mask.sum() / starts.sum())
    assert not mask[0] and mask[-1]  # a kept span first, a noise span last (T5)
  assert np.mean(fractions) == pytest.approx(0.15, abs=0.005)
  assert np.mean(span_lengths) == pytest.approx(3.0, abs=0.15)


def test_noise_mask_exact_counts():
  rng = np.random.default_rng(1)
  mask = objectives.random_spans_noise_mask(100, rng)
  assert mask.sum() == 15  # round(100 * 0.15)
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  assert starts.sum() == 5  # round(15 / 3)


def test_span_corruption_sentinels_count_down_and_reconstruct():
  rng = np.random.default_rng(2)
  for _ in range(50):
    tokens = rng.integers(3, 32000, int(rng.integers(2, 300))).astype(np.int32)
    inputs, targets = objectives.span_corruption(tokens, VOCAB, rng)
    in_sentinels = inputs[inputs >= 32000]
    tg_sentinels = targets[targets >= 32000]
    n = in_sentinels.size
    assert n >= 1
    np.testing.assert_array_equal(in_sentinels, VOCAB - 1 - np.arange(n))  # <extra_id_0> = 32099
    np.testing.assert_array_equal(tg_sentinels, in_sentinels)
    assert targets[0] == VOCAB - 1
    np.testing.assert_array_equal(_decorrupt(inputs, targets, VOCAB), tokens)


def test_span_corruption_lengths_follow_random_spans_helper():
  assert objectives.random_spans_helper(512) == (568, 114)  # T5's numbers
  tokens_length, targets_length = objectives.random_spans_helper(128)
  rng = np.random.default_rng(3)
  inputs, targets = objectives.span_corruption(np.arange(3, 3 + tokens_length), VOCAB, rng)
  assert inputs.size + 1 == 128 and targets.size + 1 == targets_length  # + EOS


def test_prefix_lm_splits_and_reconstructs():
  rng = np.random.default_rng(4)
  cuts = []
  for _ in range(300):
    tokens = rng.integers(3, 1000, 50).astype(np.int32)
    inputs, targets = objectives.prefix_lm(tokens, rng)
    assert inputs.size >= 1 and targets.size >= 1
    np.testing.assert_array_equal(np.concatenate([inputs, targets]), tokens)
    cuts.append(inputs.size)
  assert min(cuts) <= 5 and max(cuts) >= 45  # uniform over 1..49
  assert np.mean(cuts) == pytest.approx(25, abs=2)


def test_chunks_join_documents_in_order():
  pieces = list(objectives.chunks([[1, 2, 3], [4], [5, 6, 7, 8, 9]], 4))
  assert [p.tolist() for p in pieces] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]


@pytest.mark.parametrize('call, message', [
    (lambda: objectives.random_spans_noise_mask(0, np.random.default_rng()), 'length'),
    (lambda: objectives.random_spans_noise_mask(10, np.random.default_rng(), 1.5), 'density'),
    (lambda: objectives.span_corruption([], VOCAB, np.random.default_rng()), 'at least one'),
    (lambda: objectives.prefix_lm([5], np.random.default_rng()), 'at least 2'),
    (lambda: objectives.chunks([[1]], 0).__next__(), 'positive'),
])
def test_bad_arguments_are_value_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_corpus_uses_training_splits_only_and_is_reproducible(shared_data):
  from tasks import corpus
  info = corpus.manifest(shared_data)
  files = [s['file'] for s in info['sources']]
  assert not any(('val' in f or 'test' in f or 'dev' in f) for f in files), files
  assert 'sst2/stsa.binary.train' in files and 'corpus/botchan.txt' in files
  assert info['splits']['validation']['documents'] > 100
  train = set(corpus.documents('train', shared_data))
  assert not train & set(corpus.documents('validation', shared_data))
  assert corpus.manifest(shared_data)['splits'] == info['splits']  # same sha256 twice
