"""`jaxpt demo`: the README's first command, offline on any machine.

Prompt-tunes jaxpt's committed mini backbone (`jaxpt/assets/mini_t5`: a
3.9M-parameter T5 1.1-style model pretrained with span corruption and
LM-adapted on the offline corpus of `tasks.corpus`, frozen here) with the
paper's recipe, evaluates it by rank classification beside the untrained
prompt's ("zero-shot") accuracy and the majority class, and writes the prompt
checkpoint and an HF export of the backbone under `runs/demo/`.

The default task is `synthetic_two_class` (generated text: fruit words vs tool
words, no files), read through the mini vocabulary. `task='sst2'` (or 'auto':
SST-2 when its files are found) uses SST-2 from the local data directory
($JAXPT_DATA_DIR, else $JAXPT_SHARED_DATA, else `../shared/data` beside the
repository), evaluated on its validation split. The default is the synthetic
task because on this toy backbone it is the one a short run shows prompt tuning
working on (the measurements, with their commands: docs/benchmarks.md).
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

import jaxpt
from jaxpt.assets import mini_t5_path
from jaxpt.checkpoints import prompts
from jaxpt.data.text_classification import ClassificationBatches, encode_inputs, label_table
from jaxpt.evaluate.splits import score_split
from jaxpt.methods import PROMPT_ONLY, Backbone, PromptTuning
from jaxpt.prompted.base import prompted_model
from jaxpt.train.loop import train as train_loop
from jaxpt.train.optim import make_optimizer
from jaxpt.vocabulary import backbone_vocabulary

PROMPT_LENGTH = 20
LENGTHS = {'inputs': 64, 'targets': 4}  # the inputs include the prompt


def data_dir() -> Optional[pathlib.Path]:
  """The directory holding `sst2/stsa.binary.{train,dev}`, or None."""
  candidates = [os.environ.get('JAXPT_DATA_DIR'), os.environ.get('JAXPT_SHARED_DATA'),
                str(pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data')]
  for candidate in candidates:
    if candidate and all((pathlib.Path(candidate) / 'sst2' / f'stsa.binary.{s}').is_file()
                         for s in ('train', 'dev')):
      return pathlib.Path(candidate)
  return None


def load_task(task: str = 'auto') -> Tuple[str, List[Dict[str, Any]], List[Dict[str, Any]], str]:
  """(task name, train examples, eval examples, description) in text-to-text form.

  Args:
    task: 'sst2', 'synthetic', or 'auto' (SST-2 when its files are found).

  Raises:
    ValueError: for another task, or 'sst2' without its files.
  """
  from tasks import local, synthetic
  if task not in ('auto', 'sst2', 'synthetic'):
    raise ValueError(f"demo task must be 'auto', 'sst2' or 'synthetic', got {task!r}")
  directory = data_dir() if task != 'synthetic' else None
  if task == 'sst2' and directory is None:
    raise ValueError('SST-2 files (sst2/stsa.binary.train, .dev) not found: set JAXPT_DATA_DIR')
  if directory is not None:
    return ('glue_sst2_local_mini', list(local.local_examples('sst2', 'train', directory)),
            list(local.local_examples('sst2', 'validation', directory)),
            f'SST-2 from {directory} (train 6,920 / validation 872)')
  return ('synthetic_two_class', list(synthetic.synthetic_examples('train')),
          list(synthetic.synthetic_examples('validation', num_examples=512)),
          'the synthetic two-class task' + (
              '' if task == 'synthetic' else ' (no SST-2 files found: set JAXPT_DATA_DIR)'))


def output_dir(task_name: str) -> str:
  """Where a demo run writes: `runs/demo` for the default synthetic task, `runs/demo_sst2`
  for SST-2, so one task's run never overwrites another's."""
  if task_name == 'synthetic_two_class':
    return os.path.join('runs', 'demo')
  from tasks import labels
  return os.path.join('runs', f'demo_{labels.benchmark_of(task_name)}')


def run(seed: int = 0, steps: int = 300, out_dir: Optional[str] = None,
        batch_size: int = 32, backbone_dir: Optional[str] = None, task: str = 'synthetic',
        learning_rate: float = 0.3) -> float:
  """Runs the main job on the mini backbone (or `backbone_dir`, a jaxpt model directory
  with its `spiece.model`); returns the tuned accuracy (a fraction)."""
  import tasks

  start = time.perf_counter()
  task_name, train, evaluation, what = load_task(task)
  out_dir = out_dir or output_dir(task_name)
  print(f'jaxpt demo: prompt tuning a frozen T5 on {what}, offline.')
  backbone_dir = backbone_dir or mini_t5_path()
  model = jaxpt.load_model(backbone_dir)
  vocab = backbone_vocabulary(backbone_dir)
  print(f'  backbone: jaxpt\'s mini T5 ({model.num_params():,} parameters, d_model '
        f'{model.config.emb_dim}, {model.config.num_encoder_layers}+'
        f'{model.config.num_decoder_layers} layers), pretrained here by span corruption and '
        f'LM adaptation on a 2 MB offline corpus ({backbone_dir}); frozen. A toy, not T5.')
  encode = lambda text: vocab.encode(text)
  text_length = tasks.feature_lengths(LENGTHS['inputs'], LENGTHS['targets'],
                                      PROMPT_LENGTH)['inputs']
  words = tasks.label_words(task_name)
  table = label_table(words, encode, LENGTHS['targets'])
  batches = ClassificationBatches(
      encode_inputs([e['inputs'] for e in train], encode, text_length),
      np.asarray([words.index(e['targets']) for e in train]), table, batch_size, seed)
  eval_set = {'inputs': encode_inputs([e['inputs'] for e in evaluation], encode, text_length),
              'target_texts': [e['targets'] for e in evaluation], 'vocabulary': vocab}
  counts = np.bincount([words.index(t) for t in eval_set['target_texts']], minlength=len(words))
  majority = counts.max() / counts.sum()

  method = PromptTuning(length=PROMPT_LENGTH, initializer='class_labels', class_labels=words)
  prompted = prompted_model(model.config, method)
  method_params = method.init(jax.random.key(seed + 1), Backbone(
      model.config, model.params['token_embedder']['embedding'], encode))
  params = {'backbone': model.params, 'method': method_params}
  zero_shot = score_split(prompted, params, task_name, eval_set,
                          batch_size=64)['metrics']['accuracy'] / 100
  n_trainable = sum(x.size for x in jax.tree.leaves(method_params))
  print(f'  trainable: {n_trainable:,} prompt parameters ({PROMPT_LENGTH} x '
        f'{model.config.emb_dim}, class-label init); frozen: {model.num_params():,}')
  # Adam, not the paper's Adafactor at 0.3: on this tiny backbone it moves the prompt
  # much faster, and the demo has a couple of minutes.
  optimizer = make_optimizer('adamw', learning_rate, weight_decay=0.0)
  result = train_loop(prompted, model.params, method_params, batches, optimizer=optimizer,
                 num_steps=steps, rng=jax.random.key(seed + 2), trainable_rules=PROMPT_ONLY,
                 log_every=100, print_fn=lambda line: print('  ' + line, flush=True))
  tuned_params = result.params
  scored = score_split(prompted, tuned_params, task_name, eval_set, batch_size=64)
  tuned = scored['metrics']['accuracy'] / 100

  os.makedirs(out_dir, exist_ok=True)
  jaxpt.save_hf(model, os.path.join(out_dir, 'backbone_hf'))
  prompt_dir = os.path.join(out_dir, 'prompt')
  prompts.save_prompt(prompt_dir, method, tuned_params['method'], model, step=steps,
                      metrics={'accuracy': tuned})
  reloaded = jaxpt.load_model(backbone_dir, prompt=prompt_dir)
  first = {k: (v[:64] if k != 'vocabulary' else v) for k, v in eval_set.items()}
  again = score_split(reloaded.prompted, reloaded.all_params, task_name, first)
  same = again['predictions'] == scored['predictions'][:64]
  print(f'  wrote the prompt checkpoint (prompt/) and the backbone as HF (backbone_hf/) to '
        f'{out_dir}/; reloaded with jaxpt.load_model(backbone, prompt=...): the first 64 '
        f'predictions {"match" if same else "DIFFER"}')
  print(f'accuracy on {len(evaluation)} held-out examples (majority class {majority:.1%}): '
        f'zero-shot {zero_shot:.1%}, prompt-tuned {tuned:.1%}  '
        f'[{time.perf_counter() - start:.0f}s on {jax.devices()[0].platform}]')
  return tuned
