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


def shift_right(targets: np.ndarray, start: int = PAD_ID) -> np.ndarray:
  """Decoder inputs: targets shifted right by one behind the decoder start id (T5: 0)."""
  targets = np.asarray(targets)
  return np.concatenate([np.full(targets.shape[:-1] + (1,), start, targets.dtype),
                         targets[..., :-1]], axis=-1)
