"""`jaxpt plan`: will this run fit? Per-device memory of the sharded training step.

Takes the same gin files and `--gin.X=Y` flags as `jaxpt train` and, without
loading or allocating any weight, builds the abstract parameters
(`jax.eval_shape`), the mesh and rules of `jaxpt.partitioning.PartitionConfig`
(gin/partitioning/*.gin), and lowers and compiles the training step ahead of
time on ShapeDtypeStructs carrying their shardings. It prints what one device
holds: frozen and trainable parameters, optimizer state, the batch, and the
compiler's own accounting (`compiled.memory_analysis()`: arguments, outputs,
aliased (donated) buffers, temporaries, generated code), then whether the peak
fits the target's memory per device. The same plan with every parameter
trainable (full model tuning) follows, to show the saving.

The program is the one `jaxpt train` runs with the same gin files: the same
`jaxpt.train.sharding.sharded_train_step`, the same prompted model (method,
Z_LOSS, LABEL_SMOOTHING), the same backbone config (`jaxpt.cli.runs.run_config`:
with INITIAL_CHECKPOINT_PATH set, the settings `jaxpt train` applies to the
loaded checkpoint, e.g. its layer scanning), the same batch features
(`decoder_loss_weights` included; for a GPT-2 / Llama backbone (models/gpt2,
models/llama) T5X's decoder-only rows of inputs then targets, as
`jaxpt.data.features.DecoderOnlyBatches` builds them) and shardings; the printed program
fingerprint (a hash of the compiled HLO) is the one `jaxpt train` compiles
(tests/test_plan.py). Plan-only settings would plan another program, so there
are none: change the run (`--gin.jaxpt.preset.scan_layers=True`) to plan it.

The memory to judge against is the target's: DEVICE_MEMORY_GIB, set by the
gin/partitioning/ file of each target (xxl_gpu.gin: one 80 GB GPU, xxl_v3_32.gin:
16 GiB v3 cores, xxl_v4_8.gin and xxl_v4_32.gin: 32 GiB v4 chips; llama_*.gin: the same
targets for GPT-2 / Llama backbones, and llama_gpu8.gin: 8 GPUs of 80 GB), or
`--device_memory_gib`; unset, a GPU/TPU's own memory limit, and on CPU no verdict.

`--num_devices=N` plans for N devices on this machine: the command re-runs
itself on N simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count).

  jaxpt plan --num_devices=4 --gin_file=models/t5_1_1/xxl.gin \\
    --gin_file=methods/prompt_tuning.gin --gin_file=runs/train.gin \\
    --gin_file=partitioning/xxl_v4_8.gin \\
    --gin.MODEL_DIR="'/tmp/plan'" --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_local'"
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxpt import partitioning as pt
from jaxpt.data.features import as_decoder_only
from jaxpt.methods import EVERYTHING, PROMPT_ONLY, Backbone, partition
from jaxpt.models.config import T5Config
from jaxpt.models.backbones import abstract_params
from jaxpt.models.decoder_config import DecoderConfig
from jaxpt.prompted.base import PromptedModel, prompted_model

GIB = 2**30
_REEXEC_ENV = 'JAXPT_PLAN_CHILD'
# What `jaxpt plan` takes from `jaxpt.train`'s bindings (or else the macros).
_INHERITED = {'model_config': 'MODEL_CONFIG', 'method': 'METHOD', 'optimizer': 'OPTIMIZER',
              'trainable_rules': 'TRAINABLE_RULES', 'batch_size': 'BATCH_SIZE',
              'task_feature_lengths': 'TASK_FEATURE_LENGTHS', 'partitioning': 'PARTITIONING',
              'initial_checkpoint_path': 'INITIAL_CHECKPOINT_PATH',
              'label_smoothing': 'LABEL_SMOOTHING', 'z_loss': 'Z_LOSS',
              'frozen_dtype': 'FROZEN_DTYPE'}
# The features of a `jaxpt train` batch (jaxpt.data.seqio_batches.TrainBatches: SeqIO's
# EncDecFeatureConverter, int32) that a T5 step sees; a GPT-2 / Llama step sees the rows
# `jaxpt.data.features.DecoderOnlyBatches` makes of them.
BATCH_FEATURES = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                  'decoder_loss_weights')
BackboneConfig = Union[T5Config, DecoderConfig]


def _simulated_env(num_devices: int) -> Optional[Dict[str, str]]:
  """The environment to re-run in, or None when this process already has the devices."""
  flag = f'--xla_force_host_platform_device_count={num_devices}'
  if os.environ.get(_REEXEC_ENV) == '1':
    return None
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [flag])
  env['JAX_PLATFORMS'] = 'cpu'
  env[_REEXEC_ENV] = '1'
  return env


def _inherit_bindings() -> None:
  """Binds `jaxpt.plan.X` to `jaxpt.train.X` (or the macro) where not bound explicitly."""
  for name, macro in _INHERITED.items():
    try:
      gin.query_parameter(f'jaxpt.plan.{name}')
      continue
    except ValueError:
      pass
    try:
      gin.bind_parameter(f'jaxpt.plan.{name}', gin.query_parameter(f'jaxpt.train.{name}'))
      continue
    except ValueError:
      pass
    if macro is None:
      continue
    try:
      gin.query_parameter(f'{macro}/macro.value')
    except ValueError:
      continue
    gin.parse_config(f'jaxpt.plan.{name} = %{macro}')


def _abstract_method_params(method: Any, config: BackboneConfig) -> Any:
  """Shapes of `method.init(...)`; initializers that need a vocabulary plan as 'uniform'."""
  embedding = jax.ShapeDtypeStruct((config.vocab_size, config.emb_dim), jnp.float32)

  def init(m):
    return jax.eval_shape(lambda e: m.init(jax.random.key(0), Backbone(config, e)), embedding)

  try:
    return init(method)
  except ValueError:
    if dataclasses.is_dataclass(method) and hasattr(method, 'initializer'):
      return init(dataclasses.replace(method, initializer='uniform'))
    raise


def _bytes(mem: Any, name: str) -> int:
  return int(getattr(mem, name, 0) or 0)


def device_memory_limit_gib() -> Optional[float]:
  """This process's first device's memory limit (GPU/TPU), or None (CPU, or not reported)."""
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return None
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    return None
  return None if not limit else limit / GIB


def abstract_batch(batch_size: int, encoder_length: int, target_length: int,
                   decoder_only: bool = False) -> Dict[str, Any]:
  """ShapeDtypeStructs of one `jaxpt train` batch.

  T5: `BATCH_FEATURES`, int32. `decoder_only` (GPT-2 / Llama): what `jaxpt train`'s
  `DecoderOnlyBatches` makes of that batch (`as_decoder_only`, run here on a batch of
  ones): T5X's decoder-only rows `encoder_length + target_length` long, float32 loss weights.
  """
  shapes = {'encoder_input_tokens': (batch_size, encoder_length)}
  batch = {k: jax.ShapeDtypeStruct(shapes.get(k, (batch_size, target_length)), jnp.int32)
           for k in BATCH_FEATURES}
  if not decoder_only:
    return batch
  rows = as_decoder_only({k: np.ones(v.shape, v.dtype) for k, v in batch.items()})
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in rows.items()}


def lower_step(model: PromptedModel, optimizer: Any, trainable_rules: Sequence[str],
               batch_size: int, input_length: int, target_length: int,
               partitioning: pt.PartitionConfig) -> Tuple[Any, Dict[str, Any]]:
  """Lowers `jaxpt train`'s sharded step for abstract arguments.

  Returns:
    (lowered, info): `step.lower(...)` of `sharded_train_step(model, ...)` on
    ShapeDtypeStructs carrying the step's shardings (nothing is allocated), and
    the per-device bytes of what it holds ('frozen_params', 'trainable_params',
    'optimizer_state', 'batch'), the mesh and the parameter counts.
  """
  from jaxpt.train.sharding import sharded_train_step
  from jaxpt.train.step import init_state

  config, method = model.config, model.method
  params = {'backbone': abstract_params(config),
            'method': _abstract_method_params(method, config)}
  step, sh = sharded_train_step(model, params, optimizer, trainable_rules, partitioning)
  mesh = sh.mesh
  trainable, frozen = partition(params, trainable_rules)
  state = jax.eval_shape(lambda t: init_state(t, optimizer), trainable)
  enc_len = input_length - method.prompt_length
  if enc_len <= 0:
    raise ValueError(f'input length {input_length} leaves no room beside the prompt '
                     f'({method.prompt_length})')
  if batch_size % mesh.shape['data']:
    raise ValueError(f'batch size {batch_size} is not divisible by the data axis '
                     f"({mesh.shape['data']} = {mesh.size} devices / {mesh.shape['model']})")
  decoder_only = isinstance(config, DecoderConfig)
  if decoder_only:  # as `jaxpt train` refuses rows past GPT-2's position table
    from jaxpt.cli.runs import _check_positions
    _check_positions(config, method.prompt_length, input_length + target_length)
  batch = abstract_batch(batch_size, enc_len, target_length, decoder_only)
  batch_sh = {k: sh.batch for k in batch}
  rng = jax.eval_shape(lambda: jax.random.key(0))
  args = (pt.abstract_with_shardings(state, sh.state), pt.abstract_with_shardings(frozen, sh.frozen),
          pt.abstract_with_shardings(batch, batch_sh),
          jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sh.replicated))
  info = {
      'mesh': {'data': int(mesh.shape['data']), 'model': int(mesh.shape['model'])},
      'devices': int(mesh.size), 'platform': mesh.devices.flat[0].platform,
      'trainable_rules': list(trainable_rules),
      'frozen_params': pt.sharded_bytes(frozen, sh.frozen),
      'trainable_params': pt.sharded_bytes(state.trainable, sh.state.trainable),
      'optimizer_state': pt.sharded_bytes(state.opt_state, sh.state.opt_state),
      'batch': pt.sharded_bytes(batch, batch_sh),
      'total_params': int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
      'trained_params': int(sum(np.prod(x.shape) for x in jax.tree.leaves(trainable))),
  }
  return step.lower(*args), info


_METADATA = re.compile(r', metadata=\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
_DEBUG_TABLES = ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames')


def program_text(compiled: Any) -> str:
  """The compiled program's HLO without its debug metadata (where in Python each op was made)."""
  blocks = compiled.as_text().split('\n\n')
  blocks = [b for b in blocks if b.split('\n', 1)[0].strip() not in _DEBUG_TABLES]
  return _METADATA.sub('', '\n\n'.join(blocks))


