#!/usr/bin/env python3
"""Runs the same `jaxpt` command on every worker of a TPU VM / pod slice, in the background.

  python tpu_scripts/launch.py --project=my-proj --zone=us-central2-b --name=jaxpt-v4-32 \
      --env JAXPT_DATA_DIR=/data --run_name=rte -- \
      jaxpt train --gin_file=models/lm_adapt/base.gin --gin_file=methods/prompt_tuning.gin \
      --gin_file=runs/train.gin --gin.MODEL_DIR="'gs://my-bucket/runs/rte'" \
      --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_local'"

Everything after `--` is the jaxpt command, passed word for word (quoted for the remote
shell). Each worker runs it from the checkout (--remote_dir) under `setsid nohup` (or in a
detached tmux session with --tmux), output to ~/jaxpt_logs/RUN_NAME.log, pid to RUN_NAME.pid.
Multi-host setup is jaxpt's job: `jax.distributed.initialize()` reads the TPU environment,
so every worker just runs the same command at the same time (add --gin_file=partitioning/
pjit.gin or a partitioning/xxl_*.gin). Outside a TPU pod, give each process
--env JAX_COORDINATOR_ADDRESS=host:port --env JAX_NUM_PROCESSES=N --env JAX_PROCESS_ID=i
(tests/test_multihost.py runs 2 such processes on one machine). When a worker dies the
others exit with an error after JAXPT_HEARTBEAT_TIMEOUT seconds (default 60); restart the
same command to resume from the last checkpoint.

  --stop             stops the run started last (or --run_name) on every worker
  --force            starts even if the previous run still holds the TPU
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sys
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as `python tpu_scripts/launch.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tpu_scripts import common  # noqa: E402

_RUN_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$')
_WORKER_RE = re.compile(r'^(all|[0-9]+(,[0-9]+)*)$')
CURRENT = 'current'   # LOG_DIR/current.pid: the run started last on this worker


def env_setup(args) -> List[str]:
  """Remote shell lines: PATH for pip's user scripts (or the venv), then the --env exports."""
  lines = ['export PATH="$HOME/.local/bin:$PATH"']
  if args.venv:
    lines.append(f'export PATH={common.home_path(args.venv.rstrip("/") + "/bin")}:"$PATH"')
  env = common.parse_env(args.env)
  if args.accelerator_type and common.num_workers(args.accelerator_type) > 1 and \
      'JAXPT_MULTIHOST' not in dict(env):
    env.insert(0, ('JAXPT_MULTIHOST', '1'))  # jaxpt then calls jax.distributed.initialize()
  lines += [f'export {k}={shlex.quote(v)}' for k, v in env]
  return lines


def remote_start(args, command: List[str]) -> str:
  """The shell command every worker runs to start `command` in the background."""
  logdir = common.home_path(args.log_dir)
  log = common.home_path(f'{args.log_dir}/{args.run_name}.log')
  pid = common.home_path(f'{args.log_dir}/{args.run_name}.pid')
  current = common.home_path(f'{args.log_dir}/{CURRENT}.pid')
  shown = f'~/{args.log_dir}/{args.run_name}.log'  # for messages (paths are validated)
  if args.log_dir.startswith('/'):
    shown = f'{args.log_dir}/{args.run_name}.log'
  cmd = shlex.join(command)
  lines = ['set -e', f'mkdir -p {logdir}']
  if not args.force:
    lines.append(f'if [ -f {current} ] && kill -0 "$(cat {current})" 2>/dev/null; then '
                 f'echo "$(hostname): a jaxpt run is still running (pid $(cat {current})); '
                 f'stop it with launch.py --stop or pass --force" >&2; exit 1; fi')
  lines += [f'cd {common.home_path(args.remote_dir)}'] + env_setup(args)
  lines.append(f'echo "# $(date -u +%FT%TZ) $(hostname): run {args.run_name}" > {log}')
  if args.tmux:
    inner = f'{cmd} 2>&1 | tee -a {log}'
    lines.append(f'tmux new-session -d -s {shlex.quote(args.run_name)} {shlex.quote(inner)}')
    lines.append(f'echo "$(hostname): started in tmux session {args.run_name}, log {shown}"')
  else:
    lines.append(f'setsid nohup {cmd} >> {log} 2>&1 < /dev/null &')
    lines.append(f'echo $! > {pid}')
    lines.append(f'cp {pid} {current}')
    lines.append(f'echo "$(hostname): started pid $(cat {pid}), log {shown}"')
  return join_lines(lines)


