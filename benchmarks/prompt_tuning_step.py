#!/usr/bin/env python
"""One training step of prompt tuning: jaxpt vs Hugging Face peft, same T5, same batch.

    python benchmarks/prompt_tuning_step.py            # T5 1.1 small shapes, batch 8, 7 rounds
    python benchmarks/prompt_tuning_step.py --quick    # tiny smoke config (seconds)
    python benchmarks/prompt_tuning_step.py --device gpu --dtype bfloat16
    python benchmarks/prompt_tuning_step.py --configs jaxpt_prompt,jaxpt_prompt:f32_softmax_bias
        # an A/B of a step variant (benchmarks/step_variants.py) against the library's step
    python benchmarks/prompt_tuning_step.py --configs jaxpt_prompt@default,jaxpt_prompt@eigen_dot
        # an A/B of XLA flags, each config in its own process
    python benchmarks/prompt_tuning_step.py --memory --configs jaxpt_prompt,jaxpt_full \
        --scan-layers --remat full    # the peak-memory comparison (issue 5)

The model is a T5 1.1 small (`jaxpt.preset('t5_1_1', 'small')`, 76.96 M parameters)
with random weights, written once with `jaxpt.save_hf`; jaxpt reads that directory
with `jaxpt.load_model` and transformers with `from_pretrained`, so both run the
same weights. Dropout is 0 on both sides, float32 everywhere (`--dtype bfloat16`:
jaxpt's compute dtype and torch autocast, for a GPU).

Sequence lengths: the encoder sees `--input-len` positions (256) INCLUDING the
prompt: 156 tokens + 100 soft-prompt vectors (T5X / jaxpt's convention, which
peft reproduces by prepending 100 virtual tokens to 156 input ids). Targets: 16
tokens (decoder input = targets shifted right, as transformers does for
`labels`).

Configs:
  jaxpt prompt   `make_train_step`, jit with donate_argnums=0, PROMPT_ONLY trainable
  jaxpt full     the same step with EVERYTHING trainable (full model tuning)
  peft prompt    get_peft_model(T5ForConditionalGeneration, PromptTuningConfig(100)),
                 forward(labels) + backward + optimizer step (eager torch)
  torch full     the plain transformers model, everything trainable (reference)
  NAME:VARIANT   a jaxpt config compiled with a variant of benchmarks/step_variants.py
  NAME@FLAGS     a config in its own process under the XLA_FLAGS set FLAGS of
                 step_variants.XLA_FLAG_SETS ('default': none), driven over pipes so it
                 still takes its turns in the interleaved rounds
Optimizer: AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-5) on
both sides: optax.adamw via jaxpt.train.optim.make_optimizer('adamw') and
torch.optim.AdamW.

Timing (the default): every config is built in this one process and timed with
`benchmarks/interleave.py`: `--rounds` rounds, each running every config `--steps`
times (round time = their median), configs alternated; speed ratios are medians of
per-round ratios, with their spread, and the run is labelled NOISY when the load
average went above 1.5.

Memory (`--memory`): each config in its own subprocess, so peak RSS is that
config's own. `--scan-layers --remat full` sets scan_layers=True and
remat_policy='full' on BOTH jaxpt configs (the same settings, so the prompt / full
ratios stay a like-for-like comparison). On XLA:CPU, remat only saves memory with
scanned layers: unrolled, the compiler computes the rematerialized values in the
forward pass and keeps them. XLA's cost analysis counts a scanned loop body once,
so GFLOP/step is not comparable between scanned and unrolled runs.

FLOPs: XLA's cost analysis of the compiled jaxpt step; the torch config of the
same kind is credited with the same count (the math is the same). "% of matmul
peak" (MFU on a GPU) divides by this run's own jnp.dot peak (2048^3, median of 5,
in `--dtype`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from interleave import (Served, cores, footer, format_ratio, header, interleave,  # noqa: E402
                        load_average, matmul_peak_gflops, median, ratio_stats, serve)

CONFIGS = ('jaxpt_prompt', 'jaxpt_full', 'peft_prompt', 'torch_full')
LABELS = {'jaxpt_prompt': 'jaxpt prompt', 'jaxpt_full': 'jaxpt full tuning',
          'peft_prompt': 'peft prompt', 'torch_full': 'torch full tuning (ref)'}
# Each jaxpt config's torch counterpart: the denominator of its speed ratio.
BASELINE = {'jaxpt_prompt': 'peft_prompt', 'jaxpt_full': 'torch_full'}
LR, WD = 1e-3, 1e-5


# ------------------------------------------------------------------------ helpers


def peak_rss_mib() -> float:
  """VmHWM (peak resident set) of this process, MiB; ru_maxrss as a fallback."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_parts_mib() -> str:
  """Current RssAnon / RssFile of this process (MiB), to tell heap from mapped files."""
  parts = {}
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(('RssAnon:', 'RssFile:')):
          parts[line.split(':')[0]] = int(line.split()[1]) / 1024
  except OSError:
    return 'n/a'
  return ' / '.join(f'{k} {v:.0f}' for k, v in parts.items())


