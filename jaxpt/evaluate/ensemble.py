"""Prompt ensembling (Lester et al. 2021, section 6): N prompts, one forward pass.

Each example is repeated once per prompt with that prompt's task id, so the N
prompts share one batched pass of the frozen backbone; the label scores are
then averaged (log-likelihoods) or the per-prompt predictions vote.
"""

from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from jaxpt.prompted.base import PromptedModel

Array = jax.Array
COMBINE = ('average', 'vote')


def ensemble_rank_classify(model: PromptedModel, params: Any, encoder_tokens: Array,
                           label_tokens: Array, combine: str = 'vote') -> Tuple[Array, Array]:
  """Rank classification by an ensemble of the method's `num_prompts` prompts.

  Args:
    model: a prompted model whose method holds N = `method.num_prompts` prompts
      side by side (task ids 0..N-1).
    params: {'backbone': ..., 'method': ...}.
    encoder_tokens: int [batch, length].
    label_tokens: int [num_labels, T] (label words + EOS, 0-padded).
    combine: 'average' (mean log-likelihood per label) or 'vote' (majority of the
      per-prompt predictions; ties go to the lower label id).

  Returns:
    (predictions [batch], per-prompt scores [N, batch, num_labels]).
  """
  if combine not in COMBINE:
    raise ValueError(f'combine must be one of {COMBINE}, got {combine!r}')
  batch, num_prompts = encoder_tokens.shape[0], model.method.num_prompts
  tiled = jnp.tile(encoder_tokens, (num_prompts, 1))  # prompt-major: [N * batch, length]
  task_ids = jnp.repeat(jnp.arange(num_prompts, dtype=jnp.int32), batch)
  _, scores = model.score(params, tiled, label_tokens, task_ids)
  scores = scores.reshape(num_prompts, batch, -1)
  if combine == 'average':
    return jnp.argmax(scores.mean(axis=0), axis=-1).astype(jnp.int32), scores
  votes = jax.nn.one_hot(jnp.argmax(scores, axis=-1), scores.shape[-1]).sum(axis=0)
  return jnp.argmax(votes, axis=-1).astype(jnp.int32), scores
