"""Per-family parameter functions: one entry point whatever the backbone config.

`init_params`, `abstract_params` and `logical_axes` of a `T5Config` come from
`jaxpt.models.t5`, of a `DecoderConfig` (GPT-2, Llama) from `jaxpt.models.causal`.
Partitioning, checkpoint validation and the CLI call these.
"""

from __future__ import annotations

from typing import Any, Dict

import jax

from jaxpt.models import causal, t5
from jaxpt.models.decoder_config import DecoderConfig

Array = jax.Array


def _family(config: Any):
  return causal if isinstance(config, DecoderConfig) else t5


def init_params(config: Any, rng: Array) -> Dict:
  """Random parameters (unboxed) of the backbone `config` describes."""
  return _family(config).init_params(config, rng)


def abstract_params(config: Any) -> Dict:
  """ShapeDtypeStructs of every backbone parameter, without allocating any."""
  return _family(config).abstract_params(config)


def logical_axes(config: Any) -> Dict:
  """Logical axis names (PartitionSpecs of names) of every backbone parameter."""
  return _family(config).logical_axes(config)
