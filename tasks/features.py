"""Sequence lengths and the default vocabulary path, in pure Python."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Dict

EXTRA_IDS = 100
"""T5's sentinel ids: with the 32000-piece model the vocabulary has 32100 ids."""

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def default_vocab_path() -> str:
  """T5's SentencePiece model (`jaxpt.vocabulary.default_vocab_path`)."""
  from jaxpt.vocabulary import default_vocab_path as jaxpt_default
  return jaxpt_default()


def mini_vocab_path() -> str:
  """The SentencePiece model of jaxpt's mini backbone (8000 pieces trained on the offline
  corpus, `jaxpt/assets/mini_t5/spiece.model`; 8100 ids with the extra ids)."""
  spec = importlib.util.find_spec('jaxpt')
  root = pathlib.Path(list(spec.submodule_search_locations)[0]) if spec else (
      _REPO_ROOT / 'jaxpt')
  return str(root / 'assets' / 'mini_t5' / 'spiece.model')


def feature_lengths(inputs: int, targets: int, prompt_length: int = 0) -> Dict[str, int]:
  """SeqIO `sequence_length` for a model whose encoder input starts with a soft prompt.

  The prompt takes `prompt_length` of the encoder's `inputs` positions, so the
  text gets the rest; `append_eos_after_trim` keeps the EOS within it.

  Args:
    inputs: the encoder length the model sees (prompt + text).
    targets: the decoder length.
    prompt_length: the number of prompt vectors (0 for no prompt).

  Returns:
    {'inputs': inputs - prompt_length, 'targets': targets}.

  Raises:
    ValueError: for a negative length, or when the prompt leaves no room for at
      least one text token and EOS, or when targets cannot hold a token and EOS.
  """
  if min(inputs, targets, prompt_length) < 0:
    raise ValueError(f'lengths must not be negative: inputs={inputs}, targets={targets}, '
                     f'prompt_length={prompt_length}')
  text_length = inputs - prompt_length
  if text_length < 2:
    raise ValueError(f'a prompt of {prompt_length} leaves {text_length} of the {inputs} input '
                     f'positions for the text; at least 2 are needed (a token and EOS)')
  if targets < 2:
    raise ValueError(f'targets length {targets} cannot hold a token and EOS')
  return {'inputs': text_length, 'targets': targets}
