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

Writes `--out_dir`/table.md, results.json and one generated example per
method for the same test input.
"""

from __future__ import annotations

import argparse
import json
import os
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
from jaxpt.data.features import decoder_only_features  # noqa: E402
from jaxpt.data.text_classification import ClassificationBatches, encode_inputs  # noqa: E402
from jaxpt.evaluate.splits import predict_texts  # noqa: E402
from jaxpt.methods import (EVERYTHING, PROMPT_ONLY, Backbone, ModelTuning,  # noqa: E402
                           PrefixTuning, PromptTuning, partition)
from jaxpt.methods.prefix import deep_prompt_tuning  # noqa: E402
from jaxpt.prompted.base import prompted_model  # noqa: E402
from jaxpt.train.loop import train  # noqa: E402
from jaxpt.train.optim import make_optimizer  # noqa: E402
from jaxpt.vocabulary import backbone_vocabulary  # noqa: E402
from interleave import cpu_name, load_average  # noqa: E402
from tasks import generation_metrics, nlg  # noqa: E402

LENGTHS = {'e2e': (64, 64), 'webnlg': (128, 96)}  # (input, target) tokens
BATCH = 16
BACKBONES = {'mini_t5': mini_t5_path, 'mini_gpt2': mini_gpt2_path}  # --backbone names


def backbone_path(name: str) -> str:
  """A `--backbone` value: one of BACKBONES' names, or a model directory as is."""
  return BACKBONES[name]() if name in BACKBONES else name


def training_batches(config, data: Dict[str, object], seed: int):
  """Position k -> the k-th training batch, in the decoder-only layout for a causal LM."""
  batches = ClassificationBatches(data['train_inputs'], data['train_rows'],
                                  data['train_targets'], BATCH, seed)
  if config.is_encoder_decoder:
    return batches
  return lambda k: (lambda b: decoder_only_features(b['encoder_input_tokens'],
                                                    b['decoder_target_tokens']))(batches(k))


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
  if max_test and max_test < len(test):  # spread over the file: WebNLG's unseen come last
    test = [test[i] for i in np.linspace(0, len(test) - 1, max_test).astype(int)]
  targets = encode_inputs([t for _, t in pairs], encode, out_len)
  return {
      'train_inputs': encode_inputs([i for i, _ in pairs], encode, in_len),
      # Each pair is its own "label": row k of the target table is pair k's text.
      'train_targets': targets, 'train_rows': np.arange(len(pairs)),
      'test_inputs': encode_inputs([e.input for e in test], encode, in_len),
      'test': test, 'num_pairs': len(pairs),
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
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  # What a run keeps: the prefix after folding its MLP (`merge`), as the paper counts.
  stored = count(trainable) if rules == EVERYTHING else count(method.merge(method_params))
  return {'texts': texts, 'train_seconds': round(train_seconds, 1),
          'decode_seconds': round(time.perf_counter() - start, 1), 'final_loss': final_loss,
          'trainable': count(trainable), 'stored': stored if steps else 0}


def markdown(rows: Sequence[Dict]) -> str:
  lines = ['| dataset | method | trained | kept (% of backbone) | train s | BLEU (95% CI) | '
           'chrF | ROUGE-L | BLEU seen / unseen |', '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    s = r['scores']
    split = (f"{s['seen']['bleu']:.1f} / {s['unseen']['bleu']:.1f}"
             if 'seen' in s and 'unseen' in s else '-')
    lines.append(
        f"| {r['dataset']} | {r['method']} | {r['trainable']:,} | {r['stored']:,} "
        f"({r['share']:.3f}%) | "
        f"{r['train_seconds']:.0f} | {s['all']['bleu']:.1f} ({r['bleu_ci95'][0]:.1f}-"
        f"{r['bleu_ci95'][1]:.1f}) | {s['all']['chrf']:.1f} | {s['all']['rouge_l']:.1f} | "
        f"{split} |")
  return '\n'.join(lines)


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
                      help='a smoke run: 10 steps, 8 test inputs, 2 beams, 24 tokens, 100 resamples')
  parser.add_argument('--backbone', default='mini_t5',
                      help=f'{" or ".join(BACKBONES)} or a model directory')
  parser.add_argument('--strategy', default='beam',
                      help="decoding: 'beam' (--beams) or 'greedy'")
  parser.add_argument('--out_dir', default=os.path.join('runs', 'table_to_text'))
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.max_test, args.beams, args.bootstrap, args.max_decode = 10, 8, 2, 100, 24

  t0 = time.perf_counter()
  decoding = f'beam search {args.beams}' if args.strategy == 'beam' else args.strategy
  machine = f'{cpu_name()}, {os.cpu_count()} cores, load {load_average()}'
  print(machine, flush=True)
  path = backbone_path(args.backbone)
  model = jaxpt.load_model(path)
  vocab = backbone_vocabulary(path)
  total = model.num_params()
  only = [k for k in args.only.split('|') if k]
  rows: List[Dict] = []
  examples: Dict[str, Dict[str, str]] = {}
  header = (f'Backbone {os.path.basename(os.path.normpath(path))} ({total:,} '
            f'parameters), frozen except in full fine-tuning; {args.steps} steps of batch '
            f'{BATCH}, Adam with linear decay; {decoding}; BLEU interval: '
            f'{args.bootstrap} bootstrap resamples of the test inputs. Machine: {machine}.'
            + (' QUICK RUN: the numbers mean nothing.' if args.quick else ''))

  def write() -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
      f.write(header + '\n\n' + markdown(rows) + '\n')
      for dataset, by_method in examples.items():
        f.write(f'\n{dataset}, first test input: `{by_method["__input__"]}`\n\n')
        for method, text in by_method.items():
          if method != '__input__':
            f.write(f'- {method}: {text}\n')
    with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
      json.dump({'args': vars(args), 'machine': machine, 'rows': rows,
                 'wall_seconds': round(time.perf_counter() - t0)}, f, indent=1)

  for dataset in args.datasets.split(','):
    data = load(dataset, vocab.encode, args.max_test)
    max_decode = args.max_decode or LENGTHS[dataset][1]
    print(f'{dataset}: {data["num_pairs"]:,} training pairs, {len(data["test"]):,} test inputs',
          flush=True)
    examples[dataset] = {'__input__': data['test'][0].input}
    plan = [('no tuning', ModelTuning(), PROMPT_ONLY, 0.0, 0)] + [
        (label, method, rules, lr, args.steps) for label, method, rules, lr in
        method_rows(args.quick)]
    for label, method, rules, lr, steps in plan:
      if only and not any(k in label for k in only):
        continue
      run = run_method(model, data, method, rules, lr, steps, args.beams, max_decode, vocab,
                       strategy=args.strategy)
      texts = run.pop('texts')
      rows.append({'dataset': dataset, 'method': label, 'share': 100 * run['stored'] / total,
                   **run, **score(dataset, texts, data['test'], args.bootstrap)})
      examples[dataset][label] = texts[0]
      write()
      print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  write()
  print(header + '\n\n' + markdown(rows))
  print(f'wrote {args.out_dir}/table.md and results.json ({time.perf_counter() - t0:.0f} s)')


if __name__ == '__main__':
  main()
