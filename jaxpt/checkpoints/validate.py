"""Checks a parameter tree against the shapes its config implies."""

from __future__ import annotations

from typing import Any, Dict

import jax
from flax import traverse_util

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.config import T5Config
from jaxpt.models.backbones import abstract_params


def check_params(params: Dict[str, Any], config: T5Config, source: str) -> None:
  """Raises CheckpointError listing every missing, extra or misshapen parameter."""
  expected = traverse_util.flatten_dict(abstract_params(config), sep='/')
  found = traverse_util.flatten_dict(params, sep='/')
  problems = []
  for path in sorted(set(expected) - set(found)):
    problems.append(f'missing {path} (expected shape {tuple(expected[path].shape)})')
  for path in sorted(set(found) - set(expected)):
    problems.append(f'unexpected {path} (shape {tuple(jax.numpy.shape(found[path]))})')
  for path in sorted(set(expected) & set(found)):
    want, got = tuple(expected[path].shape), tuple(jax.numpy.shape(found[path]))
    if want != got:
      problems.append(f'{path}: expected shape {want} from the config, found {got}')
  if problems:
    shown = '\n  '.join(problems[:20])
    more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
    raise CheckpointError(f'{source}: parameters do not match the config '
                          f'({len(problems)} problems):\n  {shown}{more}')
