"""T5X-style partitioning: a ('data', 'model') mesh, logical axis rules, shardings.

Every backbone parameter carries T5X logical axis names (`jaxpt.models.t5.logical_axes`:
'vocab', 'embed', 'mlp', 'heads', 'joined_kv', 'relpos_buckets', 'layers') and the
activations carry `nn.with_logical_constraint`s ('batch', 'length', 'embed', 'mlp',
'heads', 'vocab'). A list of `(logical name, mesh axis or None)` rules maps both to the
mesh, exactly as in T5X (`standard_logical_axis_rules`), with the prompt axes
('prompt', 'prompt_embed', 'tasks') replicated as in google-research/prompt-tuning.

  mesh = make_mesh(num_partitions=8)                 # ('data', 'model') = (n / 8, 8)
  rules = logical_axis_rules()                       # T5X standard + prompt axes
  shardings = param_shardings(config, mesh, rules)  # where each backbone leaf lives

The partitioned training step is built on these in `jaxpt.train.sharding`.

`PartitionConfig` bundles the knobs for gin (gin/partitioning/*.gin): `jaxpt train`
shards its run with it and `jaxpt plan` compiles the step ahead of time to report the
per-device memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpt.models.config import T5Config
from jaxpt.models.backbones import abstract_params, logical_axes

MESH_AXES = ('data', 'model')
LogicalRules = Tuple[Tuple[str, Optional[str]], ...]
# google-research/prompt-tuning's additional rules: prompts stay replicated (even under
# 2-D parameter partitioning, so a prompt can be dumped as one array).
PROMPT_RULES: LogicalRules = (('prompt', None), ('prompt_embed', None), ('tasks', None))
# Method leaves of at least this many bytes without logical axes are sharded over
# 'model' along their largest divisible dimension (e.g. prefix tuning's MLP on XXL).
LARGE_LEAF_BYTES = 64 * 2**20

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- meshes


def make_mesh(num_partitions: int = 1, model_parallel_submesh: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ('data', 'model') mesh of all devices, T5X-style.

  Args:
    num_partitions: devices per model replica (the 'model' axis size).
    model_parallel_submesh: T5X's TPU submesh `(x, y, z, cores)` of one model
      replica; the 'model' axis then has `prod(submesh)` devices. (T5X tiles
      the physical torus itself; here `mesh_utils.create_device_mesh` picks an
      ICI-friendly order for the same (data, model) shape.)
    devices: the devices to use (default: `jax.devices()`, all processes).

  Returns:
    A `jax.sharding.Mesh` with Auto axes ('data', 'model') =
    (num_devices / model, model).

  Raises:
    ValueError: the model size does not divide the device count, or both
      arguments are given and disagree.
  """
  devices = list(jax.devices() if devices is None else devices)
  model = int(num_partitions)
  if model_parallel_submesh is not None:
    submesh = int(np.prod(model_parallel_submesh))
    if model not in (1, submesh):
      raise ValueError(f'num_partitions={num_partitions} disagrees with model_parallel_submesh='
                       f'{tuple(model_parallel_submesh)} ({submesh} devices); give one of them')
    model = submesh
  if model <= 0 or len(devices) % model:
    raise ValueError(f'{len(devices)} devices cannot be split into model-parallel groups of '
                     f'{model}')
  shape = (len(devices) // model, model)
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except  (no topology info: plain order)
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# ------------------------------------------------------------------------------ rules


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1,
                                additional_rules: Sequence[Tuple[str, Optional[str]]] = ()
                                ) -> LogicalRules:
  """T5X's `t5x.partitioning.standard_logical_axis_rules`, rule for rule.

  Args:
    activation_partitioning_dims: 1 (activations sharded on 'data' only) or 2
      (their 'embed' also on 'model').
    parameter_partitioning_dims: 1 (parameters sharded on 'model' only) or 2
      (their 'embed' also on 'data', ZeRO-3-like).
    additional_rules: appended last (so the standard rules win on conflicts).

  Returns:
    A tuple of (logical axis name, mesh axis name or None) pairs; earlier
    rules take precedence (`flax.linen.logical_to_mesh_axes` semantics).
  """
  dims = (activation_partitioning_dims, parameter_partitioning_dims)
  base = [('batch', 'data'), ('vocab', 'model')]
  if dims == (1, 1):
    rules = base + [('embed', None), ('mlp', 'model'), ('heads', 'model'), ('kv', None),
                    ('joined_kv', 'model')]
  elif dims == (2, 1):
    rules = base + [('mlp', 'model'), ('heads', 'model'), ('kv', None), ('joined_kv', 'model'),
                    ('embed', 'model')]
  elif dims == (1, 2):
    rules = base + [('mlp', 'model'), ('heads', 'model'), ('kv', None), ('joined_kv', 'model'),
                    ('embed', 'data')]
  elif dims == (2, 2):
    rules = base + [('mlp', 'model'), ('heads', 'model'), ('kv', None), ('joined_kv', 'model'),
                    ('embed', 'model'), ('embed', 'data')]
  else:
    raise ValueError(f'unsupported activation_partitioning_dims={activation_partitioning_dims}, '
                     f'parameter_partitioning_dims={parameter_partitioning_dims} (1 or 2 each)')
  replicated = [('relpos_buckets', None), ('abspos_buckets', None), ('length', None),
                ('layers', None), ('stack', None), ('mlp_activations', None)]
  return tuple(rules + replicated + [tuple(r) for r in additional_rules])