def reset_peak_rss() -> bool:
  """Returns freed heap to the OS (glibc malloc_trim), then resets VmHWM to the current RSS
  (Linux: write 5 to /proc/self/clear_refs). Done the same way in every worker, so the
  "step RSS" column is the peak over the timed steps, not compile-time leftovers."""
  try:
    import ctypes
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def make_batch(args):
  """Random tokens (ids >= 2, EOS at the end), identical for both frameworks."""
  import numpy as np
  rng = np.random.default_rng(0)
  n_in = args.input_len - args.prompt_len
  enc = rng.integers(2, args.vocab_hi, (args.batch, n_in), dtype=np.int64)
  enc[:, -1] = 1
  tgt = rng.integers(2, args.vocab_hi, (args.batch, args.target_len), dtype=np.int64)
  tgt[:, -1] = 1
  dec = np.concatenate([np.zeros((args.batch, 1), np.int64), tgt[:, :-1]], axis=1)
  return enc, dec, tgt


def model_config(args):
  import jaxpt
  size = 'tiny' if args.quick else 'small'
  return jaxpt.preset('t5_1_1', size, dropout_rate=0.0, dtype='float32')


def base_config(name: str) -> str:
  """'jaxpt_prompt:variant@flags' -> 'jaxpt_prompt'."""
  return name.split('@', 1)[0].split(':', 1)[0]


def label(name: str) -> str:
  name, _, flags = name.partition('@')
  base, _, variant = name.partition(':')
  return (LABELS[base] + (f' [{variant}]' if variant else '')
          + (f' [XLA {flags}]' if flags else ''))


def build_jaxpt(args, full: bool, variant: str = '') -> Tuple[Callable[[], Any], Dict]:
  """A compiled jaxpt step as `run()` (one step, blocking) and its facts (compile s, FLOPs,
  XLA memory, loss). `variant` names a patch of benchmarks/step_variants.py applied while
  tracing."""
  import contextlib

  import jax
  import jax.numpy as jnp

  import jaxpt
  from jaxpt.methods import EVERYTHING, PROMPT_ONLY, Backbone, PromptTuning, partition
  from jaxpt.prompted.base import prompted_model
  from jaxpt.train.optim import make_optimizer
  from jaxpt.train.step import init_state, make_train_step

  overrides = {'remat_policy': args.remat} if args.remat != 'none' else {}
  if args.scan_layers:
    overrides['scan_layers'] = True
  if args.dtype != 'float32':
    overrides['dtype'] = args.dtype
  model = jaxpt.load_model(args.hf_dir, dropout_rate=0.0, **overrides)
  method = PromptTuning(length=args.prompt_len, initializer='uniform')
  params = {'backbone': model.params,
            'method': method.init(jax.random.key(0), Backbone(
                model.config, model.params['token_embedder']['embedding']))}
  config = model.config
  del model
  trainable, frozen = partition(params, EVERYTHING if full else PROMPT_ONLY)
  del params
  optimizer = make_optimizer('adamw', LR, weight_decay=WD)
  state = init_state(trainable, optimizer)
  del trainable
  enc, dec, tgt = make_batch(args)
  batch = {'encoder_input_tokens': jnp.asarray(enc, jnp.int32),
           'decoder_input_tokens': jnp.asarray(dec, jnp.int32),
           'decoder_target_tokens': jnp.asarray(tgt, jnp.int32)}
  rng = jax.random.key(1)
  patch = contextlib.nullcontext()
  if variant:
    import step_variants
    patch = step_variants.VARIANTS[variant]()
  with patch:
    step = jax.jit(make_train_step(prompted_model(config, method), optimizer),
                   donate_argnums=0)
    t = time.perf_counter()
    compiled = step.lower(state, frozen, batch, rng).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  mem = compiled.memory_analysis()
  temp_mib = getattr(mem, 'temp_size_in_bytes', 0) / 2 ** 20 if mem is not None else float('nan')
  xla_mib = (sum(getattr(mem, f'{k}_size_in_bytes', 0) for k in ('argument', 'output', 'temp'))
             - getattr(mem, 'alias_size_in_bytes', 0)) / 2 ** 20 if mem is not None else float('nan')
  holder = {'state': state}
  info = {'compile_s': compile_s, 'flops': flops, 'temp_mib': temp_mib, 'xla_mib': xla_mib,
          'trainable': int(sum(x.size for x in jax.tree.leaves(state.trainable))),
          'compiled': compiled}

  def run():
    holder['state'], metrics = compiled(holder['state'], frozen, batch, rng)
    jax.block_until_ready(holder['state'])
    info.setdefault('loss_first', float(metrics['loss']))
    info['loss_last'] = float(metrics['loss'])

  return run, info


