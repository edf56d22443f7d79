"""Span-corruption / prefix-LM / causal-LM batches, without TensorFlow.

The same examples as the SeqIO tasks `corpus_span_corruption*` and
`corpus_prefix_lm*` (`tasks.objectives.objective_examples` over
`tasks.corpus` documents), tokenized with SentencePiece directly: for
measuring a backbone's held-out pretraining loss cheaply with
`jaxpt.evaluate.held_out.mean_loss` (tests, the mini backbone's metadata).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from jaxpt.data.features import decoder_only_features, pad_rows, shift_right
from jaxpt.vocabulary import EOS_ID, Vocabulary


def encode_documents(texts: Sequence[str], vocab_path: str) -> List[List[int]]:
  """SentencePiece ids of each text (no EOS)."""
  vocab = Vocabulary(str(vocab_path))
  return [vocab.encode(t) for t in texts]


def objective_batches(documents: Sequence[Sequence[int]], objective: str, vocab_size: int,
                      lengths: Mapping[str, int], batch_size: int, seed: int = 0
                      ) -> Iterator[Dict[str, np.ndarray]]:
  """T5X features (encoder_input_tokens, decoder_input_tokens, decoder_target_tokens).

  Every example gets EOS; targets longer than `lengths['targets'] - 1` are cut
  (SeqIO's `append_eos_after_trim`); the last batch may be smaller.
  `vocab_size` is the SentencePiece vocabulary's with its extra ids (8100
  for the mini backbone, 32100 for T5's).
  """
  from tasks import objectives
  rng = np.random.default_rng(seed)
  pairs = list(objectives.objective_examples(documents, objective, vocab_size,
                                             lengths['inputs'], rng))
  for start in range(0, len(pairs), batch_size):
    yield _features(pairs[start:start + batch_size], lengths)


def _features(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], lengths: Mapping[str, int]
              ) -> Dict[str, np.ndarray]:
  enc = pad_rows([list(i[:lengths['inputs'] - 1]) + [EOS_ID] for i, _ in pairs],
                 lengths['inputs'])
  tgt = pad_rows([list(t[:lengths['targets'] - 1]) + [EOS_ID] for _, t in pairs],
                 lengths['targets'])
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': shift_right(tgt),
          'decoder_target_tokens': tgt}


def causal_lm_rows(documents: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """Documents joined (each followed by EOS) and cut into rows of `length` (int32
  [rows, length]); the last row is 0-padded."""
  stream = np.concatenate([np.asarray(list(d) + [EOS_ID], np.int32) for d in documents])
  rows = -(-len(stream) // length)
  out = np.zeros((rows * length,), np.int32)
  out[:len(stream)] = stream
  return out.reshape(rows, length)


def causal_lm_batch(rows: np.ndarray) -> Dict[str, np.ndarray]:
  """Next-token features of whole rows (a loss on every real token): T5X's decoder-only
  layout with empty inputs, the decoder input being the row shifted right behind 0."""
  return decoder_only_features(np.zeros((len(rows), 0), np.int32), rows)
