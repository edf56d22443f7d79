#!/usr/bin/env python
"""Where a prompt-tuning step spends its time: jaxpt's compiled step vs peft's eager step.

    python benchmarks/step_profile.py           # T5 1.1 small shapes, as prompt_tuning_step.py
    python benchmarks/step_profile.py --quick            # tiny T5 (seconds)
    python benchmarks/step_profile.py --framework jaxpt --variant f32_softmax_bias

jaxpt: a `jax.profiler` trace of `--steps` compiled steps; every XLA:CPU thunk event (one
per fused HLO op, on whichever thread ran it) is attributed to a category by the op's
source metadata (`op_name`: the flax module path and the jax primitive, forward or
`transpose(jvp(...))` backward). peft: `torch.profiler` over the same number of steps,
self CPU time per aten op, attributed to the same categories by op name.

Times are CPU time summed over threads, per step: with several cores running ops in
parallel they add up to more than the wall-clock step; the shares are what compares.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
import types
from typing import Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CATEGORIES = ('attention batched matmuls', 'attention softmax + bias + mask',
              'attention q/k/v/o projections', 'MLP matmuls', 'MLP activations',
              'vocab projection + loss', 'layer norms + residuals', 'layout copies/transposes',
              'embedding + prompt', 'optimizer + other')


# The most expensive ops of each framework, for --top: {framework: {op: ms per step}}.
TOP: Dict[str, Dict[str, float]] = collections.defaultdict(collections.Counter)


def jax_category(op_name: str, opcode: str) -> str:
  """A category for one XLA op from its metadata op_name and its instruction name."""
  path = op_name.lower()
  is_dot = 'dot_general' in path or opcode.startswith(('ynn_fusion', 'dot'))
  if 'transpose_copy' in opcode or opcode.startswith(('copy', 'transpose')):
    if not is_dot:
      return 'layout copies/transposes'
  if 'logits_dense' in path or 'cross_entropy' in path or 'loss' in path or 'log_softmax' in path:
    return 'vocab projection + loss'
  if 'attention' in path:
    if re.search(r'attention/(query|key|value|out)/', path):
      return 'attention q/k/v/o projections'
    if is_dot:
      return 'attention batched matmuls'
    return 'attention softmax + bias + mask'
  if 'relpos_bias' in path:
    return 'attention softmax + bias + mask'
  if '/mlp/' in path:
    return 'MLP matmuls' if is_dot else 'MLP activations'
  if 'norm' in path or 'layers_' in path:
    return 'layer norms + residuals'
  if 'embed' in path or 'prompt' in path:
    return 'embedding + prompt'
  if 'jvp(' in path and 'dot_general' in path:
    return 'vocab projection + loss'
  return 'optimizer + other'


TORCH_RULES = (  # (category, exact aten names, name substrings)
    ('attention batched matmuls', {'aten::bmm', 'aten::baddbmm'}, ('scaled_dot_product',)),
    ('attention softmax + bias + mask', set(), ('softmax', 'masked_fill')),
    ('layout copies/transposes', {'aten::copy_', 'aten::contiguous', 'aten::clone',
                                  'aten::transpose', 'aten::permute', 'aten::view',
                                  'aten::t', 'aten::reshape', 'aten::_unsafe_view'}, ()),
    ('vocab projection + loss', set(), ('cross_entropy', 'nll_loss', 'log_softmax')),
    ('MLP activations', set(), ('gelu', 'tanh')),
    ('layer norms + residuals', {'aten::pow', 'aten::mean', 'aten::rsqrt', 'aten::add',
                                 'aten::add_', 'aten::mul'}, ()),
    ('embedding + prompt', {'aten::cat'}, ('embedding',)),
)


def torch_category(name: str, shapes=(), vocab: int = 32128, mlp: int = 1024) -> str:
  """peft's aten ops by name; a 2-d matmul by its operand shapes (vocabulary, MLP or
  attention projection); elementwise ops on [.., mlp] tensors are the MLP's activation."""
  shapes = [tuple(x) for x in shapes or () if x]
  if name in ('aten::mm', 'aten::addmm', 'aten::linear', 'aten::matmul') and shapes:
    if len(shapes[0]) <= 2:
      dims = {d for shape in shapes for d in shape}
      if vocab in dims:
        return 'vocab projection + loss'
      if mlp in dims:
        return 'MLP matmuls'
      return 'attention q/k/v/o projections'
  for category, names, parts in TORCH_RULES:
    if name in names or any(p in name for p in parts):
      if category == 'layer norms + residuals' and shapes and shapes[0][-1:] == (mlp,):
        return 'MLP activations'
      if category == 'layer norms + residuals' and shapes and vocab in shapes[0]:
        return 'vocab projection + loss'
      return category
  return 'optimizer + other'


