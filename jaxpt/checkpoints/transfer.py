"""Prompt transfer (SPoT, Vu et al. 2022): start a target prompt from a source prompt.

* `source_prompt(path, task=None)`: the [L, d] prompt of a prompt checkpoint: a
  single-task prompt, or task `task` of a multi-prompt `PromptTuning` or of an
  MPT checkpoint (its composed `P* ⊙ u_k v_kᵀ`).
* `shared_prompt(path)`: the shared P* of an MPT checkpoint (MPT target adaptation).
* `transfer(path, ...)`: a `PromptTuning(initializer='array')` whose `init`
  is that source prompt; tune it on the target task as usual.
* A prompt library is a folder of prompt checkpoints (searched recursively,
  e.g. several runs' `prompt/` directories) trained on one backbone;
  `load_library` refuses a folder mixing backbones (different fingerprints).
* `rank_by_similarity` orders a library by SPoT's task-embedding similarity
  to a query prompt (`jaxpt similar` prints it), so a user can pick the source
  to transfer from. Both of the paper's measures, with prompts as task
  embeddings: the cosine of the average prompt vectors, and the average
  cosine over all token pairs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jaxpt.checkpoints import prompts as prompt_checkpoints
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.methods.multitask import MultitaskPromptTuning
from jaxpt.methods.prompt import PromptTuning, check_task_ids

MEASURES = ('mean', 'tokens')
_EPS = 1e-12


def task_prompts(method: Any, params: Dict[str, Any]) -> np.ndarray:
  """Every task's prompt of a method's params, [num_tasks, L, d] (one task: [1, L, d])."""
  if method.has_prompt_vectors:
    return np.asarray(method.task_prompts(params), np.float32)
  raise ValueError(f'{getattr(method, "name", type(method).__name__)} has no prompt vectors '
                   f'to transfer or compare (prompt transfer reads prompt_tuning and '
                   f'multitask_prompt_tuning checkpoints)')


def pick_task(prompts: np.ndarray, task: Optional[int], where: str) -> np.ndarray:
  """Prompt `task` of [K, L, d] prompts; `task` may be None only when K is 1."""
  if task is None:
    if prompts.shape[0] != 1:
      raise ValueError(f'{where} keeps {prompts.shape[0]} task prompts: choose one with '
                       f'task=0..{prompts.shape[0] - 1}')
    return prompts[0]
  try:
    check_task_ids(np.asarray([task]), prompts.shape[0])
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from None
  return prompts[int(task)]


def source_prompt(path: str, task: Optional[int] = None, model: Any = None) -> np.ndarray:
  """The [L, d] source prompt of the prompt checkpoint at `path`.

  Args:
    path: a prompt checkpoint directory (`jaxpt.checkpoints.prompts`).
    task: which task's prompt of a multi-task checkpoint (MPT or several prompts).
    model: when given, the target's backbone; it must be the one the source was
      trained on (the fingerprints are compared).
  """
  if not isinstance(path, (str, os.PathLike)):  # e.g. gin's REQUIRED left unset
    raise ValueError('prompt transfer needs a source prompt checkpoint: set '
                     "--gin.SOURCE_PROMPT=\"'path/to/prompt'\"")
  method, params, _ = prompt_checkpoints.load_prompt(path, model)
  return pick_task(task_prompts(method, params), task, path)


def shared_prompt(path: str, model: Any = None) -> np.ndarray:
  """The shared prompt P* [L, d] of an MPT checkpoint (to start target adaptation from)."""
  method, params, _ = prompt_checkpoints.load_prompt(path, model)
  if method.name != MultitaskPromptTuning.name:
    raise ValueError(f'{path}: a {method.name} checkpoint has no shared prompt; expected a '
                     f'multitask_prompt_tuning checkpoint')
  return np.asarray(params['shared'], np.float32)


def transfer(path: str, task: Optional[int] = None, model: Any = None,
             length: Optional[int] = None) -> PromptTuning:
  """A `PromptTuning` that starts from the source prompt at `path` (SPoT's transfer).

  `length` defaults to the source's; a different one is an error (a transferred
  prompt keeps its tokens).
  """
  source = source_prompt(path, task, model)
  if length is not None and length != source.shape[0]:
    raise ValueError(f'{path}: the source prompt has {source.shape[0]} tokens, the target '
                     f'asks for {length}; transfer keeps the length (omit length)')
  return PromptTuning(length=source.shape[0], initializer='array', array=source)


# ---------------------------------------------------------------------------- similarity


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def similarity(a: Any, b: Any) -> Tuple[float, float]:
  """SPoT's two task-embedding similarities of prompts a [La, d] and b [Lb, d].

  Returns:
    (cosine of the average prompt vectors, average cosine over all La x Lb
    token pairs).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'prompts to compare must be [length, d] with one d, got {a.shape} and '
                     f'{b.shape}')
  mean = float(_unit(a.mean(0)) @ _unit(b.mean(0)))
  tokens = float((_unit(a) @ _unit(b).T).mean())
  return mean, tokens