def build_torch(args, full: bool) -> Tuple[Callable[[], Any], Dict]:
  """The eager transformers (peft for prompt tuning) step as `run()` and its facts."""
  import contextlib

  import torch
  from transformers import T5ForConditionalGeneration
  torch.set_num_threads(cores())
  torch.manual_seed(0)
  dev = 'cuda' if args.device == 'gpu' else 'cpu'
  sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
  model = T5ForConditionalGeneration.from_pretrained(args.hf_dir, dtype=torch.float32,
                                                     dropout_rate=0.0)
  if not full:
    from peft import PromptTuningConfig, get_peft_model
    model = get_peft_model(model, PromptTuningConfig(task_type='SEQ_2_SEQ_LM',
                                                     num_virtual_tokens=args.prompt_len))
  model.to(dev)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
  enc, _, tgt = make_batch(args)
  input_ids = torch.as_tensor(enc, device=dev)
  attention_mask = torch.ones_like(input_ids)
  labels = torch.as_tensor(tgt, device=dev)
  autocast = (torch.autocast(dev, dtype=torch.bfloat16) if args.dtype == 'bfloat16'
              else contextlib.nullcontext())
  info = {'trainable': int(sum(p.numel() for p in params))}

  def run():
    with autocast:
      out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    loss = float(out.loss.detach())
    info.setdefault('loss_first', loss)
    info['loss_last'] = loss

  t = time.perf_counter()
  run()
  info['compile_s'] = time.perf_counter() - t  # the first (eager) step
  return run, info


def build(args, name: str) -> Tuple[Callable[[], Any], Dict]:
  base, _, variant = name.partition('@')[0].partition(':')
  if base.startswith('jaxpt_'):
    return build_jaxpt(args, full=base == 'jaxpt_full', variant=variant)
  if variant:
    raise SystemExit(f'variants apply to jaxpt configs only, got {name}')
  return build_torch(args, full=base == 'torch_full')


def torch_matmul_peak(args) -> float:
  import torch
  torch.set_num_threads(cores())
  dev = 'cuda' if args.device == 'gpu' else 'cpu'
  dtype = torch.bfloat16 if args.dtype == 'bfloat16' else torch.float32
  n = args.matmul_n
  a, b = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
  sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
  a @ b
  sync()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    a @ b
    sync()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / median(times) / 1e9


# ------------------------------------------------------------------------ memory mode


def worker_memory(args) -> dict:
  """One config in this (sub)process: build, warm up, then time steps with peak RSS."""
  name = args.worker
  if base_config(name).startswith('jaxpt_'):
    import jaxpt.train.step  # noqa: F401  (the runtime, before the baseline RSS reading)
  else:
    import peft  # noqa: F401  (imported before the baseline RSS reading, like jax above)
  rss_runtime = peak_rss_mib()
  run, info = build(args, name)
  info.pop('compiled', None)
  for _ in range(args.warmup):
    run()
  rss_before = peak_rss_mib()
  did_reset = reset_peak_rss()
  if args.device == 'gpu' and not name.startswith('jaxpt_'):
    import torch
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  out = dict(info, times=times, rss_runtime_mib=rss_runtime, rss_parts=rss_parts_mib(),
             step_rss_mib=peak_rss_mib() if did_reset else float('nan'),
             peak_rss_mib=max(rss_before, peak_rss_mib()))
  if args.device == 'gpu':
    if name.startswith('jaxpt_'):
      import jax
      stats = jax.devices()[0].memory_stats() or {}
      out['gpu_peak_mib'] = stats.get('peak_bytes_in_use', 0) / 2 ** 20
    else:
      import torch
      out['gpu_peak_mib'] = torch.cuda.max_memory_allocated() / 2 ** 20
  return out


