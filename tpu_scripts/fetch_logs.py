#!/usr/bin/env python3
"""Copies the launch logs back from every worker (and optionally MODEL_DIR/metrics.jsonl).

  python tpu_scripts/fetch_logs.py --project=my-proj --zone=us-central2-b --name=jaxpt-v4-32 \
      --accelerator_type=v4-32 [--run_name=rte] [--model_dir=runs/rte] [--dest=DIR]

Logs land in DEST/worker-N/ (default DEST: runs/tpu_logs/NAME, git-ignored). Without
--run_name the whole log directory comes back. --model_dir: a gs:// MODEL_DIR is read with
`gcloud storage cp`; a path on the workers is read from worker 0 (relative paths are inside
--remote_dir, where launch.py runs jaxpt). The worker count comes from --accelerator_type or
--num_workers.
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as `python tpu_scripts/fetch_logs.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tpu_scripts import common  # noqa: E402

_RUN_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$')
METRICS = 'metrics.jsonl'


def build(argv: Sequence[str]) -> Tuple[List[common.Step], bool]:
  p = common.make_parser('fetch_logs.py', 'Copy jaxpt logs back from every TPU worker.')
  n = p.add_mutually_exclusive_group()
  n.add_argument('--accelerator_type', '--accelerator-type', dest='accelerator_type',
                 help='the slice type, e.g. v4-32 (gives the worker count)')
  n.add_argument('--num_workers', '--num-workers', dest='num_workers', type=int,
                 help='the number of worker VMs')
  p.add_argument('--run_name', '--run-name', dest='run_name',
                 help='fetch only RUN_NAME.log (default: the whole log directory)')
  p.add_argument('--log_dir', '--log-dir', dest='log_dir', default=common.DEFAULT_LOG_DIR,
                 help='log directory on each worker, relative to $HOME (default: %(default)s)')
  p.add_argument('--remote_dir', '--remote-dir', dest='remote_dir',
                 default=common.DEFAULT_REMOTE_DIR,
                 help='the jaxpt checkout on each worker (default: %(default)s)')
  p.add_argument('--model_dir', '--model-dir', dest='model_dir',
                 help='MODEL_DIR of the run: also fetch its metrics.jsonl')
  p.add_argument('--dest', help='local directory (default: runs/tpu_logs/NAME)')
  args = p.parse_args(argv)
  common.check_tpu_args(args)
  if args.accelerator_type:
    workers = common.num_workers(args.accelerator_type)
  elif args.num_workers is not None:
    if args.num_workers < 1:
      raise common.ScriptError(f'bad --num_workers {args.num_workers}: at least 1')
    workers = args.num_workers
  else:
    raise common.ScriptError('give --accelerator_type (e.g. v4-32) or --num_workers, to know '
                             'how many workers to fetch from')
  if args.run_name and not _RUN_RE.match(args.run_name):
    raise common.ScriptError(f'bad --run_name {args.run_name!r}')
  common.check_remote_path(args.log_dir, '--log_dir')
  common.check_remote_path(args.remote_dir, '--remote_dir')
  dest = args.dest or os.path.join('runs', 'tpu_logs', args.name)
  dirs = [os.path.join(dest, f'worker-{w}') for w in range(workers)]
  steps = [common.Step(['mkdir', '-p'] + dirs)]
  for w, local in enumerate(dirs):
    if args.run_name:
      src = f'{args.name}:{args.log_dir}/{args.run_name}.log'
      steps.append(common.Step(common.scp(args, src, local + '/', worker=str(w))))
    else:
      src = f'{args.name}:{args.log_dir}'
      steps.append(common.Step(common.scp(args, src, local + '/', worker=str(w),
                                          recurse=True)))
  if args.model_dir:
    md = args.model_dir.rstrip('/')
    if md.startswith('gs://'):
      steps.append(common.Step([args.gcloud, 'storage', 'cp', f'{md}/{METRICS}',
                                os.path.join(dest, METRICS), f'--project={args.project}']))
    else:
      common.check_remote_path(md, '--model_dir')
      remote = md if md.startswith('/') else f'{args.remote_dir}/{md}'
      steps.append(common.Step(common.scp(args, f'{args.name}:{remote}/{METRICS}',
                                          os.path.join(dest, METRICS), worker='0')))
  return steps, args.dry_run


def main(argv: Optional[Sequence[str]] = None, runner=None) -> int:
  return common.main_wrapper('fetch_logs.py', build, argv, runner)


if __name__ == '__main__':
  sys.exit(main())
