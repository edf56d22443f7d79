"""T5X feature helpers shared by every batch builder: padding rows, shifting targets."""

from __future__ import annotations

from typing import Optional, Sequence

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
