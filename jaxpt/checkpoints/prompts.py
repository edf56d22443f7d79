"""Prompt checkpoints: a trained method's parameters, without the backbone.

A prompt checkpoint is a small directory:

  jaxpt_prompt.json         format / version, the method's name and
                            hyperparameters, the backbone it was trained on
                            (source path, fingerprint, config), the step, the
                            metrics, and the SHA-256 and shapes of the tensors.
  method_params.safetensors the method's (unmerged) parameters, keys joined
                            with '/', e.g. 'prompt' or 'encoder/hidden/kernel'.

Why safetensors and not Orbax: a [20, d] prompt is a few KB, and one
self-describing file (a JSON header of shapes and dtypes, then raw bytes) is
the smallest robust form: no OCDBT manifests, no async writers, no directory
tree per array, readable by torch / peft tooling, and a single SHA-256 in the
manifest detects any corruption. Orbax stays the format for what is large or
sharded (backbones, training state).

The fingerprint ties a prompt to the frozen backbone it was trained on: a
prompt is meaningless on any other weights, so `load_prompt(dir, model)`
refuses a mismatch instead of producing silently wrong outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import weakref
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.methods.prompt import PromptTuning
from jaxpt.methods.registry import METHODS, from_hyperparameters, hyperparameters

MANIFEST = 'jaxpt_prompt.json'
PARAMS_FILE = 'method_params.safetensors'
FORMAT = 'jaxpt.prompt'
VERSION = 1
_FINGERPRINT_VALUES = 64
FINGERPRINT_PREFIX = 'bf16-sha256:'
_SCANNED = re.compile(r'(encoder|decoder)/layers/(.*)')


def is_prompt_directory(path: str) -> bool:
  return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def _leaf_sample(x: Any, index: Tuple[int, ...] = ()) -> np.ndarray:
  """At most 64 values of `x[index]`: the start of its first row (legacy fingerprints)."""
  rest = len(x.shape) - len(index)
  if rest == 0:
    return np.asarray(x[index] if index else x).reshape(1)
  idx = index + (0,) * (rest - 1) + (slice(0, _FINGERPRINT_VALUES),)
  return np.asarray(x[idx]).reshape(-1)


def _host_values(x: Any) -> np.ndarray:
  """`x` on this host, gathered from every process when it is a multi-host array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# id(leaf) -> (weak reference, digest): a backbone is hashed once per process, not at every
# prompt checkpoint of a run.
_DIGESTS: Dict[Tuple[int, Tuple[int, ...]], Tuple[Any, bytes]] = {}


def _leaf_digest(x: Any, index: Tuple[int, ...]) -> bytes:
  """sha256 of every value of `x[index]`, floats rounded to bfloat16."""
  key = (id(x), index)
  hit = _DIGESTS.get(key)
  if hit is not None and hit[0]() is x:
    return hit[1]
  values = _host_values(x[index] if index else x)
  if np.issubdtype(values.dtype, np.floating) or values.dtype == ml_dtypes.bfloat16:
    values = values.astype(ml_dtypes.bfloat16)
  digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).digest()
  try:
    _DIGESTS[key] = (weakref.ref(x, lambda _, key=key: _DIGESTS.pop(key, None)), digest)
  except TypeError:  # not weak-referenceable: no cache
    pass
  return digest


