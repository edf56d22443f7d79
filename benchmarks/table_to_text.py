"""Prefix tuning's own experiment in miniature: table-to-text (E2E, WebNLG 2017).

    JAXPT_DATA_DIR=../shared/data python benchmarks/table_to_text.py
    JAXPT_DATA_DIR=../shared/data python benchmarks/table_to_text.py --quick
    JAXPT_DATA_DIR=../shared/data python benchmarks/table_to_text.py --backbone mini_gpt2 \
        --strategy greedy

On a frozen mini backbone (default: jaxpt's mini T5; `--backbone mini_gpt2`
or any decoder-only directory trains on T5X's decoder-only layout, the input
then the reference), every method trains on the same (input, reference) pairs
with the same batches and is scored on test by beam search (5 beams, as Li &
Liang decode; `--strategy greedy` otherwise): corpus BLEU and chrF
(sacrebleu, all references), ROUGE-L (rouge-score), with a bootstrap 95%
interval of BLEU over test inputs; WebNLG also split into seen / unseen
categories. Rows: no tuning (the frozen backbone as is), prefix tuning (the
paper's MLP reparameterization), prompt tuning, deep prompts (P-tuning v2),
full fine-tuning.

E2E's official train split is not available offline: E2E trains on the
valid file's pairs (`tasks.nlg`) and tests on test; WebNLG uses its official
train / test. `--quick` is a smoke run (few steps, a few test inputs) whose
numbers mean nothing; CI runs it.

`--backbones mini_t5,mini_gpt2` runs both minis in one command. On a
decoder-only backbone a further row trains the same MLP prefix with peft
(PREFIX_TUNING, `prefix_projection`) in PyTorch on the identical frozen
weights, batches, optimizer and schedule; peft's `generate` drops a prefix
(docs/decoder_only.md), so that prefix is imported into jaxpt and decoded by
the same beam search as every other row.

Writes `--out_dir`/table.md (the table and one generated example per method
for the same test input), plot.svg (BLEU against kept parameters),
results.json, and rows/ with one file per finished row (its settings, scores
and every generated text). A rerun with the same settings reuses finished
rows (`--fresh` retrains them), so an interrupted run loses at most one row
and a table can be assembled from runs on several machines or processes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jaxpt  # noqa: E402
from jaxpt.assets import mini_gpt2_path, mini_t5_path  # noqa: E402
from jaxpt.checkpoints.peft import import_peft  # noqa: E402
from jaxpt.data.features import as_decoder_only  # noqa: E402
from jaxpt.data.text_classification import ClassificationBatches, encode_inputs  # noqa: E402
from jaxpt.evaluate.splits import predict_texts  # noqa: E402
from jaxpt.methods import (EVERYTHING, PROMPT_ONLY, Backbone, ModelTuning,  # noqa: E402
                           PrefixTuning, PromptTuning, partition)
from jaxpt.methods.prefix import deep_prompt_tuning  # noqa: E402
from jaxpt.prompted.base import prompted_model  # noqa: E402
from jaxpt.train.loop import train  # noqa: E402
from jaxpt.train.optim import make_optimizer, schedule  # noqa: E402
from jaxpt.vocabulary import backbone_vocabulary  # noqa: E402
from accuracy_plot import svg  # noqa: E402
from interleave import cpu_name, load_average  # noqa: E402
from tasks import generation_metrics, nlg  # noqa: E402

LENGTHS = {'e2e': (64, 64), 'webnlg': (128, 96)}  # (input, target) tokens
BATCH = 16
BACKBONES = {'mini_t5': mini_t5_path, 'mini_gpt2': mini_gpt2_path}  # --backbones names
PEFT_LABEL = 'peft prefix tuning (MLP) P=10'
# What a finished row was run with; a rerun reuses it only when all of these agree.
SETTINGS = ('steps', 'beams', 'max_test', 'bootstrap', 'max_decode', 'strategy')


def backbone_path(name: str) -> str:
  """A `--backbone` value: one of BACKBONES' names, or a model directory as is."""
  return BACKBONES[name]() if name in BACKBONES else name


