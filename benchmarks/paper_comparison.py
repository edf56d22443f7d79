"""The prompt-tuning paper's comparison in miniature, on jaxpt's mini backbone (frozen).

    JAXPT_DATA_DIR=../shared/data python benchmarks/paper_comparison.py [--steps 100]

On SST-2 and RTE (official train -> validation files): prompt tuning (length
20 and 100; inits uniform / sampled_vocab / class_labels), prefix tuning
(Li & Liang, length 10), full model tuning, and the same prompt tuning with
peft (PyTorch) on the same frozen weights exported by `jaxpt.save_hf`, from
the same initial prompt, on the same batches, with the same optimizer
(Adafactor, lr 0.3). Every run trains `--steps` steps of batch 32 through
`jaxpt.train.loop.train`; accuracy is rank classification over the label
words on the whole validation split. Prints a markdown table (and writes it
to `--out`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Tuple

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxpt  # noqa: E402
from jaxpt.assets import mini_t5_path  # noqa: E402
from jaxpt.cli.runs import score_split  # noqa: E402
from jaxpt.data.text_classification import (ClassificationBatches, encode_inputs,  # noqa: E402
                                            label_table)
from jaxpt.methods import (EVERYTHING, PROMPT_ONLY, Backbone, ModelTuning,  # noqa: E402
                           PrefixTuning, PromptTuning, partition)
from jaxpt.train.loop import train  # noqa: E402
from jaxpt.train.optim import make_optimizer  # noqa: E402

TEXT_LENGTHS = {'sst2': 48, 'rte': 128}  # encoder text tokens; a prompt comes on top
TARGET_LENGTH = 4
BATCH = 32


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
      'majority': float(np.bincount(val_labels).max() / len(val_labels)),
  }


def jaxpt_run(model, data, method, rules, optimizer, steps, seed=0
              ) -> Tuple[float, int, float, Dict]:
  """(accuracy %, trainable parameters, train seconds, initial method params) of one run."""
  encode_backbone = Backbone(model.config, model.params['token_embedder']['embedding'],
                             data['encode'])
  method_params = method.init(jax.random.key(seed + 1), encode_backbone)
  batches = ClassificationBatches(data['train_inputs'], data['train_labels'], data['table'],
                                  BATCH, seed)
  start = time.perf_counter()
  result = train(model.config, model.params, method, method_params, batches,
                 optimizer=optimizer, num_steps=steps, rng=jax.random.key(seed + 2),
                 trainable_rules=rules, print_fn=None, log_every=steps)
  seconds = time.perf_counter() - start
  trainable = partition({'backbone': model.params, 'method': method_params}, rules)[0]
  count = sum(x.size for x in jax.tree.leaves(trainable))
  examples = {'inputs': data['val_inputs'], 'target_texts': data['val_targets'],
              'vocabulary': data['vocab']}
  scored = score_split(model.config, method, result.params, data['name'], examples,
                       batch_size=64)
  return scored['metrics']['accuracy'], count, seconds, method_params


def peft_run(hf_dir: str, data, init_prompt: np.ndarray, steps: int, seed=0
             ) -> Tuple[float, int, float]:
  """peft PROMPT_TUNING on the exported weights: same init, batches and optimizer."""
  import peft
  import torch
  import transformers
  from transformers.optimization import Adafactor

  torch.manual_seed(seed)
  base = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  length = init_prompt.shape[0]
  model = peft.get_peft_model(base, peft.PromptTuningConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=length))
  weight = model.prompt_encoder['default'].embedding.weight
  with torch.no_grad():
    weight[:length] = torch.tensor(init_prompt)
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = Adafactor(params, lr=0.3, scale_parameter=False, relative_step=False,
                        warmup_init=False, decay_rate=-0.8, weight_decay=1e-5,
                        clip_threshold=1.0)
  batches = ClassificationBatches(data['train_inputs'], data['train_labels'], data['table'],
                                  BATCH, seed)
  model.train()
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for position in range(steps):
      b = {k: torch.tensor(v, dtype=torch.long) for k, v in batches(position).items()}
      labels = b['decoder_target_tokens'].masked_fill(b['decoder_target_tokens'] == 0, -100)
      out = model(input_ids=b['encoder_input_tokens'],
                  attention_mask=(b['encoder_input_tokens'] != 0).long(), labels=labels)
      out.loss.backward()
      optimizer.step()
      optimizer.zero_grad()
    seconds = time.perf_counter() - start
    model.eval()
    table = torch.tensor(data['table'], dtype=torch.long)
    dec = torch.cat([torch.zeros((table.shape[0], 1), dtype=torch.long), table[:, :-1]], 1)
    correct = 0
    with torch.no_grad():
      for s in range(0, len(data['val_inputs']), 64):
        enc = torch.tensor(data['val_inputs'][s:s + 64], dtype=torch.long)
        scores = []
        for k in range(table.shape[0]):
          n = enc.shape[0]
          logits = model(input_ids=enc, attention_mask=(enc != 0).long(),
                         decoder_input_ids=dec[k:k + 1].repeat(n, 1)).logits
          logp = torch.log_softmax(logits.float(), -1)
          tgt = table[k:k + 1].repeat(n, 1)
          tok = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * (tgt > 0)
          scores.append(tok.sum(-1))
        pred = torch.stack(scores, -1).argmax(-1).numpy()
        correct += int((pred == data['val_labels'][s:s + 64]).sum())
  # peft keeps 2P rows for T5 and uses the first P (the rest get no gradient).
  return 100.0 * correct / len(data['val_inputs']), sum(p.numel() for p in params), seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--benchmarks', default='sst2,rte')
  parser.add_argument('--out', default=os.path.join('runs', 'paper_comparison.md'))
  parser.add_argument('--no_peft', action='store_true')
  parser.add_argument('--only', default='',
                      help="substrings separated by '|': run only the methods whose label has one")
  parser.add_argument('--backbone', default=mini_t5_path(),
                      help='a jaxpt model directory with its spiece.model')
  args = parser.parse_args()
  import sentencepiece as spm

  model = jaxpt.load_model(args.backbone)
  vocab = spm.SentencePieceProcessor(model_file=os.path.join(args.backbone, 'spiece.model'))
  encode = lambda text: vocab.encode(text)
  hf_dir = tempfile.mkdtemp(prefix='mini_t5_hf_')
  jaxpt.save_hf(model, hf_dir)
  rows: List[str] = []
  for benchmark in args.benchmarks.split(','):
    data = load(benchmark, encode)
    data.update(encode=encode, vocab=vocab)
    runs = [(f'prompt tuning P={p}, {init}', PromptTuning(
        length=p, initializer=init, class_labels=data['words'] if init == 'class_labels' else ()),
             PROMPT_ONLY, make_optimizer('adafactor'))
            for p in (20, 100) for init in ('uniform', 'sampled_vocab', 'class_labels')]
    runs += [('prefix tuning (Li & Liang) P=10', PrefixTuning(length=10), PROMPT_ONLY,
              make_optimizer('adamw', 5e-3, weight_decay=0.0)),
             ('full model tuning', ModelTuning(), EVERYTHING,
              make_optimizer('adafactor', 1e-3, weight_decay=0.0))]
    rows.append(f'| {benchmark} | majority class | 0 | - | {100 * data["majority"]:.1f} |')
    if args.only:
      runs = [r for r in runs if any(k in r[0] for k in args.only.split('|'))]
    for label, method, rules, optimizer in runs:
      accuracy, count, seconds, init = jaxpt_run(model, data, method, rules, optimizer,
                                                 args.steps)
      rows.append(f'| {benchmark} | {label} | {count:,} | {seconds:.0f} | {accuracy:.1f} |')
      print(rows[-1], flush=True)
      if label == 'prompt tuning P=20, class_labels' and not args.no_peft:
        accuracy, count, seconds = peft_run(hf_dir, data, np.asarray(init['prompt']),
                                            args.steps)
        rows.append(f'| {benchmark} | peft prompt tuning P=20, class_labels (same init, '
                    f'batches, optimizer) | {count:,} | {seconds:.0f} | {accuracy:.1f} |')
        print(rows[-1], flush=True)
  header = (f'{args.steps} steps x batch {BATCH} per run, mini backbone frozen '
            f'({model.num_params():,} parameters), validation accuracy by rank classification\n\n'
            '| task | method | trainable parameters | train seconds | accuracy % |\n'
            '|---|---|---|---|---|')
  table = header + '\n' + '\n'.join(rows)
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    f.write(table + '\n')
  print(table)


if __name__ == '__main__':
  main()
