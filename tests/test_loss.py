"""Token cross-entropy, label smoothing and z-loss against optax and hand-computed values."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from jaxpt.prompted.loss import cross_entropy, loss_and_metrics

VOCAB = 32


def _case(seed: int = 0):
  """Logits far from normalized (log Z around 6) so the z-loss term is not negligible;
  targets with padding (id 0, weight 0) and fractional weights."""
  rng = np.random.RandomState(seed)
  logits = (rng.randn(3, 5, VOCAB) * 2.0 + 3.0).astype(np.float32)
  targets = rng.randint(1, VOCAB, (3, 5)).astype(np.int32)
  targets[1, 3:] = 0
  targets[2, 1:] = 0
  weights = (targets > 0).astype(np.float32)
  weights[0, 1] = 0.5
  weights[0, 4] = 2.0
  return logits, targets, weights


def _log_z(logits) -> np.ndarray:
  """logsumexp by hand, in float64."""
  x = np.asarray(logits, np.float64)
  m = x.max(axis=-1)
  return m + np.log(np.exp(x - m[..., None]).sum(axis=-1))


def _reference(logits, targets, label_smoothing):
  """Per-token loss without z-loss, from optax: cross-entropy with T5X's smoothed targets
  (1 - s on the target, s / (V - 1) elsewhere: optax.smooth_labels with
  alpha = s V / (V - 1)) minus the smoothed distribution's entropy."""
  one_hot = jax.nn.one_hot(targets, VOCAB)
  if not label_smoothing:
    return np.asarray(optax.softmax_cross_entropy(logits, one_hot), np.float64)
  soft = np.asarray(optax.smooth_labels(one_hot, label_smoothing * VOCAB / (VOCAB - 1)),
                    np.float64)
  np.testing.assert_allclose(soft.max(-1), 1 - label_smoothing, rtol=1e-6)
  np.testing.assert_allclose(soft.min(-1), label_smoothing / (VOCAB - 1), rtol=1e-6)
  entropy = -(soft * np.log(soft)).sum(-1)
  return np.asarray(optax.softmax_cross_entropy(logits, soft), np.float64) - entropy


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
@pytest.mark.parametrize('z_loss', [0.0, 1e-4, 0.05])
def test_cross_entropy_matches_optax_and_hand_computed_z_loss(label_smoothing, z_loss):
  logits, targets, weights = _case()
  loss, z = cross_entropy(logits, targets, weights, label_smoothing=label_smoothing,
                          z_loss=z_loss)
  z_want = z_loss * _log_z(logits) ** 2 * weights
  ce_want = _reference(logits, targets, label_smoothing) * weights
  np.testing.assert_allclose(np.asarray(z), z_want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(loss), ce_want + z_want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(loss)[weights == 0] == 0) and np.all(np.asarray(z)[weights == 0] == 0)
  if z_loss:
    assert z_want[weights > 0].min() > z_loss * 25  # log Z > 5: a doubled term shows


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
@pytest.mark.parametrize('z_loss', [0.0, 1e-4, 0.05])
def test_loss_and_metrics_is_the_weighted_mean(label_smoothing, z_loss):
  logits, targets, weights = _case(1)
  loss, metrics = loss_and_metrics(logits, targets, weights, label_smoothing=label_smoothing,
                                   z_loss=z_loss)
  z_tokens = z_loss * _log_z(logits) ** 2
  ce_tokens = _reference(logits, targets, label_smoothing)
  num_tokens = weights.sum()
  want = ((ce_tokens + z_tokens) * weights).sum() / num_tokens
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(metrics['loss']) == float(loss)
  np.testing.assert_allclose(float(metrics['z_loss']), (z_tokens * weights).sum() / num_tokens,
                             rtol=1e-5, atol=1e-9)
  assert float(metrics['num_tokens']) == num_tokens
  correct = (logits.argmax(-1) == targets) * weights
  np.testing.assert_allclose(float(metrics['token_accuracy']), correct.sum() / num_tokens,
                             rtol=1e-6)
  # Padding positions do not count, whatever their logits.
  noisy = logits.copy()
  noisy[weights == 0] += np.random.RandomState(2).randn(*noisy[weights == 0].shape) * 50
  again, _ = loss_and_metrics(noisy, targets, weights, label_smoothing=label_smoothing,
                              z_loss=z_loss)
  np.testing.assert_allclose(float(again), float(loss), rtol=1e-6)


def test_smoothed_loss_is_zero_at_the_smoothed_distribution():
  """T5X subtracts the smoothed targets' entropy: logits = log(smoothed targets) give 0."""
  s = 0.1
  targets = np.array([[3, 7, 0]], np.int32)
  soft = np.full((1, 3, VOCAB), s / (VOCAB - 1))
  soft[0, np.arange(3), targets[0]] = 1 - s
  logits = np.log(soft).astype(np.float32) + 4.0  # any shift: the loss sees softmax only
  loss, z = cross_entropy(logits, targets, np.ones((1, 3), np.float32), label_smoothing=s)
  np.testing.assert_allclose(np.asarray(loss), 0.0, atol=1e-5)
  assert np.all(np.asarray(z) == 0)


def test_empty_batch_divides_by_one():
  logits, targets, _ = _case()
  loss, metrics = loss_and_metrics(logits, targets, np.zeros(targets.shape, np.float32),
                                   z_loss=1e-4)
  assert float(loss) == 0.0 and float(metrics['num_tokens']) == 1.0
