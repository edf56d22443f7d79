"""The one list of methods: name -> class, read by gin, manifests, peft interop and transfer."""

from __future__ import annotations

from typing import Dict, Type

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
