"""The official metrics of GLUE / SuperGLUE, in pure Python.

Every metric takes `(targets, predictions)`: lists of label ids for the
classification tasks (a prediction of -1, the id of unknown generated text,
never equals a target, so it counts as wrong), lists of answer lists and
predicted strings for ReCoRD. Scores are percentages (0-100), as T5 reports
them. An F1 whose class never occurs in targets nor predictions is 0.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Callable, Dict, Hashable, Mapping, Optional, Sequence

from tasks import labels

Scores = Dict[str, float]


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> Scores:
  """{'accuracy': percentage of predictions equal to their target}."""
  _check_lengths(targets, predictions)
  if not targets:
    return {'accuracy': 0.0}
  correct = sum(t == p and p != labels.UNKNOWN_LABEL for t, p in zip(targets, predictions))
  return {'accuracy': 100.0 * correct / len(targets)}


def class_f1(targets: Sequence[int], predictions: Sequence[int], label: int) -> float:
  """F1 (0-1) of one class, treating it as the positive class."""
  tp = sum(t == label and p == label for t, p in zip(targets, predictions))
  fp = sum(t != label and p == label for t, p in zip(targets, predictions))
  fn = sum(t == label and p != label for t, p in zip(targets, predictions))
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def binary_f1(targets: Sequence[int], predictions: Sequence[int]) -> Scores:
  """{'f1': F1 of class 1} (MRPC, QQP, MultiRC F1a)."""
  _check_lengths(targets, predictions)
  return {'f1': 100.0 * class_f1(targets, predictions, 1)}


def macro_f1(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> Scores:
  """{'macro_f1': the unweighted mean of the per-class F1 over `num_classes`}."""
  _check_lengths(targets, predictions)
  f1s = [class_f1(targets, predictions, c) for c in range(num_classes)]
  return {'macro_f1': 100.0 * sum(f1s) / num_classes}


def accuracy_and_f1(targets: Sequence[int], predictions: Sequence[int]) -> Scores:
  """MRPC, QQP: accuracy and F1 of class 1."""
  return {**accuracy(targets, predictions), **binary_f1(targets, predictions)}


def cb_metrics(targets: Sequence[int], predictions: Sequence[int]) -> Scores:
  """CB: accuracy and macro-F1 over the 3 classes."""
  return {**accuracy(targets, predictions), **macro_f1(targets, predictions, 3)}


def multirc_metrics(targets: Sequence[int], predictions: Sequence[int],
                    groups: Sequence[Hashable]) -> Scores:
  """MultiRC: exact match per question and F1a over all answers.

  Args:
    targets: the label id of every answer.
    predictions: the predicted label id of every answer.
    groups: the question of every answer (e.g. (paragraph idx, question idx)).

  Returns:
    {'exact_match': percentage of questions with all answers right,
     'f1a': F1 of class True over all answers}.
  """
  _check_lengths(targets, predictions)
  _check_lengths(targets, groups)
  right: Dict[Hashable, bool] = collections.OrderedDict()
  for t, p, g in zip(targets, predictions, groups):
    right[g] = right.get(g, True) and t == p and p != labels.UNKNOWN_LABEL
  exact = 100.0 * sum(right.values()) / len(right) if right else 0.0
  return {'exact_match': exact, 'f1a': binary_f1(targets, predictions)['f1']}


def normalize_answer(text: str) -> str:
  """SQuAD / ReCoRD answer normalization: lower case, no punctuation, articles, extra spaces."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def token_f1(target: str, prediction: str) -> float:
  """Token-overlap F1 (0-1) of two normalized answers."""
  target_tokens = normalize_answer(target).split()
  prediction_tokens = normalize_answer(prediction).split()
  common = collections.Counter(target_tokens) & collections.Counter(prediction_tokens)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(prediction_tokens)
  recall = overlap / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def record_metrics(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Scores:
  """ReCoRD: max-over-answers exact match and token F1, averaged over queries.

  Args:
    targets: the list of correct answers of every query.
    predictions: the predicted answer of every query.

  Returns:
    {'em': ..., 'f1': ...} as percentages.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {'em': 0.0, 'f1': 0.0}
  em = f1 = 0.0
  for answers, prediction in zip(targets, predictions):
    if not answers:
      continue
    em += max(float(normalize_answer(a) == normalize_answer(prediction)) for a in answers)
    f1 += max(token_f1(a, prediction) for a in answers)
  return {'em': 100.0 * em / len(targets), 'f1': 100.0 * f1 / len(targets)}


def generation(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Scores:
  """E2E / WebNLG: BLEU, chrF and ROUGE-L of generated texts against every reference."""
  from tasks import generation_metrics
  return generation_metrics.generation_scores(list(predictions), list(targets))


METRICS: Mapping[str, Callable[..., Scores]] = {
    'boolq': accuracy,
    'cb': cb_metrics,
    'copa': accuracy,
    'multirc': multirc_metrics,
    'record': record_metrics,
    'rte': accuracy,
    'wic': accuracy,
    'wsc': accuracy,
    'sst2': accuracy,
    'mrpc': accuracy_and_f1,
    'qqp': accuracy_and_f1,
    'synthetic_two_class': accuracy,
    'e2e': generation,
    'webnlg': generation,
}
"""The official metric function of every benchmark."""


def compute(task_name: str, targets: Sequence, predictions: Sequence,
            groups: Optional[Sequence[Hashable]] = None) -> Scores:
  """The official metrics of a task ('super_glue_cb_local', 'cb', ...).

  Args:
    task_name: a task or benchmark name.
    targets: label ids (ReCoRD: answer lists).
    predictions: label ids, e.g. from `tasks.labels.postprocess` (ReCoRD: text).
    groups: MultiRC only: the question of every answer.

  Returns:
    A dict of scores in percent.
  """
  benchmark = labels.benchmark_of(task_name)
  if benchmark == 'multirc':
    if groups is None:
      raise ValueError('MultiRC metrics need the question group of every answer')
    return multirc_metrics(targets, predictions, groups)
  return METRICS[benchmark](targets, predictions)


def _check_lengths(a: Sequence, b: Sequence) -> None:
  if len(a) != len(b):
    raise ValueError(f'{len(a)} targets but {len(b)} predictions')

