"""Span-corruption / prefix-LM batches and their loss, without TensorFlow.

The same examples as the SeqIO tasks `corpus_span_corruption*` and
`corpus_prefix_lm*` (`tasks.objectives.objective_examples` over
`tasks.corpus` documents), tokenized with SentencePiece directly: for
measuring a backbone's held-out pretraining loss cheaply (tests, the mini
backbone's metadata).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from jaxpt.models.model import Model
from jaxpt.train.loss import loss_and_metrics
from jaxpt.vocabulary import EOS_ID, PAD_ID


def encode_documents(texts: Sequence[str], vocab_path: str) -> List[List[int]]:
  """SentencePiece ids of each text (no EOS)."""
  import sentencepiece as spm
  processor = spm.SentencePieceProcessor(model_file=str(vocab_path))
  return [processor.encode(t) for t in texts]


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
  n = len(pairs)
  enc = np.full((n, lengths['inputs']), PAD_ID, np.int32)
  tgt = np.full((n, lengths['targets']), PAD_ID, np.int32)
  for i, (inputs, targets) in enumerate(pairs):
    row = list(inputs[:lengths['inputs'] - 1]) + [EOS_ID]
    enc[i, :len(row)] = row
    row = list(targets[:lengths['targets'] - 1]) + [EOS_ID]
    tgt[i, :len(row)] = row
  dec = np.concatenate([np.full((n, 1), PAD_ID, np.int32), tgt[:, :-1]], axis=1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
          'decoder_target_tokens': tgt}


def mean_loss(model: Model, batches: Sequence[Dict[str, np.ndarray]]) -> float:
  """Token-weighted mean cross-entropy (nats per target token, EOS included, no z-loss)."""
  total, count = 0.0, 0.0
  for batch in batches:
    logits = model.logits(batch['encoder_input_tokens'], batch['decoder_input_tokens'])
    weights = (batch['decoder_target_tokens'] != PAD_ID).astype(np.float32)
    _, metrics = loss_and_metrics(logits, batch['decoder_target_tokens'], weights)
    total += float(metrics['loss']) * float(metrics['num_tokens'])
    count += float(metrics['num_tokens'])
  if not count:
    raise ValueError('no target tokens to measure a loss on')
  return total / count