@gin.configurable(module='jaxpt.partitioning')
def logical_axis_rules(activation_partitioning_dims: int = 1, parameter_partitioning_dims: int = 1,
                       additional_rules: Sequence[Tuple[str, Optional[str]]] = ()
                       ) -> LogicalRules:
  """The standard rules plus the prompt axes (replicated), then `additional_rules`."""
  return standard_logical_axis_rules(activation_partitioning_dims, parameter_partitioning_dims,
                                     tuple(PROMPT_RULES) + tuple(additional_rules))


@gin.configurable(module='jaxpt.partitioning')
@dataclasses.dataclass(frozen=True)
class PartitionConfig:
  """How a run is partitioned (gin: gin/partitioning/*.gin).

  Attributes:
    num_partitions: the 'model' axis size (1: pure data parallelism).
    model_parallel_submesh: T5X's TPU submesh (x, y, z, cores) instead.
    activation_partitioning_dims / parameter_partitioning_dims: T5X's 1 or 2.
    additional_rules: extra (logical, mesh axis) rules, after the standard ones.
    rules_override: a complete rule list replacing the standard one.
  """

  num_partitions: int = 1
  model_parallel_submesh: Optional[Tuple[int, ...]] = None
  activation_partitioning_dims: int = 1
  parameter_partitioning_dims: int = 1
  additional_rules: Tuple[Tuple[str, Optional[str]], ...] = ()
  rules_override: Optional[Tuple[Tuple[str, Optional[str]], ...]] = None

  def mesh(self, devices: Optional[Sequence[Any]] = None) -> Mesh:
    submesh = tuple(self.model_parallel_submesh) if self.model_parallel_submesh else None
    return make_mesh(self.num_partitions, submesh, devices)

  def rules(self) -> LogicalRules:
    if self.rules_override is not None:
      return tuple(tuple(r) for r in self.rules_override)
    return logical_axis_rules(self.activation_partitioning_dims,
                              self.parameter_partitioning_dims, self.additional_rules)


# -------------------------------------------------------------------------- shardings


def _axis_size(mesh: Mesh, axis: Any) -> int:
  if axis is None:
    return 1
  names = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[n] for n in names]))


def spec_for(logical: Optional[Sequence[Optional[str]]], shape: Sequence[int], mesh: Mesh,
             rules: LogicalRules) -> P:
  """Mesh PartitionSpec of an array with logical axis names; indivisible dims replicate."""
  if logical is None:
    return P()
  mesh_axes = list(nn.logical_to_mesh_axes(tuple(logical), rules))
  out = []
  for dim, axis in zip(shape, mesh_axes + [None] * (len(shape) - len(mesh_axes))):
    if axis is not None and dim % _axis_size(mesh, axis):
      _log.info('dimension %d is not divisible by mesh axis %s: replicated', dim, axis)
      axis = None
    out.append(axis)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def method_logical_axes(method_params: Any) -> Dict:
  """Logical axes of method leaves: prompts ('tasks',) 'prompt', 'prompt_embed'; others None."""
  flat = traverse_util.flatten_dict(method_params or {}, sep='/')
  out = {}
  for path, leaf in flat.items():
    if path.split('/')[-1] == 'prompt' and len(np.shape(leaf)) in (2, 3):
      out[path] = P(*(('tasks',) if len(np.shape(leaf)) == 3 else ()), 'prompt', 'prompt_embed')
    else:
      out[path] = None
  return traverse_util.unflatten_dict(out, sep='/') if out else {}


