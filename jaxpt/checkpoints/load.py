"""`load_model`: one entry point for every checkpoint format users have."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.checkpoints.validate import check_params
from jaxpt.models.config import T5Config
from jaxpt.partitioning import param_shardings
from jaxpt.models.scan import stack_layers
from jaxpt.prompted.model import Model

_T5X_STEP_DIR = re.compile(r'checkpoint_(\d+)$')


def detect_format(path: str) -> str:
  """'hf', 't5x' or 'jaxpt' for a checkpoint path; CheckpointError otherwise."""
  from jaxpt.checkpoints import native

  if path.startswith('gs://'):
    return 't5x'
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no such file or directory')
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      head = f.read(1)
    # A flax msgpack checkpoint is a map: fixmap (0x80-0x8f), map16 (0xde) or map32 (0xdf).
    if head and (0x80 <= head[0] <= 0x8f or head[0] in (0xde, 0xdf)):
      return 't5x'
    raise CheckpointError(
        f'{path}: unknown checkpoint format; expected a T5X msgpack checkpoint file, '
        f'an HF T5 directory (config.json + weights), a T5X checkpoint directory or a '
        f'jaxpt model directory')
  if native.is_native_directory(path):
    return 'jaxpt'
  if os.path.isfile(os.path.join(path, 'config.json')):
    return 'hf'
  if os.path.isfile(os.path.join(path, 'checkpoint')):
    return 't5x'
  raise CheckpointError(
      f'{path}: unknown checkpoint directory; expected one of: config.json (HF T5), '
      f'checkpoint (T5X), {native.MANIFEST} (jaxpt); found {sorted(os.listdir(path))[:10]}')


def _latest_t5x_step(path: str) -> str:
  """A T5X model dir (holding checkpoint_N subdirs) resolves to its latest step."""
  if path.startswith('gs://') or not os.path.isdir(path):
    return path
  steps = [(int(m[1]), name) for name in os.listdir(path)
           if (m := _T5X_STEP_DIR.match(name)) and os.path.isdir(os.path.join(path, name))]
  if steps and not os.path.exists(os.path.join(path, 'checkpoint')):
    return os.path.join(path, max(steps)[1])
  return path


def load_model(path: str, prompt: Optional[str] = None, **config_overrides: Any) -> Model:
  """Loads a T5 backbone from an HF directory, a T5X checkpoint or a jaxpt directory.

  Args:
    path: an HF T5 directory (config.json + safetensors / bin, sharded too), a
      T5X checkpoint (msgpack file, tensorstore directory, model dir with
      checkpoint_N subdirs, local or gs://), or a jaxpt model directory.
    prompt: a jaxpt prompt checkpoint or peft adapter directory to attach.
    **config_overrides: T5Config fields to change after loading, e.g.
      dtype='bfloat16', scan_layers=True, remat_policy='full', dropout_rate=0.1.

  Returns:
    A `Model`. Raises CheckpointError for missing, unknown, corrupt or
    mismatched checkpoints, naming the file and what was expected.
  """
  path = os.fspath(path)
  path = _latest_t5x_step(path)
  fmt = detect_format(path)
  if fmt == 'hf':
    from jaxpt.checkpoints import hf
    config, params = hf.read_hf_checkpoint(path)
  elif fmt == 't5x':
    from jaxpt.checkpoints import t5x
    params = t5x.read_t5x_checkpoint(path)
    config = t5x.config_from_t5x_params(params)
  else:
    from jaxpt.checkpoints import native
    config, params = native.read_native(path)
  check_params(params, config.replace(scan_layers=False), path)
  # Readers may hand back numpy arrays; jax arrays are transferred once here, not on every step.
  params = jax.tree.map(jnp.asarray, params)
  if config_overrides:
    try:
      config = config.replace(**config_overrides)
    except TypeError as e:
      raise ValueError(f'load_model: bad config override: {e}') from e
  if config.scan_layers:
    params = stack_layers(params)
  model = Model(config, params, source=path)
  if prompt is not None:
    import dataclasses
    prompt = os.fspath(prompt)
    if os.path.isfile(os.path.join(prompt, 'adapter_config.json')):
      from jaxpt.checkpoints.peft import import_peft
      try:
        method, method_params = import_peft(prompt, model.config)
      except (OSError, ValueError) as e:
        raise CheckpointError(f'{prompt}: could not attach the peft adapter: {e}') from e
    else:
      from jaxpt.checkpoints.prompts import load_prompt
      method, method_params, _ = load_prompt(prompt, model)
    model = dataclasses.replace(model, method=method, method_params=method_params)
  return model


def read_backbone_sharded(path: str, config: T5Config, mesh: Mesh, rules: Sequence
                          ) -> Tuple[T5Config, Dict]:
  """Reads a backbone checkpoint straight into its shardings (each device reads its slice).

  Args:
    path: an HF directory, a T5X checkpoint or a jaxpt directory (as `load_model`).
    config: the expected config (its shapes give the shardings; the unscanned
      layout is read, `jaxpt.models.scan.stack_layers` scans it afterwards).
    mesh: the mesh.
    rules: logical axis rules.

  Returns:
    (the checkpoint's config, unscanned params placed in their shardings).
  """
  shardings = param_shardings(config.replace(scan_layers=False), mesh, rules)
  fmt = detect_format(os.fspath(path))
  if fmt == 'hf':
    from jaxpt.checkpoints import hf
    found, params = hf.read_hf_checkpoint(path, shardings=shardings)
  elif fmt == 't5x':
    from jaxpt.checkpoints import t5x
    params = t5x.read_t5x_checkpoint(path, shardings=shardings)
    found = t5x.config_from_t5x_params(params)
  else:
    from jaxpt.checkpoints import native
    found, params = native.read_native(path, shardings=shardings)
  check_params(params, found.replace(scan_layers=False), os.fspath(path))
  return found, params
