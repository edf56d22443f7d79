"""One backbone loader: sharded reads, scanned layers from any checkpoint, bf16 frozen weights.

The multi-device checks run this file as a script in a child process with 8 forced CPU
devices (as tests/test_partitioning.py does) and read the JSON line it prints; the host
memory check starts 4 processes x 2 CPU devices joined by `jax.distributed.initialize`
on localhost, so each process owns a quarter of the mesh's shards.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import jaxpt
from jaxpt.checkpoints import t5x
from jaxpt.methods import Backbone
from jaxpt.models.t5 import abstract_params, init_params

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
from tests.simulated_devices import run_scenario
from tests.synthetic_learning import learn  # noqa: E402


def tiny_config(**overrides: Any) -> jaxpt.T5Config:
  """Every sharded dimension divisible by 8; untied logits (a logits_dense leaf too)."""
  kw = dict(vocab_size=256, num_heads=8, head_dim=8, mlp_dim=128, emb_dim=64,
            num_encoder_layers=3, num_decoder_layers=2, logits_via_embedding=False)
  kw.update(overrides)
  return jaxpt.preset('t5_1_1', 'tiny', **kw)


def _write_all(directory: pathlib.Path, config: jaxpt.T5Config, seed: int = 0) -> Dict[str, str]:
  """The same random backbone as an HF dir, a T5X tensorstore dir, a T5X msgpack file and a
  jaxpt dir."""
  params = init_params(config, jax.random.key(seed))
  model = jaxpt.Model(config, params, source='test')
  paths = {'hf': directory / 'hf', 't5x': directory / 't5x' / 'checkpoint_0',
           't5x_msgpack': directory / 't5x.msgpack', 'jaxpt': directory / 'native'}
  jaxpt.save_hf(model, paths['hf'])
  t5x.write_t5x_tensorstore(params, paths['t5x'], max_chunk_bytes=4096)
  t5x.write_t5x_checkpoint(params, paths['t5x_msgpack'])
  jaxpt.save_model(model, paths['jaxpt'])
  return {k: str(v) for k, v in paths.items()}


def _batch(config: jaxpt.T5Config, n: int = 4) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {'encoder_input_tokens': rng.integers(2, config.vocab_size, (n, 7)).astype(np.int32),
          'decoder_input_tokens': rng.integers(2, config.vocab_size, (n, 5)).astype(np.int32)}


def _logits(model: jaxpt.Model, batch) -> np.ndarray:
  return np.asarray(model.logits(batch['encoder_input_tokens'], batch['decoder_input_tokens']))


# ------------------------------------------------------------------------ in process


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory) -> Dict[str, str]:
  return _write_all(tmp_path_factory.mktemp('ckpts'), tiny_config())


@pytest.mark.parametrize('fmt', ['hf', 't5x', 't5x_msgpack', 'jaxpt'])
def test_scanned_layers_from_any_checkpoint(checkpoints, fmt, tmp_path):
  """scan_layers=True (+ full remat) on a per-layer checkpoint: the same logits, and a
  prompt-tuning gradient; saving writes the per-layer layout back."""
  from jaxpt.methods import PromptTuning
  from jaxpt.prompted.base import prompted_model
  batch = _batch(tiny_config())
  unrolled = jaxpt.load_model(checkpoints[fmt])
  scanned = jaxpt.load_model(checkpoints[fmt], scan_layers=True, remat_policy='full')
  assert scanned.config.scan_layers
  wi = scanned.params['encoder']['layers']['mlp']['wi_0']['kernel']
  assert wi.shape == (3, 64, 128) and 'layers_0' not in scanned.params['encoder']
  diff = float(np.max(np.abs(_logits(unrolled, batch) - _logits(scanned, batch))))
  print(f'{fmt}: scanned vs unrolled logits max |diff| {diff:.2e}')
  assert diff <= 1e-5

  method = PromptTuning(length=4, initializer='uniform')
  prompted = prompted_model(scanned.config, method)
  prompt = method.init(jax.random.key(1), Backbone(tiny_config(), None))
  labelled = dict(batch, decoder_target_tokens=batch['decoder_input_tokens'],
                  decoder_loss_weights=np.ones_like(batch['decoder_input_tokens'], np.float32))
  grads = jax.grad(lambda m: prompted.loss({'backbone': scanned.params, 'method': m}, labelled,
                                           jax.random.key(0))[0])(prompt)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))

  # Saving a scanned model writes layers_i, which an unscanned load reads back exactly.
  jaxpt.save_hf(scanned, tmp_path / 'hf')
  jaxpt.save_model(scanned, tmp_path / 'native')
  t5x.write_t5x_checkpoint(scanned.params, tmp_path / 't5x.msgpack')
  t5x.write_t5x_tensorstore(scanned.params, tmp_path / 'ts')
  stored = t5x.read_t5x_checkpoint(str(tmp_path / 't5x.msgpack'))
  assert 'layers_2' in stored['encoder'] and 'layers' not in stored['encoder']
  from jaxpt.checkpoints.native import read_native
  assert 'layers_2' in read_native(str(tmp_path / 'native'))[1]['encoder']  # stored per layer
  for path in ('hf', 'native', 't5x.msgpack', 'ts'):
    back = jaxpt.load_model(tmp_path / path, scan_layers=False)
    assert 'layers_2' in back.params['encoder']
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(unrolled.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_frozen_bfloat16_weights(checkpoints):
  """param_dtype='bfloat16': every backbone leaf bf16, logits within bf16 tolerance, and a
  train step with bf16 frozen / f32 trainable keeps the prompt, its gradients and the
  optimizer state float32."""
  from jaxpt.methods import PROMPT_ONLY, PromptTuning, partition
  from jaxpt.prompted.base import prompted_model
  from jaxpt.train.optim import make_optimizer
  from jaxpt.train.step import init_state, make_train_step
  batch = _batch(tiny_config())
  f32 = jaxpt.load_model(checkpoints['hf'])
  for fmt in ('hf', 't5x', 'jaxpt'):
    bf16 = jaxpt.load_model(checkpoints[fmt], param_dtype='bfloat16', scan_layers=fmt == 't5x')
    assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype('bfloat16')}
    a, b = _logits(f32, batch), _logits(bf16, batch)
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    print(f'{fmt}: bf16 frozen weights, logits max |diff| / max |logit| = {rel:.2e}')
    assert rel < 3e-2

  method = PromptTuning(length=4, initializer='uniform')
  model = prompted_model(bf16.config, method)
  params = {'backbone': bf16.params, 'method': method.init(jax.random.key(1), Backbone(tiny_config(), None))}
  trainable, frozen = partition(params, PROMPT_ONLY)
  optimizer = make_optimizer('adamw', 0.01, weight_decay=0.0)
  state = init_state(trainable, optimizer)
  labelled = dict(batch, decoder_target_tokens=batch['decoder_input_tokens'],
                  decoder_loss_weights=np.ones_like(batch['decoder_input_tokens'], np.float32))
  step = jax.jit(make_train_step(model, optimizer))
  new, metrics = step(state, frozen, labelled, jax.random.key(0))
  assert bool(metrics['finite']) and int(new.step) == 1
  dtypes = {x.dtype for x in jax.tree.leaves((new.trainable, new.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype('float32')}


def test_prompt_tuning_learns_with_bfloat16_frozen_weights():
  from jaxpt.methods import PromptTuning
  start, end, accuracy = learn(PromptTuning(length=8), 0.03, 300, frozen_dtype='bfloat16')
  print(f'bf16 frozen backbone: loss {start:.2f} -> {end:.2f}, held-out accuracy {accuracy:.3f}')
  assert end < 0.3 * start
  assert accuracy >= 0.9


def test_backbone_frozen_rules():
  from jaxpt.cli.runs import _backbone_frozen, _cast_frozen
  from jaxpt.methods import EVERYTHING, PROMPT_ONLY
  assert _backbone_frozen(PROMPT_ONLY, None)
  assert not _backbone_frozen(EVERYTHING, None)
  assert not _backbone_frozen(('method/.*', 'backbone/encoder/layers_23/.*'), None)
  params = {'backbone': {'a': jnp.ones(2), 'b': jnp.ones(2)}, 'method': {'prompt': jnp.ones(2)}}
  cast = _cast_frozen(params, ('method/.*', 'backbone/a'), 'bfloat16')
  assert cast['backbone']['a'].dtype == jnp.float32
  assert cast['backbone']['b'].dtype == jnp.bfloat16
  assert cast['method']['prompt'].dtype == jnp.float32


# ---------------------------------------------------------------------- 8 devices


def _child(scenario: str, tmp: pathlib.Path) -> Dict[str, Any]:
  return run_scenario(HERE, scenario, tmp)


@pytest.fixture(scope='module')
def sharded(tmp_path_factory) -> Dict[str, Any]:
  return _child('shards', tmp_path_factory.mktemp('shards'))


@pytest.mark.parametrize('fmt', ['hf', 't5x', 't5x_msgpack', 'jaxpt'])
@pytest.mark.parametrize('scan', ['unscanned', 'scanned'])
def test_each_device_holds_only_its_shard(sharded, fmt, scan):
  got = sharded[f'{fmt}/{scan}']
  print(fmt, scan, {k: v for k, v in got.items() if k != 'leaves'})
  assert got['max_diff'] == 0.0  # equal to the unsharded load
  assert got['shards_match_sharding']  # every device's buffer has its shard's shape
  # No device holds a whole large leaf: each holds 1/8 of every leaf of >= 1024 elements.
  assert got['large_leaves'] >= 10 and got['large_leaves_whole_on_a_device'] == []
  assert got['device0_bytes'] <= got['total_bytes'] / 8 + got['replicated_bytes']
  if scan == 'scanned':
    assert got['stacked_spec'][0] is None and 'model' in got['stacked_spec']


def test_runs_backbone_uses_the_sharded_loader(sharded):
  got = sharded['runs']
  assert got['scan_layers'] and got['param_dtype'] == 'bfloat16'
  assert got['large_leaves_whole_on_a_device'] == [] and got['dtypes'] == ['bfloat16']


def _child_shards(tmp: str) -> Dict[str, Any]:
  from jaxpt import partitioning as pt
  from jaxpt.cli.runs import _backbone
  config = tiny_config()
  paths = _write_all(pathlib.Path(tmp), config)
  partitioning = pt.PartitionConfig(num_partitions=8)
  out: Dict[str, Any] = {}

  def inspect(params) -> Dict[str, Any]:
    flat = traverse_util.flatten_dict(params, sep='/')
    whole, large, match = [], 0, True
    total = device0 = replicated = 0
    dev0 = jax.devices()[0]
    for name, leaf in flat.items():
      nbytes = leaf.size * leaf.dtype.itemsize
      total += nbytes
      if leaf.sharding.is_fully_replicated:
        replicated += nbytes
      for shard in leaf.addressable_shards:
        match &= shard.data.shape == leaf.sharding.shard_shape(leaf.shape)
        if shard.device == dev0:
          device0 += shard.data.size * shard.data.dtype.itemsize
      if leaf.size >= 1024:
        large += 1
        if any(s.data.size == leaf.size for s in leaf.addressable_shards):
          whole.append(name)
    return {'shards_match_sharding': bool(match), 'large_leaves': large,
            'large_leaves_whole_on_a_device': whole, 'total_bytes': total,
            'device0_bytes': device0, 'replicated_bytes': replicated}

  for fmt, path in paths.items():
    for scan in (False, True):
      plain = jaxpt.load_model(path, scan_layers=scan)
      model = jaxpt.load_model(path, partitioning=partitioning, scan_layers=scan)
      got = inspect(model.params)
      got['max_diff'] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                            zip(jax.tree.leaves(model.params), jax.tree.leaves(plain.params)))
      if scan:
        got['stacked_spec'] = list(
            model.params['encoder']['layers']['mlp']['wi_0']['kernel'].sharding.spec)
      out[f'{fmt}/{"scanned" if scan else "unscanned"}'] = got
  run = _backbone(paths['t5x'], config.replace(scan_layers=True, remat_policy='full'), 0,
                  partitioning, 'bfloat16')
  out['runs'] = dict(inspect(run.params), scan_layers=run.config.scan_layers,
                     param_dtype=run.config.param_dtype,
                     dtypes=sorted({str(x.dtype) for x in jax.tree.leaves(run.params)}))
  return out


# ------------------------------------------------------- host memory, 4 processes


MEM_CONFIG = dict(vocab_size=8192, emb_dim=512, num_heads=8, head_dim=64, mlp_dim=2048,
                  num_encoder_layers=4, num_decoder_layers=4, logits_via_embedding=False)
MEM_PROCESSES = 4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_host_memory_while_reading_a_tensorstore_checkpoint(tmp_path):
  """4 processes x 2 CPU devices, a ('data', 'model') = (1, 8) mesh: each process reads
  only its devices' slices, and its peak RSS during the read (VmHWM after resetting it
  through /proc/self/clear_refs) stays well below the checkpoint's size."""
  if not os.path.exists('/proc/self/clear_refs'):
    pytest.skip('needs Linux /proc/self/clear_refs to reset the peak RSS')
  config = jaxpt.preset('t5_1_1', 'tiny', **MEM_CONFIG)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.standard_normal(a.shape, np.float32),
                        abstract_params(config))
  ckpt = tmp_path / 'checkpoint_0'
  t5x.write_t5x_tensorstore(params, ckpt, max_chunk_bytes=2**20)
  ckpt_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  del params
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, str(HERE), 'memory', str(ckpt), str(port), str(i)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(MEM_PROCESSES)]
  results = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=900)
    assert p.returncode == 0, f'memory child failed:\n{stdout[-3000:]}\n{stderr[-6000:]}'
    results.append(json.loads(stdout.strip().splitlines()[-1]))
  for r in results:
    print(f"process {r['process']}: checkpoint {ckpt_bytes / 2**20:.1f} MiB, addressable "
          f"shards {r['addressable_bytes'] / 2**20:.1f} MiB, peak RSS growth while reading "
          f"{r['peak_growth'] / 2**20:.1f} MiB, RSS growth kept {r['kept_growth'] / 2**20:.1f} MiB")
    assert r['global_devices'] == 8 and r['local_devices'] == 2
    assert r['addressable_bytes'] < 0.3 * ckpt_bytes
    assert r['peak_growth'] < 0.5 * ckpt_bytes