def program_fingerprint(compiled: Any) -> str:
  """A short hash of `program_text` (equal programs, equal hashes, wherever they were built)."""
  return hashlib.sha256(program_text(compiled).encode()).hexdigest()[:16]


def memory_plan(compiled: Any, device_memory_gib: Optional[float]) -> Dict[str, Any]:
  """Per-device bytes from `compiled.memory_analysis()`, the peak and the verdict."""
  mem = compiled.memory_analysis()
  out = {
      'arguments': _bytes(mem, 'argument_size_in_bytes'),
      'outputs': _bytes(mem, 'output_size_in_bytes'),
      'aliased': _bytes(mem, 'alias_size_in_bytes'),
      'temporaries': _bytes(mem, 'temp_size_in_bytes'),
      'generated_code': _bytes(mem, 'generated_code_size_in_bytes'),
  }
  out['peak'] = (out['arguments'] + out['outputs'] - out['aliased'] + out['temporaries']
                 + out['generated_code'])
  out['device_memory_gib'] = device_memory_gib
  out['fits'] = None if device_memory_gib is None else out['peak'] <= device_memory_gib * GIB
  return out


def plan_step(model: PromptedModel, optimizer: Any, trainable_rules: Sequence[str],
              batch_size: int, input_length: int, target_length: int,
              partitioning: pt.PartitionConfig, *,
              device_memory_gib: Optional[float] = None) -> Dict[str, Any]:
  """Compiles the sharded step ahead of time for abstract inputs; returns its memory plan.

  The step is `jaxpt.train.sharding.sharded_train_step`, the one `jaxpt train`
  runs with the same model and partitioning (`lower_step`).

  Args:
    model: the prompted model (its config planned as given; its method's
      params' shapes come from eval_shape).
    optimizer: the optax optimizer.
    trainable_rules: which leaves train (`split.PROMPT_ONLY`, `split.EVERYTHING`).
    batch_size: global batch size.
    input_length: TASK_FEATURE_LENGTHS' inputs: the encoder length the model sees,
      prompt included (a decoder-only row holds `input_length - prompt_length`
      input positions, then the targets, after the prompt).
    target_length: TASK_FEATURE_LENGTHS' targets.
    partitioning: the mesh and rules.
    device_memory_gib: the per-device memory to check the peak against (None:
      no verdict, 'fits' is None).

  Returns:
    A dict of per-device bytes ('frozen_params', 'trainable_params',
    'optimizer_state', 'batch', 'arguments', 'outputs', 'aliased',
    'temporaries', 'generated_code', 'peak'), 'fits', the mesh shape, the
    compile time and the program's 'fingerprint'.
  """
  start = time.perf_counter()
  lowered, out = lower_step(model, optimizer, trainable_rules, batch_size, input_length,
                            target_length, partitioning)
  compiled = lowered.compile()
  out['compile_seconds'] = round(time.perf_counter() - start, 1)
  out.update(memory_plan(compiled, device_memory_gib))
  out['fingerprint'] = program_fingerprint(compiled)
  return out


