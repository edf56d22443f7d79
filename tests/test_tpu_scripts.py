"""tpu_scripts/: the gcloud commands they build, their input checks and --dry-run.

Nothing here reaches Google Cloud: a fake runner records what would run.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from tpu_scripts import common, create, delete, fetch_logs, gpu, install, launch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
WHERE = ['--project=my-proj-123', '--zone=us-central2-b', '--name=jaxpt-v4-32']
GCLOUD = ['gcloud', 'compute', 'tpus', 'tpu-vm']


class FakeRunner:
  """Records argv lists instead of running them; fails the command number `fail_at`."""

  def __init__(self, fail_at=None, code=3):
    self.calls, self.fail_at, self.code = [], fail_at, code

  def __call__(self, argv, **kwargs):
    self.calls.append((list(argv), kwargs))
    code = self.code if len(self.calls) == self.fail_at else 0
    return subprocess.CompletedProcess(argv, code)


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
  """A PATH holding only a `gcloud` that must never run (the runner is faked)."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for tool in ('gcloud', 'tar', 'nvidia-smi'):
    exe = bin_dir / tool
    exe.write_text('#!/bin/sh\necho "must not run" >&2\nexit 99\n')
    exe.chmod(0o755)
  monkeypatch.setenv('PATH', str(bin_dir))
  return bin_dir


def _remote(argv):
  """The --command= of a `tpu-vm ssh` argv."""
  [cmd] = [a[len('--command='):] for a in argv if a.startswith('--command=')]
  return cmd


def _error(capsys, module, argv, runner=None):
  runner = runner or FakeRunner()
  code = module.main(argv, runner=runner)
  err = capsys.readouterr().err
  assert code != 0 and runner.calls == []
  assert err.count('\n') == 1, err  # one line
  return code, err


# ------------------------------------------------------------------ input checks

@pytest.mark.parametrize('accel, words', [
    ('v4-30', 'multiple of 8'), ('v9-8', 'unknown TPU family'), ('v5e-16', 'v5litepod-16'),
    ('tpu-v4-32', 'FAMILY-SIZE'), ('v3-12', 'power of two'), ('v5litepod-2', 'one of'),
    ('', 'missing --accelerator_type'),
])
def test_bad_accelerator_type_is_one_line_error(capsys, fake_gcloud, accel, words):
  code, err = _error(capsys, create, WHERE + [f'--accelerator_type={accel}'])
  assert code == 2 and words in err and err.startswith('create.py: error:')


@pytest.mark.parametrize('argv, words', [
    (['--zone=us-central2-b', '--name=t'], 'missing --project'),
    (['--project=My_Proj', '--zone=us-central2-b', '--name=t'], 'bad --project'),
    (['--project=my-proj', '--zone=us-central2', '--name=t'], 'bad --zone'),
    (['--project=my-proj', '--zone=us central2-b', '--name=t'], 'bad --zone'),
    (['--project=my-proj', '--name=t'], 'missing --zone'),
    (['--project=my-proj', '--zone=us-central2-b'], 'missing --name'),
    (['--project=my-proj', '--zone=us-central2-b', '--name=Bad_Name'], 'bad --name'),
])
def test_bad_project_zone_name(capsys, fake_gcloud, argv, words):
  for module, extra in ((create, ['--accelerator_type=v4-32']), (delete, [])):
    code, err = _error(capsys, module, argv + extra)
    assert code == 2 and words in err


def test_unknown_flag_and_mutually_exclusive_flags_are_one_line(capsys, fake_gcloud):
  _error(capsys, create, WHERE + ['--accelerator_type=v4-32', '--spot', '--preemptible'])
  _error(capsys, create, WHERE + ['--accelerator_type=v4-32', '--bogus'])


