"""A task split's predictions and metrics: rank classification or greedy decoding."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.data.features import pad_rows
from jaxpt.prompted.base import PromptedModel
from jaxpt.vocabulary import EOS_ID, PAD_ID


def label_token_table(task_name: str, encode: Callable[[str], Sequence[int]],
                      eos_id: int = EOS_ID) -> Optional[np.ndarray]:
  """[num_labels, T] tokens of every label word + EOS, or None for free-text tasks."""
  import tasks
  try:
    words = tasks.label_words(task_name)
  except (KeyError, ValueError):
    return None
  if not words:
    return None
  return pad_rows([list(encode(w)) + [eos_id] for w in words])


def eos_of(vocab: Any) -> int:
  """A vocabulary's end-of-sequence id (T5's 1; a GPT-2 / Llama tokenizer's own)."""
  return int(getattr(vocab, 'eos_id', EOS_ID))


def decode_row(vocab: Any, row: Sequence[int]) -> str:
  """Text of generated ids: up to the vocabulary's EOS, padding (0) skipped."""
  ids, eos = [int(t) for t in row], eos_of(vocab)
  if eos in ids:
    ids = ids[:ids.index(eos)]
  return vocab.decode([t for t in ids if t != PAD_ID])


def _batched(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
             batch_size: int) -> np.ndarray:
  """`fn` over fixed-size batches of rows (the last one padded, so one compile)."""
  out = []
  for start in range(0, inputs.shape[0], batch_size):
    chunk = inputs[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    padded = np.pad(chunk, ((0, pad), (0, 0))) if pad else chunk
    out.append(np.asarray(fn(padded))[:chunk.shape[0]])
  return np.concatenate(out) if out else np.zeros((0,), np.int32)


def predict_texts(model: PromptedModel, params: Any, inputs: np.ndarray, vocab: Any, *,
                  batch_size: int = 32, max_decode_length: int = 16, strategy: str = 'greedy',
                  num_beams: int = 4) -> list:
  """Decoded texts of every input row (greedy, or beam search with `num_beams`)."""
  generate = jax.jit(lambda p, enc: model.generate(p, enc, max_decode_length,
                                                   strategy=strategy, num_beams=num_beams))
  rows = _batched(lambda enc: generate(params, enc), inputs, batch_size)
  return [decode_row(vocab, row) for row in rows]


def score_split(model: PromptedModel, params: Any, task_name: str,
                examples: Mapping[str, Any], batch_size: int = 32,
                max_decode_length: int = 16, strategy: str = 'greedy',
                num_beams: int = 4) -> Dict[str, Any]:
  """Predictions and the task's metrics for a split.

  Classification tasks use rank classification over the label words (the
  paper's evaluation); free-text tasks decode (`strategy` 'greedy' or 'beam').
  """
  import tasks
  vocab = examples['vocabulary']
  table = label_token_table(task_name, lambda text: list(vocab.encode(text)), eos_of(vocab))
  inputs = examples['inputs']
  if table is not None:
    rank = jax.jit(lambda p, enc: model.score(p, enc, jnp.asarray(table))[0])
    predictions = [int(i) for i in _batched(lambda enc: rank(params, enc), inputs, batch_size)]
    texts = [tasks.label_words(task_name)[i] for i in predictions]
  else:
    texts = predict_texts(model, params, inputs, vocab, batch_size=batch_size,
                          max_decode_length=max_decode_length, strategy=strategy,
                          num_beams=num_beams)
    predictions = [tasks.postprocess(task_name, text) for text in texts]
  if 'references' in examples:  # generation: every reference of each input
    targets = examples['references']
  else:
    targets = [tasks.postprocess(task_name, t) for t in examples['target_texts']]
  try:
    metrics = tasks.metrics.compute(task_name, targets, predictions)
  except ValueError as e:  # e.g. MultiRC without question groups: report accuracy
    metrics = {'accuracy': 100.0 * float(np.mean(np.asarray(targets) == np.asarray(predictions))),
               'note': str(e)}
  return {'metrics': metrics, 'predictions': texts, 'targets': examples['target_texts']}


def score_examples(model: PromptedModel, params: Any, inputs: np.ndarray,
                   target_texts: Sequence[str], vocab: Any,
                   labels: Optional[Sequence[str]] = None, *, batch_size: int = 32,
                   max_decode_length: int = 16) -> Dict[str, Any]:
  """Accuracy on a user's own examples: rank classification over `labels`, else exact match
  of greedy-decoded text."""
  if labels:
    table = pad_rows([list(vocab.encode(w)) + [eos_of(vocab)] for w in labels])
    rank = jax.jit(lambda p, enc: model.score(p, enc, jnp.asarray(table))[0])
    texts = [labels[int(i)] for i in _batched(lambda enc: rank(params, enc), inputs,
                                              batch_size)]
  else:
    texts = predict_texts(model, params, inputs, vocab, batch_size=batch_size,
                          max_decode_length=max_decode_length)
  correct = [p.strip() == t.strip() for p, t in zip(texts, target_texts)]
  return {'metrics': {'accuracy': 100.0 * float(np.mean(correct)) if correct else 0.0},
          'predictions': texts, 'targets': list(target_texts)}
