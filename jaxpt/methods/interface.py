"""The interface every soft-prompt method implements."""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Protocol, Sequence, Union

import jax

from jaxpt.models.config import T5Config
from jaxpt.models.t5 import PlacedPrompt, Prefixes

Array = jax.Array


class SoftInputs(NamedTuple):
  """What a method adds to the T5 forward pass.

  prompt: [P, d] or [batch, P, d] embeddings prepended to the encoder input, or a
    `jaxpt.models.t5.PlacedPrompt` whose rows go where the input marks them.
  prefixes: per-attention stacked (keys, values), see `jaxpt.models.t5.Prefixes`.
  prefix_position: how prefix keys see relative positions ('none' or 'offset').
  """
  prompt: Union[None, Array, PlacedPrompt] = None
  prefixes: Optional[Prefixes] = None
  prefix_position: str = 'none'


class Backbone(NamedTuple):
  """What initializers may read from the frozen model.

  config: its T5Config. embedding: the [vocab, d] token embedding (for
  vocabulary-based inits). encode: text -> token ids without EOS (for class
  label / text inits), or None when no vocabulary is at hand.
  """
  config: T5Config
  embedding: Any
  encode: Optional[Callable[[str], Sequence[int]]] = None


class Method(Protocol):
  """A soft-prompt method: static hyperparameters, pure functions over params.

  Every capability is a declared attribute; callers read them, never probe
  with `hasattr`:

    name: the registry key (`jaxpt.methods.registry`), also the manifest's.
    prompt_length: encoder positions the method occupies (0 for prefixes and
      for templates, whose prompt rows sit inside the input).
    places_prompt: the prompt rows go where the input's markers are (negative
      ids -1..-length, a P-tuning template) instead of in front.
    prefix_position: how prefix keys see relative positions ('none', 'offset').
    num_prompts: prompts kept side by side, picked per example by `task_ids`
      (1: the method reads no task ids).
    has_prompt_vectors: `task_prompts` gives [num_prompts, L, d] embeddings
      (what prompt transfer and similarity compare).
  """

  name: str

  @property
  def prompt_length(self) -> int: ...

  @property
  def places_prompt(self) -> bool: ...

  @property
  def prefix_position(self) -> str: ...

  @property
  def num_prompts(self) -> int: ...

  @property
  def has_prompt_vectors(self) -> bool: ...

  def init(self, rng: Array, backbone: Backbone) -> Dict[str, Any]:
    """Fresh trainable parameters."""

  def soft_inputs(self, params: Dict[str, Any], config: T5Config, batch_size: int,
                  task_ids: Optional[Array] = None) -> SoftInputs:
    """The prompt / prefixes for a batch; `task_ids` [batch] picks per-example prompts."""

  def merge(self, params: Dict[str, Any]) -> Dict[str, Any]:
    """Parameters with any reparameterization folded in (same outputs)."""

  def task_prompts(self, params: Dict[str, Any]) -> Array:
    """Every prompt as [num_prompts, L, d] (only when `has_prompt_vectors`)."""