@dataclasses.dataclass(frozen=True)
class LibraryPrompt:
  """One prompt of a library: `name` (relative path, '[k]' for task k), its checkpoint."""
  name: str
  path: str
  task: Optional[int]
  prompt: np.ndarray = dataclasses.field(repr=False, compare=False)
  fingerprint: str = ''
  method: str = ''


@dataclasses.dataclass(frozen=True)
class PromptLibrary:
  """The prompts of a folder of prompt checkpoints for one backbone."""
  directory: str
  fingerprint: str
  prompts: Tuple[LibraryPrompt, ...]
  skipped: Tuple[str, ...] = ()  # checkpoints of methods without prompt vectors


def _checkpoint_dirs(directory: str) -> List[str]:
  found = []
  for root, dirs, _ in os.walk(directory):
    dirs.sort()
    if prompt_checkpoints.is_prompt_directory(root):
      found.append(root)
      dirs[:] = []  # a checkpoint's own folder holds nothing more
  return found


def read_prompts(path: str, name: Optional[str] = None) -> Tuple[List[LibraryPrompt], Dict]:
  """The prompts of one checkpoint (one per task) and its manifest."""
  method, params, manifest = prompt_checkpoints.load_prompt(path)
  arrays = task_prompts(method, params)
  name = name or os.path.basename(os.path.normpath(path))
  fp = manifest['backbone'].get('fingerprint') or ''
  entries = [LibraryPrompt(name if len(arrays) == 1 else f'{name}[{k}]', path,
                           None if len(arrays) == 1 else k, arrays[k], fp, method.name)
             for k in range(len(arrays))]
  return entries, manifest


def load_library(directory: str) -> PromptLibrary:
  """Every prompt under `directory` (recursively); all must share one backbone.

  Raises:
    CheckpointError: no such folder, no prompt checkpoint in it, or checkpoints
      of different backbones (naming one of each and their fingerprints).
  """
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such prompt library (a folder of prompt '
                          f'checkpoints)')
  entries, skipped, by_fingerprint = [], [], {}
  for path in _checkpoint_dirs(directory):
    name = os.path.relpath(path, directory)
    try:
      found, manifest = read_prompts(path, name)
    except ValueError as e:
      if isinstance(e, CheckpointError):
        raise
      skipped.append(name)
      continue
    fp = manifest['backbone'].get('fingerprint') or ''
    by_fingerprint.setdefault(fp, name)
    entries += found
  if len(by_fingerprint) > 1:
    (fa, na), (fb, nb) = list(by_fingerprint.items())[:2]
    raise CheckpointError(
        f'{directory}: the prompt library mixes backbones: {na} was trained on {fa}, {nb} on '
        f'{fb} ({len(by_fingerprint)} backbones in all); a library holds the prompts of one '
        f'backbone, so split it into one folder per backbone')
  if not entries:
    raise CheckpointError(f'{directory}: no prompt checkpoints with prompt vectors in the '
                          f'library' + (f' (skipped {skipped})' if skipped else ''))
  return PromptLibrary(directory, next(iter(by_fingerprint)), tuple(entries), tuple(skipped))


def rank_by_similarity(query: Any, library: Sequence[LibraryPrompt], by: str = 'mean'
                       ) -> List[Tuple[LibraryPrompt, float, float]]:
  """Library prompts as (prompt, cos of means, mean token cos), most similar first.

  `by` is 'mean' (cosine of the average prompt vectors) or 'tokens' (the
  average cosine over all token pairs); ties keep the library's order.
  """
  if by not in MEASURES:
    raise ValueError(f'unknown similarity {by!r}; expected one of {MEASURES}')
  scored = [(entry, *similarity(query, entry.prompt)) for entry in library]
  column = 1 if by == 'mean' else 2
  return sorted(scored, key=lambda row: -row[column])
