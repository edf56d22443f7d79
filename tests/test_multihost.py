"""Multi-host training with real processes on one machine (issue 15, item 5).

Two `jaxpt train` processes with 4 simulated CPU devices each join through
`jax.distributed` on 127.0.0.1 (gloo collectives) and train with pjit partitioning
over the 8 devices; a single process with 8 devices is the reference:

  * the losses (metrics.jsonl) equal the 1-process run's within 1e-5;
  * each process reads only its SeqIO shard: its rows of every global batch;
  * Orbax checkpoints are written by both processes and restored by both;
  * SIGKILL of one process makes the other exit with an error within the
    heartbeat timeout (no hang), and a restart resumes from the last checkpoint;
  * `tpu_scripts/launch.py` starts this very command (`jaxpt train ...`).
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HEARTBEAT_S = 10
"""JAXPT_HEARTBEAT_TIMEOUT of the 2-process runs: a dead peer is noticed after this long."""
EXIT_BOUND_S = 90
"""The survivor of a kill must be gone this long after the kill (heartbeat + shutdown + slack)."""
RUN_TIMEOUT_S = 240
"""No subprocess lives longer than this."""
BATCH = 8

TRAIN = ['train', '--gin_file=models/t5_1_1/tiny.gin', '--gin_file=methods/prompt_tuning.gin',
         '--gin_file=runs/train.gin', '--gin_file=partitioning/pjit.gin',
         '--gin_file=local_tiny.gin', '--gin.NUM_PARTITIONS=2',
         "--gin.MIXTURE_OR_TASK_NAME='synthetic_two_class'", f'--gin.BATCH_SIZE={BATCH}',
         '--gin.jaxpt.train.eval_every=None', '--gin.jaxpt.train.data_shards=2',
         '--gin.jaxpt.train.checkpoint_every=2', '--gin.jaxpt.train.keep_checkpoints=2',
         '--gin.jaxpt.train.log_every=1']


def jaxpt_words(model_dir: pathlib.Path, steps: int):
  """The `jaxpt train` command of every run here (what launch.py runs on each worker)."""
  return ['jaxpt'] + TRAIN + [f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_', 'JAXPT_', 'XLA_', 'TPU_', 'SLURM_', 'OMPI_'))}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')
  env.update({k: str(v) for k, v in extra.items()})
  return env


def start(words, devices: int, log: pathlib.Path, **extra) -> subprocess.Popen:
  argv = [sys.executable, '-m', 'jaxpt'] + list(words[1:])  # `jaxpt` is jaxpt.cli.main:main
  return subprocess.Popen(argv, cwd=REPO, env=_env(devices, **extra), stdout=open(log, 'w'),
                          stderr=subprocess.STDOUT, start_new_session=True)


def start_pair(words, tmp: pathlib.Path, name: str):
  """Two processes x 4 devices joined by jax.distributed on 127.0.0.1."""
  address = f'127.0.0.1:{free_port()}'
  procs, logs = [], []
  for i in range(2):
    logs.append(tmp / f'{name}_{i}.log')
    procs.append(start(words, 4, logs[-1], JAX_COORDINATOR_ADDRESS=address,
                       JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i,
                       JAXPT_HEARTBEAT_TIMEOUT=HEARTBEAT_S, JAXPT_SHUTDOWN_TIMEOUT=HEARTBEAT_S,
                       JAXPT_INITIALIZATION_TIMEOUT=120))
  return procs, logs


def kill(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    os.killpg(proc.pid, signal.SIGKILL)  # its own session: nothing else is hit
  proc.wait(timeout=30)


def finish(procs, logs, timeout=RUN_TIMEOUT_S):
  """Waits for every process (killing all on timeout); returns their exit codes."""
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    for p in procs:
      kill(p)
    pytest.fail('timed out:\n' + '\n'.join(_tail(log) for log in logs))
  return [p.returncode for p in procs]


def _tail(log: pathlib.Path, n: int = 3000) -> str:
  text = log.read_text(errors='replace') if log.exists() else ''
  return f'--- {log.name}\n{text[-n:]}'


def losses(model_dir: pathlib.Path):
  out = {}
  for line in (model_dir / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    if record.get('split') == 'train':
      out[record['step']] = record['loss']
  return out


def checkpoint_steps(model_dir: pathlib.Path):
  d = model_dir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


# ------------------------------------------------------------------------- data shards


def test_each_process_reads_only_its_rows_of_the_global_batch():
  """TrainBatches on process p of 2 = rows p*B/2..(p+1)*B/2 of the 1-process global batch."""
  pytest.importorskip('seqio')
  import tasks
  tasks.get_task('synthetic_two_class')  # registers the SeqIO tasks
  from jaxpt.data.seqio_batches import TrainBatches, process_shards

  lengths = {'inputs': 32, 'targets': 4}
  whole = TrainBatches('synthetic_two_class', lengths, BATCH, num_shards=2, process_index=0,
                       process_count=1)
  parts = [TrainBatches('synthetic_two_class', lengths, BATCH, num_shards=2, process_index=p,
                        process_count=2) for p in range(2)]
  assert [list(p.shards) for p in parts] == [[0], [1]] and list(whole.shards) == [0, 1]
  for position in (0, 3, 1):  # out of order: a resumed run seeks
    full = whole(position)
    rows = [p(position) for p in parts]
    for key, value in full.items():
      assert value.shape[0] == BATCH and rows[0][key].shape[0] == BATCH // 2
      np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), value)
    assert not np.array_equal(rows[0]['encoder_input_tokens'], rows[1]['encoder_input_tokens'])
  with pytest.raises(ValueError, match='cannot be split evenly'):
    process_shards(3, 0, 2)
  with pytest.raises(ValueError, match='batch size'):
    TrainBatches('synthetic_two_class', lengths, 6, num_shards=4, process_count=1,
                 process_index=0)


def test_distributed_init_arguments_from_the_environment():
  from jaxpt import partitioning as pt
  kwargs = pt.distributed_kwargs({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234',
                                  'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1',
                                  'JAXPT_HEARTBEAT_TIMEOUT': '7'})
  assert kwargs == {'coordinator_address': '127.0.0.1:1234', 'num_processes': 2,
                    'process_id': 1, 'heartbeat_timeout_seconds': 7,
                    'shutdown_timeout_seconds': pt.SHUTDOWN_TIMEOUT_S,
                    'initialization_timeout': pt.INITIALIZATION_TIMEOUT_S}
  assert pt.is_multihost_env({'JAX_NUM_PROCESSES': '2'})
  with pytest.raises(ValueError, match='JAX_PROCESS_ID'):
    pt.distributed_kwargs({'JAX_PROCESS_ID': 'one'})


def test_launch_script_starts_this_command(tmp_path, monkeypatch):
  """launch.py on a multi-host slice: JAXPT_MULTIHOST=1 and the `jaxpt train` words unchanged."""
  from tpu_scripts import launch
  monkeypatch.setenv('PATH', str(tmp_path))  # no gcloud is run: --dry-run
  words = jaxpt_words(tmp_path / 'run', 4)
  steps, dry = launch.build(['--project=my-proj-123', '--zone=us-central2-b', '--name=jaxpt-v4-16',
                             '--accelerator_type=v4-16', '--run_name=mh', '--dry-run', '--']
                            + words)
  [remote] = [a[len('--command='):] for a in steps[0].argv if a.startswith('--command=')]
  assert dry and 'export JAXPT_MULTIHOST=1' in remote
  assert f'setsid nohup {shlex.join(words)} >>' in remote


# ------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  """1 x 8 devices vs 2 x 4 devices; then kill one of two, the other exits; a restart resumes."""
  two = tmp_path / 'two'
  # (1) two processes, killed after their first checkpoints (the survivor must exit)
  procs, logs = start_pair(jaxpt_words(two, 10**6), tmp_path, 'killed')
  deadline = time.monotonic() + RUN_TIMEOUT_S
  try:
    while len(checkpoint_steps(two)) < 2 or 4 not in losses(two):
      if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
        pytest.fail('no checkpoint before the kill:\n' + '\n'.join(map(_tail, logs)))
      time.sleep(0.5)
  except BaseException:
    for p in procs:
      kill(p)
    raise
  text = [log.read_text() for log in logs]
  assert 'process 0 of 2 reads data shards [0]' in text[0], _tail(logs[0])
  assert 'process 1 of 2 reads data shards [1]' in text[1], _tail(logs[1])
  killed_at = time.monotonic()
  kill(procs[1])
  code = finish(procs[:1], logs[:1], timeout=EXIT_BOUND_S + 30)[0]
  exit_s = time.monotonic() - killed_at
  print(f'survivor exited {exit_s:.1f} s after the kill, status {code}')
  assert code != 0 and exit_s < EXIT_BOUND_S, _tail(logs[0])
  last = checkpoint_steps(two)[-1]
  first = losses(two)

  # (2) restart both: resume from the last checkpoint, two more steps
  procs, logs = start_pair(jaxpt_words(two, last + 2), tmp_path, 'restart')
  assert finish(procs, logs) == [0, 0], '\n'.join(map(_tail, logs))
  assert f'step {last}, data position {last})' in logs[0].read_text(), _tail(logs[0])
  resumed = losses(two)
  assert sorted(resumed) == list(range(1, last + 3))

  # (3) the reference: one process, 8 devices, same steps
  one = tmp_path / 'one'
  [ref] = [start(jaxpt_words(one, last + 2), 8, tmp_path / 'one.log')]
  assert finish([ref], [tmp_path / 'one.log']) == [0], _tail(tmp_path / 'one.log')
  expected = losses(one)
  diff = max(abs(resumed[s] - expected[s]) for s in expected)
  diff_before_kill = max(abs(first[s] - expected[s]) for s in first if s in expected)
  print(f'steps 1..{last + 2}: max |loss(2 processes) - loss(1 process)| = {diff:.2e}')
  assert diff < 1e-5 and diff_before_kill < 1e-5


# -------------------------------------------------- distillation under partitioning (item 6)


def _distillation_scenario() -> dict:
  """MPT with distillation from stacked teachers: 1 device vs 8 devices partitioned."""
  import jax
  from jax.sharding import NamedSharding

  from jaxpt.data.toy import multi_task_batch
  from jaxpt.methods import Backbone, MultitaskPromptTuning
  from jaxpt.methods.multitask import stack_teachers
  from jaxpt.models.config import preset
  from jaxpt.models.t5 import init_params
  from jaxpt.partitioning import PartitionConfig, params_shardings
  from jaxpt.prompted.base import prompted_model
  from jaxpt.train.distill import Distillation
  from jaxpt.train.loop import train
  from jaxpt.train.optim import make_optimizer

  assert jax.device_count() == 8
  config = preset('t5_1_1', 'tiny', vocab_size=64, num_heads=4, head_dim=8, mlp_dim=32,
                  emb_dim=16)
  backbone = init_params(config, jax.random.key(0))
  method = MultitaskPromptTuning(length=4, num_tasks=4, rank=1, initializer='uniform')
  params = method.init(jax.random.key(1), Backbone(config, backbone['token_embedder']['embedding']))
  teacher, teacher_params = stack_teachers(
      [np.asarray(jax.random.uniform(jax.random.key(10 + k), (4, 16))) for k in range(4)])
  model = prompted_model(config, method)
  distill = Distillation(teacher, kl_weight=0.5, hidden_weight=1.0)
  batches = lambda k: multi_task_batch(8, seed=k, num_tasks=4, length=6)[0]

  def run(partitioning):
    result = train(model, backbone, params, batches,
                   optimizer=make_optimizer('adamw', 1e-2, weight_decay=0.0), num_steps=3,
                   rng=jax.random.key(0), print_fn=None, log_every=1,
                   distillation=distill, teacher_params=teacher_params,
                   partitioning=partitioning)
    rows = [h for h in result.history if h['split'] == 'train']
    return {k: [h[k] for h in rows] for k in ('loss', 'kl', 'hidden_mse', 'task_loss')}, result

  plain, _ = run(None)
  out = {'plain': plain}
  for partitions in (1, 2, 4):
    got, result = run(PartitionConfig(num_partitions=partitions))
    config_ = PartitionConfig(num_partitions=partitions)
    expected = params_shardings(config, {'backbone': backbone, 'method': params,
                                         'teacher': teacher_params},
                                config_.mesh(), config_.rules())['teacher']
    where = jax.tree.map(lambda x, s: isinstance(x.sharding, NamedSharding)
                         and x.sharding.spec == s.spec and len(x.sharding.device_set) == 8,
                         result.params['teacher'], expected)
    out[f'model={partitions}'] = dict(got, teacher_placed=all(jax.tree.leaves(where)))
  return out


@pytest.fixture(scope='module')
def distillation():
  env = _env(8)
  out = subprocess.run([sys.executable, str(pathlib.Path(__file__)), 'distillation'], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, f'{out.stdout[-3000:]}\n{out.stderr[-6000:]}'
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_distillation_under_partitioning_equals_one_device(distillation):
  plain = distillation.pop('plain')
  assert plain['kl'][0] > 0 and plain['hidden_mse'][0] > 0
  for name, got in distillation.items():
    assert got.pop('teacher_placed'), name  # sharded like method params, over 8 devices
    for key in ('loss', 'kl', 'hidden_mse', 'task_loss'):
      np.testing.assert_allclose(got[key], plain[key], rtol=0, atol=1e-5, err_msg=f'{name} {key}')
  diff = max(abs(a - b) for got in distillation.values() for key in got
             for a, b in zip(got[key], plain[key]))
  print(f'distillation: max |partitioned - one device| over loss, kl, hidden_mse, task_loss = '
        f'{diff:.2e}')


if __name__ == '__main__':
  if sys.argv[1:] == ['distillation']:
    print(json.dumps(_distillation_scenario()))
