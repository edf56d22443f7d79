"""Multitask prompt tuning (MPT, Wang et al. 2023): a shared prompt and rank-r task factors.

Task k's prompt is `P* ⊙ (u_k v_kᵀ)`: a shared prompt P* [L, d] times
(elementwise) a rank-r matrix built from per-task factors u_k [L, r] and
v_k [d, r]. The paper's recipe, with jaxpt's pieces:

  (a) teachers: one `PromptTuning` prompt per source task (`stack_teachers`
      puts them side by side as one `PromptTuning(num_prompts=K)`);
  (b) `MultitaskPromptTuning(num_tasks=K)` on a mixture of the source tasks
      (batches carry `task_ids`), with the task loss plus distillation from the
      frozen teachers (`jaxpt.train.distill`);
  (c) `target_adaptation(params)`: a new task's prompt starting from P* with
      fresh factors, both tuned on the target.

The factors start with u_k's first column and v_k's first column all ones and
v_k's other columns zero, so `u_k v_kᵀ` is all ones and every task prompt
starts exactly at P*; u_k's other columns are small random values, so the
rank-r columns do not stay symmetric once training moves v_k.

Per-task prompts are ordinary prompts: `task_prompt(params, k)` is a
`PromptTuning` (method, params) pair for `jaxpt.checkpoints.prompts.save_prompt`
and `jaxpt.checkpoints.peft.export_peft` (a peft PROMPT_TUNING adapter).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.methods.interface import Backbone, SoftInputs
from jaxpt.methods.prompt import PromptInit, PromptTuning, check_task_ids
from jaxpt.models.config import T5Config

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MultitaskPromptTuning(PromptInit):
  """A shared prompt P* [length, d] and rank-`rank` factors for `num_tasks` tasks.

  Attributes: those of `PromptInit` for P* (`array`: a saved P* [length, d]
  for initializer 'array', as in target adaptation), and
    num_tasks: tasks K (each batch example names its task in `task_ids`;
      with one task, task ids may be left out).
    rank: r, the rank of each task's multiplicative update (at most `length`).
    factor_scale: standard deviation of u_k's random columns.
  """

  num_tasks: int = 1
  rank: int = 1
  factor_scale: float = 0.02
  name: str = 'multitask_prompt_tuning'

  def __post_init__(self):
    super().__post_init__()
    if self.num_tasks <= 0:
      raise ValueError(f'num_tasks must be positive, got {self.num_tasks}')
    if self.rank <= 0:
      raise ValueError(f'factor rank must be positive, got {self.rank}')
    if self.rank > self.length:
      raise ValueError(f'factor rank {self.rank} is above the prompt length {self.length}: '
                       f'u_k v_kT of a [{self.length}, d] prompt has rank at most '
                       f'{self.length}; use rank <= {self.length}')

  @property
  def num_prompts(self) -> int:
    """The paper's K: one composed prompt per task, picked by `task_ids`."""
    return self.num_tasks

  def _shared_method(self) -> PromptTuning:
    """P*'s initializer as a one-prompt `PromptTuning`."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(PromptInit)}
    return PromptTuning(**fields)

  def init_factors(self, rng: Array, dim: int) -> Dict[str, Array]:
    """Factors u [K, L, r], v [K, d, r] with every u_k v_kᵀ all ones (see the module doc)."""
    k, length, r = self.num_tasks, self.length, self.rank
    u = self.factor_scale * jax.random.normal(rng, (k, length, r), jnp.float32)
    u = u.at[:, :, 0].set(1.0)
    v = jnp.zeros((k, dim, r), jnp.float32).at[:, :, 0].set(1.0)
    return {'u': u, 'v': v}

  def init(self, rng: Array, backbone: Backbone) -> Dict[str, Any]:
    shared_rng, factor_rng = jax.random.split(rng)
    shared = self._shared_method().init(shared_rng, backbone)['prompt']
    return {'shared': shared, **self.init_factors(factor_rng, backbone.config.emb_dim)}

  def task_prompts(self, params: Dict[str, Any]) -> Array:
    """Every task's prompt, [K, L, d]: P* ⊙ (u_k v_kᵀ)."""
    update = jnp.einsum('klr,kdr->kld', params['u'], params['v'])
    return params['shared'][None] * update

  def _plain(self, array: Optional[Any] = None) -> PromptTuning:
    return PromptTuning(length=self.length, initializer='array', array=array,
                        num_prompts=self.num_tasks)

  def as_prompt_tuning(self, params: Dict[str, Any]) -> Tuple[PromptTuning, Dict[str, Any]]:
    """The composed prompts as a plain `PromptTuning` (one prompt per task) and its params."""
    prompts = self.task_prompts(params)
    if self.num_tasks == 1:
      prompts = prompts[0]
    return self._plain(np.asarray(prompts)), {'prompt': prompts}

  def soft_inputs(self, params: Dict[str, Any], config: T5Config, batch_size: int,
                  task_ids: Optional[Array] = None) -> SoftInputs:
    prompts = self.task_prompts(params)
    if self.num_tasks == 1:
      if task_ids is not None:
        check_task_ids(task_ids, 1)
      prompts = prompts[0]
    return self._plain().soft_inputs({'prompt': prompts}, config, batch_size, task_ids)

  def merge(self, params: Dict[str, Any]) -> Dict[str, Any]:
    """Unchanged: the factors are the method (`as_prompt_tuning` gives plain prompts)."""
    return params

  def task_prompt(self, params: Dict[str, Any], task: int) -> Tuple[PromptTuning, Dict]:
    """Task `task`'s prompt as a one-prompt `PromptTuning` (method, params), to save or export."""
    check_task_ids(np.asarray([task]), self.num_tasks)
    prompt = self.task_prompts(params)[int(task)]
    method = PromptTuning(length=self.length, initializer='array', array=np.asarray(prompt))
    return method, {'prompt': prompt}

  def target_adaptation(self, params: Dict[str, Any], rank: Optional[int] = None
                        ) -> 'MultitaskPromptTuning':
    """Step (c): a one-task MPT whose P* starts at this one's and whose factors are fresh.

    Its `init` returns {'shared': P*, 'u', 'v'} with the task prompt exactly P*;
    train all three on the target task.
    """
    return dataclasses.replace(self, num_tasks=1, rank=self.rank if rank is None else rank,
                               initializer='array', array=np.asarray(params['shared']))


def stack_teachers(prompts: Sequence[Any]) -> Tuple[PromptTuning, Dict[str, Array]]:
  """Source-task teacher prompts [L, d] each -> one `PromptTuning(num_prompts=K)` and params.

  Task k of a mixed batch then reads teacher k (the teacher of step (b)).
  """
  if not len(prompts):
    raise ValueError('stack_teachers needs at least one teacher prompt')
  arrays = [np.asarray(p, np.float32) for p in prompts]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1 or len(arrays[0].shape) != 2:
    raise ValueError(f'teacher prompts must all be [length, d] of one shape, got '
                     f'{[a.shape for a in arrays]}')
  stacked = np.stack(arrays)
  if len(arrays) == 1:  # one source task: a plain prompt, which reads no task ids
    stacked = stacked[0]
  method = PromptTuning(length=arrays[0].shape[0], initializer='array', array=stacked,
                        num_prompts=len(arrays))
  return method, {'prompt': jnp.asarray(stacked)}
