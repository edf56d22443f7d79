#!/usr/bin/env python3
"""Creates a Cloud TPU VM or pod slice.

  python tpu_scripts/create.py --project=my-proj --zone=us-central2-b --name=jaxpt-v4-32 \
      --accelerator_type=v4-32 [--runtime_version=...] [--spot | --preemptible] [--dry-run]
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as `python tpu_scripts/create.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tpu_scripts import common  # noqa: E402


def build(argv: Sequence[str]) -> Tuple[List[common.Step], bool]:
  p = common.make_parser('create.py', 'Create a Cloud TPU VM or pod slice.')
  p.add_argument('--accelerator_type', '--accelerator-type', dest='accelerator_type',
                 help='e.g. v3-8, v4-32, v5litepod-16, v5p-8, v6e-8 (required)')
  p.add_argument('--runtime_version', '--runtime-version', '--version', dest='runtime_version',
                 help='TPU software version (default per family: ' + ', '.join(
                     f'{k}: {f.runtime}' for k, f in common.FAMILIES.items()) + ')')
  kind = p.add_mutually_exclusive_group()
  kind.add_argument('--spot', action='store_true', help='a Spot TPU (cheaper, preemptible)')
  kind.add_argument('--preemptible', action='store_true', help='a preemptible TPU (legacy)')
  p.add_argument('--reserved', action='store_true', help='use a reservation (--reserved)')
  args = p.parse_args(argv)
  if not args.accelerator_type:
    raise common.ScriptError('missing --accelerator_type (e.g. v3-8, v4-32, v5litepod-16)')
  fam, size = common.parse_accelerator(args.accelerator_type)
  runtime = common.check_runtime(args.runtime_version or fam.runtime)
  common.check_tpu_args(args)

  cmd = common.gcloud_base(args.gcloud, 'create') + [args.name] + common.where(args) + [
      f'--accelerator-type={args.accelerator_type}', f'--version={runtime}']
  if args.spot:
    cmd.append('--spot')
  if args.preemptible:
    cmd.append('--preemptible')
  if args.reserved:
    cmd.append('--reserved')
  workers = fam.workers(size)
  print(f'# {args.accelerator_type}: {workers} worker VM(s), runtime {runtime}', flush=True)
  return [common.Step(cmd)], args.dry_run


def main(argv: Optional[Sequence[str]] = None, runner=None) -> int:
  return common.main_wrapper('create.py', build, argv, runner)


if __name__ == '__main__':
  sys.exit(main())
