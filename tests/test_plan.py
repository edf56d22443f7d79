"""`jaxpt plan` compiles the program `jaxpt train` runs, and judges it against the target's memory.

The main check runs this file as a script in a child process with 8 forced CPU
devices (XLA_FLAGS must be set before JAX starts), as tests/test_partitioning.py
does. For one gin configuration it compiles the plan's program (`jaxpt.plan`,
abstract parameters, nothing allocated), then runs `jaxpt.train` for one step
from the same gin with the step object of `jaxpt.train.loop` spied on: the
spy lowers and compiles that very object on the arguments the loop passes it.
The two compiled programs must be the same HLO (equal fingerprints) with the
same memory analysis: once for a random-init backbone with scanned layers, and
once from a checkpoint (which `jaxpt train` runs with the settings of
`jaxpt.cli.runs.run_config`), with non-zero Z_LOSS and LABEL_SMOOTHING; then for
decoder-only backbones (a tiny Llama whose 2 kv heads do not divide model
parallel 4, a tiny GPT-2), whose batches are T5X's decoder-only rows.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Dict, List

import pytest

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[1]

GIN_FILES = ['models/t5_1_1/tiny.gin', 'methods/prompt_tuning.gin', 'runs/train.gin',
             'partitioning/pjit.gin', 'local_tiny.gin']
BINDINGS = ['NUM_PARTITIONS = 2', 'BATCH_SIZE = 8', "MIXTURE_OR_TASK_NAME = 'synthetic_two_class'",
            'TRAIN_STEPS = 1', 'jaxpt.train.eval_every = None', 'Z_LOSS = 1e-3',
            'LABEL_SMOOTHING = 0.1', "jaxpt.preset.remat_policy = 'full'",
            'jaxpt.preset.scan_layers = True', 'DEVICE_MEMORY_GIB = 1',
            "DEVICE_NAME = 'test chip'",
            # `jaxpt plan` compiles the unpacked step (T5X's fixed lengths); a packed run
            # (PACK = True) feeds segment ids and positions too, another program.
            'PACK = False']
# Decoder-only runs (random backbones on the T5-tokenized synthetic task: 512 ids), each with
# its own mesh: the tiny Llama's 2 kv heads on model parallel 4 (GQA with fewer kv heads than
# model shards, as Llama 3 70B's 8 on a v4-32's 16).
DECODER_GIN = {'llama': ['models/llama/tiny.gin', 'NUM_PARTITIONS = 4'],
               'gpt2': ['models/gpt2/tiny.gin', 'NUM_PARTITIONS = 2',
                        "TASK_FEATURE_LENGTHS = {'inputs': 40, 'targets': 4}"]}
DECODER_BINDINGS = ['jaxpt.decoder_preset.vocab_size = 512',
                    "jaxpt.decoder_preset.remat_policy = 'full'",
                    'jaxpt.decoder_preset.scan_layers = True']
# The target files: (devices, mesh (data, model), GiB per device, name).
TARGETS = {'partitioning/xxl_gpu.gin': (1, (1, 1), 80, 'A100/H100 80 GB'),
           'partitioning/xxl_v3_32.gin': (32, (4, 8), 16, 'TPU v3 core'),
           'partitioning/xxl_v4_8.gin': (4, (1, 4), 32, 'TPU v4 chip'),
           'partitioning/xxl_v4_32.gin': (16, (1, 16), 32, 'TPU v4 chip'),
           'partitioning/llama_gpu.gin': (1, (1, 1), 80, 'A100/H100 80 GB'),
           'partitioning/llama_gpu8.gin': (8, (1, 8), 80, 'A100/H100 80 GB'),
           'partitioning/llama_v4_8.gin': (4, (1, 4), 32, 'TPU v4 chip'),
           'partitioning/llama_v4_32.gin': (16, (1, 16), 32, 'TPU v4 chip')}


# ------------------------------------------------------------------ the child process


def _scenario(name: str, tmp: pathlib.Path, extra: List[str],
              gin_files: List[str] = GIN_FILES) -> Dict[str, Any]:
  import gin

  from jaxpt import partitioning as pt
  from jaxpt.cli import gin_flags, plan, runs
  from jaxpt.train.sharding import ShardedStep

  gin.clear_config()
  gin_flags.parse(gin_files, BINDINGS + [f"MODEL_DIR = '{tmp / name}'"] + extra)
  plan._inherit_bindings()  # what `jaxpt plan` does after parsing
  planned = plan.plan(full_tuning=False)[0]

  ran: List[Dict[str, Any]] = []
  call = ShardedStep.__call__

  def spy(self, state, frozen, batch, rng):
    sharded = pt.shard_batch(batch, self.shardings.batch)
    compiled = self.lower(state, frozen, sharded, rng).compile()
    record = plan.memory_plan(compiled, None)
    record.update(fingerprint=plan.program_fingerprint(compiled),
                  batch={k: [list(v.shape), str(v.dtype)] for k, v in batch.items()})
    ran.append(record)
    return call(self, state, frozen, batch, rng)

  ShardedStep.__call__ = spy
  try:
    runs.train()
  finally:
    ShardedStep.__call__ = call
  scan = gin.query_parameter(f"jaxpt.{'decoder_' if name in DECODER_GIN else ''}preset.scan_layers")
  gin.clear_config()
  return {'plan': planned, 'train': ran, 'gin_scan_layers': scan}


def _child(tmp: str) -> None:
  import jax

  import jaxpt
  from jaxpt.models.t5 import init_params

  tmp_path = pathlib.Path(tmp)
  assert jax.device_count() == 8
  config = jaxpt.preset('t5_1_1', 'tiny')
  checkpoint = tmp_path / 'backbone'
  jaxpt.save_model(jaxpt.Model(config, init_params(config, jax.random.key(0))), str(checkpoint))
  out = {'random': _scenario('random', tmp_path, ['INITIAL_CHECKPOINT_PATH = None']),
         'checkpoint': _scenario('checkpoint', tmp_path,
                                 [f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'"])}
  for family, (model_gin, *extra) in DECODER_GIN.items():
    out[family] = _scenario(family, tmp_path, DECODER_BINDINGS + extra,
                            [model_gin] + GIN_FILES[1:])
  print(json.dumps(out))


@pytest.fixture(scope='module')
def compiled(tmp_path_factory) -> Dict[str, Any]:
  tmp = tmp_path_factory.mktemp('plan')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join(
                 [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
                                if p]))
  env.pop('JAXPT_PLAN_CHILD', None)
  out = subprocess.run([sys.executable, str(HERE), str(tmp)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, f'{out.stdout[-3000:]}\n{out.stderr[-6000:]}'
  return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ tests

MEMORY = ('arguments', 'outputs', 'aliased', 'temporaries', 'generated_code', 'peak')


@pytest.mark.parametrize('scenario', ['random', 'checkpoint'])
def test_plan_compiles_the_program_train_runs(compiled, scenario):
  r = compiled[scenario]
  planned, ran = r['plan'], r['train']
  assert len(ran) == 1, 'jaxpt train ran one step through the sharded step object'
  ran = ran[0]
  assert set(ran['batch']) == {'encoder_input_tokens', 'decoder_input_tokens',
                               'decoder_target_tokens', 'decoder_loss_weights'}
  assert all(dtype == 'int32' for _, dtype in ran['batch'].values()), ran['batch']
  assert planned['fingerprint'] == ran['fingerprint'], (planned, ran)
  assert {k: planned[k] for k in MEMORY} == {k: ran[k] for k in MEMORY}
  assert planned['mesh'] == {'data': 4, 'model': 2} and planned['temporaries'] > 0


@pytest.mark.parametrize('family', sorted(DECODER_GIN))
def test_plan_compiles_the_decoder_only_program_train_runs(compiled, family):
  r = compiled[family]
  planned, ran = r['plan'], r['train']
  assert r['gin_scan_layers'] and len(ran) == 1
  ran = ran[0]
  # T5X's decoder-only rows: inputs (less the prompt) then targets, float32 loss weights.
  inputs = 40 if family == 'gpt2' else 64
  row = [8, inputs - 4 + 4]
  assert ran['batch'] == {'decoder_input_tokens': [row, 'int32'],
                          'decoder_target_tokens': [row, 'int32'],
                          'decoder_loss_weights': [row, 'float32']}, ran['batch']
  assert planned['fingerprint'] == ran['fingerprint'], (planned, ran)
  assert {k: planned[k] for k in MEMORY} == {k: ran[k] for k in MEMORY}
  model = 4 if family == 'llama' else 2
  assert planned['mesh'] == {'data': 8 // model, 'model': model}
  assert planned['trained_params'] == 4 * 16  # the prompt: 4 x d_model 16
  # The frozen weights are partitioned: one device holds well under all of them (float32).
  assert planned['frozen_params'] < 4 * (planned['total_params'] - 64) * 0.75


def test_the_target_memory_judges(compiled):
  planned = compiled['random']['plan']
  assert planned['device_memory_gib'] == 1 and planned['target'] == 'test chip'
  assert planned['fits'] is True


def test_a_checkpoint_run_is_the_planned_scanned_program(compiled):
  # Both gin configurations ask for scanned layers. A checkpoint's per-layer weights are
  # stacked into the scan axis at load (jaxpt.cli.runs.run_config keeps gin's scan_layers),
  # so the checkpoint run compiles the same program as the random init, and the plan of each
  # equals what its run compiled (above).
  assert compiled['random']['gin_scan_layers'] and compiled['checkpoint']['gin_scan_layers']
  assert compiled['random']['plan']['fingerprint'] == compiled['checkpoint']['plan']['fingerprint']
  assert (compiled['random']['train'][0]['fingerprint']
          == compiled['checkpoint']['train'][0]['fingerprint'])


def test_plan_model_is_the_train_backbone_config(tmp_path):
  import jax

  import jaxpt
  from jaxpt.cli import plan, runs
  from jaxpt.methods import PromptTuning
  from jaxpt.models.t5 import init_params

  config = jaxpt.preset('t5_1_1', 'tiny')
  jaxpt.save_model(jaxpt.Model(config, init_params(config, jax.random.key(0))), str(tmp_path))
  gin_config = config.replace(dtype='bfloat16', scan_layers=True, remat_policy='full',
                              dropout_rate=0.0)
  method = PromptTuning(length=4, initializer='uniform')
  for path in (str(tmp_path), None):
    trained = runs._backbone(path, gin_config, 0).config
    planned = plan.train_model(gin_config, method, path, z_loss=1e-3, label_smoothing=0.1)
    assert planned.config == trained, path
    assert (planned.z_loss, planned.label_smoothing) == (1e-3, 0.1)


@pytest.mark.parametrize('rel', sorted(TARGETS))
def test_target_files_set_mesh_and_memory(rel):
  import gin

  from jaxpt.cli import gin_flags

  devices, (data, model), gib, name = TARGETS[rel]
  decoder = 'llama_' in rel  # GPT-2 / Llama: jaxpt.decoder_preset's fields
  preset = 'jaxpt.decoder_preset' if decoder else 'jaxpt.preset'
  model_gin = 'models/llama/llama3_8b.gin' if decoder else 'models/t5_1_1/xxl.gin'
  try:
    gin_flags.parse([model_gin, 'methods/prompt_tuning.gin', 'runs/train.gin', rel],
                    ["MODEL_DIR = 'x'", "MIXTURE_OR_TASK_NAME = 'y'"])
    assert gin.query_parameter('%DEVICE_MEMORY_GIB') == gib
    assert gin.query_parameter('%DEVICE_NAME') == name
    assert gin.query_parameter(f'{preset}.dtype') == 'bfloat16'
    assert gin.query_parameter(f'{preset}.remat_policy') == 'full'
    assert gin.query_parameter(f'{preset}.scan_layers') is True
    config = gin.query_parameter('%MODEL_CONFIG').scoped_configurable_fn()
    assert (config.dtype, config.remat_policy, config.scan_layers) == ('bfloat16', 'full', True)
    submesh = gin.query_parameter('%MODEL_PARALLEL_SUBMESH')
    partitions = gin.query_parameter('%NUM_PARTITIONS')
  finally:
    gin.clear_config()
  size = 1
  for n in submesh or (partitions,):
    size *= n
  assert size == partitions == model and data * model == devices
  text = (REPO / 'gin' / rel).read_text()
  assert str(gib) in text.split('\n\n')[0] or f'{gib} GiB' in text  # the comment says it


def test_plan_prints_the_verdict_against_the_target():
  from jaxpt.cli.plan import GIB, format_plan
  p = {'mesh': {'data': 1, 'model': 4}, 'devices': 4, 'platform': 'cpu',
       'trainable_rules': ['method/.*'], 'trained_params': 1, 'total_params': 2,
       'compile_seconds': 1.0, 'fingerprint': 'abc', 'device_memory_gib': 32, 'fits': True,
       **{k: GIB for k in ('frozen_params', 'trainable_params', 'optimizer_state', 'batch',
                           'arguments', 'outputs', 'aliased', 'temporaries',
                           'generated_code', 'peak')}}
  assert 'fits 32 GiB/device (TPU v4 chip): yes' in format_plan('t', p, 'TPU v4 chip')
  assert 'no target memory' in format_plan('t', dict(p, device_memory_gib=None, fits=None))


if __name__ == '__main__':
  _child(sys.argv[1])
