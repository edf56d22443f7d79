#!/usr/bin/env python
"""Prompt-tuning throughput on real data: jaxpt packed / padded vs peft, one token budget.

    python benchmarks/throughput.py              # RTE and SST-2, mini and T5 1.1 small shapes
    python benchmarks/throughput.py --quick      # CI smoke run: RTE, mini backbone, < 2 min
    python benchmarks/throughput.py --backbones small --tasks rte --examples 512 --rounds 5
    python benchmarks/throughput.py --device gpu --dtype bfloat16

Data: the training split of RTE (SuperGLUE jsonl) and SST-2 from `../shared/data`
(`--data-dir`, `JAXPT_DATA_DIR`), in T5's text-to-text format (`tasks.formats`), tokenized
with the backbone's vocabulary; the first `--examples` examples of a fixed shuffle.
Backbones: `mini` (the committed mini T5, jaxpt/assets/mini_t5) and `small` (T5 1.1 small
shapes, random weights: speed does not depend on the values). Prompt tuning with P=100.

Every configuration gets the same budget of `--budget` padded positions (encoder + prompt)
per batch:
  jaxpt packed   rows of the padded length (as `jaxpt train` packs: rows of the run's
                 inputs length; `--pack-factor` makes them longer), several examples per
                 row, each with its own prompt copy (`jaxpt.data.packing.pack_examples`);
                 rows = budget // row length
  jaxpt padded   T5X's fixed feature lengths: every example padded to the longest input of
                 the split (+ P) and the longest target; rows = budget // length
  peft dynamic   the HF collator: each batch padded to its own longest example; examples are
                 added in order while (count + 1) * (P + longest) <= budget
  peft grouped   the same after sorting by length within chunks of 50 batches' worth
                 (transformers' group_by_length megabatches), batch order kept
Every config trains one pass over the same examples per round (AdamW, lr 1e-3); the rounds
alternate the configs (benchmarks/interleave.py) and the ratios are medians of per-round
ratios ("vs peft best": against the peft config with the lower median pass time).
examples/s and real (non-pad, non-prompt) tokens/s are over that pass; padding share is the
share of encoder + decoder positions that hold neither a token nor a prompt vector.

On XLA every packed row attends over its whole length (segment masks keep the result
exact, not the work smaller): packed rows save the padding's dense work but pay attention
over longer rows, and each segment's prompt copy is work too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from interleave import (footer, format_ratio, header, interleave, load_average,  # noqa: E402
                        matmul_peak_gflops, median, ratio_stats)

CONFIGS = ('jaxpt_packed', 'jaxpt_padded', 'peft_dynamic', 'peft_grouped')
LABELS = {'jaxpt_packed': 'jaxpt packed', 'jaxpt_padded': 'jaxpt padded (T5X lengths)',
          'peft_dynamic': 'peft dynamic padding', 'peft_grouped': 'peft length-grouped'}
TABLE_COLUMNS = ('task', 'backbone', 'config', 'batches', 'examples/batch', 'padding share %',
                 'median pass s', 'examples/s', 'real tokens/s', 'XLA GFLOP/pass',
                 'vs peft best')
LR, WD = 1e-3, 1e-5
GROUP_BATCHES = 50  # transformers' group_by_length: megabatches of 50 batches


# ------------------------------------------------------------------------ data


def read_examples(task: str, data_dir: str, limit: int, seed: int = 0) -> List[Dict[str, str]]:
  """`limit` text-to-text training examples of `task` ('rte' | 'sst2'), a fixed shuffle."""
  from tasks import local
  examples = list(local.local_examples(task, 'train', data_dir))
  order = np.random.default_rng(seed).permutation(len(examples))
  return [examples[i] for i in order[:limit]]


def tokenize(examples: Sequence[Dict[str, str]], encode: Callable[[str], Sequence[int]],
             max_input: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """Input and target ids with EOS; inputs cut to `max_input` ids (EOS kept)."""
  from jaxpt.vocabulary import EOS_ID
  inputs = [np.asarray(list(encode(e['inputs']))[:max_input - 1] + [EOS_ID], np.int32)
            for e in examples]
  targets = [np.asarray(list(encode(e['targets'])) + [EOS_ID], np.int32) for e in examples]
  return inputs, targets


def budget_batches(order: Sequence[int], in_lens: np.ndarray, prompt: int, budget: int
                   ) -> List[List[int]]:
  """Examples in `order`, batched greedily while (count + 1) * (prompt + longest) <= budget."""
  batches, current, longest = [], [], 0
  for i in order:
    new_longest = max(longest, int(in_lens[i]))
    if current and (len(current) + 1) * (prompt + new_longest) > budget:
      batches.append(current)
      current, new_longest = [], int(in_lens[i])
    current.append(int(i))
    longest = new_longest
  if current:
    batches.append(current)
  return batches


def grouped_order(in_lens: np.ndarray, prompt: int, budget: int) -> List[int]:
  """transformers' length grouping: chunks of about GROUP_BATCHES batches, each sorted by
  length, longest first."""
  mean_batch = max(1, budget // (prompt + int(np.mean(in_lens))))
  chunk = GROUP_BATCHES * mean_batch
  order = []
  for start in range(0, len(in_lens), chunk):
    idx = np.arange(start, min(start + chunk, len(in_lens)))
    order += [int(i) for i in idx[np.argsort(-in_lens[idx], kind='stable')]]
  return order


def padded_features(inputs, targets, rows: int, input_len: int, target_len: int
                    ) -> List[Dict[str, np.ndarray]]:
  """T5X fixed-length batches of `rows` examples (the last padded with empty rows)."""
  from jaxpt.data.features import pad_rows, shift_right
  batches = []
  for start in range(0, len(inputs), rows):
    enc = [list(x) for x in inputs[start:start + rows]]
    tgt = [list(y) for y in targets[start:start + rows]]
    enc += [[]] * (rows - len(enc))
    tgt += [[]] * (rows - len(tgt))
    t = pad_rows(tgt, target_len)
    batches.append({'encoder_input_tokens': pad_rows(enc, input_len),
                    'decoder_input_tokens': shift_right(t), 'decoder_target_tokens': t})
  return batches


def packed_features(inputs, targets, rows: int, length: int, target_len: int, prompt: int
                    ) -> List[Dict[str, np.ndarray]]:
  """Packed batches of `rows` rows of `length` positions, a prompt per segment."""
  from jaxpt.data.packing import pack_examples, packed_batches
  features = pack_examples(inputs, targets, inputs_length=length, targets_length=target_len,
                           prompt_length=prompt)
  return list(packed_batches(features, rows))


def plans(inputs, targets, prompt: int, budget: int, configs: Sequence[str],
          pack_factor: int = 1) -> Dict[str, Dict]:
  """Per config: its batches (features for jaxpt, example indices for peft), rows per batch
  and padding share. Packed rows are `pack_factor` times the padded length."""
  in_lens = np.asarray([len(x) for x in inputs])
  tgt_lens = np.asarray([len(y) for y in targets])
  used = int(np.sum(in_lens + tgt_lens)) + prompt * len(inputs)
  length = prompt + int(in_lens.max())  # T5X: every example padded to the longest
  target_len = int(tgt_lens.max())
  rows = max(1, budget // length)
  out = {}
  for c in configs:
    if c == 'jaxpt_padded':
      batches = padded_features(inputs, targets, rows, length - prompt, target_len)
      total = len(batches) * rows * (length + target_len)
    elif c == 'jaxpt_packed':
      pack_length = pack_factor * length
      # As many target slots per row as segments can fit in it.
      segments = max(1, pack_length // (prompt + int(in_lens.min())))
      packed_target = -(-segments * target_len // 8) * 8
      packed_rows = max(1, budget // pack_length)
      batches = packed_features(inputs, targets, packed_rows, pack_length, packed_target,
                                prompt)
      total = len(batches) * packed_rows * (pack_length + packed_target)
    else:
      order = (list(range(len(inputs))) if c == 'peft_dynamic'
               else grouped_order(in_lens, prompt, budget))
      batches = budget_batches(order, in_lens, prompt, budget)
      total = sum(len(b) * (prompt + int(in_lens[b].max()) + int(tgt_lens[b].max()))
                  for b in batches)
    out[c] = {'batches': batches, 'padding_share': 1.0 - used / total,
              'rows': (packed_rows if c == 'jaxpt_packed' else rows)
              if c.startswith('jaxpt') else None,
              'length': pack_length if c == 'jaxpt_packed' else length}
  return out


# ------------------------------------------------------------------------ runners


def backbone(name: str, tmp: str, dtype: str):
  """(jaxpt Model, HF directory, vocabulary) of 'mini' or 'small' (random T5 1.1 small)."""
  import jax
  import jaxpt
  from jaxpt.assets import mini_t5_path
  from jaxpt.models.t5 import init_params
  from jaxpt.vocabulary import backbone_vocabulary
  overrides = {'dropout_rate': 0.0}
  if dtype != 'float32':
    overrides['dtype'] = dtype
  if name == 'mini':
    model = jaxpt.load_model(mini_t5_path(), **overrides)
    vocab = backbone_vocabulary(mini_t5_path())
  else:
    config = jaxpt.preset('t5_1_1', 'small', **overrides)
    model = jaxpt.Model(config, init_params(config, jax.random.key(0)),
                        source='random init (benchmark)')
    vocab = backbone_vocabulary(None)
  hf_dir = os.path.join(tmp, f'hf_{name}')
  jaxpt.save_hf(model, hf_dir)
  return model, hf_dir, vocab


def jaxpt_runner(model, prompt: int, batches: Sequence[Dict[str, np.ndarray]], facts: Dict
                 ) -> Tuple[Callable[[], None], Callable[[], None]]:
  """(one pass over `batches`, warm-up) of jaxpt's compiled prompt-tuning step; puts XLA's
  cost analysis of one batch in `facts['gflop_per_batch']`."""
  import jax
  import jax.numpy as jnp
  from jaxpt.methods import PROMPT_ONLY, Backbone, PromptTuning, partition
  from jaxpt.prompted.base import prompted_model
  from jaxpt.train.optim import make_optimizer
  from jaxpt.train.step import init_state, make_train_step

  method = PromptTuning(length=prompt, initializer='uniform')
  params = {'backbone': model.params,
            'method': method.init(jax.random.key(0), Backbone(
                model.config, model.params['token_embedder']['embedding']))}
  trainable, frozen = partition(params, PROMPT_ONLY)
  optimizer = make_optimizer('adamw', LR, weight_decay=WD)
  holder = {'state': init_state(trainable, optimizer)}
  step = jax.jit(make_train_step(prompted_model(model.config, method), optimizer),
                 donate_argnums=0)
  device_batches = [{k: jnp.asarray(v, jnp.int32) for k, v in b.items()} for b in batches]
  rng = jax.random.key(1)
  compiled = step.lower(holder['state'], frozen, device_batches[0], rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  facts['gflop_per_batch'] = float(cost.get('flops', float('nan'))) / 1e9 if cost else float('nan')

  def one(batch):
    holder['state'], metrics = compiled(holder['state'], frozen, batch, rng)
    return metrics

  def run():
    for b in device_batches:
      metrics = one(b)
    jax.block_until_ready((holder['state'], metrics))

  def warm():
    jax.block_until_ready(one(device_batches[0]))

  return run, warm


def peft_runner(hf_dir: str, prompt: int, inputs, targets, batches: Sequence[List[int]],
                device: str, dtype: str) -> Tuple[Callable[[], None], Callable[[], None]]:
  """(one pass, warm-up) of peft's eager prompt-tuning step on dynamically padded batches."""
  import contextlib

  import torch
  from peft import PromptTuningConfig, get_peft_model
  from transformers import T5ForConditionalGeneration
  from jaxpt.data.features import pad_rows
  from interleave import cores
  torch.set_num_threads(cores())
  torch.manual_seed(0)
  dev = 'cuda' if device == 'gpu' else 'cpu'
  sync = torch.cuda.synchronize if dev == 'cuda' else (lambda: None)
  model = T5ForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32,
                                                     dropout_rate=0.0)
  model = get_peft_model(model, PromptTuningConfig(task_type='SEQ_2_SEQ_LM',
                                                   num_virtual_tokens=prompt))
  model.to(dev)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
  autocast = (torch.autocast(dev, dtype=torch.bfloat16) if dtype == 'bfloat16'
              else contextlib.nullcontext())
  tensors = []
  for b in batches:  # the collator's work, done once outside the timing (as jaxpt's)
    ids = torch.as_tensor(pad_rows([inputs[i] for i in b]), dtype=torch.long, device=dev)
    labels = torch.as_tensor(pad_rows([targets[i] for i in b]), dtype=torch.long, device=dev)
    labels[labels == 0] = -100
    tensors.append((ids, (ids != 0).long(), labels))

  def one(ids, mask, labels):
    with autocast:
      out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  def run():
    for t in tensors:
      one(*t)
    sync()

  def warm():
    one(*tensors[0])
    sync()

  return run, warm


