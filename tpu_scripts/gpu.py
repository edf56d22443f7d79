#!/usr/bin/env python3
"""The one-machine GPU recipe: a virtualenv with jax[cuda13], then `jaxpt` on the GPU.

  python3 tpu_scripts/gpu.py --env JAXPT_DATA_DIR=../shared/data -- \
      jaxpt train --gin_file=models/lm_adapt/base.gin --gin_file=methods/prompt_tuning.gin \
      --gin_file=runs/train.gin --gin.MODEL_DIR="'runs/rte'" \
      --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_local'"

Steps: check `nvidia-smi` (the NVIDIA driver), create the venv (default .venv) if it is
missing, `pip install -e '.[cuda,tasks]'` (skip with --skip_install), check that JAX sees a
GPU, then run the command in the foreground from the repository root with the gin overlay
tpu_scripts/gpu_single.gin (bfloat16 compute) after your gin files (--overlay none: without).
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as `python tpu_scripts/gpu.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tpu_scripts import common  # noqa: E402

DEFAULT_OVERLAY = 'tpu_scripts/gpu_single.gin'
OVERLAY_COMMANDS = ('train', 'eval', 'infer')   # the commands that build a model from gin
_EXTRAS_RE = re.compile(r'^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$')
CHECK_GPU = ('import jax; d = jax.devices(); '
             'assert d[0].platform == "gpu", f"JAX sees no GPU: {d}"; print("JAX devices:", d)')


def build(argv: Sequence[str]) -> Tuple[List[common.Step], bool]:
  flags, words = common.split_command(argv)
  p = common.make_parser('gpu.py', 'Install jaxpt with CUDA in a venv and run a jaxpt command '
                         'on this machine\'s GPU (everything after -- is the command).',
                         tpu=False)
  p.add_argument('--venv', default='.venv',
                 help='virtualenv, relative to the repository root (default: %(default)s)')
  p.add_argument('--python', default=sys.executable or 'python3',
                 help='interpreter that creates the venv (default: this one)')
  p.add_argument('--extras', default='cuda,tasks', help='pip extras (default: %(default)s)')
  p.add_argument('--skip_install', '--skip-install', dest='skip_install', action='store_true',
                 help='use the venv as it is')
  p.add_argument('--overlay', default=DEFAULT_OVERLAY,
                 help='gin file added after yours for train/eval/infer (default: '
                 '%(default)s; "none" for no overlay)')
  p.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                 help='set for the jaxpt command (repeatable), e.g. JAXPT_DATA_DIR=/data')
  args = p.parse_args(flags)
  env = dict(common.parse_env(args.env))
  if not _EXTRAS_RE.match(args.extras):
    raise common.ScriptError(f'bad --extras {args.extras!r}: comma-separated names')
  command = common.jaxpt_command(words) if words else None
  common.require_tool('nvidia-smi', args.dry_run,
                      'this recipe needs an NVIDIA GPU and its driver')
  root = common.REPO_ROOT
  venv = args.venv if os.path.isabs(args.venv) else os.path.join(root, args.venv)
  py = os.path.join(venv, 'bin', 'python')
  steps = [common.Step(['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
                        '--format=csv,noheader'])]
  if not args.skip_install:
    if not os.path.exists(py):
      steps.append(common.Step([args.python, '-m', 'venv', venv]))
    steps.append(common.Step([py, '-m', 'pip', 'install', '--upgrade', 'pip']))
    steps.append(common.Step([py, '-m', 'pip', 'install', '-e', f'.[{args.extras}]'], cwd=root))
  elif not os.path.exists(py) and not args.dry_run:
    raise common.ScriptError(f'--skip_install but no venv at {venv}')
  steps.append(common.Step([py, '-c', CHECK_GPU]))
  if command:
    if args.overlay != 'none' and command[1] in OVERLAY_COMMANDS:
      overlay = args.overlay if os.path.isabs(args.overlay) else os.path.join(root, args.overlay)
      if not os.path.isfile(overlay):
        raise common.ScriptError(f'--overlay {args.overlay} not found')
      # After the user's --gin_file flags, before nothing else: gin files are parsed in order.
      command = command + [f'--gin_file={args.overlay}']
    steps.append(common.Step([os.path.join(venv, 'bin', 'jaxpt')] + command[1:],
                             env=env or None, cwd=root))
  return steps, args.dry_run


def main(argv: Optional[Sequence[str]] = None, runner=None) -> int:
  return common.main_wrapper('gpu.py', build, argv, runner)


if __name__ == '__main__':
  sys.exit(main())
