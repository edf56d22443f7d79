"""Text-to-text classification examples as numpy batches, without TensorFlow.

For the demo and the benchmarks: examples from `tasks.local` / `tasks.synthetic`
({'inputs': text, 'targets': label word}) tokenized with any `encode(text) ->
ids` (e.g. a SentencePiece processor), and a deterministic batch stream
position -> batch, the form `jaxpt.train.loop.train` takes.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

from jaxpt.vocabulary import EOS_ID, PAD_ID

Encode = Callable[[str], Sequence[int]]


def encode_inputs(texts: Sequence[str], encode: Encode, length: int) -> np.ndarray:
  """[n, length] ids: each text cut to leave room for EOS, then EOS, then padding."""
  out = np.full((len(texts), length), PAD_ID, np.int32)
  for i, text in enumerate(texts):
    row = list(encode(text))[:length - 1] + [EOS_ID]
    out[i, :len(row)] = row
  return out


def label_table(words: Sequence[str], encode: Encode, length: int) -> np.ndarray:
  """[num_labels, length]: each label word's ids + EOS (the rank-classification candidates)."""
  return encode_inputs(words, encode, length)


class ClassificationBatches:
  """position -> a training batch of examples drawn with replacement (seeded per position).

  Args:
    inputs: [n, input_len] encoder ids (`encode_inputs`).
    labels: [n] label indices into `table`.
    table: [num_labels, target_len] target ids (`label_table`).
    batch_size: examples per batch.
    seed: the stream's seed.
  """

  def __init__(self, inputs: np.ndarray, labels: np.ndarray, table: np.ndarray,
               batch_size: int, seed: int = 0):
    if len(inputs) != len(labels) or not len(inputs):
      raise ValueError(f'need as many labels as inputs (> 0), got {len(inputs)} inputs and '
                       f'{len(labels)} labels')
    self.inputs, self.labels, self.table = inputs, np.asarray(labels), table
    self.batch_size, self.seed = batch_size, seed

  def __call__(self, position: int) -> Dict[str, np.ndarray]:
    rows = np.random.default_rng([self.seed, position]).integers(0, len(self.inputs),
                                                                 self.batch_size)
    targets = self.table[self.labels[rows]]
    decoder_inputs = np.concatenate(
        [np.full((self.batch_size, 1), PAD_ID, np.int32), targets[:, :-1]], axis=1)
    return {'encoder_input_tokens': self.inputs[rows], 'decoder_input_tokens': decoder_inputs,
            'decoder_target_tokens': targets}