def _large_leaf_spec(shape: Sequence[int], itemsize: int, mesh: Mesh,
                     threshold: int) -> P:
  """'model' on the largest divisible dimension of a big leaf without axes, else replicated."""
  model = mesh.shape['model']
  if model == 1 or int(np.prod(shape)) * itemsize < threshold:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % model == 0:
      return P(*([None] * d + ['model']))
  return P()


def tree_shardings(logical: Any, abstract: Any, mesh: Mesh, rules: LogicalRules,
                   large_leaf_bytes: int = LARGE_LEAF_BYTES) -> Any:
  """NamedShardings for a nested dict of arrays from a same-shaped dict of logical specs.

  Leaves whose logical spec is None (or missing) are replicated, unless they
  hold at least `large_leaf_bytes`, then their largest divisible dim goes on 'model'.
  """
  flat_abstract = traverse_util.flatten_dict(abstract, sep='/') if abstract else {}
  flat_logical = traverse_util.flatten_dict(logical, sep='/') if logical else {}
  out = {}
  for path, leaf in flat_abstract.items():
    names = flat_logical.get(path)
    shape = tuple(leaf.shape)
    if names is None or all(n is None for n in names):
      spec = _large_leaf_spec(shape, np.dtype(leaf.dtype).itemsize, mesh, large_leaf_bytes)
    else:
      spec = spec_for(names, shape, mesh, rules)
    out[path] = NamedSharding(mesh, spec)
  return traverse_util.unflatten_dict(out, sep='/') if out else {}


def param_shardings(config: T5Config, mesh: Mesh, rules: LogicalRules) -> Dict:
  """NamedShardings of the backbone parameters (scanned or not, per `config.scan_layers`).

  The tree is shaped like the params, so it is also what the checkpoint
  readers take as `shardings=` to load the backbone directly into place.
  """
  return tree_shardings(logical_axes(config), abstract_params(config), mesh, rules)


def _derived_spec(spec: P, param_shape: Tuple[int, ...], leaf_shape: Tuple[int, ...]) -> P:
  """A param's spec carried to an optimizer leaf of equal shape, or one dim fewer (Adafactor)."""
  full = list(spec) + [None] * (len(param_shape) - len(spec))
  if leaf_shape == param_shape:
    return spec
  if len(leaf_shape) == len(param_shape) - 1:
    for d in range(len(param_shape)):
      if param_shape[:d] + param_shape[d + 1:] == leaf_shape:
        return P(*(full[:d] + full[d + 1:]))
  return P()


def opt_state_shardings(opt_state: Any, trainable: Any, trainable_shardings: Any,
                        mesh: Mesh) -> Any:
  """Shardings of an optax state (arrays or ShapeDtypeStructs) from its parameters'.

  Leaves under a sub-tree shaped like the parameters (Adam's mu/nu, Adafactor's
  v / v_row / v_col) follow their parameter's sharding (a factored leaf drops
  the reduced dimension); everything else (counts, dummies) is replicated.
  """
  flat_sh = traverse_util.flatten_dict(trainable_shardings, sep='/')
  flat_shape = {k: tuple(v.shape) for k, v in
                traverse_util.flatten_dict(trainable, sep='/').items()}
  replicated = NamedSharding(mesh, P())

  def one(path, leaf):
    keys = []
    for entry in reversed(path):
      if not isinstance(entry, jax.tree_util.DictKey):
        break
      keys.insert(0, str(entry.key))
    name = '/'.join(keys)
    if name not in flat_sh:
      return replicated
    spec = _derived_spec(flat_sh[name].spec, flat_shape[name], tuple(np.shape(leaf)))
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, opt_state)


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
  """The sharding of every batch feature: leading ('batch') dim per the rules."""
  return NamedSharding(mesh, P(*nn.logical_to_mesh_axes(('batch',), rules)))


def params_shardings(config: T5Config, params: Mapping[str, Any], mesh: Mesh,
                     rules: LogicalRules, large_leaf_bytes: int = LARGE_LEAF_BYTES) -> Dict:
  """Shardings of `{'backbone': ..., 'method': ...[, 'teacher': ...]}` (arrays or abstract)."""
  out = {'backbone': tree_shardings(logical_axes(config), params['backbone'], mesh, rules)}
  # 'method' and any other method-shaped entry (distillation's 'teacher') shard alike.
  for key in sorted(set(params) - {'backbone'}) or ['method']:
    out[key] = tree_shardings(method_logical_axes(params.get(key)), params.get(key) or {}, mesh,
                              rules, large_leaf_bytes)
  return out


