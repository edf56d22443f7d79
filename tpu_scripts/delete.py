#!/usr/bin/env python3
"""Deletes a Cloud TPU VM or pod slice (tear-down; billing stops when it is gone).

  python tpu_scripts/delete.py --project=my-proj --zone=us-central2-b --name=jaxpt-v4-32 \
      [--yes] [--dry-run]

Without --yes gcloud asks for confirmation; --yes passes --quiet.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as `python tpu_scripts/delete.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tpu_scripts import common  # noqa: E402


def build(argv: Sequence[str]) -> Tuple[List[common.Step], bool]:
  p = common.make_parser('delete.py', 'Delete a Cloud TPU VM or pod slice.')
  p.add_argument('--yes', '-y', action='store_true',
                 help='do not ask for confirmation (gcloud --quiet)')
  args = p.parse_args(argv)
  common.check_tpu_args(args)
  cmd = common.gcloud_base(args.gcloud, 'delete') + [args.name] + common.where(args)
  if args.yes:
    cmd.append('--quiet')
  return [common.Step(cmd)], args.dry_run


def main(argv: Optional[Sequence[str]] = None, runner=None) -> int:
  return common.main_wrapper('delete.py', build, argv, runner)


if __name__ == '__main__':
  sys.exit(main())
