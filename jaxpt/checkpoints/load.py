"""`load_model`: one entry point for every checkpoint format users have."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.checkpoints.validate import check_params
from jaxpt.models.config import T5Config
from jaxpt.partitioning import logical_axis_rules, param_shardings
from jaxpt.prompted.model import Model

_T5X_STEP_DIR = re.compile(r'checkpoint_(\d+)$')
_LAYER_PATH = re.compile(r'^(encoder|decoder)/layers_(\d+)/(.+)$')


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


Source = Tuple[Tuple[int, ...], Callable[..., np.ndarray]]
"""(shape, read): `read(index=None)` gives a leaf, or its slice `index`, as numpy."""


def _resolve_partitioning(partitioning: Any, mesh: Optional[Mesh], rules: Optional[Sequence]
                          ) -> Tuple[Optional[Mesh], Optional[Sequence]]:
  """(mesh, rules) from a PartitionConfig, or from mesh (+ rules); (None, None) for neither."""
  if partitioning is not None:
    if mesh is not None or rules is not None:
      raise ValueError('load_model: give partitioning or mesh (+ rules), not both')
    if isinstance(partitioning, Mesh):
      return partitioning, logical_axis_rules()
    return partitioning.mesh(), partitioning.rules()
  if mesh is None:
    if rules is not None:
      raise ValueError('load_model: rules need a mesh')
    return None, None
  return mesh, tuple(rules) if rules is not None else logical_axis_rules()


def _sources(path: str, fmt: str) -> Tuple[T5Config, Dict[str, Source]]:
  if fmt == 'hf':
    from jaxpt.checkpoints import hf
    return hf.hf_sources(path)
  from jaxpt.checkpoints import t5x
  return t5x.t5x_sources(path)


def _stacked_sources(sources: Dict[str, Source]) -> Dict[str, Source]:
  """Per-layer sources `stack/layers_i/rest` as one `stack/layers/rest` source each.

  The stacked source reads, for a slice `(layers, *rest)`, the slice `rest` of each
  layer in `layers` and stacks them on the host: a device's shard of the stack is
  read, never the whole stack.
  """
  out: Dict[str, Source] = {}
  groups: Dict[str, Dict[int, Source]] = {}
  for path, source in sources.items():
    m = _LAYER_PATH.match(path)
    if m:
      groups.setdefault(f'{m[1]}/layers/{m[3]}', {})[int(m[2])] = source
    else:
      out[path] = source
  for path, layers in groups.items():
    n = len(layers)
    if sorted(layers) != list(range(n)):
      raise CheckpointError(f'{path}: layers {sorted(layers)} are not 0..{n - 1}')
    shapes = {src[0] for src in layers.values()}
    if len(shapes) != 1:
      raise CheckpointError(f'{path}: layers have different shapes {sorted(shapes)}')
    shape = shapes.pop()

    def read(index: Any = None, layers: Dict[int, Source] = layers, n: int = n) -> np.ndarray:
      if index is None:
        return np.stack([layers[i][1]() for i in range(n)])
      first, rest = index[0], tuple(index[1:])
      picked = range(n)[first]
      if isinstance(picked, int):
        return layers[picked][1](rest)
      return np.stack([layers[i][1](rest) for i in picked])

    out[path] = ((n,) + tuple(shape), read)
  return out


def _materialize(sources: Dict[str, Source], shardings: Optional[Dict[str, Any]],
                 dtype: Any) -> Dict[str, Any]:
  """Flat {path: jax.Array}: each device's shard read alone, or whole leaves on the default
  device when `shardings` is None; cast to `dtype` on the host, slice by slice."""
  out = {}
  for path, (shape, read) in sources.items():
    def cast(index: Any = None, read: Callable = read) -> np.ndarray:
      return np.asarray(read(index), dtype)
    if shardings is not None:
      out[path] = jax.make_array_from_callback(tuple(shape), shardings[path], cast)
    else:
      out[path] = jnp.asarray(cast())
  return out


def _stack_placed(params: Dict[str, Any], shardings: Optional[Dict[str, Any]]
                  ) -> Dict[str, Any]:
  """Stacks already placed per-layer arrays leaf by leaf (each stack built in its own
  sharding by one jitted stack; the per-layer arrays are dropped as it goes)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  groups: Dict[str, Dict[int, str]] = {}
  out = {}
  for path in list(flat):
    m = _LAYER_PATH.match(path)
    if m:
      groups.setdefault(f'{m[1]}/layers/{m[3]}', {})[int(m[2])] = path
    else:
      out[path] = flat[path]
  for path, layers in groups.items():
    names = [layers[i] for i in range(len(layers))]
    stack = jax.jit(lambda *xs: jnp.stack(xs),
                    out_shardings=None if shardings is None else shardings[path])
    out[path] = stack(*(flat[n] for n in names))
    for n in names:
      del flat[n]
  return traverse_util.unflatten_dict(out, sep='/')


