"""Shared parts of the TPU / GPU launch scripts: validation, command building, running.

Standard library only: the scripts run on a workstation that has `gcloud`, not jaxpt.
Every script builds a list of `Step`s (an argv list, never a local shell string), prints each
one exactly as it will run (`shlex.join`, copy-pastable), and runs it unless `--dry-run`.
Values that end up inside a remote shell command (`--command=...` of `tpu-vm ssh`) are
quoted with `shlex.quote`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Defaults shared by install / launch / fetch_logs: paths on each worker, relative to $HOME.
DEFAULT_REMOTE_DIR = 'jaxpt'
DEFAULT_LOG_DIR = 'jaxpt_logs'
DEFAULT_PYTHON = 'python3'


class ScriptError(Exception):
  """A bad input or a failed step: printed as one line, exit status 2 (or the step's)."""

  def __init__(self, message: str, code: int = 2):
    super().__init__(message)
    self.code = code


# --------------------------------------------------------------------------- accelerators

@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  runtime: str          # default --version for `tpu-vm create`
  unit: str             # what the number after the dash counts
  sizes: Tuple[int, ...]  # the documented slice sizes
  per_host: int         # units per worker VM (multi-host slices)
  single_host_max: int  # largest size that is one VM
  rule: str             # the sizes, in words

  def workers(self, size: int) -> int:
    return 1 if size <= self.single_host_max else size // self.per_host


def _pow2(lo: int, hi: int) -> Tuple[int, ...]:
  out, n = [], lo
  while n <= hi:
    out.append(n)
    n *= 2
  return tuple(out)


# Runtimes: Cloud TPU's "TPU software versions" page. v2/v3/v4 count TensorCores (8 per VM),
# v5p counts TensorCores (2 per chip, 4 chips per VM), v5e (v5litepod) and v6e count chips
# (up to 8 on one VM, 4 per VM in multi-host slices).
FAMILIES: Dict[str, Family] = {
    'v2': Family('v2', 'tpu-ubuntu2204-base', 'TensorCores', _pow2(8, 512), 8, 8,
                 'a power of two from 8 to 512'),
    'v3': Family('v3', 'tpu-ubuntu2204-base', 'TensorCores', _pow2(8, 2048), 8, 8,
                 'a power of two from 8 to 2048'),
    'v4': Family('v4', 'tpu-ubuntu2204-base', 'TensorCores', tuple(range(8, 4097, 8)), 8, 8,
                 'a multiple of 8 from 8 to 4096'),
    'v5p': Family('v5p', 'v2-alpha-tpuv5', 'TensorCores', tuple(range(8, 12289, 8)), 8, 8,
                  'a multiple of 8 from 8 to 12288'),
    'v5litepod': Family('v5litepod', 'v2-alpha-tpuv5-lite', 'chips',
                        (1, 4, 8, 16, 32, 64, 128, 256), 4, 8, 'one of 1, 4, 8, 16, ..., 256'),
    'v6e': Family('v6e', 'v2-alpha-tpuv6e', 'chips', (1, 4, 8, 16, 32, 64, 128, 256), 4, 8,
                  'one of 1, 4, 8, 16, ..., 256'),
}

_ACCEL_RE = re.compile(r'^(v[0-9][a-z]*)-([0-9]+)$')


def parse_accelerator(value: str) -> Tuple[Family, int]:
  """'v4-32' -> (the v4 family, 32); a clear error for anything else."""
  m = _ACCEL_RE.match(value or '')
  if not m:
    raise ScriptError(f'bad --accelerator_type {value!r}: expected FAMILY-SIZE such as v3-8, '
                      f'v4-32, v5litepod-16 (families: {", ".join(FAMILIES)})')
  name, size = m.group(1), int(m.group(2))
  if name == 'v5e':
    raise ScriptError(f'bad --accelerator_type {value!r}: v5e slices are named '
                      f'v5litepod-N (e.g. v5litepod-{size})')
  if name not in FAMILIES:
    raise ScriptError(f'unknown TPU family {name!r} in --accelerator_type {value!r}; '
                      f'known: {", ".join(FAMILIES)}')
  fam = FAMILIES[name]
  if size not in fam.sizes:
    raise ScriptError(f'bad --accelerator_type {value!r}: a {name} size counts {fam.unit} '
                      f'and must be {fam.rule}')
  return fam, size


def num_workers(accelerator_type: str) -> int:
  fam, size = parse_accelerator(accelerator_type)
  return fam.workers(size)


def default_runtime(accelerator_type: str) -> str:
  return parse_accelerator(accelerator_type)[0].runtime


# --------------------------------------------------------------------------- validators

_PROJECT_RE = re.compile(r'^([a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$')
_ZONE_RE = re.compile(r'^[a-z]+(-[a-z]+)*[0-9]+-[a-z]$')
_NAME_RE = re.compile(r'^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')
_ENV_KEY_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
_REMOTE_PATH_RE = re.compile(r'^[A-Za-z0-9._/+@=-][A-Za-z0-9._/+@=:-]*$')
_RUNTIME_RE = re.compile(r'^[a-z0-9][a-z0-9._-]*$')


def check_project(value: Optional[str]) -> str:
  if not value:
    raise ScriptError('missing --project (the Google Cloud project ID, e.g. my-project-123)')
  if not _PROJECT_RE.match(value):
    raise ScriptError(f'bad --project {value!r}: a project ID is 6-30 characters, lowercase '
                      f'letters, digits and hyphens, starting with a letter')
  return value


def check_zone(value: Optional[str]) -> str:
  if not value:
    raise ScriptError('missing --zone (e.g. us-central2-b, europe-west4-a)')
  if not _ZONE_RE.match(value):
    raise ScriptError(f'bad --zone {value!r}: expected REGION-ZONE such as us-central2-b '
                      f'(a zone, not a region like us-central2)')
  return value


def check_name(value: Optional[str]) -> str:
  if not value:
    raise ScriptError('missing --name (the TPU VM name, e.g. jaxpt-v4-32)')
  if not _NAME_RE.match(value):
    raise ScriptError(f'bad --name {value!r}: 1-63 lowercase letters, digits and hyphens, '
                      f'starting with a letter and not ending with a hyphen')
  return value


def check_runtime(value: str) -> str:
  if not _RUNTIME_RE.match(value or ''):
    raise ScriptError(f'bad --runtime_version {value!r}')
  return value


def check_remote_path(value: str, flag: str) -> str:
  """Paths given to `tpu-vm scp` are not quoted by gcloud: plain characters only."""
  if not value or not _REMOTE_PATH_RE.match(value) or '..' in value.split('/'):
    raise ScriptError(f'bad {flag} {value!r}: use letters, digits and . _ / + @ = - only '
                      f'(no spaces, no ..)')
  return value


def parse_env(items: Sequence[str]) -> List[Tuple[str, str]]:
  """['K=V', ...] -> [(K, V), ...]; the value may contain anything, including '='."""
  out = []
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep or not _ENV_KEY_RE.match(key):
      raise ScriptError(f'bad --env {item!r}: expected KEY=VALUE with KEY a shell variable '
                        f'name (e.g. JAXPT_DATA_DIR=/data)')
    out.append((key, value))
  return out


def require_tool(tool: str, dry_run: bool, hint: str) -> None:
  if dry_run:
    return
  if shutil.which(tool) is None:
    raise ScriptError(f'{tool!r} not found on PATH: {hint} (or pass --dry-run to only print '
                      f'the commands)')


GCLOUD_HINT = 'install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)'


# --------------------------------------------------------------------------- the jaxpt command

JAXPT_SUBCOMMANDS = ('train', 'eval', 'infer', 'export-peft', 'export-hf', 'summary', 'demo')


def split_command(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """Splits at the first `--`: (script flags, jaxpt command)."""
  argv = list(argv)
  if '--' in argv:
    i = argv.index('--')
    return argv[:i], argv[i + 1:]
  return argv, []


def jaxpt_command(words: Sequence[str]) -> List[str]:
  words = list(words)
  if not words:
    raise ScriptError('give the jaxpt command after --, e.g. -- jaxpt train '
                             '--gin_file=models/lm_adapt/base.gin ...')
  if words[0] in JAXPT_SUBCOMMANDS:
    words = ['jaxpt'] + words
  if words[0] != 'jaxpt' or len(words) < 2:
    raise ScriptError(f'the command after -- must be `jaxpt SUBCOMMAND ...` '
                             f'(got {shlex.join(words[:3])!r})')
  return words



# --------------------------------------------------------------------------- remote paths

def home_path(path: str) -> str:
  """A worker path for a remote shell: relative paths are under $HOME, quoted safely."""
  if path.startswith('/'):
    return shlex.quote(path)
  if path.startswith('~/'):
    path = path[2:]
  return '"$HOME"/' + shlex.quote(path)


# --------------------------------------------------------------------------- gcloud commands

def gcloud_base(gcloud: str, verb: str) -> List[str]:
  return [gcloud, 'compute', 'tpus', 'tpu-vm', verb]


def where(args: argparse.Namespace) -> List[str]:
  return [f'--project={args.project}', f'--zone={args.zone}']


def ssh(args: argparse.Namespace, command: str, worker: str = 'all') -> List[str]:
  """`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` (runs on every VM)."""
  return gcloud_base(args.gcloud, 'ssh') + [args.name] + where(args) + [
      f'--worker={worker}', f'--command={command}']


def scp(args: argparse.Namespace, src: str, dst: str, worker: str = 'all',
        recurse: bool = False) -> List[str]:
  return gcloud_base(args.gcloud, 'scp') + [src, dst] + where(args) + [
      f'--worker={worker}'] + (['--recurse'] if recurse else [])


# --------------------------------------------------------------------------- argparse

class Parser(argparse.ArgumentParser):
  """argparse whose errors are ScriptErrors: one line (no usage block), exit status 2."""

  def error(self, message: str):  # noqa: D401 - argparse's signature
    raise ScriptError(message)


def make_parser(prog: str, description: str, tpu: bool = True) -> Parser:
  p = Parser(prog=prog, description=description)
  if tpu:
    p.add_argument('--project', help='Google Cloud project ID (required)')
    p.add_argument('--zone', help='zone of the TPU, e.g. us-central2-b (required)')
    p.add_argument('--name', help='TPU VM name (required)')
    p.add_argument('--gcloud', default='gcloud', help='the gcloud binary (default: gcloud)')
  p.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                 help='print the commands and run nothing')
  return p


def check_tpu_args(args: argparse.Namespace) -> None:
  check_project(args.project)
  check_zone(args.zone)
  check_name(args.name)
  require_tool(args.gcloud, args.dry_run, GCLOUD_HINT)


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class Step:
  argv: List[str]
  env: Optional[Dict[str, str]] = None   # extra environment (local commands only)
  cwd: Optional[str] = None

  def shell(self) -> str:
    prefix = ''
    if self.cwd:
      prefix += f'cd {shlex.quote(self.cwd)} && '
    if self.env:
      prefix += ' '.join(f'{k}={shlex.quote(v)}' for k, v in self.env.items()) + ' '
    return prefix + shlex.join(self.argv)


Runner = Callable[..., 'subprocess.CompletedProcess']


def run_steps(steps: Sequence[Step], dry_run: bool, runner: Optional[Runner] = None,
              out=None) -> int:
  """Prints every step; runs them in order unless dry_run; stops at the first failure."""
  out = out or sys.stdout
  runner = runner or subprocess.run
  if dry_run:
    for step in steps:
      print(step.shell(), file=out)
    print(f'# dry run: {len(steps)} command(s) printed, none run', file=out)
    return 0
  for step in steps:
    print(f'+ {step.shell()}', file=out, flush=True)
    env = None
    if step.env:
      env = dict(os.environ)
      env.update(step.env)
    result = runner(step.argv, env=env, cwd=step.cwd, check=False)
    if result.returncode != 0:
      raise ScriptError(f'command failed with exit status {result.returncode}: '
                        f'{shlex.join(step.argv[:6])}{" ..." if len(step.argv) > 6 else ""}',
                        code=result.returncode)
  return 0


def main_wrapper(prog: str, build: Callable[[Sequence[str]], Tuple[List[Step], bool]],
                 argv: Optional[Sequence[str]] = None, runner: Optional[Runner] = None) -> int:
  """Parses, builds and runs; a ScriptError becomes one line on stderr and its exit code."""
  try:
    steps, dry_run = build(list(sys.argv[1:] if argv is None else argv))
    return run_steps(steps, dry_run, runner)
  except ScriptError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return e.code
