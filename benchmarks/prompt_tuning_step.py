#!/usr/bin/env python
"""One training step of prompt tuning: jaxpt vs Hugging Face peft, same T5, same batch.

    python benchmarks/prompt_tuning_step.py            # T5 1.1 small shapes, batch 8, 10 steps
    python benchmarks/prompt_tuning_step.py --quick    # tiny smoke config (seconds)
    python benchmarks/prompt_tuning_step.py --steps 20 --batch 8 --device gpu
    python benchmarks/prompt_tuning_step.py --configs jaxpt_prompt,jaxpt_full \
        --scan-layers --remat full    # the peak-memory comparison (issue 5)

The model is a T5 1.1 small (`jaxpt.preset('t5_1_1', 'small')`, 76.96 M parameters)
with random weights, written once with `jaxpt.save_hf`; jaxpt reads that directory
with `jaxpt.load_model` and transformers with `from_pretrained`, so both run the
same weights. Dropout is 0 on both sides, float32 everywhere.

Sequence lengths: the encoder sees `--input-len` positions (256) INCLUDING the
prompt: 156 tokens + 100 soft-prompt vectors (T5X / jaxpt's convention, which
peft reproduces by prepending 100 virtual tokens to 156 input ids). Targets: 16
tokens (decoder input = targets shifted right, as transformers does for
`labels`).

Configs (each in its own subprocess, so peak RSS is that config's own):
  jaxpt prompt   `make_train_step`, jit with donate_argnums=0, PROMPT_ONLY trainable
  jaxpt full     the same step with EVERYTHING trainable (full model tuning)
  peft prompt    get_peft_model(T5ForConditionalGeneration, PromptTuningConfig(100)),
                 forward(labels) + backward + optimizer step (eager torch)
  torch full     the plain transformers model, everything trainable (reference)
Optimizer: AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 1e-5) on
both sides: optax.adamw via jaxpt.train.optim.make_optimizer('adamw') and
torch.optim.AdamW.

Memory: `--scan-layers --remat full` sets scan_layers=True and remat_policy='full'
on BOTH jaxpt configs (the same settings, so the prompt / full ratios stay a
like-for-like comparison). On XLA:CPU, remat only saves memory with scanned
layers: unrolled, the compiler computes the rematerialized values in the forward
pass and keeps them (prompt-step temporaries 801 -> 733 MiB unrolled, 156 MiB
scanned). XLA's cost analysis counts a scanned loop body once, so GFLOP/step is
not comparable between scanned and unrolled runs.

FLOPs: XLA's cost analysis of the compiled jaxpt step; the torch config of the
same kind is credited with the same count (the math is the same). The matmul
peak is a 2048x2048x2048 float32 matmul, best of several, in jax and in torch,
measured in this run; "% of peak" uses the better of the two.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = ('jaxpt_prompt', 'jaxpt_full', 'peft_prompt', 'torch_full')
LABELS = {'jaxpt_prompt': 'jaxpt prompt', 'jaxpt_full': 'jaxpt full tuning',
          'peft_prompt': 'peft prompt', 'torch_full': 'torch full tuning (ref)'}
LR, WD = 1e-3, 1e-5


# ------------------------------------------------------------------------ helpers


def cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def load_average() -> str:
  try:
    return ' '.join(open('/proc/loadavg').read().split()[:3])
  except OSError:
    return 'n/a'


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


def median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


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


# ------------------------------------------------------------------------ workers


def worker_matmul(args, framework: str) -> dict:
  n, reps = args.matmul_n, 8
  times = []
  if framework == 'jax':
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    for _ in range(reps):
      t = time.perf_counter()
      f(a, b).block_until_ready()
      times.append(time.perf_counter() - t)
  else:
    import torch
    torch.set_num_threads(cores())
    dev = 'cuda' if args.device == 'gpu' else 'cpu'
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
    a @ b
    sync()
    for _ in range(reps):
      t = time.perf_counter()
      a @ b
      sync()
      times.append(time.perf_counter() - t)
  return {'gflops': 2 * n ** 3 / min(times) / 1e9}


def worker_jaxpt(args, full: bool) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxpt
  from jaxpt.methods import EVERYTHING, PROMPT_ONLY, Backbone, PromptTuning, partition
  from jaxpt.train.optim import make_optimizer
  from jaxpt.prompted.base import prompted_model
  from jaxpt.train.step import init_state, make_train_step

  rss_runtime = peak_rss_mib()  # the framework imported, nothing loaded yet
  overrides = {'remat_policy': args.remat} if args.remat != 'none' else {}
  if args.scan_layers:
    overrides['scan_layers'] = True
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
  step = jax.jit(make_train_step(prompted_model(config, method), optimizer), donate_argnums=0)

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

  for _ in range(args.warmup):
    state, metrics = compiled(state, frozen, batch, rng)
  jax.block_until_ready(state)
  loss0 = float(metrics['loss'])
  rss_before = peak_rss_mib()
  did_reset = reset_peak_rss()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, frozen, batch, rng)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  out = {'compile_s': compile_s, 'times': times, 'flops': flops, 'temp_mib': temp_mib,
         'xla_mib': xla_mib, 'rss_runtime_mib': rss_runtime, 'rss_parts': rss_parts_mib(),
         'loss_first': loss0, 'loss_last': float(metrics['loss']),
         'trainable': int(sum(x.size for x in jax.tree.leaves(state.trainable))),
         'step_rss_mib': peak_rss_mib() if did_reset else float('nan'),
         'peak_rss_mib': max(rss_before, peak_rss_mib())}
  if args.device == 'gpu':
    stats = jax.devices()[0].memory_stats() or {}
    out['gpu_peak_mib'] = stats.get('peak_bytes_in_use', 0) / 2 ** 20
  return out


def worker_torch(args, full: bool) -> dict:
  import torch
  from transformers import T5ForConditionalGeneration
  torch.set_num_threads(cores())
  torch.manual_seed(0)
  dev = 'cuda' if args.device == 'gpu' else 'cpu'
  sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
  import peft  # noqa: F401  (imported before the baseline RSS reading, like jax above)
  rss_runtime = peak_rss_mib()

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

  def one():
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.detach()

  t = time.perf_counter()
  loss0 = float(one())
  sync()
  first_s = time.perf_counter() - t
  for _ in range(args.warmup - 1):
    one()
  sync()
  rss_before = peak_rss_mib()
  did_reset = reset_peak_rss()
  if dev == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    loss = one()
    sync()
    times.append(time.perf_counter() - t)
  out = {'compile_s': first_s, 'times': times, 'loss_first': loss0, 'loss_last': float(loss),
         'rss_runtime_mib': rss_runtime, 'rss_parts': rss_parts_mib(),
         'trainable': int(sum(p.numel() for p in params)),
         'step_rss_mib': peak_rss_mib() if did_reset else float('nan'),
         'peak_rss_mib': max(rss_before, peak_rss_mib())}
  if dev == 'cuda':
    out['gpu_peak_mib'] = torch.cuda.max_memory_allocated() / 2 ** 20
  return out


def run_worker(args) -> None:
  name = args.worker
  if name == 'matmul_jax':
    out = worker_matmul(args, 'jax')
  elif name == 'matmul_torch':
    out = worker_matmul(args, 'torch')
  elif name.startswith('jaxpt_'):
    out = worker_jaxpt(args, full=name == 'jaxpt_full')
  else:
    out = worker_torch(args, full=name == 'torch_full')
  print('RESULT ' + json.dumps(out), flush=True)


# ------------------------------------------------------------------------ driver


def spawn(args, worker: str, extra_env=None) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', worker, '--hf-dir', args.hf_dir,
         '--steps', str(args.steps), '--warmup', str(args.warmup), '--batch', str(args.batch),
         '--input-len', str(args.input_len), '--target-len', str(args.target_len),
         '--prompt-len', str(args.prompt_len), '--device', args.device,
         '--matmul-n', str(args.matmul_n), '--remat', args.remat] + (['--quick'] if args.quick else [])
  cmd += ['--scan-layers'] if args.scan_layers else []
  env = dict(os.environ, **(extra_env or {}))
  if args.device == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
    env.setdefault('CUDA_VISIBLE_DEVICES', '')
  else:
    env['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
  raise SystemExit(f'worker {worker} failed (exit {proc.returncode})')


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
  p.add_argument('--steps', type=int, default=10, help='timed steps per config (median)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compile')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--input-len', type=int, default=256, help='encoder positions, prompt included')
  p.add_argument('--target-len', type=int, default=16)
  p.add_argument('--prompt-len', type=int, default=100)
  p.add_argument('--quick', action='store_true', help='tiny T5, short sequences: a smoke run')
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
  p.add_argument('--configs', default=','.join(CONFIGS), help=f'subset of {",".join(CONFIGS)}')
  p.add_argument('--matmul-n', type=int, default=2048)
  p.add_argument('--remat', default='none', choices=('none', 'full', 'minimal'),
                 help="jaxpt's remat_policy override for both jaxpt configs")
  p.add_argument('--scan-layers', action='store_true',
                 help='scan_layers=True for both jaxpt configs (remat saves memory on CPU '
                      'only with scanned layers)')
  p.add_argument('--json', help='also write the results here')
  p.add_argument('--worker', help=argparse.SUPPRESS)
  p.add_argument('--hf-dir', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.input_len, args.target_len, args.prompt_len = 2, 32, 8, 8
    args.steps, args.warmup, args.matmul_n = min(args.steps, 3), 1, 512
  args.vocab_hi = 32000 if not args.quick else 100
  if args.worker:
    if args.quick:
      args.vocab_hi = 100
    return run_worker(args)

  configs = [c.strip() for c in args.configs.split(',') if c.strip()]
  bad = [c for c in configs if c not in CONFIGS]
  if bad:
    raise SystemExit(f'unknown configs {bad}; expected a subset of {CONFIGS}')
  if args.prompt_len >= args.input_len:
    raise SystemExit('--prompt-len must be below --input-len (the input length includes it)')

  if args.device == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  import jaxpt
  from jaxpt.models.t5 import init_params

  config = model_config(args)
  print(f'machine : {cpu_name()}, {cores()} cores visible, {platform.system()} '
        f'{platform.release()}, python {platform.python_version()}')
  print(f'versions: {versions()}')
  print(f'load avg: {load_average()} (1/5/15 min) at start; XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}; torch threads = jax cores = {cores()}')
  print(f'model   : t5_1_1 {"tiny" if args.quick else "small"}, random weights, float32, '
        f'dropout 0; batch {args.batch}; encoder {args.input_len} positions = '
        f'{args.input_len - args.prompt_len} tokens + {args.prompt_len} prompt; '
        f'targets {args.target_len}; AdamW; device {args.device}; jaxpt remat {args.remat}, '
        f'scan_layers {args.scan_layers} (the same for both jaxpt configs)')

  with tempfile.TemporaryDirectory(prefix='jaxpt_bench_') as tmp:
    args.hf_dir = os.path.join(tmp, 'hf')
    params = init_params(config, jax.random.key(0))
    model = jaxpt.Model(config, params, source='random init (benchmark)')
    print(f'params  : {model.num_params():,}')
    jaxpt.save_hf(model, args.hf_dir)
    del model, params

    peak = {}
    for fw in ('jax', 'torch'):
      peak[fw] = spawn(args, f'matmul_{fw}')['gflops']
    results = {}
    for c in configs:
      print(f'running {c} ...', file=sys.stderr, flush=True)
      results[c] = spawn(args, c)
    load_end = load_average()

  peak_best = max(peak.values())
  flops_of = {'jaxpt_prompt': results.get('jaxpt_prompt', {}).get('flops'),
              'jaxpt_full': results.get('jaxpt_full', {}).get('flops')}
  if args.scan_layers:  # XLA counts a scanned loop body once: not a per-step count
    flops_of = {k: None for k in flops_of}
  flops_of['peft_prompt'] = flops_of['jaxpt_prompt']
  flops_of['torch_full'] = flops_of['jaxpt_full']

  print(f'\nmatmul peak (f32 {args.matmul_n}^3, best of 8): jax {peak["jax"]:.1f} GFLOP/s, '
        f'torch {peak["torch"]:.1f} GFLOP/s; % of peak below uses {peak_best:.1f}')
  head = ('config', 'compile s', 'median step s', 'examples/s', 'peak RSS MiB', 'step RSS MiB',
          'GFLOP/step', 'GFLOP/s', '% of matmul peak')
  rows = []
  for c in configs:
    r = results[c]
    med = median(r['times'])
    fl = flops_of.get(c)
    gf = fl / med / 1e9 if fl else float('nan')
    rows.append((LABELS[c], f'{r["compile_s"]:.1f}', f'{med:.3f}', f'{args.batch / med:.2f}',
                 f'{r["peak_rss_mib"]:.0f}', f'{r["step_rss_mib"]:.0f}',
                 f'{fl / 1e9:.1f}' if fl else 'n/a', f'{gf:.1f}',
                 f'{100 * gf / peak_best:.1f}'))
    r['median_s'] = med
  print('| ' + ' | '.join(head) + ' |')
  print('|' + '---|' * len(head))
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')
  print('compile s: jaxpt = lower+compile of the jitted step; torch = the first (eager) step. '
        'peak RSS = VmHWM of the config\'s own process; step RSS = VmHWM over the timed steps '
        'only (malloc_trim + reset after warm-up). GFLOP/step from XLA cost analysis of the jaxpt step; '
        'the torch row of the same kind is credited with the same count.')
  for c in configs:
    r = results[c]
    extra = (f', XLA args+out+temp {r["xla_mib"]:.0f} MiB (temp {r["temp_mib"]:.0f})'
             if 'temp_mib' in r else '')
    extra += f', RSS after import {r["rss_runtime_mib"]:.0f} MiB, at end {r["rss_parts"]} MiB'
    gpu = f', GPU peak {r["gpu_peak_mib"]:.0f} MiB' if 'gpu_peak_mib' in r else ''
    print(f'  {c}: trainable {r["trainable"]:,}, loss {r["loss_first"]:.3f} -> '
          f'{r["loss_last"]:.3f}, steps min/max {min(r["times"]):.3f}/{max(r["times"]):.3f} s'
          f'{extra}{gpu}')

  print()
  if 'jaxpt_prompt' in results and 'peft_prompt' in results:
    s = results['peft_prompt']['median_s'] / results['jaxpt_prompt']['median_s']
    print(f'jaxpt prompt step speedup over peft: {s:.2f}x (target >= 1.5x: '
          f'{"met" if s >= 1.5 else "MISSED"})')
  if 'jaxpt_prompt' in results and 'jaxpt_full' in results:
    for key, what in (('peak_rss_mib', 'process peak RSS'), ('step_rss_mib', 'step peak RSS')):
      m = results['jaxpt_prompt'][key] / results['jaxpt_full'][key]
      print(f'jaxpt prompt / full tuning {what}: {m:.2f} (target <= 0.5: '
            f'{"met" if m <= 0.5 else "MISSED"})')
    m = results['jaxpt_prompt']['xla_mib'] / results['jaxpt_full']['xla_mib']
    print(f'jaxpt prompt / full tuning XLA buffers (arguments + outputs + temporaries): {m:.2f}')
    a, b = (results[c]['step_rss_mib'] - results[c]['rss_runtime_mib']
            for c in ('jaxpt_prompt', 'jaxpt_full'))
    print(f'jaxpt prompt / full tuning step peak RSS above the imported runtime: {a / b:.2f}')
    if 'gpu_peak_mib' in results['jaxpt_prompt']:
      m = results['jaxpt_prompt']['gpu_peak_mib'] / results['jaxpt_full']['gpu_peak_mib']
      print(f'jaxpt prompt / full tuning GPU peak: {m:.2f}')
  print(f'load avg at end: {load_end}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'peak_gflops': peak, 'results': results, 'args': {
          k: v for k, v in vars(args).items() if k != 'hf_dir'}}, f, indent=1)


if __name__ == '__main__':
  main()
