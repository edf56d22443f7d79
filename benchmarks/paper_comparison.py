"""The prompt-tuning paper's comparison in miniature, on jaxpt's mini backbone (frozen).

    JAXPT_DATA_DIR=../shared/data python benchmarks/paper_comparison.py

On SST-2 and RTE (official train -> validation files), with the backbone
frozen unless a row says otherwise: prompt tuning (length 20 and 100; the
paper's three inits: uniform, sampled vocabulary, class labels), prefix tuning
(Li & Liang, MLP reparameterization, length 10), full model tuning, and the
same prompt tuning (P=20, class-label init) in Hugging Face peft on the same
weights exported by `jaxpt.save_hf`, from the same initial prompt, on the
same batches, with the same optimizer (Adam via optax / torch.optim) and the
same learning rate schedule (linear decay to 0 over the run unless
`--no_lr_decay`). Every run of a benchmark trains its `--steps` steps of batch
32 (jaxpt through `jaxpt.train.loop.train`);
accuracy is rank classification over the label words on the whole validation
split, with a Wilson 95% interval and the margin over the majority class.

Seconds are the training wall time of the run (jaxpt's include compiling
the step; peft has nothing to compile) and the steady-state time per step
(jaxpt: the median over logged intervals after the first; peft: the median
step after the first). The float32 matmul peak of this CPU is measured in the
same run, in jax and torch.

Writes `--out_dir`/table.md (the table printed at the end), results.json and
accuracy_vs_parameters.svg (the plot in the README).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jaxpt  # noqa: E402
from accuracy_plot import svg  # noqa: E402
from jaxpt.assets import mini_t5_path  # noqa: E402
from jaxpt.data.text_classification import (ClassificationBatches, encode_inputs,  # noqa: E402
                                            label_table)
from jaxpt.methods import (EVERYTHING, PROMPT_ONLY, Backbone, ModelTuning,  # noqa: E402
                           PrefixTuning, PromptTuning, partition)
from jaxpt.evaluate.splits import score_split  # noqa: E402
from jaxpt.prompted.base import prompted_model  # noqa: E402
from jaxpt.train.loop import train  # noqa: E402
from jaxpt.train.optim import make_optimizer, schedule  # noqa: E402
from jaxpt.vocabulary import backbone_vocabulary  # noqa: E402
from interleave import cpu_name, load_average, matmul_peak_gflops  # noqa: E402
from prompt_tuning_step import torch_matmul_peak, versions  # noqa: E402

TEXT_LENGTHS = {'sst2': 48, 'rte': 128}  # encoder text tokens; a prompt comes on top
TARGET_LENGTH = 4
BATCH = 32
PEFT_ROW = 'prompt tuning P=20, class_labels'
INITS = ('uniform', 'sampled_vocab', 'class_labels')


def wilson(correct: int, n: int, z: float = 1.96) -> Tuple[float, float]:
  """Wilson score 95% interval of an accuracy, in %."""
  p = correct / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return 100 * (centre - half), 100 * (centre + half)


def load(benchmark: str, encode) -> Dict[str, object]:
  import tasks
  from tasks import local
  name = ('glue_sst2' if benchmark == 'sst2' else f'super_glue_{benchmark}') + '_local_mini'
  words = tasks.label_words(name)
  train_ex = list(local.local_examples(benchmark, 'train'))
  val_ex = list(local.local_examples(benchmark, 'validation'))
  length = TEXT_LENGTHS[benchmark]
  val_labels = np.asarray([words.index(e['targets']) for e in val_ex])
  return {
      'name': name, 'words': words,
      'table': label_table(words, encode, TARGET_LENGTH),
      'train_inputs': encode_inputs([e['inputs'] for e in train_ex], encode, length),
      'train_labels': np.asarray([words.index(e['targets']) for e in train_ex]),
      'val_inputs': encode_inputs([e['inputs'] for e in val_ex], encode, length),
      'val_labels': val_labels, 'val_targets': [e['targets'] for e in val_ex],
      'majority': float(100 * np.bincount(val_labels).max() / len(val_labels)),
  }


def parse_steps(spec: str, benchmarks: Sequence[str]) -> Dict[str, int]:
  """'500' (every benchmark) or 'sst2=3000,rte=300' -> {benchmark: steps}."""
  if '=' not in spec:
    return {b: int(spec) for b in benchmarks}
  steps = {k.strip(): int(v) for k, v in (item.split('=') for item in spec.split(','))}
  missing = [b for b in benchmarks if b not in steps]
  if missing:
    raise ValueError(f'--steps {spec!r} gives no steps for {missing}')
  return steps


def jaxpt_run(model, data, method, rules, optimizer, steps: int, seed: int = 0) -> Dict:
  """One jaxpt run: accuracy, trainable count, seconds, ms/step, predictions, initial params."""
  backbone = Backbone(model.config, model.params['token_embedder']['embedding'], data['encode'])
  method_params = method.init(jax.random.key(seed + 1), backbone)
  batches = ClassificationBatches(data['train_inputs'], data['train_labels'], data['table'],
                                  BATCH, seed)
  start = time.perf_counter()
  result = train(prompted_model(model.config, method), model.params, method_params, batches,
                 optimizer=optimizer, num_steps=steps, rng=jax.random.key(seed + 2),
                 trainable_rules=rules, print_fn=None, log_every=max(steps // 10, 1))
  jax.block_until_ready(result.state)
  seconds = time.perf_counter() - start
  rates = [r['examples_per_second'] for r in result.history if r['split'] == 'train'][1:]
  trainable = partition({'backbone': model.params, 'method': method_params}, rules)[0]
  examples = {'inputs': data['val_inputs'], 'target_texts': data['val_targets'],
              'vocabulary': data['vocab']}
  scored = score_split(prompted_model(model.config, method), result.params, data['name'], examples,
                       batch_size=64)
  return {'predictions': np.asarray([data['words'].index(t) for t in scored['predictions']]),
          'trainable': int(sum(x.size for x in jax.tree.leaves(trainable))),
          'seconds': seconds,
          'ms_per_step': 1000 * BATCH / float(np.median(rates)) if rates else None,
          'final_loss': float(result.history[-1]['loss']), 'init': method_params}


def peft_run(hf_dir: str, data, init_prompt: np.ndarray, steps: int, lr: float,
             decay_steps: Optional[int], seed: int = 0) -> Dict:
  """peft PROMPT_TUNING on the exported weights: same init, batches, optimizer (Adam), schedule."""
  import peft
  import torch
  import transformers

  torch.manual_seed(seed)
  base = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  length = init_prompt.shape[0]
  model = peft.get_peft_model(base, peft.PromptTuningConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=length))
  weight = model.prompt_encoder['default'].embedding.weight
  with torch.no_grad():
    weight[:length] = torch.tensor(init_prompt)
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
  # jaxpt's own schedule, evaluated once for every step, drives torch's learning rate.
  rates = schedule(lr, decay_steps=decay_steps)(np.arange(steps + 1))  # a constant is a scalar
  factors = np.broadcast_to(np.asarray(rates), (steps + 1,)) / lr
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: float(factors[k]))
  batches = ClassificationBatches(data['train_inputs'], data['train_labels'], data['table'],
                                  BATCH, seed)
  model.train()
  times = []
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    start = time.perf_counter()
    for position in range(steps):
      t = time.perf_counter()
      b = {k: torch.tensor(v, dtype=torch.long) for k, v in batches(position).items()}
      labels = b['decoder_target_tokens'].masked_fill(b['decoder_target_tokens'] == 0, -100)
      out = model(input_ids=b['encoder_input_tokens'],
                  attention_mask=(b['encoder_input_tokens'] != 0).long(), labels=labels)
      out.loss.backward()
      optimizer.step()
      scheduler.step()
      optimizer.zero_grad()
      times.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    final_loss = float(out.loss)
    model.eval()
    table = torch.tensor(data['table'], dtype=torch.long)
    dec = torch.cat([torch.zeros((table.shape[0], 1), dtype=torch.long), table[:, :-1]], 1)
    predictions = []
    with torch.no_grad():
      for s in range(0, len(data['val_inputs']), 64):
        enc = torch.tensor(data['val_inputs'][s:s + 64], dtype=torch.long)
        n = enc.shape[0]
        scores = []
        for k in range(table.shape[0]):
          logits = model(input_ids=enc, attention_mask=(enc != 0).long(),
                         decoder_input_ids=dec[k:k + 1].repeat(n, 1)).logits
          logp = torch.log_softmax(logits.float(), -1)
          tgt = table[k:k + 1].repeat(n, 1)
          tok = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * (tgt > 0)
          scores.append(tok.sum(-1))
        predictions.append(torch.stack(scores, -1).argmax(-1).numpy())
  # peft allocates 2P rows for T5 (one per transformer submodule) and uses the first P.
  return {'predictions': np.concatenate(predictions),
          'trainable': sum(p.numel() for p in params), 'seconds': seconds,
          'ms_per_step': 1000 * float(np.median(times[1:])) if steps > 1 else None,
          'final_loss': final_loss}


def row(task: str, method: str, run: Dict, data) -> Dict:
  """A result row (accuracy, interval, margin over the majority class) from a run."""
  correct = int((run['predictions'] == data['val_labels']).sum())
  n = len(data['val_labels'])
  low, high = wilson(correct, n)
  return {'task': task, 'method': method, 'trainable': run['trainable'],
          'seconds': round(run['seconds'], 1),
          'ms_per_step': None if run['ms_per_step'] is None else round(run['ms_per_step'], 1),
          'final_train_loss': round(run['final_loss'], 4), 'correct': correct, 'n': n,
          'accuracy': 100 * correct / n, 'ci95': [round(low, 1), round(high, 1)],
          'majority': data['majority'],
          'predicted_classes': int(len(np.unique(run['predictions'])))}


def markdown(rows: Sequence[Dict]) -> str:
  lines = ['| task | method | trainable parameters | train seconds | ms / step | '
           'accuracy % (95% CI) | vs majority |', '|---|---|---|---|---|---|---|']
  done = set()
  for r in rows:
    if r['task'] not in done:
      done.add(r['task'])
      lines.append(f"| {r['task']} | majority class | 0 | - | - | {r['majority']:.1f} | - |")
    ms = '-' if r['ms_per_step'] is None else f"{r['ms_per_step']:.0f}"
    lines.append(f"| {r['task']} | {r['method']} | {r['trainable']:,} | {r['seconds']:.0f} | "
                 f"{ms} | {r['accuracy']:.1f} ({r['ci95'][0]:.1f}-{r['ci95'][1]:.1f}) | "
                 f"{r['accuracy'] - r['majority']:+.1f} |")
  return '\n'.join(lines)


def runs_for(data, prompt_lr: float, decay_steps: Optional[int]) -> List[Tuple]:
  """(label, method, trainable rules, optimizer) of every jaxpt row."""
  adam = lambda lr: make_optimizer('adamw', lr, weight_decay=0.0, decay_steps=decay_steps)
  runs = [(f'prompt tuning P={p}, {init}', PromptTuning(
      length=p, initializer=init, class_labels=data['words'] if init == 'class_labels' else ()),
           PROMPT_ONLY, adam(prompt_lr))
          for p in (20, 100) for init in INITS]
  runs += [('prefix tuning (Li & Liang, MLP) P=10', PrefixTuning(length=10), PROMPT_ONLY,
            adam(5e-3)),
           ('full model tuning', ModelTuning(), EVERYTHING, adam(1e-3))]
  return runs


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', default='sst2=2000,rte=200',
                      help="training steps of every run: one number, or per benchmark "
                           "('sst2=2000,rte=200')")
  parser.add_argument('--no_lr_decay', action='store_true',
                      help='constant learning rates (default: linear decay to 0 over the run)')
  parser.add_argument('--prompt_lr', type=float, default=0.3,
                      help='Adam learning rate of prompt tuning (jaxpt and peft)')
  parser.add_argument('--benchmarks', default='sst2,rte')
  parser.add_argument('--out_dir', default=os.path.join('runs', 'paper_comparison'))
  parser.add_argument('--no_peft', action='store_true')
  parser.add_argument('--only', default='',
                      help="substrings separated by '|': run only the methods whose label has one")
  parser.add_argument('--backbone', default=mini_t5_path(),
                      help='a jaxpt model directory with its spiece.model')
  args = parser.parse_args(argv)

  t0 = time.perf_counter()
  matmul = {'jax': round(matmul_peak_gflops(1024), 1),
            'torch': round(torch_matmul_peak(argparse.Namespace(
                matmul_n=1024, device='cpu', dtype='float32')), 1)}
  load_now = ' '.join(f'{x:.2f}' for x in load_average())
  machine = (f'{cpu_name()}, {os.cpu_count()} cores, load {load_now}; float32 matmul '
             f'peak (1024^3) jax {matmul["jax"]} / torch {matmul["torch"]} GFLOP/s; '
             f'{versions()}')
  print(machine, flush=True)
  model = jaxpt.load_model(args.backbone)
  vocab = backbone_vocabulary(args.backbone)
  encode = lambda text: vocab.encode(text)
  hf_dir = tempfile.mkdtemp(prefix='mini_t5_hf_')
  jaxpt.save_hf(model, hf_dir)
  rows: List[Dict] = []
  only = [k for k in args.only.split('|') if k]
  benchmarks = args.benchmarks.split(',')
  steps = parse_steps(args.steps, benchmarks)
  lr_schedule = 'constant' if args.no_lr_decay else 'decaying linearly to 0 over the run'
  header = (f'Steps per run (batch {BATCH}): '
            f'{", ".join(f"{b} {steps[b]}" for b in benchmarks)}; backbone '
            f'{os.path.basename(os.path.normpath(args.backbone))} '
            f'({model.num_params():,} parameters) frozen except in full model tuning; Adam, '
            f'learning rates {lr_schedule} (prompt tuning {args.prompt_lr}, prefix 5e-3, full '
            f'model 1e-3); validation accuracy by rank classification. Machine: {machine}.')

  def write(rows: Sequence[Dict]) -> str:
    """table.md, results.json and the plot of the rows so far (a long run loses nothing)."""
    table = markdown(rows)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
      f.write(header + '\n\n' + table + '\n')
    with open(os.path.join(args.out_dir, 'results.json'), 'w') as f:
      json.dump({'steps': steps, 'batch': BATCH, 'prompt_lr': args.prompt_lr,
                 'lr_schedule': lr_schedule, 'machine': machine,
                 'wall_seconds': round(time.perf_counter() - t0), 'rows': rows}, f, indent=1)
    if rows:
      with open(os.path.join(args.out_dir, 'accuracy_vs_parameters.svg'), 'w') as f:
        f.write(svg(rows, 'mini T5 frozen: validation accuracy vs trainable parameters'))
    return table

  for benchmark in benchmarks:
    data = load(benchmark, encode)
    data.update(encode=encode, vocab=vocab)
    print(f'{benchmark}: train {len(data["train_labels"]):,}, validation '
          f'{len(data["val_labels"]):,}, majority class {data["majority"]:.1f}%', flush=True)
    decay = None if args.no_lr_decay else steps[benchmark]
    for label, method, rules, optimizer in runs_for(data, args.prompt_lr, decay):
      if only and not any(k in label for k in only):
        continue
      run = jaxpt_run(model, data, method, rules, optimizer, steps[benchmark])
      rows.append(row(benchmark, label, run, data))
      write(rows)
      print(markdown(rows[-1:]).splitlines()[-1], flush=True)
      if label == PEFT_ROW and not args.no_peft:
        peft = peft_run(hf_dir, data, np.asarray(run['init']['prompt']), steps[benchmark],
                        args.prompt_lr, decay)
        rows.append(row(benchmark, f'peft {label} (same init, batches, Adam)', peft, data))
        rows[-1]['agreement_with_jaxpt'] = float(
            (peft['predictions'] == run['predictions']).mean())
        write(rows)
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  table = write(rows)
  print(header + '\n\n' + table)
  print(f'wrote {args.out_dir}/table.md, results.json, accuracy_vs_parameters.svg '
        f'({time.perf_counter() - t0:.0f} s)')


if __name__ == '__main__':
  main()
