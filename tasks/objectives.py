"""T5's unsupervised objectives as pure numpy preprocessors (no TensorFlow).

* Span corruption (`span_corruption`): T5's `random_spans_noise_mask` picks
  about `noise_density` of the tokens in spans of mean length
  `mean_noise_span_length` (the sequence starts with a kept span and ends
  with a noise span); the inputs keep the other tokens with each noise span
  replaced by one sentinel, the targets hold each noise span after its
  sentinel. Sentinels count down from the top of the vocabulary as in T5:
  `<extra_id_0>` is `vocab_size - 1`, `<extra_id_1>` is `vocab_size - 2`, ...
  (`vocab_size` is the SentencePiece vocabulary's with its extra ids, 32100
  for T5's, not the padded embedding size).
* Prefix LM (`prefix_lm`, the paper's "LM adaptation"): T5's
  `random_prefix_noise_mask` with noise density 0.5 splits a text at a
  uniformly random point; inputs = the prefix, targets = the continuation.

`random_spans_helper` gives the raw token length that yields a given inputs
length after corruption (T5's helper of the same name), and `chunks` cuts a
token stream into pieces of that length (T5's `split_tokens`). Every function
takes an explicit `numpy.random.Generator`.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Sequence, Tuple

import numpy as np

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator
                         ) -> np.ndarray:
  """Lengths of `num_segments` non-empty segments summing to `num_items` (uniform)."""
  first_in_segment = np.zeros(num_items, np.int64)
  starts = rng.permutation(num_items - 1)[:num_segments - 1] + 1
  first_in_segment[starts] = 1
  segment_id = np.cumsum(first_in_segment)
  return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator,
                            noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> np.ndarray:
  """T5's noise mask: bool [length], about `noise_density` True in spans.

  The number of noise tokens is round(length * noise_density) (at least 1,
  at most length - 1), split into round(noise / mean span) spans (at least
  one); kept and noise spans alternate, starting with a kept span.

  Raises:
    ValueError: for a non-positive length, or a density outside (0, 1).
  """
  if length < 1:
    raise ValueError(f'length must be positive, got {length}')
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f'noise_density must be in (0, 1), got {noise_density}')
  if mean_noise_span_length < 1.0:
    raise ValueError(f'mean_noise_span_length must be >= 1, got {mean_noise_span_length}')
  orig_length = length
  length = max(length, 2)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  num_spans = min(num_spans, num_noise, length - num_noise)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  kept_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]
  start_indicator = np.zeros(length, np.int64)
  start_indicator[span_starts] = 1
  is_noise = np.cumsum(start_indicator) % 2 == 1
  return is_noise[:orig_length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                  vocab_size: int) -> np.ndarray:
  """Each run of masked tokens -> one sentinel (vocab_size - 1, - 2, ...); others kept."""
  tokens, noise_mask = np.asarray(tokens), np.asarray(noise_mask, bool)
  prev_noise = np.concatenate([[False], noise_mask[:-1]])
  first_noise = noise_mask & ~prev_noise
  subsequent_noise = noise_mask & prev_noise
  sentinel = vocab_size - np.cumsum(first_noise)
  out = np.where(first_noise, sentinel, tokens)
  return out[~subsequent_noise].astype(tokens.dtype)


def nonnoise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                     vocab_size: int) -> np.ndarray:
  """The targets side: each run of kept tokens -> one sentinel, noise tokens kept."""
  return noise_span_to_unique_sentinel(tokens, ~np.asarray(noise_mask, bool), vocab_size)


def span_corruption(tokens: Sequence[int], vocab_size: int, rng: np.random.Generator,
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of T5's span corruption of `tokens` (no EOS added).

  Raises:
    ValueError: for an empty sequence, or a token id in the sentinel range.
  """
  tokens = np.asarray(tokens, np.int32)
  if tokens.size == 0:
    raise ValueError('span corruption needs at least one token')
  mask = random_spans_noise_mask(tokens.size, rng, noise_density, mean_noise_span_length)
  return (noise_span_to_unique_sentinel(tokens, mask, vocab_size),
          nonnoise_span_to_unique_sentinel(tokens, mask, vocab_size))