def format_plan(title: str, p: Mapping[str, Any], target: Optional[str] = None) -> str:
  """The human-readable plan."""
  g = lambda n: f'{p[n] / GIB:9.3f} GiB {p[n] / 2**20:12.1f} MiB'
  if p['device_memory_gib'] is None:
    verdict = ('fits: no target memory (set DEVICE_MEMORY_GIB with a gin/partitioning/ target '
               'file, or --device_memory_gib)')
  else:
    verdict = (f"fits {p['device_memory_gib']:g} GiB/device{f' ({target})' if target else ''}: "
               f"{'yes' if p['fits'] else 'NO'}")
  lines = [
      f'== {title}',
      f"mesh               data={p['mesh']['data']} x model={p['mesh']['model']} "
      f"({p['devices']} {p['platform']} devices)",
      f"trainable rules    {p['trainable_rules']}  ({p['trained_params']:,} of "
      f"{p['total_params']:,} parameters)",
      'per device:',
      f"  frozen params    {g('frozen_params')}",
      f"  trainable params {g('trainable_params')}",
      f"  optimizer state  {g('optimizer_state')}",
      f"  batch            {g('batch')}",
      'compiled step (memory_analysis, per device):',
      f"  arguments        {g('arguments')}",
      f"  outputs          {g('outputs')}",
      f"  aliased (donated){g('aliased')}",
      f"  temporaries      {g('temporaries')}",
      f"  generated code   {g('generated_code')}",
      f"  peak             {g('peak')}",
      f"{verdict}   (compiled in {p['compile_seconds']} s; program {p['fingerprint']})",
  ]
  return '\n'.join(lines)