# --------------------------------------------------------------------- sharded steps


@contextlib.contextmanager
def axis_rules_context(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """The mesh and the logical rules in force, so `with_logical_constraint`s apply when traced."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def shard_batch(batch: Mapping[str, Any], sharding: NamedSharding) -> Dict[str, Any]:
  """Places a batch: `device_put` on one process, each process's rows on several."""
  batch = dict(batch)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {k: v if isinstance(v, jax.Array) and not v.is_fully_addressable
          else jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def place(tree: Any, shardings: Any) -> Any:
  """`jax.device_put` of a tree into its shardings (host arrays or arrays elsewhere)."""
  return jax.device_put(tree, shardings)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings` (for `.lower` without allocating)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                      tree, shardings)


def is_multihost_env(env: Optional[Mapping[str, str]] = None) -> bool:
  """Whether the environment describes several processes (TPU pod, SLURM, MPI, explicit)."""
  env = os.environ if env is None else env
  if env.get('JAXPT_MULTIHOST', '').lower() in ('1', 'true', 'yes'):
    return True
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for name in ('JAX_NUM_PROCESSES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    try:
      if int(env.get(name, '1')) > 1:
        return True
    except ValueError:
      pass
  return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


HEARTBEAT_TIMEOUT_S = 60
"""Default seconds without a heartbeat before a process counts as dead (env JAXPT_HEARTBEAT_TIMEOUT)."""
SHUTDOWN_TIMEOUT_S = 60
"""Default seconds the exit barrier waits for the other processes (env JAXPT_SHUTDOWN_TIMEOUT)."""
INITIALIZATION_TIMEOUT_S = 300
"""Default seconds to wait for every process to join (env JAXPT_INITIALIZATION_TIMEOUT)."""


def distributed_kwargs(env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
  """`jax.distributed.initialize` arguments from the environment.

  JAX reads JAX_COORDINATOR_ADDRESS itself and detects TPU pods, SLURM and Open MPI;
  for an explicit launch (several processes on one or more plain machines) set
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=n and JAX_PROCESS_ID=i.
  The timeouts bound how long a process lives on after another one dies: the
  coordination service declares a process dead after JAXPT_HEARTBEAT_TIMEOUT
  seconds without a heartbeat and every survivor then exits with an error, and the
  barrier at exit waits at most JAXPT_SHUTDOWN_TIMEOUT seconds.
  """
  env = os.environ if env is None else env
  kwargs: Dict[str, Any] = {}
  if env.get('JAX_COORDINATOR_ADDRESS'):
    kwargs['coordinator_address'] = env['JAX_COORDINATOR_ADDRESS']
  for name, key in (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id')):
    if env.get(name, '') != '':
      try:
        kwargs[key] = int(env[name])
      except ValueError:
        raise ValueError(f'{name}={env[name]!r} is not an integer') from None
  for name, key, default in (
      ('JAXPT_HEARTBEAT_TIMEOUT', 'heartbeat_timeout_seconds', HEARTBEAT_TIMEOUT_S),
      ('JAXPT_SHUTDOWN_TIMEOUT', 'shutdown_timeout_seconds', SHUTDOWN_TIMEOUT_S),
      ('JAXPT_INITIALIZATION_TIMEOUT', 'initialization_timeout', INITIALIZATION_TIMEOUT_S)):
    try:
      kwargs[key] = int(env.get(name) or default)
    except ValueError:
      raise ValueError(f'{name}={env[name]!r} is not a number of seconds') from None
  return kwargs


def initialize_distributed(env: Optional[Mapping[str, str]] = None,
                           initialize: Optional[Callable[[], None]] = None) -> bool:
  """Calls `jax.distributed.initialize(**distributed_kwargs(env))` when the environment
  says multi-host (`is_multihost_env`).

  Must run before any other JAX call. On CPU, the processes' collectives go
  through gloo (unless JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise).
  Returns whether it initialized.
  """
  if not is_multihost_env(env):
    return False
  if initialize is None:
    if jax.distributed.is_initialized():
      return False
    environ = os.environ if env is None else env
    if not environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    kwargs = distributed_kwargs(env)
    _log.info('jax.distributed.initialize(%s)', kwargs)
    initialize = lambda: jax.distributed.initialize(**kwargs)
  initialize()
  return True


# ------------------------------------------------------------------------------ sizes


def sharded_bytes(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) under `shardings`."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(
      shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))):
    shape = sharding.shard_shape(tuple(np.shape(leaf)))
    total += int(math.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total