def _entries(params: Any) -> List[Tuple[str, Tuple[int, ...], Any, Tuple[int, ...]]]:
  """(per-layer path, shape, leaf, index) of every parameter, scanned stacks split per layer."""
  flat = traverse_util.flatten_dict(params, sep='/') if isinstance(params, Mapping) else {
      jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  entries = []
  for path, x in flat.items():
    m = _SCANNED.fullmatch(path)
    if m and len(x.shape) >= 1:
      for i in range(x.shape[0]):
        entries.append((f'{m[1]}/layers_{i}/{m[2]}', tuple(x.shape[1:]), x, (i,)))
    else:
      entries.append((path, tuple(x.shape), x, ()))
  return sorted(entries, key=lambda e: (e[0], e[3]))


def fingerprint(params: Any) -> str:
  """A deterministic hash of every value of a backbone: 'bf16-sha256:' + 16 hex digits.

  Hashes each leaf's path and shape and all of its values rounded to
  bfloat16, so any change to a weight at bfloat16 precision changes it, while
  a backbone and its bfloat16 copy (frozen weights kept in the compute dtype)
  match. Scanned parameters (`encoder/layers/...` stacked on a leading axis)
  hash as their per-layer form, so a model loaded with `scan_layers=True`
  matches its unscanned self. Arrays are read one leaf (one layer) at a time;
  a leaf's digest is cached while the array lives.

  Args:
    params: the backbone's parameter pytree (nested dicts of arrays).

  Returns:
    A string such as 'bf16-sha256:1f0c9a3b2d4e5f60'.
  """
  digest = hashlib.sha256()
  for path, shape, x, index in _entries(params):
    digest.update(f'{path}|{shape}|'.encode())
    digest.update(_leaf_digest(x, index))
  return FINGERPRINT_PREFIX + digest.hexdigest()[:16]


def _sampled_fingerprint(params: Any) -> str:
  """The fingerprint manifests written before `fingerprint` hashed every value (row 0)."""
  digest = hashlib.sha256()
  for path, shape, x, index in _entries(params):
    digest.update(f'{path}|{shape}|{np.dtype(x.dtype).name}|'.encode())
    digest.update(np.ascontiguousarray(_leaf_sample(x, index)).tobytes())
  return 'sha256:' + digest.hexdigest()[:16]


def same_backbone(recorded: Optional[str], params: Any) -> Tuple[bool, str]:
  """(whether `params` has the recorded fingerprint, its fingerprint in that scheme)."""
  have = (_sampled_fingerprint(params) if recorded and recorded.startswith('sha256:')
          else fingerprint(params))
  return have == recorded, have


def _json_metrics(metrics: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
  if metrics is None:
    return None
  out = {}
  for k, v in metrics.items():
    arr = np.asarray(v)
    out[str(k)] = arr.item() if arr.ndim == 0 else arr.tolist()
  return out


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _atomic_write(directory: str, name: str, write) -> str:
  """Writes `name` via a temporary file in `directory` and `os.replace`."""
  fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=directory)
  os.close(fd)
  try:
    write(tmp)
    final = os.path.join(directory, name)
    os.replace(tmp, final)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return final


def save_prompt(directory: str, method: Any, method_params: Mapping[str, Any], model: Any,
                step: Optional[int] = None,
                metrics: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Writes a prompt checkpoint of `method_params` trained on `model`'s backbone.

  The tensors are written first and the manifest last, each through a
  temporary file and a rename, so a reader never sees a manifest pointing at
  a half-written tensor file.

  Args:
    directory: created if missing; an existing prompt checkpoint is replaced.
    method: a `PromptTuning`, `PrefixTuning`, `PTuning`, `ModelTuning` or
      `MultitaskPromptTuning`.
    method_params: its parameters (unmerged: a reparameterized prefix keeps its MLP).
    model: the frozen backbone (`jaxpt.Model`): its params are fingerprinted,
      its config and source recorded.
    step: the training step, if any.
    metrics: scalar metrics to record (e.g. the validation score).

  Returns:
    The manifest written.
  """
  from safetensors.numpy import save_file

  if getattr(method, 'name', None) not in METHODS:
    raise ValueError(f'cannot save a prompt for method {method!r}; known methods: '
                     f'{sorted(METHODS)}')
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  flat = traverse_util.flatten_dict(dict(method_params or {}), sep='/')
  arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
  params_path = _atomic_write(directory, PARAMS_FILE, lambda p: save_file(arrays, p))
  manifest = {
      'format': FORMAT,
      'version': VERSION,
      'method': {'name': method.name, 'hyperparameters': hyperparameters(method)},
      'backbone': {'source': str(getattr(model, 'source', '') or ''),
                   'fingerprint': fingerprint(model.params),
                   'config': model.config.to_dict()},
      'step': None if step is None else int(step),
      'metrics': _json_metrics(metrics),
      'params': {'file': PARAMS_FILE, 'sha256': _sha256(params_path),
                 'tensors': {k: {'shape': list(v.shape), 'dtype': v.dtype.name}
                             for k, v in arrays.items()}},
  }

  def write_manifest(path):
    with open(path, 'w') as f:
      json.dump(manifest, f, indent=2)

  _atomic_write(directory, MANIFEST, write_manifest)
  return manifest


def read_manifest(directory: str) -> Dict[str, Any]:
  """The parsed `jaxpt_prompt.json` of a prompt checkpoint; CheckpointError if bad."""
  path = os.path.join(os.fspath(directory), MANIFEST)
  if not os.path.isfile(path):
    found = sorted(os.listdir(directory))[:10] if os.path.isdir(directory) else 'nothing'
    raise CheckpointError(f'{path}: no prompt checkpoint manifest (found {found})')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f'{path}: expected a jaxpt prompt manifest (JSON), could not read '
                          f'it: {e}') from e
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    found = manifest.get('format') if isinstance(manifest, dict) else type(manifest).__name__
    raise CheckpointError(f'{path}: expected format {FORMAT!r}, found {found!r}')
  if manifest.get('version', 0) > VERSION:
    raise CheckpointError(f'{path}: version {manifest.get("version")} is newer than this '
                          f'jaxpt reads ({VERSION}); upgrade jaxpt')
  for key in ('method', 'backbone', 'params'):
    if not isinstance(manifest.get(key), dict):
      raise CheckpointError(f'{path}: missing or malformed {key!r} entry')
  return manifest


def _method_from_manifest(manifest: Dict[str, Any], path: str) -> Any:
  name = manifest['method'].get('name')
  if name not in METHODS:
    raise CheckpointError(f'{path}: unknown method {name!r}; expected one of {sorted(METHODS)}')
  try:
    return from_hyperparameters(name, dict(manifest['method'].get('hyperparameters') or {}))
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from e


def _read_params(directory: str, manifest: Dict[str, Any]) -> Dict[str, Any]:
  from safetensors.numpy import load_file

  entry = manifest['params']
  path = os.path.join(directory, entry.get('file', PARAMS_FILE))
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: the prompt parameters are missing')
  if entry.get('sha256') and _sha256(path) != entry['sha256']:
    raise CheckpointError(f'{path}: corrupt: its SHA-256 does not match the one recorded in '
                          f'{MANIFEST} (the file was modified or truncated)')
  try:
    arrays = load_file(path)
  except Exception as e:  # safetensors raises its own error types
    raise CheckpointError(f'{path}: could not read the prompt parameters: '
                          f'{type(e).__name__}: {e}') from e
  expected = entry.get('tensors')
  if expected is not None:
    found = {k: {'shape': list(v.shape), 'dtype': v.dtype.name} for k, v in arrays.items()}
    if found != expected:
      raise CheckpointError(f'{path}: tensors {found} do not match {MANIFEST}: {expected}')
  if not arrays:
    return {}
  return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in arrays.items()}, sep='/')


def load_prompt(directory: str, model: Any = None) -> Tuple[Any, Dict[str, Any], Dict]:
  """Reads a prompt checkpoint as (method, method_params, manifest).

  A `PromptTuning` comes back with `initializer='array'` and `array` set to
  the saved prompt, so `method.init` reproduces it (e.g. to continue
  training); the manifest keeps the original initializer.

  Args:
    directory: a directory written by `save_prompt`.
    model: when given, the backbone the prompt will run on; its fingerprint
      must equal the recorded one.

  Raises:
    CheckpointError: missing or corrupt files (naming the file), an unknown
      method, or a backbone whose fingerprint differs from the one the prompt
      was trained on (naming both fingerprints and that backbone).
  """
  directory = os.path.abspath(os.fspath(directory))
  manifest = read_manifest(directory)
  manifest_path = os.path.join(directory, MANIFEST)
  method = _method_from_manifest(manifest, manifest_path)
  if model is not None:
    want = manifest['backbone'].get('fingerprint')
    same, have = same_backbone(want, model.params)
    if not same:
      source = manifest['backbone'].get('source') or 'an unnamed backbone'
      raise CheckpointError(
          f'{manifest_path}: this prompt was trained on {source} (fingerprint {want}); the '
          f'model it is being attached to ({getattr(model, "source", "") or "from memory"}) '
          f'has fingerprint {have}. A prompt only works on the exact backbone it was '
          f'trained on.')
  params = _read_params(directory, manifest)
  if method.name == PromptTuning.name:
    if 'prompt' not in params:
      raise CheckpointError(f'{os.path.join(directory, PARAMS_FILE)}: a prompt_tuning '
                            f'checkpoint needs a "prompt" tensor, found {sorted(params)}')
    method = dataclasses.replace(method, initializer='array',
                                 array=np.asarray(params['prompt']))
  return method, params, manifest
