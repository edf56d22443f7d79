"""The one list of methods: name -> class, read by gin, manifests, peft interop and transfer."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Type

from jaxpt.methods.model_tuning import ModelTuning
from jaxpt.methods.multitask import MultitaskPromptTuning
from jaxpt.methods.prefix import PrefixTuning
from jaxpt.methods.prompt import PromptTuning
from jaxpt.methods.ptuning import PTuning

METHODS: Dict[str, Type] = {cls.name: cls for cls in (
    PromptTuning, PrefixTuning, PTuning, MultitaskPromptTuning, ModelTuning)}


def method_class(name: str) -> Type:
  """The method class registered under `name` (its `name` field's default)."""
  if name not in METHODS:
    raise KeyError(f'unknown method {name!r}; expected one of {sorted(METHODS)}')
  return METHODS[name]


_NOT_HYPERPARAMETERS = ('array', 'name')


def hyperparameters(method: Any) -> Dict[str, Any]:
  """The method's dataclass fields, JSON-ready, without a saved array and the name."""
  out = {}
  for field in dataclasses.fields(method):
    if field.name in _NOT_HYPERPARAMETERS or not field.init:
      continue
    value = getattr(method, field.name)
    out[field.name] = list(value) if isinstance(value, tuple) else value
  return out


def from_hyperparameters(name: str, hyper: Mapping[str, Any]) -> Any:
  """The method `name` built from `hyperparameters(...)` output.

  Raises KeyError for an unknown method and ValueError for unknown or invalid
  hyperparameters.
  """
  cls = method_class(name)
  known = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(hyper) - known)
  if unknown:
    raise ValueError(f'{name} has no hyperparameters {unknown}')
  try:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in hyper.items()})
  except (TypeError, ValueError) as e:
    raise ValueError(f'invalid {name} hyperparameters: {e}') from e
