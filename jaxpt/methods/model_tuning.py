"""Full model tuning: no soft inputs; the backbone itself is trained.

Paired with the trainable rule `split.EVERYTHING`, it runs through exactly the
same training step as the soft-prompt methods, so the two compare on equal terms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import jax

from jaxpt.methods.interface import Backbone, SoftInputs
from jaxpt.models.config import T5Config


@dataclasses.dataclass(frozen=True)
class ModelTuning:
  name: str = 'model_tuning'

  prompt_length = 0
  places_prompt = False
  prefix_position = 'none'
  num_prompts = 1
  has_prompt_vectors = False

  def init(self, rng: jax.Array, backbone: Backbone) -> Dict[str, Any]:
    return {}

  def soft_inputs(self, params: Dict[str, Any], config: T5Config, batch_size: int,
                  task_ids: Optional[jax.Array] = None) -> SoftInputs:
    return SoftInputs()

  def merge(self, params: Dict[str, Any]) -> Dict[str, Any]:
    return params

  def task_prompts(self, params: Dict[str, Any]) -> jax.Array:
    raise ValueError('model_tuning has no prompt vectors')