def worker_command(args, mode: str, name: str) -> list:
  """The command line of a child process running config `name` (`--worker` or `--serve`)."""
  cmd = [sys.executable, os.path.abspath(__file__), mode, name, '--hf-dir', args.hf_dir,
         '--steps', str(args.steps), '--warmup', str(args.warmup), '--batch', str(args.batch),
         '--input-len', str(args.input_len), '--target-len', str(args.target_len),
         '--prompt-len', str(args.prompt_len), '--device', args.device, '--dtype', args.dtype,
         '--matmul-n', str(args.matmul_n), '--remat', args.remat]
  cmd += ['--quick'] if args.quick else []
  return cmd + (['--scan-layers'] if args.scan_layers else [])


def worker_env(args, name: str) -> dict:
  """The environment of a child: this one, the device's settings, and the XLA flag set named
  after '@' in `name` (step_variants.XLA_FLAG_SETS) as XLA_FLAGS."""
  env = dict(os.environ)
  if args.device == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
    env.setdefault('CUDA_VISIBLE_DEVICES', '')
  else:
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  if '@' in name:
    import step_variants
    env['XLA_FLAGS'] = step_variants.XLA_FLAG_SETS[name.partition('@')[2]]
  return env


def spawn(args, worker: str) -> dict:
  cmd = worker_command(args, '--worker', worker)
  proc = subprocess.run(cmd, env=worker_env(args, worker), capture_output=True, text=True,
                        cwd=ROOT)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
  raise SystemExit(f'worker {worker} failed (exit {proc.returncode})')


def report_memory(args, configs, results) -> None:
  head = ('config', 'compile s', 'median step s', 'peak RSS MiB', 'step RSS MiB',
          'XLA args+out+temp MiB', 'temp MiB')
  print('| ' + ' | '.join(head) + ' |')
  print('|' + '---|' * len(head))
  for c in configs:
    r = results[c]
    print('| ' + ' | '.join((label(c), f'{r["compile_s"]:.1f}', f'{median(r["times"]):.3f}',
                             f'{r["peak_rss_mib"]:.0f}', f'{r["step_rss_mib"]:.0f}',
                             f'{r.get("xla_mib", float("nan")):.0f}',
                             f'{r.get("temp_mib", float("nan")):.0f}')) + ' |')
  print('peak RSS = VmHWM of the config\'s own process; step RSS = VmHWM over the timed steps '
        'only (malloc_trim + reset after warm-up). Step times here are not interleaved: '
        'use the default mode for speed.')
  for c in configs:
    r = results[c]
    gpu = f', GPU peak {r["gpu_peak_mib"]:.0f} MiB' if 'gpu_peak_mib' in r else ''
    print(f'  {c}: trainable {r["trainable"]:,}, RSS after import {r["rss_runtime_mib"]:.0f} '
          f'MiB, at end {r["rss_parts"]} MiB{gpu}')
  if 'jaxpt_prompt' in results and 'jaxpt_full' in results:
    p, f = results['jaxpt_prompt'], results['jaxpt_full']
    for key, what in (('peak_rss_mib', 'process peak RSS'), ('step_rss_mib', 'step peak RSS')):
      m = p[key] / f[key]
      print(f'jaxpt prompt / full tuning {what}: {m:.2f} (target <= 0.5: '
            f'{"met" if m <= 0.5 else "MISSED"})')
    print(f'jaxpt prompt / full tuning XLA buffers (arguments + outputs + temporaries): '
          f'{p["xla_mib"] / f["xla_mib"]:.2f}')
    a, b = (r['step_rss_mib'] - r['rss_runtime_mib'] for r in (p, f))
    print(f'jaxpt prompt / full tuning step peak RSS above the imported runtime: {a / b:.2f}')
    if 'gpu_peak_mib' in p:
      print(f'jaxpt prompt / full tuning GPU peak: {p["gpu_peak_mib"] / f["gpu_peak_mib"]:.2f}')


# ------------------------------------------------------------------------ speed mode