def hlo_index(hlo_text: str) -> Dict[str, Tuple[str, bool]]:
  """instruction name -> (op_name metadata, backward?) for every named HLO instruction."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r'^\s*(?:ROOT )?%([\w.-]+) = ', line)
    if not m:
      continue
    op = re.search(r'op_name="([^"]*)"', line)
    op_name = op.group(1) if op else ''
    out[m.group(1)] = (op_name, 'transpose(' in op_name)
  return out


def profile_jaxpt(args) -> Dict[Tuple[str, str], float]:
  """{(category, 'fwd'|'bwd'): ms per step} of the compiled jaxpt step."""
  import jax
  import prompt_tuning_step as pts
  run, info = pts.build_jaxpt(args, full=False, variant=args.variant)
  index = hlo_index(info['compiled'].as_text())
  run()
  trace = tempfile.mkdtemp(prefix='jaxpt_trace_')
  jax.profiler.start_trace(trace)
  t = time.perf_counter()
  for _ in range(args.steps):
    run()
  wall = (time.perf_counter() - t) / args.steps
  jax.profiler.stop_trace()
  path = glob.glob(os.path.join(trace, '**', '*.xplane.pb'), recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  totals: Dict[Tuple[str, str], float] = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if ev.name not in index:
          continue
        op_name, backward = index[ev.name]
        key = (jax_category(op_name, ev.name), 'bwd' if backward else 'fwd')
        totals[key] += ev.duration_ns / 1e6 / args.steps
        TOP['jaxpt'][f'{ev.name} [{op_name[-70:]}]'] += ev.duration_ns / 1e6 / args.steps
  totals[('wall-clock step', 'fwd')] = wall * 1e3
  return totals


def profile_peft(args) -> Dict[Tuple[str, str], float]:
  """{(category, 'fwd'|'bwd'): ms per step} of peft's eager step (aten self CPU time)."""
  import torch
  import prompt_tuning_step as pts
  from torch.profiler import ProfilerActivity, profile
  run, _ = pts.build_torch(args, full=False)
  run()
  with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    t = time.perf_counter()
    for _ in range(args.steps):
      run()
    wall = (time.perf_counter() - t) / args.steps
  totals: Dict[Tuple[str, str], float] = collections.Counter()
  for ev in prof.key_averages(group_by_input_shape=True):
    if not ev.key.startswith('aten::'):  # autograd nodes: their aten children carry the time
      continue
    category = torch_category(ev.key, ev.input_shapes)
    totals[(category, 'all')] += ev.self_cpu_time_total / 1e3 / args.steps
    TOP['peft'][f'{ev.key} {ev.input_shapes} -> {category}'] += (ev.self_cpu_time_total / 1e3
                                                                 / args.steps)
  totals[('wall-clock step', 'all')] = wall * 1e3
  del torch
  return totals


def print_table(results: Dict[str, Dict[Tuple[str, str], float]]) -> None:
  head = ['category']
  for fw in results:
    head += [f'{fw} ms/step', f'{fw} share %']
  print('| ' + ' | '.join(head) + ' |')
  print('|' + '---|' * len(head))
  sums = {fw: sum(v for (c, _), v in r.items() if c != 'wall-clock step')
          for fw, r in results.items()}
  for category in CATEGORIES:
    row = [category]
    for fw, r in results.items():
      parts = {d: v for (c, d), v in r.items() if c == category}
      total = sum(parts.values())
      split = (f' (fwd {parts.get("fwd", 0):.0f} / bwd {parts.get("bwd", 0):.0f})'
               if 'fwd' in parts or 'bwd' in parts else '')
      row += [f'{total:.0f}{split}', f'{100 * total / sums[fw]:.1f}']
    print('| ' + ' | '.join(row) + ' |')
  row = ['sum of op CPU time']
  for fw in results:
    row += [f'{sums[fw]:.0f}', '100']
  print('| ' + ' | '.join(row) + ' |')
  row = ['wall-clock step']
  for fw, r in results.items():
    row += [f'{sum(v for (c, _), v in r.items() if c == "wall-clock step"):.0f}', '']
  print('| ' + ' | '.join(row) + ' |')


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--framework', choices=('jaxpt', 'peft', 'both'), default='both')
  p.add_argument('--steps', type=int, default=2, help='profiled steps (after one warm-up)')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--input-len', type=int, default=256)
  p.add_argument('--target-len', type=int, default=16)
  p.add_argument('--prompt-len', type=int, default=100)
  p.add_argument('--variant', default='', help='a jaxpt step variant (step_variants.py)')
  p.add_argument('--quick', action='store_true')
  p.add_argument('--top', type=int, default=0, help='also list the N most expensive ops')
  args = p.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  import jaxpt
  from interleave import footer, header, load_average, matmul_peak_gflops
  from jaxpt.models.t5 import init_params
  import prompt_tuning_step as pts

  ns = types.SimpleNamespace(quick=args.quick, remat='none', scan_layers=False,
                             dtype='float32', device='cpu', batch=args.batch,
                             input_len=args.input_len, target_len=args.target_len,
                             prompt_len=args.prompt_len, vocab_hi=32000)
  if args.quick:
    ns.batch, ns.input_len, ns.target_len, ns.prompt_len, ns.vocab_hi = 2, 32, 8, 8, 100
  ns.variant, ns.steps = args.variant, args.steps
  load_start = load_average()
  print(header(matmul_peak_gflops(512 if args.quick else 2048), load_start,
               512 if args.quick else 2048))
  print(f'shapes  : batch {ns.batch}, encoder {ns.input_len} = {ns.input_len - ns.prompt_len} '
        f'tokens + {ns.prompt_len} prompt, targets {ns.target_len}; {args.steps} profiled steps'
        + (f'; jaxpt variant {args.variant}' if args.variant else ''))
  config = pts.model_config(ns)
  results = {}
  with tempfile.TemporaryDirectory(prefix='jaxpt_profile_') as tmp:
    ns.hf_dir = os.path.join(tmp, 'hf')
    jaxpt.save_hf(jaxpt.Model(config, init_params(config, jax.random.key(0)),
                              source='random init (profile)'), ns.hf_dir)
    if args.framework in ('jaxpt', 'both'):
      results['jaxpt'] = profile_jaxpt(ns)
    if args.framework in ('peft', 'both'):
      results['peft'] = profile_peft(ns)
  print()
  print_table(results)
  for fw in results:
    for op, ms in TOP[fw].most_common(args.top):
      print(f'  {fw} {ms:8.1f} ms  {op}')
  print(footer(load_start, load_average()))


if __name__ == '__main__':
  main()