def training_batches(config, data: Dict[str, object], seed: int):
  """Position k -> the k-th training batch, in the decoder-only layout for a causal LM."""
  batches = ClassificationBatches(data['train_inputs'], data['train_rows'],
                                  data['train_targets'], BATCH, seed)
  if config.is_encoder_decoder:
    return batches
  return lambda k: as_decoder_only(batches(k))


def method_rows(quick: bool) -> List[Tuple[str, object, Sequence[str], float]]:
  """(label, method, trainable rules, Adam learning rate) of every trained row."""
  del quick
  return [
      ('prefix tuning (MLP) P=10', PrefixTuning(length=10), PROMPT_ONLY, 5e-3),
      ('prompt tuning P=100', PromptTuning(length=100), PROMPT_ONLY, 0.3),
      ('deep prompts P=10', deep_prompt_tuning(10), PROMPT_ONLY, 5e-3),
      ('full fine-tuning', ModelTuning(), EVERYTHING, 1e-3),
  ]


def load(dataset: str, encode, max_test: Optional[int]) -> Dict[str, object]:
  """Tokenized training pairs and the test inputs with their references."""
  in_len, out_len = LENGTHS[dataset]
  pairs = nlg.training_pairs(nlg.examples(dataset, 'train'))
  test = nlg.examples(dataset, 'test')
  total = len(test)
  if max_test and max_test < len(test):  # spread over the file: WebNLG's unseen come last
    test = [test[i] for i in np.linspace(0, len(test) - 1, max_test).astype(int)]
  targets = encode_inputs([t for _, t in pairs], encode, out_len)
  return {
      'train_inputs': encode_inputs([i for i, _ in pairs], encode, in_len),
      # Each pair is its own "label": row k of the target table is pair k's text.
      'train_targets': targets, 'train_rows': np.arange(len(pairs)),
      'test_inputs': encode_inputs([e.input for e in test], encode, in_len),
      'test': test, 'num_pairs': len(pairs), 'test_total': total,
  }