def run_speed(args, configs) -> dict:
  """Builds every config here, times them interleaved, prints the table and the ratios."""
  runs, infos = {}, {}
  for c in configs:
    print(f'building {c} ...', file=sys.stderr, flush=True)
    if '@' in c:  # its own process under other XLA flags, driven over pipes
      runs[c] = Served(worker_command(args, '--serve', c), worker_env(args, c), cwd=ROOT)
      infos[c] = runs[c].info
    else:
      runs[c], infos[c] = build(args, c)
  log = (lambda line: print(line, file=sys.stderr, flush=True))
  times = interleave(runs, rounds=args.rounds, repeats=args.steps, warmup=args.warmup, log=log)
  for c in configs:
    if isinstance(runs[c], Served):
      infos[c] = runs[c].close()
  flops = {c: infos[c].get('flops') for c in configs}
  if args.scan_layers:  # XLA counts a scanned loop body once: not a per-step count
    flops = {c: None for c in configs}
  for c in configs:  # a torch config is credited with its jaxpt counterpart's count
    if not base_config(c).startswith('jaxpt_') and not args.scan_layers:
      twins = [flops[j] for j in configs if BASELINE.get(base_config(j)) == base_config(c)
               and flops[j]]
      flops[c] = twins[0] if twins else None
  head = ('config', 'compile s', 'median step s', 'examples/s', 'GFLOP/step', 'GFLOP/s',
          '% of matmul peak', 'loss first -> last')
  print('| ' + ' | '.join(head) + ' |')
  print('|' + '---|' * len(head))
  out = {}
  for c in configs:
    med = median(times[c])
    fl = flops[c]
    gf = fl / med / 1e9 if fl else float('nan')
    print('| ' + ' | '.join((
        label(c), f'{infos[c]["compile_s"]:.1f}', f'{med:.3f}', f'{args.batch / med:.2f}',
        f'{fl / 1e9:.1f}' if fl else 'n/a', f'{gf:.1f}', f'{100 * gf / args.peak:.1f}',
        f'{infos[c]["loss_first"]:.3f} -> {infos[c]["loss_last"]:.3f}')) + ' |')
    out[c] = {'median_s': med, 'times': times[c], 'gflops': gf,
              'peak_fraction': gf / args.peak,
              **{k: v for k, v in infos[c].items() if k != 'compiled'}}
  print(f'compile s: jaxpt = lower+compile of the jitted step; torch = the first (eager) '
        f'step. Step times: median over {args.rounds} interleaved rounds of {args.steps} '
        f'step(s). GFLOP/step from XLA cost analysis of the jaxpt step; the torch config of '
        f'the same kind is credited with the same count.')
  ratios = {}
  for c in configs:
    base = base_config(c)
    if base in BASELINE and BASELINE[base] in times:
      ratios[f'{c} vs {BASELINE[base]}'] = ratio_stats(times[BASELINE[base]], times[c])
    reference = base + ('@default' if '@' in c else '')
    if c != reference and reference in times:
      ratios[f'{c} vs {reference}'] = ratio_stats(times[reference], times[c])
  for key, stats in ratios.items():
    a, b = key.split(' vs ')
    print(f'speed {label(a)} / {label(b)}: {format_ratio(stats)}'
          + (f' (target >= 1.3x: {"met" if stats["median"] >= 1.3 else "MISSED"})'
             if key == 'jaxpt_prompt vs peft_prompt' else ''))
  return {'results': out, 'ratios': ratios}


