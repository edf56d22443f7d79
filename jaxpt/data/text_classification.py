"""Text-to-text classification examples as numpy batches, without TensorFlow.

For the demo and the benchmarks: examples from `tasks.local` / `tasks.synthetic`
({'inputs': text, 'targets': label word}) tokenized with any `encode(text) ->
ids` (e.g. a SentencePiece processor), and a deterministic batch stream
position -> batch, the form `jaxpt.train.loop.train` takes.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

from jaxpt.data.features import pad_rows, shift_right
from jaxpt.vocabulary import EOS_ID


Encode = Callable[[str], Sequence[int]]


def encode_inputs(texts: Sequence[str], encode: Encode, length: int,
                  eos_id: int = EOS_ID) -> np.ndarray:
  """[n, length] ids: each text cut to leave room for EOS, then EOS (`eos_id`: the
  vocabulary's), then padding."""
  return pad_rows([list(encode(text))[:length - 1] + [eos_id] for text in texts], length)


def label_table(words: Sequence[str], encode: Encode, length: int,
                eos_id: int = EOS_ID) -> np.ndarray:
  """[num_labels, length]: each label word's ids + EOS (the rank-classification candidates)."""
  return encode_inputs(words, encode, length, eos_id)


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
    return {'encoder_input_tokens': self.inputs[rows],
            'decoder_input_tokens': shift_right(targets),
            'decoder_target_tokens': targets}