def test_accelerator_families_and_worker_counts():
  assert common.num_workers('v3-8') == 1
  assert common.num_workers('v4-8') == 1
  assert common.num_workers('v4-32') == 4
  assert common.num_workers('v5p-128') == 16
  assert common.num_workers('v5litepod-8') == 1
  assert common.num_workers('v5litepod-16') == 4
  assert common.num_workers('v6e-256') == 64
  assert common.default_runtime('v4-32') == 'tpu-ubuntu2204-base'
  assert common.default_runtime('v5litepod-16') == 'v2-alpha-tpuv5-lite'
  assert common.default_runtime('v5p-8') == 'v2-alpha-tpuv5'
  assert common.default_runtime('v6e-8') == 'v2-alpha-tpuv6e'


def test_gcloud_missing_is_a_clear_error(capsys, tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))  # nothing on PATH
  code, err = _error(capsys, create, WHERE + ['--accelerator_type=v4-32'])
  assert code == 2 and "'gcloud' not found on PATH" in err and 'install the Google Cloud CLI' in err
  # ...but --dry-run needs no gcloud
  runner = FakeRunner()
  assert create.main(WHERE + ['--accelerator_type=v4-32', '--dry-run'], runner=runner) == 0
  assert runner.calls == []


# ------------------------------------------------------------------ the commands, v4-32 pod

def test_create_v4_32_spot(capsys, fake_gcloud):
  runner = FakeRunner()
  assert create.main(WHERE + ['--accelerator_type=v4-32', '--spot'], runner=runner) == 0
  assert [c for c, _ in runner.calls] == [GCLOUD + [
      'create', 'jaxpt-v4-32', '--project=my-proj-123', '--zone=us-central2-b',
      '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base', '--spot']]
  out = capsys.readouterr().out
  assert '4 worker VM(s)' in out
  assert '+ gcloud compute tpus tpu-vm create jaxpt-v4-32 --project=my-proj-123' in out


def test_create_runtime_override_and_v5e_default(fake_gcloud):
  steps, _ = create.build(WHERE + ['--accelerator_type=v5litepod-16', '--preemptible'])
  assert '--version=v2-alpha-tpuv5-lite' in steps[0].argv and '--preemptible' in steps[0].argv
  steps, _ = create.build(WHERE + ['--accelerator_type=v4-8', '--runtime_version=tpu-vm-v4-base'])
  assert '--version=tpu-vm-v4-base' in steps[0].argv


def test_install_from_git_on_every_worker(fake_gcloud):
  steps, dry = install.build(WHERE + ['--repo_url=https://github.com/me/jaxpt.git',
                                      '--branch=main'])
  assert not dry and len(steps) == 2
  for step in steps:
    assert step.argv[:6] == GCLOUD + ['ssh', 'jaxpt-v4-32']
    assert step.argv[6:9] == ['--project=my-proj-123', '--zone=us-central2-b', '--worker=all']
  clone, pip = _remote(steps[0].argv), _remote(steps[1].argv)
  assert ('git clone --depth 1 --branch main https://github.com/me/jaxpt.git "$HOME"/jaxpt'
          in clone)
  assert 'git -C "$HOME"/jaxpt fetch --depth 1 origin main' in clone
  assert "python3 -m pip install -e '.[tpu,tasks]'" in pip
  assert pip.startswith('cd "$HOME"/jaxpt && ')


def test_install_copies_the_working_tree(fake_gcloud):
  steps, _ = install.build(WHERE + ['--local_path', '--venv=venvs/jx'])
  tar, scp, untar, rm, pip = (s.argv for s in steps)
  assert tar[:3] == ['tar', '-czf', tar[2]] and tar[-3:] == ['-C', str(REPO_ROOT), '.']
  assert '--exclude=.venv' in tar and '--exclude=.git' in tar
  assert scp == GCLOUD + ['scp', tar[2], 'jaxpt-v4-32:jaxpt-src.tar.gz', '--project=my-proj-123',
                          '--zone=us-central2-b', '--worker=all']
  assert '--worker=all' in untar and 'tar -xzf "$HOME"/jaxpt-src.tar.gz -C "$HOME"/jaxpt' in \
      _remote(untar)
  assert rm == ['rm', '-f', tar[2]]
  assert _remote(pip).startswith('python3 -m venv "$HOME"/venvs/jx && ')
  assert '"$HOME"/venvs/jx/bin/python -m pip install -e' in _remote(pip)


