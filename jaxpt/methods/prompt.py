"""Prompt tuning (Lester et al. 2021): trainable vectors before the encoder input.

Initializers are the paper's: uniform in [-scale, scale], rows sampled from the
embeddings of the `population_size` most frequent ids (SentencePiece ids are
frequency ordered), class labels (each label's mean subword embedding, the rest
sampled), a text, or a saved prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.methods.interface import Backbone, SoftInputs
from jaxpt.models.config import T5Config

Array = jax.Array
INITS = ('uniform', 'sampled_vocab', 'class_labels', 'text', 'array')


def uniform_init(rng: Array, length: int, dim: int, scale: float = 0.5) -> Array:
  """U[-scale, scale] rows (the paper's random init)."""
  return jax.random.uniform(rng, (length, dim), jnp.float32, -scale, scale)


def sampled_vocab_init(rng: Array, embedding: Any, length: int,
                       population_size: int = 5000) -> Array:
  """Rows copied from `length` distinct ids among the first `population_size`."""
  population = min(population_size, embedding.shape[0])
  ids = jax.random.choice(rng, population, (length,), replace=length > population)
  return jnp.asarray(embedding)[ids].astype(jnp.float32)


def class_label_init(rng: Array, embedding: Any, label_ids: Sequence[Sequence[int]],
                     length: int, population_size: int = 5000) -> Array:
  """Row i = mean embedding of label i's subwords; other rows sampled from the vocabulary."""
  if len(label_ids) > length:
    raise ValueError(f'{len(label_ids)} class labels do not fit a prompt of length {length}')
  prompt = sampled_vocab_init(rng, embedding, length, population_size)
  table = jnp.asarray(embedding, jnp.float32)
  for i, ids in enumerate(label_ids):
    if not len(ids):
      raise ValueError(f'class label {i} encodes to no tokens')
    prompt = prompt.at[i].set(table[jnp.asarray(ids)].mean(axis=0))
  return prompt


def text_init(embedding: Any, ids: Sequence[int], length: int) -> Array:
  """The embeddings of a text's ids, tiled or truncated to `length` rows."""
  if not len(ids):
    raise ValueError('the init text encodes to no tokens')
  tiled = np.resize(np.asarray(ids), length)
  return jnp.asarray(embedding, jnp.float32)[tiled]


@dataclasses.dataclass(frozen=True)
class PromptInit:
  """`length` prompt vectors and the paper's ways to start them.

  The fields every prompt-vector method shares (`PromptTuning`, and
  `MultitaskPromptTuning` for its shared prompt P*).

  Attributes:
    length: prompt tokens (100 in the paper).
    initializer: 'uniform' | 'sampled_vocab' | 'class_labels' | 'text' | 'array'.
    scale: half-width of the uniform init.
    population_size: vocabulary ids sampled from (the 5,000 most frequent).
    class_labels: verbalizer words for 'class_labels'.
    text: the text for 'text'.
    array: a saved prompt for 'array'; `jaxpt.checkpoints.prompts` fills it
      from a prompt checkpoint.
  """

  length: int = 100
  initializer: str = 'sampled_vocab'
  scale: float = 0.5
  population_size: int = 5000
  class_labels: Tuple[str, ...] = ()
  text: str = ''
  array: Optional[Any] = dataclasses.field(default=None, compare=False, repr=False)

  places_prompt = False
  prefix_position = 'none'
  has_prompt_vectors = True

  def __post_init__(self):
    if self.length <= 0:
      raise ValueError(f'prompt length must be positive, got {self.length}')
    if self.initializer not in INITS:
      raise ValueError(f'unknown prompt init {self.initializer!r}; expected one of {INITS}')
    object.__setattr__(self, 'class_labels', tuple(self.class_labels))

  @property
  def prompt_length(self) -> int:
    return self.length

  def init_one(self, rng: Array, backbone: Backbone) -> Array:
    """One [length, d] prompt."""
    emb, dim = backbone.embedding, backbone.config.emb_dim
    if self.initializer == 'uniform':
      return uniform_init(rng, self.length, dim, self.scale)
    if self.initializer == 'sampled_vocab':
      return sampled_vocab_init(rng, emb, self.length, self.population_size)
    if self.initializer in ('class_labels', 'text') and backbone.encode is None:
      raise ValueError(f"prompt init {self.initializer!r} needs a vocabulary to encode text")
    if self.initializer == 'class_labels':
      if not self.class_labels:
        raise ValueError("prompt init 'class_labels' needs class_labels")
      ids = [list(backbone.encode(label)) for label in self.class_labels]
      return class_label_init(rng, emb, ids, self.length, self.population_size)
    if self.initializer == 'text':
      return text_init(emb, list(backbone.encode(self.text)), self.length)
    raise AssertionError(self.initializer)


@dataclasses.dataclass(frozen=True)
class PromptTuning(PromptInit):
  """`length` soft tokens before the encoder input; `num_prompts` > 1 keeps one per task.

  Attributes: those of `PromptInit` (`array` may be [length, d] or
  [num_prompts, length, d]), and
    num_prompts: prompts kept side by side (mixed-task batches, ensembles).
  """

  num_prompts: int = 1
  name: str = 'prompt_tuning'

  def __post_init__(self):
    super().__post_init__()
    if self.num_prompts <= 0:
      raise ValueError(f'num_prompts must be positive, got {self.num_prompts}')

  def init(self, rng: Array, backbone: Backbone) -> Dict[str, Any]:
    dim = backbone.config.emb_dim
    if self.initializer == 'array':
      if self.array is None:
        raise ValueError("prompt init 'array' needs a saved prompt array")
      prompt = jnp.asarray(self.array, jnp.float32)
      want = (self.length, dim) if self.num_prompts == 1 else (self.num_prompts, self.length, dim)
      if prompt.shape == (self.length, dim) and self.num_prompts > 1:
        prompt = jnp.broadcast_to(prompt, want)
      if prompt.shape != want:
        raise ValueError(f'saved prompt has shape {prompt.shape}, this method expects {want}')
      return {'prompt': prompt}
    if self.num_prompts == 1:
      return {'prompt': self.init_one(rng, backbone)}
    keys = jax.random.split(rng, self.num_prompts)
    return {'prompt': jnp.stack([self.init_one(k, backbone) for k in keys])}

  def soft_inputs(self, params: Dict[str, Any], config: T5Config, batch_size: int,
                  task_ids: Optional[Array] = None) -> SoftInputs:
    prompt = params['prompt']
    if prompt.ndim == 3:
      if task_ids is None:
        raise ValueError(f'{prompt.shape[0]} prompts are kept: each example needs a task id')
      check_task_ids(task_ids, prompt.shape[0])
      prompt = jnp.take(prompt, task_ids, axis=0)  # [batch, P, d]
    return SoftInputs(prompt=prompt)

  def merge(self, params: Dict[str, Any]) -> Dict[str, Any]:
    return params

  def task_prompts(self, params: Dict[str, Any]) -> Array:
    prompt = jnp.asarray(params['prompt'], jnp.float32)
    return prompt[None] if prompt.ndim == 2 else prompt


def check_task_ids(task_ids: Any, num_tasks: int) -> None:
  """Raises ValueError unless every task id is an integer in [0, num_tasks).

  Host-side (numpy or concrete arrays); traced ids are skipped, because inside
  jit `jnp.take` clamps an out-of-range id to the last prompt without an error.
  The training loop checks every batch's ids here before its jitted step.
  """
  if isinstance(task_ids, jax.core.Tracer):
    return
  ids = np.asarray(task_ids)
  if ids.size and not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'task_ids must be integers, got dtype {ids.dtype}')
  if ids.size and (ids.min() < 0 or ids.max() >= num_tasks):
    bad = sorted({int(i) for i in ids.reshape(-1) if not 0 <= i < num_tasks})
    raise ValueError(f'task ids {bad[:10]} are out of range: this method keeps {num_tasks} '
                     f'task prompt(s), so ids must be in [0, {num_tasks - 1}]')


def input_length_for_prompt(prompt_length: int, max_length: int) -> int:
  """Input tokens that fit beside a prompt in an encoder of `max_length` positions."""
  if prompt_length >= max_length:
    raise ValueError(f'a prompt of length {prompt_length} leaves no room for inputs in an '
                     f'encoder length of {max_length}; raise the input length or shorten '
                     f'the prompt')
  return max_length - prompt_length


def truncate_for_prompt(tokens: Any, prompt_length: int, max_length: int,
                        eos_id: int = 1) -> np.ndarray:
  """Cuts [batch, length] inputs to `max_length - prompt_length`, keeping each row's EOS.

  Rows that are cut end in EOS, as T5's `append_eos_after_trim` does.
  """
  tokens = np.asarray(tokens)
  keep = input_length_for_prompt(prompt_length, max_length)
  if tokens.shape[1] <= keep:
    return tokens
  cut = tokens[:, :keep].copy()
  overflow = (tokens[:, keep:] != 0).any(axis=1)
  had_eos = (tokens == eos_id).any(axis=1)
  cut[overflow & had_eos, -1] = eos_id
  return cut