def versions() -> str:
  out = []
  for mod in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'transformers', 'peft'):
    try:
      out.append(f'{mod} {__import__(mod).__version__}')
    except Exception:  # noqa: BLE001
      out.append(f'{mod} n/a')
  return ', '.join(out)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=7, help='interleaved rounds (speed mode)')
  p.add_argument('--steps', type=int, default=1,
                 help='timed steps per config per round (speed) or in all (--memory: 10)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compile')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--input-len', type=int, default=256, help='encoder positions, prompt included')
  p.add_argument('--target-len', type=int, default=16)
  p.add_argument('--prompt-len', type=int, default=100)
  p.add_argument('--quick', action='store_true', help='tiny T5, short sequences: a smoke run')
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                 help="jaxpt's compute dtype and torch autocast (bf16 is for a GPU)")
  p.add_argument('--configs', default=None,
                 help=f'comma-separated, from {",".join(CONFIGS)} (NAME:VARIANT for a jaxpt '
                      'step variant); default jaxpt_prompt,peft_prompt (speed), all four '
                      '(--memory)')
  p.add_argument('--memory', action='store_true',
                 help='each config in its own process: peak RSS columns (not interleaved)')
  p.add_argument('--matmul-n', type=int, default=2048)
  p.add_argument('--remat', default='none', choices=('none', 'full', 'minimal'),
                 help="jaxpt's remat_policy override for both jaxpt configs")
  p.add_argument('--scan-layers', action='store_true',
                 help='scan_layers=True for both jaxpt configs (remat saves memory on CPU '
                      'only with scanned layers)')
  p.add_argument('--json', help='also write the results here')
  p.add_argument('--worker', help=argparse.SUPPRESS)
  p.add_argument('--serve', help=argparse.SUPPRESS)
  p.add_argument('--hf-dir', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.input_len, args.target_len, args.prompt_len = 2, 32, 8, 8
    args.matmul_n = 512
    if not (args.worker or args.serve):
      args.rounds, args.steps, args.warmup = min(args.rounds, 3), 1, 1
  args.vocab_hi = 32000 if not args.quick else 100
  if args.device == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  if args.worker:
    print('RESULT ' + json.dumps(worker_memory(args)), flush=True)
    return
  if args.serve:
    run, info = build(args, args.serve)
    info.pop('compiled', None)
    serve(run, lambda: info)
    return
  if args.memory and '--steps' not in ' '.join(argv if argv is not None else sys.argv):
    args.steps = 3 if args.quick else 10

  default = CONFIGS if args.memory else ('jaxpt_prompt', 'peft_prompt')
  configs = [c.strip() for c in (args.configs or ','.join(default)).split(',') if c.strip()]
  bad = [c for c in configs if base_config(c) not in CONFIGS]
  if bad:
    raise SystemExit(f'unknown configs {bad}; expected a subset of {CONFIGS}')
  import step_variants
  bad = [c for c in configs if ('@' in c and c.partition('@')[2] not in step_variants.XLA_FLAG_SETS)
         or (':' in c and c.partition('@')[0].partition(':')[2] not in step_variants.VARIANTS)]
  if bad:
    raise SystemExit(f'unknown variants or XLA flag sets in {bad}: variants '
                     f'{sorted(step_variants.VARIANTS)}, flag sets '
                     f'{sorted(step_variants.XLA_FLAG_SETS)}')
  if args.prompt_len >= args.input_len:
    raise SystemExit('--prompt-len must be below --input-len (the input length includes it)')

  import jax
  import jaxpt
  from jaxpt.models.t5 import init_params

  load_start = load_average()
  args.peak = matmul_peak_gflops(args.matmul_n, dtype=args.dtype)
  config = model_config(args)
  print(header(args.peak, load_start, args.matmul_n, args.dtype))
  print(f'versions: {versions()}')
  print(f'settings: XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; torch threads = jax cores '
        f'= {cores()}; device {args.device} ({jax.devices()[0].device_kind})')
  print(f'model   : t5_1_1 {"tiny" if args.quick else "small"}, random weights, {args.dtype}, '
        f'dropout 0; batch {args.batch}; encoder {args.input_len} positions = '
        f'{args.input_len - args.prompt_len} tokens + {args.prompt_len} prompt; '
        f'targets {args.target_len}; AdamW; jaxpt remat {args.remat}, '
        f'scan_layers {args.scan_layers} (the same for both jaxpt configs)')

  with tempfile.TemporaryDirectory(prefix='jaxpt_bench_') as tmp:
    args.hf_dir = os.path.join(tmp, 'hf')
    params = init_params(config, jax.random.key(0))
    model = jaxpt.Model(config, params, source='random init (benchmark)')
    print(f'params  : {model.num_params():,}')
    jaxpt.save_hf(model, args.hf_dir)
    del model, params
    if any(not base_config(c).startswith('jaxpt_') for c in configs):
      print(f'matmul  : torch {torch_matmul_peak(args):.1f} GFLOP/s (same shapes, for reference)')
    if args.memory:
      results = {}
      for c in configs:
        print(f'running {c} ...', file=sys.stderr, flush=True)
        results[c] = spawn(args, c)
      print()
      report_memory(args, configs, results)
      record = {'results': results}
    else:
      print()
      record = run_speed(args, configs)
  load_end = load_average()
  print(footer(load_start, load_end))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(record, peak_gflops=args.peak, load_start=load_start, load_end=load_end,
                     args={k: v for k, v in vars(args).items() if k != 'hf_dir'}), f, indent=1)


if __name__ == '__main__':
  main()