def test_install_input_checks(capsys, fake_gcloud, tmp_path):
  _, err = _error(capsys, install, WHERE)
  assert '--repo_url' in err and '--local_path' in err
  _, err = _error(capsys, install, WHERE + [f'--local_path={tmp_path}'])
  assert 'not a jaxpt checkout' in err
  _, err = _error(capsys, install, WHERE + ['--repo_url=x', '--remote_dir=a b'])
  assert 'bad --remote_dir' in err
  _, err = _error(capsys, install, WHERE + ['--repo_url=x', '--extras=tpu;rm -rf /'])
  assert 'bad --extras' in err


JAXPT_CMD = ['jaxpt', 'train', '--gin_file=models/lm_adapt/base.gin',
             '--gin_file=methods/prompt_tuning.gin', '--gin_file=runs/train.gin',
             "--gin.MODEL_DIR='gs://bucket/runs/rte'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 8}"]
ENV = ['--env', 'JAXPT_DATA_DIR=/data/super glue', '--env', "JAXPT_VOCAB=gs://b/v.model;$(x)'"]


def test_launch_runs_the_jaxpt_command_on_all_workers(fake_gcloud):
  steps, _ = launch.build(WHERE + ENV + ['--run_name=rte', '--'] + JAXPT_CMD)
  [step] = steps
  assert step.argv[:9] == GCLOUD + ['ssh', 'jaxpt-v4-32', '--project=my-proj-123',
                                    '--zone=us-central2-b', '--worker=all']
  remote = _remote(step.argv)
  # the exports and the command are quoted for the remote shell, word for word
  assert "export JAXPT_DATA_DIR='/data/super glue'" in remote
  assert "export JAXPT_VOCAB=" + shlex.quote("gs://b/v.model;$(x)'") in remote
  assert f'setsid nohup {shlex.join(JAXPT_CMD)} >> "$HOME"/jaxpt_logs/rte.log 2>&1' in remote
  assert remote.index('export JAXPT_DATA_DIR') < remote.index('setsid nohup')
  assert 'cd "$HOME"/jaxpt' in remote and '&;' not in remote
  assert 'JAXPT_MULTIHOST' not in remote
  steps, _ = launch.build(WHERE + ['--accelerator_type=v4-32', '--'] + JAXPT_CMD)
  assert 'export JAXPT_MULTIHOST=1' in _remote(steps[0].argv)
  steps, _ = launch.build(WHERE + ['--accelerator_type=v4-8', '--'] + JAXPT_CMD)
  assert 'JAXPT_MULTIHOST' not in _remote(steps[0].argv)


def test_launch_accepts_a_bare_subcommand_and_tmux(fake_gcloud):
  steps, _ = launch.build(WHERE + ['--tmux', '--run_name=r1', '--', 'eval', '--gin.X=1'])
  remote = _remote(steps[0].argv)
  assert "tmux new-session -d -s r1 'jaxpt eval --gin.X=1 2>&1 | tee -a" in remote


@pytest.mark.parametrize('argv, words', [
    (WHERE, 'give the jaxpt command after --'),
    (WHERE + ['--', 'rm', '-rf', '/'], 'must be `jaxpt SUBCOMMAND'),
    (WHERE + ['--env', 'NOEQUALS', '--', 'jaxpt', 'train'], 'bad --env'),
    (WHERE + ['--env', '1X=2', '--', 'jaxpt', 'train'], 'bad --env'),
    (WHERE + ['--run_name=a b', '--', 'jaxpt', 'train'], 'bad --run_name'),
    (WHERE + ['--stop', '--', 'jaxpt', 'train'], '--stop takes no command'),
    (['--project=p', '--zone=us-central2-b', '--name=t', '--', 'jaxpt', 'train'], 'bad --project'),
])
def test_launch_input_checks(capsys, fake_gcloud, argv, words):
  _, err = _error(capsys, launch, argv)
  assert words in err


@pytest.mark.skipif(not (shutil.which('bash') and shutil.which('setsid')),
                    reason='needs bash and setsid')
