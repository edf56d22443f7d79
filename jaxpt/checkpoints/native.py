"""jaxpt's own model directory: `jaxpt_model.json` (config) + `params/` (Orbax)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import jax

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.config import T5Config
from jaxpt.models.scan import unstack_layers
from jaxpt.models.backbones import abstract_params

MANIFEST = 'jaxpt_model.json'
FORMAT = 'jaxpt.models'
VERSION = 1


def is_native_directory(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def write_native(config: T5Config, params: Dict[str, Any], directory: str) -> None:
  """Writes a model directory that `load_model` reads back exactly.

  Parameters are stored per layer (unscanned) whatever `config.scan_layers` is.
  """
  import orbax.checkpoint as ocp  # heavy; only when writing

  if config.scan_layers:
    params = unstack_layers(params)

  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  params_dir = os.path.join(directory, 'params')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params_dir, params, force=True)
    ckptr.wait_until_finished()
  with open(os.path.join(directory, MANIFEST), 'w') as f:
    json.dump({'format': FORMAT, 'version': VERSION, 'config': config.to_dict()}, f, indent=2)


def read_native_config(directory: str) -> T5Config:
  """The config in a jaxpt model directory's manifest (reads no parameter)."""
  manifest_path = os.path.join(directory, MANIFEST)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f'{manifest_path}: expected a jaxpt model manifest (JSON), '
                          f'could not read it: {e}') from e
  if manifest.get('format') != FORMAT:
    raise CheckpointError(f'{manifest_path}: expected format {FORMAT!r}, '
                          f'found {manifest.get("format")!r}')
  try:
    return T5Config.from_dict(manifest['config'])
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f'{manifest_path}: invalid config: {e}') from e


def read_native(directory: str, shardings: Optional[Any] = None, dtype: Any = None
                ) -> Tuple[T5Config, Dict]:
  """Reads (config, unscanned params); with `shardings` each array is restored into its
  sharding (Orbax reads each device's slice); `dtype` casts while restoring."""
  import orbax.checkpoint as ocp

  manifest_path = os.path.join(directory, MANIFEST)
  config = read_native_config(directory)
  target = abstract_params(config.replace(scan_layers=False))  # stored unscanned
  if dtype is not None:
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), target)
  if shardings is not None:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          target, shardings)
  params_dir = os.path.join(os.path.abspath(directory), 'params')
  if not os.path.isdir(params_dir):
    raise CheckpointError(f'{params_dir}: expected the Orbax parameter directory, found nothing')
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(params_dir, target)
  except Exception as e:  # orbax raises many types for bad files
    raise CheckpointError(f'{params_dir}: could not restore parameters matching the config '
                          f'in {manifest_path}: {type(e).__name__}: {e}') from e
  return config, params