# ------------------------------------------------------------------------ driver


def measure(task: str, backbone_name: str, args, tmp: str, log) -> Tuple[List[Dict], Dict]:
  """Rows of the table for one task and backbone, and the ratio statistics."""
  model, hf_dir, vocab = backbone(backbone_name, tmp, args.dtype)
  examples = read_examples(task, args.data_dir, args.examples)
  inputs, targets = tokenize(examples, vocab.encode, args.max_input)
  configs = list(args.configs)
  if 'jaxpt_packed' in configs:
    try:
      import jaxpt.data.packing  # noqa: F401
    except ImportError:
      log('jaxpt.data.packing is not available: the packed column is left out')
      configs.remove('jaxpt_packed')
  plan = plans(inputs, targets, args.prompt_len, args.budget, configs, args.pack_factor)
  runs, warms, facts = {}, {}, {c: {} for c in configs}
  for c in configs:
    shape = (f', rows of {plan[c]["rows"]} x {plan[c]["length"]} positions'
             if plan[c]['rows'] else '')
    log(f'{task}/{backbone_name}: building {c} ({len(plan[c]["batches"])} batches{shape})')
    if c.startswith('jaxpt'):
      runs[c], warms[c] = jaxpt_runner(model, args.prompt_len, plan[c]['batches'], facts[c])
    else:
      runs[c], warms[c] = peft_runner(hf_dir, args.prompt_len, inputs, targets,
                                      plan[c]['batches'], args.device, args.dtype)
    t = time.perf_counter()
    warms[c]()
    log(f'  first step {time.perf_counter() - t:.1f} s'
        + (' (compile included)' if c.startswith('jaxpt') else ''))
  times = interleave(runs, rounds=args.rounds, repeats=1, warmup=args.warmup, log=log)
  real_tokens = int(sum(len(x) + len(y) for x, y in zip(inputs, targets)))
  peft_cols = [c for c in configs if c.startswith('peft')]
  best_peft = min(peft_cols, key=lambda c: median(times[c])) if peft_cols else None
  rows, ratios = [], {}
  for c in configs:
    med = median(times[c])
    n_batches = len(plan[c]['batches'])
    rows.append({'task': task, 'backbone': backbone_name, 'config': c,
                 'batches': n_batches, 'examples/batch': len(inputs) / n_batches,
                 'padding share %': 100 * plan[c]['padding_share'], 'median pass s': med,
                 'examples/s': len(inputs) / med, 'real tokens/s': real_tokens / med,
                 'XLA GFLOP/pass': facts[c].get('gflop_per_batch', float('nan')) * n_batches,
                 'vs peft best': (ratio_stats(times[best_peft], times[c])['median']
                                  if best_peft else float('nan')),
                 'times': times[c]})
  for c in configs:
    for other in configs:
      if (c.startswith('jaxpt') and other.startswith('peft')) or (
          c == 'jaxpt_packed' and other == 'jaxpt_padded'):
        ratios[f'{task}/{backbone_name}: {c} vs {other}'] = ratio_stats(times[other], times[c])
  return rows, ratios