def test_launch_remote_command_really_runs_in_a_shell(tmp_path):
  """The --command= string, run by bash with a fake `jaxpt`: same argv, same env."""
  home = tmp_path / 'home'
  (home / '.local' / 'bin').mkdir(parents=True)
  (home / 'jaxpt').mkdir()
  fake = home / '.local' / 'bin' / 'jaxpt'
  fake.write_text(f'#!{sys.executable}\nimport json, os, sys, time\n'
                  'print(json.dumps([sys.argv[1:], os.environ["JAXPT_DATA_DIR"], '
                  'os.environ["JAXPT_VOCAB"], os.getcwd()]), flush=True)\n'
                  'time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))\n')
  fake.chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH='/usr/bin:/bin')
  steps, _ = launch.build(WHERE + ENV + ['--env', 'FAKE_SLEEP=30', '--run_name=rte',
                                         '--dry-run', '--'] + JAXPT_CMD)
  proc = subprocess.run(['bash', '-c', _remote(steps[0].argv)], env=env, capture_output=True,
                        text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert 'started pid' in proc.stdout
  log = home / 'jaxpt_logs' / 'rte.log'
  import json
  deadline = time.time() + 20
  while time.time() < deadline and '[' not in log.read_text():
    time.sleep(0.05)
  argv, data, vocab, cwd = json.loads(log.read_text().splitlines()[-1])
  assert argv == JAXPT_CMD[1:]
  assert (data, vocab, cwd) == ('/data/super glue', "gs://b/v.model;$(x)'", str(home / 'jaxpt'))
  # a second launch refuses while the first still runs; --stop ends it
  again = subprocess.run(['bash', '-c', _remote(steps[0].argv)], env=env, capture_output=True,
                         text=True, timeout=30)
  assert again.returncode == 1 and 'still running' in again.stderr
  stop, _ = launch.build(WHERE + ['--stop', '--dry-run'])
  done = subprocess.run(['bash', '-c', _remote(stop[0].argv)], env=env, capture_output=True,
                        text=True, timeout=30)
  assert done.returncode == 0 and 'stopped pid' in done.stdout


def test_fetch_logs_from_each_worker_of_a_v4_32(fake_gcloud):
  steps, _ = fetch_logs.build(WHERE + ['--accelerator_type=v4-32', '--run_name=rte',
                                       '--model_dir=runs/rte', '--dest=out'])
  argvs = [s.argv for s in steps]
  assert argvs[0] == ['mkdir', '-p'] + [f'out/worker-{w}' for w in range(4)]
  for w in range(4):
    assert argvs[1 + w] == GCLOUD + ['scp', 'jaxpt-v4-32:jaxpt_logs/rte.log', f'out/worker-{w}/',
                                     '--project=my-proj-123', '--zone=us-central2-b',
                                     f'--worker={w}']
  assert argvs[5] == GCLOUD + ['scp', 'jaxpt-v4-32:jaxpt/runs/rte/metrics.jsonl',
                               'out/metrics.jsonl', '--project=my-proj-123',
                               '--zone=us-central2-b', '--worker=0']
  steps, _ = fetch_logs.build(WHERE + ['--num_workers=1', '--model_dir=gs://b/r/'])
  assert steps[1].argv[-1] == '--recurse'
  assert steps[-1].argv == ['gcloud', 'storage', 'cp', 'gs://b/r/metrics.jsonl',
                            'runs/tpu_logs/jaxpt-v4-32/metrics.jsonl', '--project=my-proj-123']


def test_fetch_logs_needs_the_worker_count(capsys, fake_gcloud):
  _, err = _error(capsys, fetch_logs, WHERE)
  assert '--accelerator_type' in err and '--num_workers' in err


def test_delete(fake_gcloud):
  steps, _ = delete.build(WHERE + ['--yes'])
  assert steps[0].argv == GCLOUD + ['delete', 'jaxpt-v4-32', '--project=my-proj-123',
                                    '--zone=us-central2-b', '--quiet']


# ------------------------------------------------------------------ dry run, failures

@pytest.mark.parametrize('module, argv', [
    (create, WHERE + ['--accelerator_type=v4-32']),
    (install, WHERE + ['--local_path']),
    (install, WHERE + ['--repo_url=https://x/y.git']),
    (launch, WHERE + ['--env', 'A=b c', '--', 'jaxpt', 'train']),
    (fetch_logs, WHERE + ['--accelerator_type=v4-32']),
    (delete, WHERE),
    (gpu, ['--', 'jaxpt', 'train', '--gin_file=models/t5_1_1/tiny.gin']),
])
def test_dry_run_prints_and_runs_nothing(capsys, monkeypatch, tmp_path, module, argv):
  monkeypatch.setenv('PATH', str(tmp_path))  # no gcloud, tar or nvidia-smi needed
  def boom(*a, **k):
    raise AssertionError('ran a command in --dry-run')
  monkeypatch.setattr(subprocess, 'run', boom)
  monkeypatch.setattr(subprocess, 'Popen', boom)
  runner = FakeRunner()
  cut = argv.index('--') if '--' in argv else len(argv)
  dry = argv[:cut] + ['--dry-run'] + argv[cut:]
  assert module.main(dry, runner=runner) == 0
  assert runner.calls == []
  out = capsys.readouterr().out
  steps, dry_run = module.build(dry)
  assert dry_run
  for step in steps:  # exactly the commands it would run
    assert step.shell() in out.splitlines()
  assert 'none run' in out


def test_a_failing_step_stops_with_its_exit_status(capsys, fake_gcloud):
  runner = FakeRunner(fail_at=1, code=7)
  assert install.main(WHERE + ['--repo_url=https://x/y.git'], runner=runner) == 7
  assert len(runner.calls) == 1
  assert 'command failed with exit status 7' in capsys.readouterr().err


# ------------------------------------------------------------------ one GPU

def test_gpu_recipe(fake_gcloud, tmp_path):
  steps, _ = gpu.build(['--venv', str(tmp_path / 'venv'), '--env', 'JAXPT_DATA_DIR=/d', '--',
                        'jaxpt', 'train', '--gin_file=models/t5_1_1/tiny.gin'])
  argvs = [s.argv for s in steps]
  py = str(tmp_path / 'venv' / 'bin' / 'python')
  assert argvs[0][0] == 'nvidia-smi'
  assert argvs[1][1:] == ['-m', 'venv', str(tmp_path / 'venv')]
  assert argvs[3] == [py, '-m', 'pip', 'install', '-e', '.[cuda,tasks]']
  assert steps[3].cwd == str(REPO_ROOT)
  assert argvs[4][:2] == [py, '-c']
  assert argvs[5] == [str(tmp_path / 'venv' / 'bin' / 'jaxpt'), 'train',
                      '--gin_file=models/t5_1_1/tiny.gin',
                      '--gin_file=tpu_scripts/gpu_single.gin']
  assert steps[5].env == {'JAXPT_DATA_DIR': '/d'}


def test_gpu_needs_nvidia_smi(capsys, tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))
  _, err = _error(capsys, gpu, ['--', 'jaxpt', 'train'])
  assert "'nvidia-smi' not found" in err


def test_gpu_overlay_is_valid_gin():
  code = ('from jaxpt.cli import gin_flags; import gin; gin_flags.parse(['
          '"models/lm_adapt/base.gin", "methods/prompt_tuning.gin", "runs/train.gin", '
          '"tpu_scripts/gpu_single.gin"], ["MODEL_DIR=\'x\'", "MIXTURE_OR_TASK_NAME=\'y\'"]); '
          'print(gin.query_parameter("jaxpt.preset.dtype"))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().endswith('bfloat16')


# ------------------------------------------------------------------ runnable as files

@pytest.mark.parametrize('script', ['create.py', 'install.py', 'launch.py', 'fetch_logs.py',
                                    'delete.py', 'gpu.py'])
def test_scripts_run_as_files(script):
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tpu_scripts' / script), '--help'],
                        capture_output=True, text=True, timeout=60, cwd='/')
  assert proc.returncode == 0 and '--dry-run' in proc.stdout, proc.stderr
