#!/usr/bin/env python3
"""Installs jaxpt on every worker of a TPU VM / pod slice.

From git (each worker clones, or fetches into an existing clone):
  python tpu_scripts/install.py --project=my-proj --zone=us-central2-b --name=jaxpt-v4-32 \
      --repo_url=https://github.com/ORG/jaxpt.git [--branch=main]
From this working tree (tar, `tpu-vm scp --worker=all`, untar):
  python tpu_scripts/install.py ... --local_path [PATH]   # PATH defaults to this checkout

Then on every worker: `cd ~/jaxpt && python3 -m pip install -e '.[tpu,tasks]'` and an import
check. Add --dry-run to print the commands without running them.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as `python tpu_scripts/install.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tpu_scripts import common  # noqa: E402

DEFAULT_EXCLUDES = ('.git', '.venv', '__pycache__', '*.egg-info', '.pytest_cache')
REMOTE_TARBALL = 'jaxpt-src.tar.gz'   # in each worker's $HOME, removed after unpacking
_EXTRAS_RE = re.compile(r'^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$')
_BRANCH_RE = re.compile(r'^[A-Za-z0-9._/-]+$')


def python_for(args) -> str:
  """The worker's interpreter, as a remote shell word."""
  if args.venv:
    return common.home_path(args.venv.rstrip('/') + '/bin/python')
  return shlex.quote(args.python)


def build(argv: Sequence[str]) -> Tuple[List[common.Step], bool]:
  p = common.make_parser('install.py', 'Install jaxpt on every worker of a TPU VM.')
  src = p.add_mutually_exclusive_group()
  src.add_argument('--repo_url', '--repo-url', dest='repo_url',
                   help='git URL every worker clones (https:// or git@...)')
  src.add_argument('--local_path', '--local-path', dest='local_path', nargs='?',
                   const=common.REPO_ROOT,
                   help='copy this working tree instead (default: this checkout)')
  p.add_argument('--branch', help='branch or tag to check out (with --repo_url)')
  p.add_argument('--remote_dir', '--remote-dir', dest='remote_dir',
                 default=common.DEFAULT_REMOTE_DIR,
                 help='checkout on each worker, relative to $HOME (default: %(default)s)')
  p.add_argument('--extras', default='tpu,tasks',
                 help="pip extras (default: %(default)s -> pip install -e '.[tpu,tasks]')")
  p.add_argument('--python', default=common.DEFAULT_PYTHON,
                 help='interpreter on the workers (default: %(default)s)')
  p.add_argument('--venv', help='create and use this virtualenv on each worker '
                 '(relative to $HOME); default: the system python3, user site-packages')
  p.add_argument('--exclude', action='append', default=[],
                 help='extra tar --exclude pattern for --local_path (repeatable), '
                 'e.g. ./runs; always excluded: ' + ' '.join(DEFAULT_EXCLUDES))
  args = p.parse_args(argv)
  common.check_tpu_args(args)
  if args.repo_url is None and args.local_path is None:
    raise common.ScriptError('give --repo_url URL (clone on each worker) or --local_path '
                             '[PATH] (copy a working tree)')
  if args.branch and not args.repo_url:
    raise common.ScriptError('--branch needs --repo_url')
  if args.branch and not _BRANCH_RE.match(args.branch):
    raise common.ScriptError(f'bad --branch {args.branch!r}')
  if not _EXTRAS_RE.match(args.extras):
    raise common.ScriptError(f'bad --extras {args.extras!r}: comma-separated names, e.g. '
                             f'tpu,tasks')
  common.check_remote_path(args.remote_dir, '--remote_dir')
  if args.venv:
    common.check_remote_path(args.venv, '--venv')
  rdir = common.home_path(args.remote_dir)
  steps: List[common.Step] = []

  if args.repo_url:
    if args.repo_url.startswith('-'):
      raise common.ScriptError(f'bad --repo_url {args.repo_url!r}')
    ref = shlex.quote(args.branch) if args.branch else 'HEAD'
    clone = ['git', 'clone', '--depth', '1'] + (['--branch', args.branch] if args.branch
                                                 else []) + [args.repo_url]
    fetch = (f'if [ -d {rdir}/.git ]; then git -C {rdir} fetch --depth 1 origin {ref} && '
             f'git -C {rdir} checkout --force FETCH_HEAD; '
             f'else {shlex.join(clone)} {rdir}; fi')
    steps.append(common.Step(common.ssh(args, fetch)))
  else:
    path = os.path.abspath(args.local_path)
    common.require_tool('tar', args.dry_run, 'install tar')
    if not os.path.isfile(os.path.join(path, 'pyproject.toml')):
      raise common.ScriptError(f'--local_path {path} is not a jaxpt checkout (no '
                               f'pyproject.toml)')
    tarball = os.path.join(tempfile.gettempdir(), f'jaxpt-src-{args.name}.tar.gz')
    excludes = [f'--exclude={e}' for e in DEFAULT_EXCLUDES + tuple(args.exclude)]
    steps.append(common.Step(['tar', '-czf', tarball] + excludes + ['-C', path, '.']))
    steps.append(common.Step(common.scp(args, tarball, f'{args.name}:{REMOTE_TARBALL}')))
    tb = common.home_path(REMOTE_TARBALL)
    steps.append(common.Step(common.ssh(
        args, f'mkdir -p {rdir} && tar -xzf {tb} -C {rdir} && rm -f {tb}')))
    steps.append(common.Step(['rm', '-f', tarball]))

  py = python_for(args)
  cmds = []
  if args.venv:
    cmds.append(f'{shlex.quote(args.python)} -m venv {common.home_path(args.venv)}')
  cmds += [f'cd {rdir}',
           f'{py} -m pip install --upgrade pip',
           f'{py} -m pip install -e {shlex.quote("." + "[" + args.extras + "]")}',
           f"{py} -c 'import jax, jaxpt; print(\"jaxpt ok, jax\", jax.__version__)'"]
  steps.append(common.Step(common.ssh(args, ' && '.join(cmds))))
  return steps, args.dry_run


def main(argv: Optional[Sequence[str]] = None, runner=None) -> int:
  return common.main_wrapper('install.py', build, argv, runner)


if __name__ == '__main__':
  sys.exit(main())