def print_table(rows: Sequence[Dict]) -> None:
  print('| ' + ' | '.join(TABLE_COLUMNS) + ' |')
  print('|' + '---|' * len(TABLE_COLUMNS))
  for r in rows:
    cells = []
    for col in TABLE_COLUMNS:
      v = r[col]
      if col == 'config':
        v = LABELS[v]
      elif isinstance(v, float) and v != v:
        v = 'n/a'
      elif isinstance(v, float):
        v = f'{v:.2f}' if col in ('vs peft best', 'median pass s', 'examples/batch') else (
            f'{v:.1f}' if col != 'real tokens/s' else f'{v:.0f}')
      cells.append(str(v))
    print('| ' + ' | '.join(cells) + ' |')


def main(argv=None) -> Dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tasks', default='rte,sst2', help='rte, sst2')
  p.add_argument('--backbones', default='mini,small', help='mini, small')
  p.add_argument('--configs', default=','.join(CONFIGS))
  p.add_argument('--examples', type=int, default=256, help='training examples per pass')
  p.add_argument('--budget', type=int, default=4096,
                 help='padded encoder positions (prompt included) per batch')
  p.add_argument('--prompt-len', type=int, default=100)
  p.add_argument('--max-input', type=int, default=412, help='input ids kept per example')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--warmup', type=int, default=1, help='untimed passes before the rounds')
  p.add_argument('--pack-factor', type=int, default=1,
                 help='packed rows are this many times the padded length (1: as jaxpt train)')
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  p.add_argument('--data-dir', default=os.environ.get(
      'JAXPT_DATA_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'data')))
  p.add_argument('--quick', action='store_true', help='RTE, mini backbone, 32 examples, 2 rounds')
  p.add_argument('--json', help='also write the rows and ratios here')
  args = p.parse_args(argv)
  if args.quick:
    args.tasks, args.backbones, args.examples, args.rounds = 'rte', 'mini', 32, 2
    args.warmup = 0
    args.budget = min(args.budget, 2048)
  args.configs = [c.strip() for c in args.configs.split(',') if c.strip()]
  bad = [c for c in args.configs if c not in CONFIGS]
  if bad:
    raise SystemExit(f'unknown configs {bad}; expected a subset of {CONFIGS}')
  if args.device == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  log = lambda line: print(line, file=sys.stderr, flush=True)

  load_start = load_average()
  print(header(matmul_peak_gflops(dtype=args.dtype), load_start, dtype=args.dtype))
  print(f'settings: P={args.prompt_len}, budget {args.budget} positions per batch, packed '
        f'rows {args.pack_factor}x the padded length, {args.examples} examples per pass, '
        f'{args.rounds} rounds after {args.warmup} warm-up pass(es), device {args.device}, '
        f'{args.dtype}, AdamW lr {LR}')
  rows, ratios = [], {}
  with tempfile.TemporaryDirectory(prefix='jaxpt_throughput_') as tmp:
    for backbone_name in [b.strip() for b in args.backbones.split(',') if b.strip()]:
      for task in [t.strip() for t in args.tasks.split(',') if t.strip()]:
        r, q = measure(task, backbone_name, args, tmp, log)
        rows += r
        ratios.update(q)
  print()
  print_table(rows)
  print()
  for key, stats in ratios.items():
    print(f'speed {key}: {format_ratio(stats)}')
  load_end = load_average()
  print(footer(load_start, load_end))
  record = {'rows': rows, 'ratios': ratios, 'load_start': load_start, 'load_end': load_end,
            'args': {k: v for k, v in vars(args).items()}}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(record, f, indent=1)
  return record


if __name__ == '__main__':
  main()