def join_lines(lines: Sequence[str]) -> str:
  """One shell line: `a; b`, except after a line that ends with `&` (`a & b`)."""
  out = ''
  for line in lines:
    if out:
      out += ' ' if out.endswith('&') else '; '
    out += line
  return out


def remote_stop(args) -> str:
  if args.tmux:
    return f'tmux kill-session -t {shlex.quote(args.run_name)}'
  name = args.run_name if args.run_name_given else CURRENT
  pid = common.home_path(f'{args.log_dir}/{name}.pid')
  shown = f'{args.log_dir}/{name}.pid'
  # setsid made the run a process-group leader: signal the whole group.
  return (f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then '
          f'kill -- -"$(cat {pid})" && echo "$(hostname): stopped pid $(cat {pid})"; '
          f'else echo "$(hostname): nothing running ({shown})"; fi')


def build(argv: Sequence[str]) -> Tuple[List[common.Step], bool]:
  flags, words = common.split_command(argv)
  p = common.make_parser('launch.py', 'Run a jaxpt command on every TPU worker '
                         '(everything after -- is the command).')
  p.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                 help='exported on every worker before the command (repeatable), e.g. '
                 'JAXPT_DATA_DIR=/data JAXPT_VOCAB=gs://.../spiece.model')
  p.add_argument('--run_name', '--run-name', dest='run_name',
                 help='names the log (default: jaxpt-UTC timestamp)')
  p.add_argument('--remote_dir', '--remote-dir', dest='remote_dir',
                 default=common.DEFAULT_REMOTE_DIR,
                 help='the jaxpt checkout on each worker, relative to $HOME (default: '
                 '%(default)s)')
  p.add_argument('--log_dir', '--log-dir', dest='log_dir', default=common.DEFAULT_LOG_DIR,
                 help='log directory on each worker, relative to $HOME (default: %(default)s)')
  p.add_argument('--venv', help='virtualenv on the workers (as given to install.py --venv)')
  p.add_argument('--accelerator_type', '--accelerator-type', dest='accelerator_type',
                 help='the slice type (e.g. v4-32): a multi-host slice exports '
                 'JAXPT_MULTIHOST=1 so jaxpt surely calls jax.distributed.initialize()')
  p.add_argument('--worker', default='all', help='all (default) or e.g. 0 or 0,1')
  p.add_argument('--tmux', action='store_true', help='run in a detached tmux session named '
                 'RUN_NAME instead of setsid nohup')
  p.add_argument('--force', action='store_true',
                 help='start even if the previous run is still alive')
  p.add_argument('--stop', action='store_true',
                 help='stop the last run (or --run_name) on every worker; no command')
  args = p.parse_args(flags)
  common.check_tpu_args(args)
  args.run_name_given = bool(args.run_name)
  if not args.run_name:
    args.run_name = 'jaxpt-' + datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y%m%d-%H%M%S')
  if not _RUN_RE.match(args.run_name) or args.run_name == CURRENT:
    raise common.ScriptError(f'bad --run_name {args.run_name!r}: letters, digits, . _ - '
                             f'(and not {CURRENT!r})')
  if not _WORKER_RE.match(args.worker):
    raise common.ScriptError(f'bad --worker {args.worker!r}: all, or worker numbers like 0,1')
  common.check_remote_path(args.remote_dir, '--remote_dir')
  common.check_remote_path(args.log_dir, '--log_dir')
  if args.venv:
    common.check_remote_path(args.venv, '--venv')
  common.parse_env(args.env)
  if args.accelerator_type:
    common.parse_accelerator(args.accelerator_type)
  if args.stop:
    if words:
      raise common.ScriptError('--stop takes no command after --')
    if args.tmux and not args.run_name_given:
      raise common.ScriptError('--stop --tmux needs --run_name (the tmux session)')
    return [common.Step(common.ssh(args, remote_stop(args), args.worker))], args.dry_run
  command = common.jaxpt_command(words)
  step = common.Step(common.ssh(args, remote_start(args, command), args.worker))
  print(f'# run {args.run_name}: log ~/{args.log_dir}/{args.run_name}.log on each worker; '
        f'fetch with fetch_logs.py --run_name={args.run_name}', flush=True)
  return [step], args.dry_run


def main(argv: Optional[Sequence[str]] = None, runner=None) -> int:
  return common.main_wrapper('launch.py', build, argv, runner)


if __name__ == '__main__':
  sys.exit(main())
