"""Frozen / trainable partition of a parameter pytree by regexes over paths.

Paths join dict keys with '/', e.g. 'backbone/encoder/layers_0/mlp/wo/kernel'
or 'method/prompt'. A leaf is trainable when any rule `re.fullmatch`es its
path (T5X's convention). Prompt tuning trains r'method/.*'; full model tuning
is the same code with r'.*'.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Sequence, Tuple

from flax import traverse_util

PROMPT_ONLY = (r'method/.*',)
EVERYTHING = (r'.*',)


def partition(params: Dict[str, Any], trainable: Sequence[str]) -> Tuple[Dict, Dict]:
  """Splits `params` into (trainable, frozen) nested dicts of the same leaves.

  Raises ValueError when the rules match no leaf (a typo would otherwise
  silently train nothing).
  """
  if isinstance(trainable, str):
    trainable = (trainable,)
  patterns = [re.compile(p) for p in trainable]
  flat = traverse_util.flatten_dict(params, sep='/')
  chosen = {k: v for k, v in flat.items() if any(p.fullmatch(k) for p in patterns)}
  if not chosen:
    some = ', '.join(sorted(flat)[:5])
    raise ValueError(f'trainable rules {list(trainable)} match no parameter; paths look like: '
                     f'{some}, ...')
  frozen = {k: v for k, v in flat.items() if k not in chosen}
  return (traverse_util.unflatten_dict(chosen, sep='/'),
          traverse_util.unflatten_dict(frozen, sep='/') if frozen else {})


def combine(trainable: Dict[str, Any], frozen: Dict[str, Any]) -> Dict[str, Any]:
  """The inverse of `partition`."""
  flat = traverse_util.flatten_dict(frozen, sep='/') if frozen else {}
  flat.update(traverse_util.flatten_dict(trainable, sep='/'))
  return traverse_util.unflatten_dict(flat, sep='/')
