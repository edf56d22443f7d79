"""T5X feature helpers shared by every batch builder: padding rows, shifting targets."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from jaxpt.vocabulary import PAD_ID


def pad_rows(rows: Sequence[Sequence[int]], length: Optional[int] = None) -> np.ndarray:
  """int32 [len(rows), length] with each row left-aligned and PAD after it.

  `length` defaults to the longest row; rows longer than `length` are an error
  (cut them first, keeping EOS).
  """
  width = max((len(r) for r in rows), default=0) if length is None else length
  out = np.full((len(rows), width), PAD_ID, np.int32)
  for i, row in enumerate(rows):
    if len(row) > width:
      raise ValueError(f'row {i} has {len(row)} ids, more than the length {width}')
    out[i, :len(row)] = row
  return out


def shift_right(targets: np.ndarray, start: int = PAD_ID,
                segment_ids: Optional[np.ndarray] = None) -> np.ndarray:
  """Decoder inputs: targets shifted right by one behind the decoder start id (T5: 0).

  With `segment_ids` (packed rows) each segment starts with `start` and never
  sees the previous segment's last token.
  """
  targets = np.asarray(targets)
  shifted = np.concatenate([np.full(targets.shape[:-1] + (1,), start, targets.dtype),
                            targets[..., :-1]], axis=-1)
  if segment_ids is None:
    return shifted
  segment_ids = np.asarray(segment_ids)
  previous = np.concatenate([np.zeros(segment_ids.shape[:-1] + (1,), segment_ids.dtype),
                             segment_ids[..., :-1]], axis=-1)
  return np.where(segment_ids == previous, shifted, np.asarray(start, targets.dtype))


def decoder_only_features(inputs: np.ndarray, targets: np.ndarray) -> Dict[str, np.ndarray]:
  """T5X's decoder-only layout of 0-padded encoder-style `inputs` [B, Li] and `targets`
  [B, T]: each row's real inputs then its real targets, 0-padded to Li + T;
  `decoder_input_tokens` is that shifted right (0 first); the loss weights are 1 on
  the target part only."""
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  rows, weights = [], []
  for inp, tgt in zip(inputs, targets):
    inp, tgt = inp[inp != PAD_ID], tgt[tgt != PAD_ID]
    rows.append(np.concatenate([inp, tgt]))
    weights.append([0.0] * len(inp) + [1.0] * len(tgt))
  width = inputs.shape[1] + targets.shape[1]
  sequence = pad_rows(rows, width)
  loss_weights = np.zeros((len(rows), width), np.float32)
  for i, w in enumerate(weights):
    loss_weights[i, :len(w)] = w
  return dict(decoder_input_tokens=shift_right(sequence), decoder_target_tokens=sequence,
              decoder_loss_weights=loss_weights)


def as_decoder_only(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """An encoder-decoder batch (`encoder_input_tokens`, `decoder_target_tokens`, unpacked)
  in T5X's decoder-only layout (`decoder_only_features`); other keys (`task_ids`) kept."""
  out = {k: v for k, v in batch.items() if not k.startswith(('encoder_', 'decoder_'))}
  out.update(decoder_only_features(batch['encoder_input_tokens'],
                                   batch['decoder_target_tokens']))
  return out


class DecoderOnlyBatches:
  """position -> `as_decoder_only` of another stream's batch at that position: the
  SeqIO and user-file streams (`TrainBatches`, `ClassificationBatches`) for a GPT-2 /
  Llama backbone. Attributes other than the call are the wrapped stream's."""

  def __init__(self, batches):
    self.batches = batches

  def __call__(self, position: int) -> Dict[str, np.ndarray]:
    return as_decoder_only(self.batches(position))

  def __getattr__(self, name):
    return getattr(self.__dict__['batches'], name)
