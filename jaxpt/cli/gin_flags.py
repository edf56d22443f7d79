"""Gin for the command line: the configurables jaxpt exposes, and flag parsing.

Configurables (reference them in gin files as `@jaxpt.preset()`, ...):
  jaxpt.preset                     a T5Config for a public size
  jaxpt.methods.PromptTuning / PrefixTuning / PTuning / ModelTuning / MultitaskPromptTuning
  jaxpt.methods.source_prompt      a prompt checkpoint's [L, d] prompt (SPoT transfer)
  jaxpt.methods.shared_prompt      an MPT checkpoint's shared prompt P* (target adaptation)
  jaxpt.train.make_optimizer       optax recipes
  jaxpt.assets.mini_t5_path        the committed mini backbone's directory
  jaxpt.train / evaluate / infer / export   the runs (jaxpt.cli.runs)
"""

from __future__ import annotations

import difflib
import os
import pathlib
from typing import List, Sequence

import gin

from jaxpt.assets import mini_t5_path
from jaxpt.methods import ModelTuning, MultitaskPromptTuning, PrefixTuning, PromptTuning, PTuning
from jaxpt.checkpoints.transfer import shared_prompt, source_prompt
from jaxpt.models.config import preset
from jaxpt.train.optim import make_optimizer

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / 'gin'

_registered = False


def register() -> None:
  """Makes jaxpt's building blocks configurable (idempotent)."""
  global _registered
  if _registered:
    return
  gin.external_configurable(preset, module='jaxpt')
  for cls in (PromptTuning, PrefixTuning, PTuning, ModelTuning, MultitaskPromptTuning):
    gin.external_configurable(cls, module='jaxpt.methods')
  gin.external_configurable(source_prompt, module='jaxpt.methods')
  gin.external_configurable(shared_prompt, module='jaxpt.methods')
  gin.external_configurable(make_optimizer, module='jaxpt.train')
  gin.external_configurable(mini_t5_path, module='jaxpt.assets')
  import jaxpt.cli.runs  # noqa: F401  (registers the runs)
  import tasks  # noqa: F401  (light; its gin-settable data directory)
  _registered = True


def _find(name: str, search_paths: Sequence[str]) -> str:
  if os.path.isfile(name):
    return name
  for root in search_paths:
    candidate = os.path.join(root, name)
    if os.path.isfile(candidate):
      return candidate
  known = []
  for root in search_paths:
    for dirpath, _, files in os.walk(root):
      known += [os.path.relpath(os.path.join(dirpath, f), root) for f in files
                if f.endswith('.gin')]
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
  hint = f'; did you mean {" or ".join(close)}?' if close else ''
  raise FileNotFoundError(f'gin file {name!r} not found in {list(search_paths)}{hint}')


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> List[str]:
  """Parses gin files then `--gin.X=Y` bindings; errors name the bad file or binding."""
  register()
  paths = [p for p in search_paths if p] + ['.', str(REPO_GIN_DIR)]
  for path in paths:
    gin.add_config_file_search_path(path)
  files = [_find(f, paths) for f in gin_files]
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(files, None, finalize_config=False)
  except (ValueError, KeyError, SyntaxError, ImportError) as e:
    raise ValueError(f'in gin files {files}: {e}') from e
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except (ValueError, KeyError, SyntaxError) as e:
      raise ValueError(f'bad gin override --gin.{binding}: {e}') from e
  return files
