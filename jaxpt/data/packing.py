"""Packing examples into rows with a soft prompt per segment (numpy, no TensorFlow).

T5X packs several examples into one row and marks them with segment ids and
positions. Here each packed segment's encoder part also starts with
`prompt_length` prompt slots, the marker ids of `jaxpt.models.t5.prompt_marker`
(-(k + 1) for prompt row k), so the model places its prompt (or task k's
prompt, by `encoder_task_ids`) at every segment start. Features use T5X's
names: encoder_input_tokens, encoder_segment_ids (1, 2, ... per segment, 0 on
padding), encoder_positions, decoder_input_tokens (shifted right within each
segment), decoder_target_tokens, decoder_loss_weights, decoder_segment_ids,
decoder_positions, and with task ids encoder_task_ids / decoder_task_ids.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from jaxpt.data.features import shift_right
from jaxpt.vocabulary import EOS_ID, PAD_ID

# The packed features that are per-token ids; all are int32 [rows, length].
ENCODER_FEATURES = ('encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions')
DECODER_FEATURES = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights',
                    'decoder_segment_ids', 'decoder_positions')


def prompt_markers(prompt_length: int) -> np.ndarray:
  """Marker ids of prompt rows 0..prompt_length-1 (`jaxpt.models.t5.prompt_marker`)."""
  return -(np.arange(prompt_length, dtype=np.int32) + 1)


def truncate_keeping_eos(ids: np.ndarray, length: int, eos_id: int = EOS_ID) -> np.ndarray:
  """`ids` cut to `length`, ending in EOS when it had one (T5's append_eos_after_trim)."""
  ids = np.asarray(ids, np.int32).reshape(-1)
  if len(ids) <= length:
    return ids
  cut = ids[:length].copy()
  if length and (ids == eos_id).any():
    cut[-1] = eos_id
  return cut


def fit_examples(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
                 inputs_length: int, targets_length: int, prompt_length: int = 0
                 ) -> Tuple[List[np.ndarray], List[np.ndarray], int]:
  """(inputs, targets, number of examples cut): each example cut to fit one row.

  An input keeps `inputs_length - prompt_length` ids, a target `targets_length`,
  each ending in EOS when it had one.
  """
  if len(inputs) != len(targets):
    raise ValueError(f'{len(inputs)} inputs but {len(targets)} targets')
  keep = inputs_length - prompt_length
  if keep <= 0:
    raise ValueError(f'a prompt of length {prompt_length} leaves no room for inputs in an '
                     f'encoder length of {inputs_length}')
  fitted_in, fitted_out, cut = [], [], 0
  for x, y in zip(inputs, targets):
    x, y = np.asarray(x, np.int32).reshape(-1), np.asarray(y, np.int32).reshape(-1)
    cut += int(len(x) > keep or len(y) > targets_length)
    fitted_in.append(truncate_keeping_eos(x, keep))
    fitted_out.append(truncate_keeping_eos(y, targets_length))
  return fitted_in, fitted_out, cut


def packed_targets_length(inputs: Sequence[np.ndarray], targets_length: int,
                          inputs_length: int, prompt_length: int = 0) -> int:
  """A decoder row length for packing: `targets_length` per example a row holds on average.

  A row of `inputs_length` encoder positions holds about inputs_length /
  (prompt_length + mean input length) examples; with the unpacked targets
  length the decoder side would stop the packing at one or two (RTE with
  T5X's 512 + 8: no packing at all).
  """
  mean = float(np.mean([len(x) for x in inputs])) if len(inputs) else 1.0
  per_row = max(1, int(np.ceil(inputs_length / (prompt_length + max(mean, 1.0)))))
  return targets_length * per_row


def first_fit(encoder_sizes: np.ndarray, decoder_sizes: np.ndarray, inputs_length: int,
              targets_length: int) -> np.ndarray:
  """Row index of each example, greedy first fit in order (both sides must fit)."""
  n = len(encoder_sizes)
  enc_free = np.full(n, inputs_length, np.int64)
  dec_free = np.full(n, targets_length, np.int64)
  rows = np.zeros(n, np.int64)
  num_rows, first_open = 0, 0
  min_enc, min_dec = (int(encoder_sizes.min()), int(decoder_sizes.min())) if n else (0, 0)
  for i in range(n):
    a, b = encoder_sizes[i], decoder_sizes[i]
    # Rows before first_open can take no example at all: skip them for good.
    while first_open < num_rows and (enc_free[first_open] < min_enc
                                     or dec_free[first_open] < min_dec):
      first_open += 1
    fits = np.flatnonzero((enc_free[first_open:num_rows] >= a)
                          & (dec_free[first_open:num_rows] >= b))
    row = first_open + int(fits[0]) if len(fits) else num_rows
    num_rows += int(row == num_rows)
    enc_free[row] -= a
    dec_free[row] -= b
    rows[i] = row
  return rows


def pack_examples(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], *,
                  inputs_length: int, targets_length: int, prompt_length: int = 0,
                  task_ids: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
  """Packs tokenized examples (EOS appended) into rows of T5X features.

  Greedy first fit in example order: an example goes to the first row with
  room for `prompt_length + len(input)` encoder and `len(target)` decoder
  positions. Examples longer than a row are cut first (`fit_examples`; a
  warning counts them).

  Args:
    inputs, targets: 1-D int arrays per example, EOS already appended.
    inputs_length, targets_length: the row lengths (encoder, decoder).
    prompt_length: prompt slots at each segment's start (the method's
      `prompt_length`: 0 for prefixes and P-tuning templates, whose markers are
      already in the inputs).
    task_ids: one task id per example; adds encoder_task_ids / decoder_task_ids
      (the task of each token, 0 on padding).

  Returns:
    int32 [rows, length] features (see the module doc); decoder_loss_weights
    is 1 on every target token.
  """
  inputs, targets, cut = fit_examples(inputs, targets, inputs_length=inputs_length,
                                      targets_length=targets_length,
                                      prompt_length=prompt_length)
  if cut:
    logging.warning('packing: %d of %d examples were longer than a row and were cut', cut,
                    len(inputs))
  if task_ids is not None and len(task_ids) != len(inputs):
    raise ValueError(f'{len(task_ids)} task ids for {len(inputs)} examples')
  enc_sizes = np.asarray([prompt_length + len(x) for x in inputs], np.int64)
  dec_sizes = np.asarray([len(y) for y in targets], np.int64)
  rows = first_fit(enc_sizes, dec_sizes, inputs_length, targets_length)
  num_rows = int(rows.max()) + 1 if len(rows) else 0

  enc = {k: np.zeros((num_rows, inputs_length), np.int32) for k in ENCODER_FEATURES}
  dec = {k: np.zeros((num_rows, targets_length), np.int32) for k in DECODER_FEATURES}
  enc_task = np.zeros((num_rows, inputs_length), np.int32)
  dec_task = np.zeros((num_rows, targets_length), np.int32)
  enc_fill = np.zeros(num_rows, np.int64)
  dec_fill = np.zeros(num_rows, np.int64)
  segments = np.zeros(num_rows, np.int32)
  markers = prompt_markers(prompt_length)
  for i, (x, y) in enumerate(zip(inputs, targets)):
    r = rows[i]
    segments[r] += 1
    seg = segments[r]
    a, b = enc_fill[r], dec_fill[r]
    ids = np.concatenate([markers, x])
    enc['encoder_input_tokens'][r, a:a + len(ids)] = ids
    enc['encoder_segment_ids'][r, a:a + len(ids)] = seg
    enc['encoder_positions'][r, a:a + len(ids)] = np.arange(len(ids))
    dec['decoder_target_tokens'][r, b:b + len(y)] = y
    dec['decoder_loss_weights'][r, b:b + len(y)] = 1
    dec['decoder_segment_ids'][r, b:b + len(y)] = seg
    dec['decoder_positions'][r, b:b + len(y)] = np.arange(len(y))
    if task_ids is not None:
      enc_task[r, a:a + len(ids)] = task_ids[i]
      dec_task[r, b:b + len(y)] = task_ids[i]
    enc_fill[r] += len(ids)
    dec_fill[r] += len(y)
  dec['decoder_input_tokens'] = shift_right(dec['decoder_target_tokens'],
                                            segment_ids=dec['decoder_segment_ids'])
  features = {**enc, **dec}
  if task_ids is not None:
    features['encoder_task_ids'] = enc_task
    features['decoder_task_ids'] = dec_task
  return features


def packed_batches(features: Dict[str, np.ndarray], batch_size: int
                   ) -> Iterator[Dict[str, np.ndarray]]:
  """Consecutive batches of `batch_size` rows; the last is padded with empty rows."""
  num_rows = len(features['encoder_input_tokens'])
  for start in range(0, num_rows, batch_size):
    batch = {}
    for name, array in features.items():
      part = array[start:start + batch_size]
      if len(part) < batch_size:
        pad = np.full((batch_size - len(part),) + part.shape[1:], PAD_ID, part.dtype)
        part = np.concatenate([part, pad])
      batch[name] = part
    yield batch


class PackedBatches:
  """position -> a batch of `batch_size` packed rows, deterministic in (seed, position).

  The examples are shuffled once (seed) and packed once (`pack_examples`);
  each epoch then visits the rows in its own seeded order, so examples that
  share a row stay together across epochs. The last batch of an epoch is
  padded with empty rows.

  Args: those of `pack_examples`, and
    batch_size: rows per batch.
    seed: the shuffling seed.
  """

  def __init__(self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
               batch_size: int, *, inputs_length: int, targets_length: int,
               prompt_length: int = 0, task_ids: Optional[Sequence[int]] = None,
               seed: int = 0):
    if not len(inputs):
      raise ValueError('no examples to pack')
    order = np.random.default_rng([seed]).permutation(len(inputs))
    self.features = pack_examples(
        [inputs[i] for i in order], [targets[i] for i in order], inputs_length=inputs_length,
        targets_length=targets_length, prompt_length=prompt_length,
        task_ids=None if task_ids is None else [task_ids[i] for i in order])
    self.batch_size, self.seed = batch_size, seed
    self.num_rows = len(self.features['encoder_input_tokens'])
    self.num_examples = len(inputs)
    self.batches_per_epoch = -(-self.num_rows // batch_size)

  def __call__(self, position: int) -> Dict[str, np.ndarray]:
    epoch, index = divmod(position, self.batches_per_epoch)
    rows = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    rows = rows[index * self.batch_size:(index + 1) * self.batch_size]
    return next(packed_batches({k: v[rows] for k, v in self.features.items()},
                               self.batch_size))


def padding_share(features: Dict[str, np.ndarray]) -> Dict[str, float]:
  """Share of encoder, decoder and all positions that hold no example (prompt slots count
  as used), from the segment ids of packed features or the ids of padded ones."""
  def used(side):
    if f'{side}_segment_ids' in features:
      return features[f'{side}_segment_ids'] > 0
    ids = features['encoder_input_tokens' if side == 'encoder' else 'decoder_target_tokens']
    return ids != PAD_ID

  enc, dec = used('encoder'), used('decoder')
  total = enc.size + dec.size
  return {'encoder': 1.0 - float(enc.mean()) if enc.size else 0.0,
          'decoder': 1.0 - float(dec.mean()) if dec.size else 0.0,
          'total': 1.0 - float(enc.sum() + dec.sum()) / total if total else 0.0}