@gin.configurable(module='jaxpt')
def plan(*, model_config: BackboneConfig = gin.REQUIRED, method: Any = gin.REQUIRED,
         optimizer: Any = gin.REQUIRED, trainable_rules: Sequence[str] = PROMPT_ONLY,
         batch_size: int = 32, task_feature_lengths: Mapping[str, int] = None,
         partitioning: Optional[pt.PartitionConfig] = None,
         initial_checkpoint_path: Optional[str] = None, label_smoothing: float = 0.0,
         z_loss: float = 0.0, device_memory_gib: Optional[float] = None,
         target: Optional[str] = None, full_tuning: bool = True,
         frozen_dtype: Optional[str] = None) -> List[Dict[str, Any]]:
  """Plans the configured run and (with `full_tuning`) the same run training everything.

  Every argument but `device_memory_gib`, `target` and `full_tuning` is
  `jaxpt.train`'s (inherited from its gin bindings by `jaxpt plan`); the model is
  the one `jaxpt train` builds (`train_model`: FROZEN_DTYPE applies when the
  trainable rules leave the backbone frozen, so full model tuning plans float32). `device_memory_gib` / `target`: the target's memory per
  device and its name (DEVICE_MEMORY_GIB / TARGET of gin/partitioning/*.gin);
  None: this device's own limit on a GPU/TPU, no verdict on CPU.
  """
  lengths = dict(task_feature_lengths or {'inputs': 512, 'targets': 8})
  model = train_model(model_config, method, initial_checkpoint_path,
                      label_smoothing=label_smoothing, z_loss=z_loss, frozen_dtype=frozen_dtype,
                      trainable_rules=trainable_rules)
  config = model.config
  if partitioning is None:
    print('note: no PARTITIONING (add a gin/partitioning/ file): `jaxpt train` then runs the '
          'unpartitioned jit step; planned here as data parallel over all devices', flush=True)
    partitioning = pt.PartitionConfig()
  if device_memory_gib is None:
    device_memory_gib = device_memory_limit_gib()
    if device_memory_gib is not None:
      target = target or f'this {jax.devices()[0].device_kind}'
  print(f'planning {_describe(config, batch_size, lengths, method.prompt_length)}'
        f'{" (as jaxpt train runs a checkpoint)" if initial_checkpoint_path else ""}; '
        f'z_loss {z_loss:g}, label_smoothing {label_smoothing:g}', flush=True)
  runs = [('configured run', tuple(trainable_rules))]
  if full_tuning and tuple(trainable_rules) != EVERYTHING:
    runs.append(('full model tuning (trainable rule "everything")', EVERYTHING))
  plans = []
  for title, rules in runs:
    run_model = train_model(model_config, method, initial_checkpoint_path,
                            label_smoothing=label_smoothing, z_loss=z_loss,
                            frozen_dtype=frozen_dtype, trainable_rules=rules)
    p = plan_step(run_model, optimizer, rules, batch_size, lengths['inputs'],
                  lengths['targets'], partitioning, device_memory_gib=device_memory_gib)
    p['title'], p['target'] = title, target
    print(format_plan(title, p, target), flush=True)
    plans.append(p)
  if len(plans) == 2:
    saved = plans[1]['peak'] - plans[0]['peak']
    print(f'prompt-only training saves {saved / GIB:.3f} GiB per device '
          f'({plans[0]["peak"] / GIB:.3f} vs {plans[1]["peak"] / GIB:.3f} GiB peak)', flush=True)
  return plans


