"""Entry point of the `jaxpt` command."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='jaxpt', description=__doc__)
  parser.add_argument('--debug', action='store_true', help='show Python tracebacks')
  sub = parser.add_subparsers(dest='command', required=True)
  sub.add_parser('demo', help='run the embedded main job (offline)')
  summary = sub.add_parser('summary', help='load a checkpoint and print its summary')
  summary.add_argument('path', help='HF T5 directory, T5X checkpoint or jaxpt directory')
  return parser


def main(argv: Optional[List[str]] = None) -> None:
  args = _parser().parse_args(argv)
  try:
    if args.command == 'demo':
      from jaxpt.cli import demo
      demo.run()
    elif args.command == 'summary':
      import jaxpt
      print(jaxpt.load_model(args.path).summary())
  except (ValueError, OSError) as e:
    if args.debug:
      raise
    print(f'jaxpt {args.command}: error: {e}', file=sys.stderr)
    sys.exit(2)