def score(dataset: str, texts: Sequence[str], test: Sequence[nlg.NLGExample],
          samples: int) -> Dict[str, object]:
  """BLEU / chrF / ROUGE-L (all, and WebNLG seen / unseen) and BLEU's bootstrap interval."""
  refs = [e.references for e in test]
  groups = {'all': [True] * len(test)}
  if dataset == 'webnlg':
    groups.update(seen=[bool(e.seen) for e in test], unseen=[not e.seen for e in test])
  scores = generation_metrics.grouped_scores(list(texts), refs, groups)
  low, high = generation_metrics.bootstrap_interval(list(texts), refs, 'bleu', samples=samples)
  return {'scores': scores, 'bleu_ci95': [round(low, 1), round(high, 1)]}


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def run_method(model, data, method, rules, lr: float, steps: int, beams: int,
               max_decode: int, vocab, seed: int = 0, strategy: str = 'beam'
               ) -> Dict[str, object]:
  """Trains one method (no steps: the frozen backbone) and generates for the test inputs."""
  backbone = Backbone(model.config, model.params['token_embedder']['embedding'], vocab.encode)
  method_params = method.init(jax.random.key(seed + 1), backbone)
  prompted = prompted_model(model.config, method)
  start = time.perf_counter()
  if steps:
    batches = training_batches(model.config, data, seed)
    optimizer = make_optimizer('adamw', lr, weight_decay=0.0, decay_steps=steps)
    result = train(prompted, model.params, method_params, batches, optimizer=optimizer,
                   num_steps=steps, rng=jax.random.key(seed + 2), trainable_rules=rules,
                   print_fn=None, log_every=max(steps // 5, 1))
    params, final_loss = result.params, float(result.history[-1]['loss'])
  else:
    params, final_loss = {'backbone': model.params, 'method': method_params}, None
  train_seconds = time.perf_counter() - start
  start = time.perf_counter()
  texts = predict_texts(prompted, params, data['test_inputs'], vocab, batch_size=32,
                        max_decode_length=max_decode, strategy=strategy, num_beams=beams)
  trainable = (partition({'backbone': model.params, 'method': method_params}, rules)[0]
               if steps else {})
  # What a run keeps: the prefix after folding its MLP (`merge`), as the paper counts.
  stored = _count(trainable) if rules == EVERYTHING else _count(method.merge(method_params))
  return {'texts': texts, 'train_seconds': round(train_seconds, 1),
          'decode_seconds': round(time.perf_counter() - start, 1), 'final_loss': final_loss,
          'trainable': _count(trainable), 'stored': stored if steps else 0}


def peft_prefix_run(path: str, model, data, lr: float, steps: int, beams: int,
                    max_decode: int, vocab, seed: int = 0, strategy: str = 'beam'
                    ) -> Dict[str, object]:
  """peft PREFIX_TUNING with its MLP, trained by PyTorch on the same weights and batches.

  The loss is jaxpt's (the weighted next-token cross entropy of the decoder-only
  layout, start id 0 first), Adam with jaxpt's linear decay. The trained prefix is
  saved by peft, imported into jaxpt and decoded like every other row.
  """
  import peft
  import torch
  import transformers

  torch.manual_seed(seed)
  base = transformers.AutoModelForCausalLM.from_pretrained(path)
  peft_model = peft.get_peft_model(base, peft.PrefixTuningConfig(
      task_type='CAUSAL_LM', num_virtual_tokens=10, prefix_projection=True,
      encoder_hidden_size=PrefixTuning().hidden_dim))
  trainable = [p for p in peft_model.parameters() if p.requires_grad]
  optimizer = torch.optim.Adam(trainable, lr=lr)
  rates = np.broadcast_to(np.asarray(schedule(lr, decay_steps=steps)(np.arange(steps + 1))),
                          (steps + 1,))
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: float(rates[k] / lr))
  batches = training_batches(model.config, data, seed)
  peft_model.train()
  start = time.perf_counter()
  for position in range(steps):
    b = {k: torch.tensor(v) for k, v in batches(position).items()}
    inputs = b['decoder_input_tokens'].long()
    logits = peft_model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), b['decoder_target_tokens'].long().flatten(), reduction='none')
    weights = b['decoder_loss_weights'].flatten()
    loss = (nll * weights).sum() / weights.sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
  train_seconds = time.perf_counter() - start
  with tempfile.TemporaryDirectory() as directory:
    peft_model.save_pretrained(directory)
    method, method_params = import_peft(directory, model.config)
  start = time.perf_counter()
  texts = predict_texts(prompted_model(model.config, method),
                        {'backbone': model.params, 'method': method_params},
                        data['test_inputs'], vocab, batch_size=32,
                        max_decode_length=max_decode, strategy=strategy, num_beams=beams)
  return {'texts': texts, 'train_seconds': round(train_seconds, 1),
          'decode_seconds': round(time.perf_counter() - start, 1), 'final_loss': loss.item(),
          'trainable': int(sum(p.numel() for p in trainable)),
          'stored': _count(method.merge(method_params))}


def _slug(text: str) -> str:
  return re.sub('[^a-z0-9]+', '-', text.lower()).strip('-')


def row_file(out_dir: str, backbone: str, dataset: str, method: str) -> str:
  """Where a finished row is kept: rows/<backbone>.<dataset>.<method>.json."""
  return os.path.join(out_dir, 'rows', f'{_slug(backbone)}.{dataset}.{_slug(method)}.json')