def random_prefix_noise_mask(length: int, rng: np.random.Generator,
                             noise_density: float = 0.5) -> np.ndarray:
  """T5's prefix mask: the last tokens from a random split point on are noise.

  The prefix has between max(1, round((1 - 2 * noise_density) * (length - 1)))
  and length - 1 tokens, uniformly (noise density 0.5: anywhere from 1).

  Raises:
    ValueError: for a length below 2 or a density above 0.5.
  """
  if length < 2:
    raise ValueError(f'a prefix-LM split needs at least 2 tokens, got {length}')
  if not 0.0 < noise_density <= 0.5:
    raise ValueError(f'noise_density must be in (0, 0.5], got {noise_density}')
  max_inputs = length - 1
  min_inputs = min(max_inputs, max(1, int(round((1 - 2 * noise_density) * max_inputs))))
  num_inputs = int(rng.integers(min_inputs, max_inputs + 1))
  return np.arange(length) >= num_inputs


def prefix_lm(tokens: Sequence[int], rng: np.random.Generator, noise_density: float = 0.5
              ) -> Tuple[np.ndarray, np.ndarray]:
  """(inputs, targets): the text split at a random point (no EOS added)."""
  tokens = np.asarray(tokens, np.int32)
  mask = random_prefix_noise_mask(tokens.size, rng, noise_density)
  return tokens[~mask], tokens[mask]


def random_spans_helper(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                        ) -> Tuple[int, int]:
  """(tokens_length, targets_length): raw tokens that corrupt to `inputs_length` inputs.

  T5's `random_spans_helper` with one sentinel per span and EOS on both sides:
  the largest raw length whose inputs (kept tokens + sentinels + EOS) fit
  `inputs_length`, and the targets length it then needs. inputs_length=512
  gives (568, 114), as in T5.
  """

  def lengths(tokens_length: int) -> Tuple[int, int]:
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths(tokens_length)[1]


def chunks(documents: Iterable[Sequence[int]], length: int) -> Iterator[np.ndarray]:
  """The documents' tokens joined in order and cut into pieces of `length`.

  As T5's `reduce_concat_tokens` + `split_tokens`: a piece may span a document
  boundary; the last piece may be shorter.
  """
  if length < 1:
    raise ValueError(f'chunk length must be positive, got {length}')
  buffer: List[int] = []
  for doc in documents:
    buffer.extend(int(t) for t in doc)
    while len(buffer) >= length:
      yield np.asarray(buffer[:length], np.int32)
      buffer = buffer[length:]
  if buffer:
    yield np.asarray(buffer, np.int32)


OBJECTIVES = ('span_corruption', 'prefix_lm')


def chunk_length(objective: str, inputs_length: int) -> int:
  """Raw tokens per example: span corruption `random_spans_helper`'s, prefix LM inputs - 1.

  Raises:
    ValueError: for an unknown objective.
  """
  if objective == 'span_corruption':
    return random_spans_helper(inputs_length)[0]
  if objective == 'prefix_lm':
    return inputs_length - 1
  raise ValueError(f'unknown objective {objective!r}; expected one of {OBJECTIVES}')


def objective_examples(documents: Iterable[Sequence[int]], objective: str, vocab_size: int,
                       inputs_length: int, rng: np.random.Generator
                       ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """(inputs, targets) without EOS: the documents chunked (`chunks`) and noised by `objective`.

  The chunk length leaves room for EOS in `inputs_length`. A last chunk of one token
  is dropped for the prefix LM (it cannot be split).
  """
  length = chunk_length(objective, inputs_length)
  for piece in chunks(documents, length):
    if objective == 'span_corruption':
      yield span_corruption(piece, vocab_size, rng)
    elif piece.size >= 2:
      yield prefix_lm(piece, rng)
