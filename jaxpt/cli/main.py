"""Entry point of the `jaxpt` command (also `python -m jaxpt`).

  jaxpt demo                                  the embedded main job (offline)
  jaxpt summary PATH                          load a checkpoint, print its summary
  jaxpt train|eval|infer|export-peft|export-hf --gin_file=F [--gin_file=G ...]
        [--gin.MACRO=value ...] [--gin_search_paths=a,b]
  jaxpt plan --gin_file=F ... [--num_devices=N] [--device_memory_gib=GIB]
                                              per-device memory of the sharded step
  jaxpt similar PROMPT LIBRARY [--task=K] [--by=mean|tokens] [--top=N]
                                              rank a prompt library by SPoT similarity

Errors print one line naming the bad flag, file or task and exit with status 2;
`--debug` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import os
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
  demo = sub.add_parser('demo', help='run the embedded main job (offline)')
  demo.add_argument('--task', default='synthetic', choices=('synthetic', 'sst2', 'auto'),
                    help='synthetic (default), sst2, or auto: SST-2 when its files are found')
  demo.add_argument('--steps', type=int, default=None, help='prompt-tuning steps')
  summary = sub.add_parser('summary', help='load a checkpoint and print its summary')
  summary.add_argument('path', help='HF T5 directory, T5X checkpoint or jaxpt directory')
  for name, (_, text) in GIN_COMMANDS.items():
    p = sub.add_parser(name, help=text)
    p.add_argument('--gin_file', action='append', default=[],
                   help='a gin file (repeatable; later files override earlier ones)')
    p.add_argument('--gin_search_paths', default='',
                   help='comma-separated directories to look for gin files in')
    p.add_argument('--debug', action='store_true', help='show Python tracebacks')
  similar = sub.add_parser('similar', help="rank a prompt library's prompts by SPoT "
                           'task-embedding similarity to a prompt (to pick a transfer source)')
  similar.add_argument('prompt', help='a prompt checkpoint directory (the query)')
  similar.add_argument('library', help='a folder of prompt checkpoints for the same backbone')
  similar.add_argument('--task', type=int, default=None,
                       help="the query's task, when it keeps several task prompts (MPT)")
  similar.add_argument('--by', choices=('mean', 'tokens'), default='mean',
                       help='rank by the cosine of the average prompt vectors (mean) or the '
                       'average cosine over all token pairs (tokens)')
  similar.add_argument('--top', type=int, default=None, help='show only the N most similar')
  similar.add_argument('--debug', action='store_true', help='show Python tracebacks')
  plan = sub.add_parser('plan', help='compile the sharded training step ahead of time and '
                        'print its per-device memory (same gin flags as train)')
  plan.add_argument('--gin_file', action='append', default=[],
                    help='a gin file (repeatable; later files override earlier ones)')
  plan.add_argument('--gin_search_paths', default='',
                    help='comma-separated directories to look for gin files in')
  plan.add_argument('--debug', action='store_true', help='show Python tracebacks')
  plan.add_argument('--num_devices', type=int, default=None,
                    help='plan for N devices simulated on CPU (omit: this machine\'s devices)')
  plan.add_argument('--device_memory_gib', type=float, default=None,
                    help="memory per device to judge against (default: the target's "
                    'DEVICE_MEMORY_GIB from its gin/partitioning/ file, or a GPU/TPU\'s own)')
  plan.add_argument('--no_full_tuning', action='store_true',
                    help='skip the comparison plan with every parameter trainable')
  plan.add_argument('--json', default=None, help='also write the plans to this JSON file')
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
  import jaxpt
  from jaxpt.cli.quiet import quiet_tensorflow
  quiet_tensorflow(jaxpt._USER_TF_LOG_LEVEL)  # pylint: disable=protected-access
  owns_process = argv is None  # the `jaxpt` command itself, not a call from Python
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, bindings = _split_gin_flags(argv)
  args = _parser().parse_args(rest)
  if bindings and args.command not in GIN_COMMANDS and args.command != 'plan':
    raise SystemExit(f'jaxpt {args.command}: error: --gin.* flags only apply to '
                     f'{", ".join(GIN_COMMANDS)}')
  try:
    if args.command == 'demo':
      from jaxpt.cli import demo
      demo.run(task=args.task, **({'steps': args.steps} if args.steps else {}))
    elif args.command == 'plan':
      from jaxpt.cli import plan
      rc = plan.run(args, bindings, argv)
      if rc:
        sys.exit(rc)
    elif args.command == 'similar':
      from jaxpt.cli import similar
      similar.run(args)
    elif args.command == 'summary':
      import jaxpt
      print(jaxpt.load_model(args.path).summary())
    else:
      _run_gin_command(args, bindings)
  except Exception as e:  # one clean line unless --debug
    if args.debug or not isinstance(e, (ValueError, OSError, KeyError, RuntimeError)):
      raise
    print(f'jaxpt {args.command}: error: {one_line(e)}  (--debug shows the traceback)',
          file=sys.stderr)
    if owns_process and 'tensorflow' in sys.modules:
      # A tf.data iterator left by the failed run can hang TensorFlow's teardown at exit:
      # the message is out, so leave at once.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(2)
    sys.exit(2)


def one_line(error: BaseException) -> str:
  """The error's message on one line, without the call site gin appends to it."""
  text = str(error).split("\n  In call to configurable")[0]
  return ' '.join(part.strip() for part in text.splitlines() if part.strip())


def _run_gin_command(args: argparse.Namespace, bindings: List[str]) -> None:
  from jaxpt.cli import gin_flags, runs

  if not args.gin_file:
    raise ValueError(f'jaxpt {args.command} needs at least one --gin_file, e.g. '
                     f'--gin_file=models/t5_1_1/tiny.gin --gin_file=methods/prompt_tuning.gin '
                     f'--gin_file=runs/{args.command.split("-")[0]}.gin')
  search = [p for p in args.gin_search_paths.split(',') if p]
  from jaxpt.partitioning import initialize_distributed
  initialize_distributed()  # only where the environment says multi-host
  gin_flags.parse(args.gin_file, bindings, search)
  run = getattr(runs, GIN_COMMANDS[args.command][0])
  if args.command == 'export-hf':
    run(fmt='hf')
  elif args.command == 'export-peft':
    run(fmt='peft')
  else:
    run()
