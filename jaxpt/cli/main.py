"""Entry point of the `jaxpt` command (also `python -m jaxpt`).

  jaxpt demo                                  the embedded main job (offline)
  jaxpt summary PATH                          load a checkpoint, print its summary
  jaxpt train|eval|infer|export-peft|export-hf --gin_file=F [--gin_file=G ...]
        [--gin.MACRO=value ...] [--gin_search_paths=a,b]

Errors print one line naming the bad flag, file or task and exit with status 2;
`--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

GIN_COMMANDS = {
    'train': ('train', 'tune a prompt (or the model) on a SeqIO task'),
    'eval': ('evaluate', "score a trained prompt on a task split (the task's metrics)"),
    'infer': ('infer', 'predictions for a TSV or a task split, to JSONL'),
    'export-peft': ('export', 'write the trained prompt as a peft adapter directory'),
    'export-hf': ('export', 'write the backbone as an HF directory, with the prompt as peft'),
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='jaxpt', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--debug', action='store_true', help='show Python tracebacks')
  sub = parser.add_subparsers(dest='command', required=True)
  sub.add_parser('demo', help='run the embedded main job (offline)')
  summary = sub.add_parser('summary', help='load a checkpoint and print its summary')
  summary.add_argument('path', help='HF T5 directory, T5X checkpoint or jaxpt directory')
  for name, (_, text) in GIN_COMMANDS.items():
    p = sub.add_parser(name, help=text)
    p.add_argument('--gin_file', action='append', default=[],
                   help='a gin file (repeatable; later files override earlier ones)')
    p.add_argument('--gin_search_paths', default='',
                   help='comma-separated directories to look for gin files in')
    p.add_argument('--debug', action='store_true', help='show Python tracebacks')
  return parser


def _split_gin_flags(argv: List[str]):
  """`--gin.X=Y` flags are gin bindings; everything else goes to argparse."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      binding = arg[len('--gin.'):]
      if '=' not in binding:
        raise SystemExit(f'jaxpt: error: {arg!r} must look like --gin.NAME=VALUE')
      bindings.append(binding)
    else:
      rest.append(arg)
  return rest, bindings


def main(argv: Optional[List[str]] = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, bindings = _split_gin_flags(argv)
  args = _parser().parse_args(rest)
  if bindings and args.command not in GIN_COMMANDS:
    raise SystemExit(f'jaxpt {args.command}: error: --gin.* flags only apply to '
                     f'{", ".join(GIN_COMMANDS)}')
  try:
    if args.command == 'demo':
      from jaxpt.cli import demo
      demo.run()
    elif args.command == 'summary':
      import jaxpt
      print(jaxpt.load_model(args.path).summary())
    else:
      _run_gin_command(args, bindings)
  except Exception as e:  # one clean line unless --debug
    if args.debug or not isinstance(e, (ValueError, OSError, KeyError, RuntimeError)):
      raise
    print(f'jaxpt {args.command}: error: {e}  (--debug shows the traceback)', file=sys.stderr)
    sys.exit(2)


def _run_gin_command(args: argparse.Namespace, bindings: List[str]) -> None:
  from jaxpt.cli import gin_flags, runs

  if not args.gin_file:
    raise ValueError(f'jaxpt {args.command} needs at least one --gin_file, e.g. '
                     f'--gin_file=models/t5_1_1/tiny.gin --gin_file=methods/prompt_tuning.gin '
                     f'--gin_file=runs/{args.command.split("-")[0]}.gin')
  search = [p for p in args.gin_search_paths.split(',') if p]
  gin_flags.parse(args.gin_file, bindings, search)
  run = getattr(runs, GIN_COMMANDS[args.command][0])
  if args.command == 'export-hf':
    run(fmt='hf')
  elif args.command == 'export-peft':
    run(fmt='peft')
  else:
    run()
