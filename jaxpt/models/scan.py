"""Conversion between per-layer (`layers_i`) and scanned (`layers`) parameters.

Checkpoints always hold the per-layer form; a model built with
`scan_layers=True` keeps each stack's layers stacked on a leading axis.
"""

from __future__ import annotations

import re
from typing import Any, Dict

import jax
import jax.numpy as jnp

_LAYER = re.compile(r'layers_(\d+)$')


def stack_layers(params: Dict[str, Any]) -> Dict[str, Any]:
  """Replaces each stack's `layers_0..layers_{n-1}` with one `layers` subtree."""
  out = dict(params)
  for stack in ('encoder', 'decoder'):
    if stack not in params:
      continue
    sub = dict(params[stack])
    names = sorted((k for k in sub if _LAYER.match(k)), key=lambda k: int(_LAYER.match(k)[1]))
    if names:
      layers = [sub.pop(k) for k in names]
      sub['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    out[stack] = sub
  return out


def unstack_layers(params: Dict[str, Any]) -> Dict[str, Any]:
  """Inverse of `stack_layers`."""
  out = dict(params)
  for stack in ('encoder', 'decoder'):
    if stack not in params or 'layers' not in params[stack]:
      continue
    sub = dict(params[stack])
    layers = sub.pop('layers')
    n = jax.tree.leaves(layers)[0].shape[0]
    for i in range(n):
      sub[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], layers)
    out[stack] = sub
  return out