def load_model(path: str, prompt: Optional[str] = None, *, partitioning: Any = None,
               mesh: Optional[Mesh] = None, rules: Optional[Sequence] = None,
               **config_overrides: Any) -> Model:
  """Loads a T5 backbone from an HF directory, a T5X checkpoint or a jaxpt directory.

  Args:
    path: an HF T5 directory (config.json + safetensors / bin, sharded too), a
      T5X checkpoint (msgpack file, tensorstore directory, model dir with
      checkpoint_N subdirs, local or gs://), or a jaxpt model directory.
    prompt: a jaxpt prompt checkpoint or peft adapter directory to attach.
    partitioning: a `jaxpt.partitioning.PartitionConfig` (or a Mesh, with the
      standard rules): every leaf is built straight into its sharding
      (`jaxpt.partitioning.param_shardings`), each device reading only its own
      slice (safetensors `get_slice`, tensorstore chunks, Orbax); on several
      processes each reads only its addressable devices' slices. No device
      receives a whole leaf it does not hold whole in its sharding.
    mesh, rules: instead of `partitioning`, a mesh and logical axis rules
      (default `jaxpt.partitioning.logical_axis_rules()`).
    **config_overrides: T5Config fields to change after loading, e.g.
      dtype='bfloat16', scan_layers=True, remat_policy='full', dropout_rate=0.1.
      `scan_layers=True` stacks the checkpoint's per-layer weights on a leading
      'layers' axis while reading (sharded like the scanned model's params).
      `param_dtype='bfloat16'` stores the weights in bfloat16 (cast slice by slice
      while reading; no float32 copy is made on any device): for a frozen backbone,
      half the memory, while prompts and optimizer state stay float32.

  Returns:
    A `Model`. Raises CheckpointError for missing, unknown, corrupt or
    mismatched checkpoints, naming the file and what was expected.
  """
  path = os.fspath(path)
  path = _latest_t5x_step(path)
  fmt = detect_format(path)
  mesh, rules = _resolve_partitioning(partitioning, mesh, rules)
  if fmt == 'jaxpt':
    from jaxpt.checkpoints import native
    config = native.read_native_config(path)
  else:
    config, sources = _sources(path, fmt)
    shapes = {p: jax.ShapeDtypeStruct(shape, np.float32) for p, (shape, _) in sources.items()}
    check_params(traverse_util.unflatten_dict(shapes, sep='/'),
                 config.replace(scan_layers=False), path)
  if config_overrides:
    try:
      config = config.replace(**config_overrides)
    except TypeError as e:
      raise ValueError(f'load_model: bad config override: {e}') from e
  dtype = jnp.dtype(config.param_dtype)
  shardings = None
  if mesh is not None:
    shardings = traverse_util.flatten_dict(param_shardings(config, mesh, rules), sep='/')
  if fmt == 'jaxpt':
    from jaxpt.checkpoints import native
    unscanned = None
    if mesh is not None:
      unscanned = param_shardings(config.replace(scan_layers=False), mesh, rules)
    _, params = native.read_native(path, shardings=unscanned, dtype=dtype)
    if mesh is None:
      params = jax.tree.map(jnp.asarray, params)
    if config.scan_layers:
      params = _stack_placed(params, shardings)
  else:
    if config.scan_layers:
      sources = _stacked_sources(sources)
    params = traverse_util.unflatten_dict(_materialize(sources, shardings, dtype), sep='/')
  model = Model(config, params, source=path)
  if prompt is not None:
    import dataclasses
    prompt = os.fspath(prompt)
    from jaxpt.checkpoints import peft
    if os.path.isfile(os.path.join(prompt, peft.CONFIG_FILE)):
      try:
        method, method_params = peft.import_peft(prompt, model.config)
      except (OSError, ValueError) as e:
        raise CheckpointError(f'{prompt}: could not attach the peft adapter: {e}') from e
      peft.check_backbone(prompt, model)
    elif os.path.isfile(os.path.join(prompt, peft.PROVENANCE_FILE)):
      raise CheckpointError(f'{prompt}: a jaxpt peft export without its {peft.CONFIG_FILE} '
                            f'(the adapter is incomplete)')
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
    config: the expected config (only its `scan_layers` and `param_dtype` are used:
      the checkpoint gives the sizes).
    mesh: the mesh.
    rules: logical axis rules.

  Returns:
    (the checkpoint's config, params placed in their shardings, scanned when
    `config.scan_layers`).
  """
  model = load_model(path, mesh=mesh, rules=rules, scan_layers=config.scan_layers,
                     param_dtype=config.param_dtype)
  return model.config.replace(scan_layers=False), model.params
