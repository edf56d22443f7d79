"""Verbalizers: label id <-> label word for every task, and text -> label id.

Pure Python (no TensorFlow, no SeqIO), so the CLI can postprocess generated
text and pick the words for rank classification without loading SeqIO.

The label words are T5's (the TFDS `label_classes` of GLUE / SuperGLUE), so a
T5 checkpoint fine-tuned on the T5 mixtures speaks the same language.
"""

from __future__ import annotations

from typing import Dict, Tuple

UNKNOWN_LABEL = -1
"""The id of a generated text that is no label word; metrics count it as wrong."""

UNKNOWN_TARGET = '<unk>'
"""The target text of an unlabelled example (a test split), as in T5."""

LABEL_WORDS: Dict[str, Tuple[str, ...]] = {
    'boolq': ('False', 'True'),
    'cb': ('entailment', 'contradiction', 'neutral'),
    'copa': ('choice1', 'choice2'),
    'multirc': ('False', 'True'),
    'rte': ('entailment', 'not_entailment'),
    'wic': ('False', 'True'),
    'wsc': ('False', 'True'),
    'sst2': ('negative', 'positive'),
    'mrpc': ('not_equivalent', 'equivalent'),
    'qqp': ('not_duplicate', 'duplicate'),
    'synthetic_two_class': ('fruit', 'tool'),
}
"""Label words per benchmark, indexed by label id (0, 1, ...)."""

FREE_TEXT_BENCHMARKS = ('record', 'e2e', 'webnlg')
"""Benchmarks whose targets are free text (no label words)."""

GENERATION_BENCHMARKS = ('e2e', 'webnlg')
"""Table-to-text benchmarks (`tasks.nlg`): scored against all references of an input."""

_PREFIXES = ('super_glue_', 'glue_')
_SUFFIXES = ('_mini', '_local')  # stripped in this order


def benchmark_of(task_name: str) -> str:
  """The benchmark of a task name: 'super_glue_rte_local' -> 'rte'.

  Args:
    task_name: a registered task name, or already a benchmark name.

  Returns:
    The key of `LABEL_WORDS` (or 'record').

  Raises:
    ValueError: for a name that names no known benchmark.
  """
  name = task_name
  for prefix in _PREFIXES:
    if name.startswith(prefix):
      name = name[len(prefix):]
      break
  for suffix in _SUFFIXES:
    if name.endswith(suffix):
      name = name[:-len(suffix)]
  if name not in LABEL_WORDS and name not in FREE_TEXT_BENCHMARKS:
    known = sorted(LABEL_WORDS) + list(FREE_TEXT_BENCHMARKS)
    raise ValueError(f'unknown benchmark {name!r} (from task {task_name!r}); known: {known}')
  return name


def label_words(task_name: str) -> Tuple[str, ...]:
  """The label words of a classification task, indexed by label id.

  These are the candidates for rank classification.

  Args:
    task_name: e.g. 'super_glue_cb_local', 'glue_sst2' or 'cb'.

  Returns:
    A tuple of words, e.g. ('entailment', 'contradiction', 'neutral').

  Raises:
    ValueError: for an unknown task or a free-text task (ReCoRD).
  """
  benchmark = benchmark_of(task_name)
  if benchmark not in LABEL_WORDS:
    raise ValueError(f'task {task_name!r} has free-text targets, not label words')
  return LABEL_WORDS[benchmark]


def id_to_label(task_name: str, label_id: int) -> str:
  """The word of a label id; -1 (unlabelled) gives T5's '<unk>'.

  Raises:
    ValueError: for an id out of range.
  """
  words = label_words(task_name)
  if label_id == UNKNOWN_LABEL:
    return UNKNOWN_TARGET
  if not 0 <= label_id < len(words):
    raise ValueError(f'label id {label_id} out of range for {task_name!r} ({len(words)} labels)')
  return words[label_id]


def label_to_id(task_name: str, word: str) -> int:
  """The id of a label word, or -1 when the word is no label of the task.

  The match is exact after stripping surrounding whitespace, then
  case-insensitive (a generated 'true' is the label 'True').
  """
  words = label_words(task_name)
  text = word.strip()
  if text in words:
    return words.index(text)
  folded = [w.lower() for w in words]
  if text.lower() in folded:
    return folded.index(text.lower())
  return UNKNOWN_LABEL


def postprocess(task_name: str, text: str | bytes) -> int | str:
  """Generated text -> label id (-1 for unknown text); ReCoRD text passes through.

  Never raises on the text: anything that is not a label word is -1, which
  every metric counts as wrong.

  Args:
    task_name: the task (or benchmark) the text was generated for.
    text: the decoded model output (bytes are decoded as UTF-8).

  Returns:
    The label id, or for a free-text task the stripped text.
  """
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  if benchmark_of(task_name) in FREE_TEXT_BENCHMARKS:
    return text.strip()
  return label_to_id(task_name, text)