def _rss_bytes(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f'{field} not in /proc/self/status')


def _child_memory(ckpt: str, port: str, process_id: str) -> Dict[str, Any]:
  jax.distributed.initialize(f'localhost:{port}', num_processes=MEM_PROCESSES,
                             process_id=int(process_id))
  from jaxpt import partitioning as pt
  partitioning = pt.PartitionConfig(num_partitions=8)
  # Everything but the read itself first: the mesh, the shardings, tensorstore's import.
  import tensorstore  # noqa: F401
  pt.param_shardings(jaxpt.preset('t5_1_1', 'tiny', **MEM_CONFIG), partitioning.mesh(),
                     partitioning.rules())
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM (the peak RSS) to the current RSS
  before = _rss_bytes('VmRSS')
  model = jaxpt.load_model(ckpt, partitioning=partitioning)
  peak, after = _rss_bytes('VmHWM'), _rss_bytes('VmRSS')
  addressable = sum(s.data.nbytes for x in jax.tree.leaves(model.params)
                    for s in x.addressable_shards)
  return {'process': jax.process_index(), 'global_devices': jax.device_count(),
          'local_devices': jax.local_device_count(), 'addressable_bytes': addressable,
          'peak_growth': peak - before, 'kept_growth': after - before}


if __name__ == '__main__':
  scenario = sys.argv[1]
  if scenario == 'shards':
    data = _child_shards(sys.argv[2])
  else:
    data = _child_memory(*sys.argv[2:5])
  print(json.dumps(data))