def _describe(config: BackboneConfig, batch_size: int, lengths: Mapping[str, int],
              prompt_length: int) -> str:
  """The backbone and batch a plan compiles, in one line."""
  settings = (f'd_model {config.emb_dim}, dtype {config.dtype}, params {config.param_dtype}, '
              f'remat {config.remat_policy}, scan_layers {config.scan_layers}')
  inputs, targets = lengths['inputs'], lengths['targets']
  if not isinstance(config, DecoderConfig):
    return (f'{config.num_encoder_layers}+{config.num_decoder_layers} layers, {settings}; '
            f'batch {batch_size} x inputs {inputs} (prompt {prompt_length}) / targets {targets}')
  return (f'{config.family} {config.num_layers} layers, {config.num_heads} heads '
          f'({config.num_kv_heads} kv), {settings}; batch {batch_size} x decoder-only rows of '
          f'inputs {inputs} (prompt {prompt_length}) + targets {targets}: prompt + '
          f'{inputs - prompt_length + targets} tokens')


def train_model(model_config: BackboneConfig, method: Any, initial_checkpoint_path: Optional[str],
                *, label_smoothing: float = 0.0, z_loss: float = 0.0,
                frozen_dtype: Optional[str] = None,
                trainable_rules: Sequence[str] = PROMPT_ONLY) -> PromptedModel:
  """The prompted model `jaxpt train` builds from these gin settings, without any weight.

  The backbone config is `jaxpt.cli.runs.run_config`'s, as `jaxpt train` builds it
  (gin's run settings; the frozen dtype when the trainable rules leave the whole
  backbone frozen); a checkpoint's shapes are taken to be MODEL_CONFIG's
  (`jaxpt train` refuses a checkpoint of another structure).
  """
  from jaxpt.cli.runs import _backbone_frozen, run_config
  frozen = frozen_dtype if _backbone_frozen(trainable_rules, model_config) else None
  del initial_checkpoint_path  # same config either way: run_config of MODEL_CONFIG's shapes
  config = run_config(model_config, model_config, frozen)
  return prompted_model(config, method, label_smoothing=label_smoothing, z_loss=z_loss)


def run(args: argparse.Namespace, bindings: List[str], argv: List[str]) -> int:
  """`jaxpt plan`, from parsed flags; re-runs itself on simulated devices if asked."""
  from jaxpt.cli import gin_flags

  if args.num_devices:
    env = _simulated_env(args.num_devices)
    if env is not None:
      cmd = [sys.executable, '-m', 'jaxpt'] + list(argv)
      return subprocess.call(cmd, env=env)
    if jax.device_count() != args.num_devices:
      raise RuntimeError(f'asked for {args.num_devices} devices, this process has '
                         f'{jax.device_count()} ({jax.default_backend()})')
  if not args.gin_file:
    raise ValueError('jaxpt plan needs --gin_file flags like jaxpt train, e.g. '
                     '--gin_file=models/t5_1_1/tiny.gin --gin_file=methods/prompt_tuning.gin '
                     '--gin_file=runs/train.gin')
  search = [p for p in args.gin_search_paths.split(',') if p]
  gin_flags.parse(args.gin_file, bindings, search)
  _inherit_bindings()
  overrides = {}
  if args.device_memory_gib is not None:
    overrides = {'device_memory_gib': args.device_memory_gib, 'target': None}
  plans = plan(full_tuning=not args.no_full_tuning, **overrides)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(plans, f, indent=1)
  return 0