def finished_row(path: str, settings: Dict[str, object]) -> Optional[Dict]:
  """The row kept at `path` when it was run with `settings`; else None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    row = json.load(f)
  return row if row.get('settings') == settings else None


def markdown(rows: Sequence[Dict]) -> str:
  lines = ['| backbone | dataset | method | trained | kept (% of backbone) | train s | '
           'BLEU (95% CI) | chrF | ROUGE-L | BLEU seen / unseen |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    s = r['scores']
    split = (f"{s['seen']['bleu']:.1f} / {s['unseen']['bleu']:.1f}"
             if 'seen' in s and 'unseen' in s else '-')
    lines.append(
        f"| {r['backbone']} | {r['dataset']} | {r['method']} | {r['trainable']:,} | "
        f"{r['stored']:,} ({r['share']:.3f}%) | "
        f"{r['train_seconds']:.0f} | {s['all']['bleu']:.1f} ({r['bleu_ci95'][0]:.1f}-"
        f"{r['bleu_ci95'][1]:.1f}) | {s['all']['chrf']:.1f} | {s['all']['rouge_l']:.1f} | "
        f"{split} |")
  return '\n'.join(lines)


def examples(rows: Sequence[Dict]) -> str:
  """One generated text per method for the first test input of each backbone and dataset."""
  out, seen = [], set()
  for r in rows:
    key = (r['backbone'], r['dataset'])
    if key not in seen:
      seen.add(key)
      out.append(f'\n{r["dataset"]} on {r["backbone"]}, first test input: `{r["first_input"]}`\n')
    out.append(f'- {r["method"]}: {r["texts"][0]}')
  return '\n'.join(out) + '\n'


def plot(rows: Sequence[Dict], title: str) -> str:
  """plot.svg: BLEU against kept parameters, a panel per dataset and backbone."""
  points = [{'task': f'{r["dataset"]}, {r["backbone"]}', 'method': r['method'],
             'trainable': r['stored'], 'accuracy': r['scores']['all']['bleu'],
             'majority': next((o['scores']['all']['bleu'] for o in rows
                               if o['method'] == 'no tuning' and o['dataset'] == r['dataset']
                               and o['backbone'] == r['backbone']), 0.0)} for r in rows]
  return svg(points, title, y_label='test BLEU', x_label='kept parameters (log scale)',
             baseline='no tuning', legend=[('prompt tuning P=100 (square)', 'prompt'),
                                           ('deep prompts P=10', 'deep'),
                                           ('prefix tuning (MLP) P=10', 'prefix'),
                                           ('peft prefix (MLP) P=10', 'peft'),
                                           ('full fine-tuning', 'full')], y_floor=0)


def header(rows: Sequence[Dict], args) -> str:
  models = ', '.join(dict.fromkeys(f'{r["backbone"]} ({r["backbone_params"]:,} parameters)'
                                   for r in rows))
  tests = ', '.join(dict.fromkeys(f'{r["dataset"]} {r["num_test"]:,} of {r["test_total"]:,}'
                                  for r in rows))
  machines = '; '.join(dict.fromkeys(r['machine'] for r in rows))
  decoding = f'beam search {args.beams}' if args.strategy == 'beam' else args.strategy
  return (f'Backbones {models}, frozen except in full fine-tuning; {args.steps} steps of batch '
          f'{BATCH}, Adam with linear decay; {decoding}; test inputs: {tests} (spread evenly '
          f'over each file); BLEU interval: {args.bootstrap} bootstrap resamples of the test '
          f'inputs. Machine: {machines} (each row\'s load average: results.json).'
          + (' QUICK RUN: the numbers mean nothing.' if args.quick else ''))


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default='e2e,webnlg')
  parser.add_argument('--steps', type=int, default=2000, help='training steps of every run')
  parser.add_argument('--beams', type=int, default=5)
  parser.add_argument('--max_test', type=int, default=0, help='test inputs (0: all)')
  parser.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples')
  parser.add_argument('--only', default='', help="substrings separated by '|' of method labels")
  parser.add_argument('--max_decode', type=int, default=0,
                      help='decoded tokens (0: the target length of each dataset)')
  parser.add_argument('--quick', action='store_true',
                      help='a smoke run: 10 steps, 8 test inputs, 2 beams, 24 tokens, '
                      '100 resamples')
  parser.add_argument('--backbones', '--backbone', default='mini_t5',
                      help=f'comma-separated: {" or ".join(BACKBONES)} or a model directory')
  parser.add_argument('--strategy', default='beam',
                      help="decoding: 'beam' (--beams) or 'greedy'")
  parser.add_argument('--no_peft', action='store_true', help='skip the peft prefix rows')
  parser.add_argument('--fresh', action='store_true', help='rerun rows already in --out_dir')
  parser.add_argument('--render', action='store_true',
                      help='only assemble the table from finished rows (none may be missing)')
  parser.add_argument('--out_dir', default=os.path.join('runs', 'table_to_text'))
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.max_test, args.beams, args.bootstrap, args.max_decode = 10, 8, 2, 100, 24
  settings = {k: getattr(args, k) for k in SETTINGS}

  t0 = time.perf_counter()
  print(f'{cpu_name()}, {os.cpu_count()} cores, load {load_average()}', flush=True)
  only = [k for k in args.only.split('|') if k]
  rows: List[Dict] = []
  title = 'Table-to-text on the mini backbones' + (' (QUICK RUN)' if args.quick else '')

  def write() -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
      f.write(header(rows, args) + '\n\n' + markdown(rows) + '\n' + examples(rows))
    if any(r['stored'] for r in rows):
      with open(os.path.join(args.out_dir, 'plot.svg'), 'w') as f:
        f.write(plot(rows, title))
    with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
      json.dump({'args': vars(args), 'rows': [{k: v for k, v in r.items() if k != 'texts'}
                                              for r in rows],
                 'wall_seconds': round(time.perf_counter() - t0)}, f, indent=1)

  for backbone in args.backbones.split(','):
    path = backbone_path(backbone)
    name = os.path.basename(os.path.normpath(path))
    model, vocab = jaxpt.load_model(path), backbone_vocabulary(path)
    for dataset in args.datasets.split(','):
      data = None
      plan = [('no tuning', ModelTuning(), PROMPT_ONLY, 0.0, 0)] + [
          (label, method, rules, lr, args.steps) for label, method, rules, lr in
          method_rows(args.quick)]
      if not args.no_peft and not model.config.is_encoder_decoder:
        plan.append((PEFT_LABEL, None, PROMPT_ONLY, 5e-3, args.steps))
      for label, method, rules, lr, steps in plan:
        if only and not any(k in label for k in only):
          continue
        file = row_file(args.out_dir, name, dataset, label)
        row = None if args.fresh else finished_row(file, settings)
        if row is None and args.render:
          parser.exit(2, f'table_to_text.py: --render: no finished row {file} with '
                         f'settings {settings}\n')
        if row is None:
          if data is None:
            data = load(dataset, vocab.encode, args.max_test)
            print(f'{name} {dataset}: {data["num_pairs"]:,} training pairs, '
                  f'{len(data["test"]):,} test inputs', flush=True)
          max_decode = args.max_decode or LENGTHS[dataset][1]
          load_start = load_average()
          if method is None:
            run = peft_prefix_run(path, model, data, lr, steps, args.beams, max_decode, vocab,
                                  strategy=args.strategy)
          else:
            run = run_method(model, data, method, rules, lr, steps, args.beams, max_decode,
                             vocab, strategy=args.strategy)
          total = model.num_params()
          row = {'backbone': name, 'dataset': dataset, 'method': label, 'settings': settings,
                 'backbone_params': total, 'share': 100 * run['stored'] / total,
                 'num_test': len(data['test']), 'test_total': data['test_total'],
                 'machine': f'{cpu_name()}, {os.cpu_count()} cores',
                 'load_average': load_start, 'first_input': data['test'][0].input, **run,
                 **score(dataset, run['texts'], data['test'], args.bootstrap)}
          os.makedirs(os.path.dirname(file), exist_ok=True)
          with open(file, 'w') as f:
            json.dump(row, f, indent=1)
        rows.append(row)
        write()
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  write()
  print(header(rows, args) + '\n\n' + markdown(rows))
  print(f'wrote {args.out_dir}/table.md, plot.svg and results.json '
        f'({time.perf_counter() - t0:.0f} s)')


if __name__ == '__main__':
  main()
