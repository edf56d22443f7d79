"""The soft-prompt family side by side, in miniature: one frozen backbone, four tasks.

Prompt tuning, P-tuning, MPT, SPoT, deep prompts and prefix tuning, each tuned
on SST-2, RTE, CB and COPA (the official files in $JAXPT_DATA_DIR) with the
same step budget, batch size and seeds, scored by rank classification on the
validation split. MPT and SPoT hold each target out in turn:

* MPT: teachers are the prompt-tuning prompts of the three other tasks (trained
  for this table anyway); the shared prompt and rank-r factors are trained on
  their mixture with distillation, then a target prompt starts from P* with
  fresh factors (Wang et al. 2023).
* SPoT: a short prompt-tuning run on the target gives its task embedding; the
  most similar of the other tasks' prompts (cosine of average vectors) is the
  source it starts from (Vu et al. 2022).

P-tuning and deep prompts come from another part of jaxpt: they are looked up
by name and skipped with a note when this jaxpt has no such method (deep
prompts then run as the prefix configuration they stand for: prefixes in every
layer without the reparameterization).

  python benchmarks/soft_prompt_family.py --backbone PATH --steps 1000
  python benchmarks/soft_prompt_family.py --backbone random:tiny --quick   # smoke check

`--backbone` is any jaxpt / HF / T5X model directory (`random:tiny` is a
random tiny T5, for checking the script only). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxpt  # noqa: E402
from jaxpt.data.text_classification import encode_inputs  # noqa: E402
from jaxpt.methods import Backbone, MultitaskPromptTuning, PrefixTuning, PromptTuning  # noqa: E402
from jaxpt.methods.multitask import stack_teachers  # noqa: E402
from jaxpt.methods.prompt import truncate_for_prompt  # noqa: E402
from jaxpt.checkpoints.transfer import rank_by_similarity, LibraryPrompt  # noqa: E402
from jaxpt.train.distill import Distillation  # noqa: E402
from jaxpt.prompted.base import prompted_model  # noqa: E402
from jaxpt.train.loop import train  # noqa: E402
from jaxpt.train.optim import make_optimizer  # noqa: E402

TASKS = {'sst2': 'glue_sst2_local', 'rte': 'super_glue_rte_local', 'cb': 'super_glue_cb_local',
         'copa': 'super_glue_copa_local'}
# Methods from another part of jaxpt, looked up by these names in jaxpt.methods (each is
# called with length=...): the P-tuning class and the deep-prompt factory.
P_TUNING_NAMES = ('PTuning',)
DEEP_PROMPT_NAMES = ('deep_prompt_tuning',)


@dataclasses.dataclass
class TaskData:
  name: str
  train_inputs: np.ndarray
  train_targets: np.ndarray
  eval_examples: Dict[str, Any]


def load_task(benchmark: str, vocab: Any, input_length: int, target_length: int,
              max_train: Optional[int], max_eval: Optional[int]) -> TaskData:
  """Tokenized train split and validation examples of a task (no TensorFlow)."""
  from tasks import local
  examples = {split: list(itertools.islice(local.local_examples(benchmark, split), cap or None))
              for split, cap in (('train', max_train), ('validation', max_eval))}
  train_rows = examples['train']
  ev = examples['validation']
  return TaskData(
      name=TASKS[benchmark],
      train_inputs=encode_inputs([r['inputs'] for r in train_rows], vocab.encode, input_length),
      train_targets=encode_inputs([r['targets'] for r in train_rows], vocab.encode,
                                  target_length),
      eval_examples={'inputs': encode_inputs([r['inputs'] for r in ev], vocab.encode,
                                             input_length),
                     'target_texts': [r['targets'] for r in ev], 'vocabulary': vocab})


def batches(tasks: List[TaskData], batch_size: int, seed: int, prompt_length: int,
            input_length: int, with_task_ids: bool = False) -> Callable[[int], Dict]:
  """Position -> a batch drawn uniformly from `tasks` (a mixture when several)."""
  inputs = [truncate_for_prompt(t.train_inputs, prompt_length, input_length) for t in tasks]

  def at(position: int) -> Dict[str, np.ndarray]:
    rng = np.random.RandomState([seed, position])
    task_ids = rng.randint(0, len(tasks), batch_size)
    enc, tgt = [], []
    for k in task_ids:
      i = rng.randint(0, len(inputs[k]))
      enc.append(inputs[k][i])
      tgt.append(tasks[k].train_targets[i])
    tgt = np.stack(tgt)
    dec = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    batch = {'encoder_input_tokens': np.stack(enc), 'decoder_input_tokens': dec,
             'decoder_target_tokens': tgt}
    if with_task_ids:
      batch['task_ids'] = task_ids.astype(np.int32)
    return batch

  return at


def accuracy(model: Any, method: Any, method_params: Any, task: TaskData,
             input_length: int) -> float:
  from jaxpt.evaluate.splits import score_split
  examples = dict(task.eval_examples, inputs=truncate_for_prompt(
      task.eval_examples['inputs'], method.prompt_length, input_length))
  out = score_split(prompted_model(model.config, method), {'backbone': model.params, 'method': method_params},
                    task.name, examples)
  return float(out['metrics']['accuracy'])


def lookup(names: Tuple[str, ...]) -> Optional[Any]:
  methods = importlib.import_module('jaxpt.methods')
  for name in names:
    if hasattr(methods, name):
      return getattr(methods, name)
  return None


class Runner:
  """Trains a method on a task (or a mixture) with the shared budget."""

  def __init__(self, model: Any, args: argparse.Namespace, encode: Callable):
    self.model, self.args = model, args
    self.backbone = Backbone(model.config, model.params['token_embedder']['embedding'], encode)
    # Each family's gin preset recipe (gin/methods/*.gin).
    self.optimizers = {'prompt': make_optimizer('adafactor', 0.3),
                       'p_tuning': make_optimizer('adamw', 1e-3, weight_decay=0.0),
                       'prefix': make_optimizer('adamw', 5e-3, weight_decay=0.0)}

  def fit(self, method: Any, tasks: List[TaskData], seed: int, steps: int, kind: str = 'prompt',
          params: Any = None, **kwargs) -> Tuple[Any, float]:
    args = self.args
    params = method.init(jax.random.key(seed), self.backbone) if params is None else params
    data = batches(tasks, args.batch_size, seed, method.prompt_length, args.input_length,
                   with_task_ids=len(tasks) > 1)
    result = train(prompted_model(self.model.config, method), self.model.params, params, data,
                   optimizer=self.optimizers[kind], num_steps=steps,
                   rng=jax.random.key(seed + 1), print_fn=None, log_every=max(steps, 1),
                   **kwargs)
    return result.method_params, result.history[-1]['loss'] if result.history else float('nan')


def run(args: argparse.Namespace) -> List[str]:
  from jaxpt.vocabulary import backbone_vocabulary
  from tasks import local
  if args.data_dir:
    local.set_data_dir(args.data_dir)
  vocab = backbone_vocabulary(None if args.backbone.startswith('random:') else args.backbone)
  if args.backbone == 'random:tiny':
    config = jaxpt.preset('t5_1_1', 'tiny')
    from jaxpt.models.t5 import init_params
    model = jaxpt.Model(config, init_params(config, jax.random.key(0)), 'random:tiny')
    print('NOTE: random:tiny is a RANDOM backbone: the numbers only check the script.')
  else:
    model = jaxpt.load_model(args.backbone)
  if vocab.vocab_size > model.config.vocab_size:
    raise SystemExit(f'the vocabulary has {vocab.vocab_size} ids but the backbone embeds only '
                     f'{model.config.vocab_size}: give the backbone its own spiece.model')
  cap = 64 if args.quick else None
  data = {b: load_task(b, vocab, args.input_length, args.target_length, cap,
                       16 if args.quick else args.eval_examples) for b in args.tasks}
  runner = Runner(model, args, lambda text: list(vocab.encode(text)))
  L, steps = args.prompt_length, args.steps
  notes: List[str] = []
  p_tuning_cls = lookup(P_TUNING_NAMES)
  deep_cls = lookup(DEEP_PROMPT_NAMES)
  if p_tuning_cls is None:
    notes.append(f'P-tuning skipped: no {" / ".join(P_TUNING_NAMES)} in jaxpt.methods')
  if deep_cls is None:
    notes.append(f'deep prompts: no {" / ".join(DEEP_PROMPT_NAMES)} in jaxpt.methods; ran the '
                 f'prefix configuration it stands for (PrefixTuning(reparameterize=False))')
  columns = ['prompt tuning', 'P-tuning', 'MPT', 'SPoT', 'deep prompts', 'prefix tuning']
  scores: Dict[str, Dict[str, List[float]]] = {c: {b: [] for b in data} for c in columns}
  sources: Dict[str, List[str]] = {b: [] for b in data}
  start = time.time()
  for seed in args.seeds:
    prompt_method = PromptTuning(length=L, initializer='sampled_vocab')
    tuned = {}
    for b, task in data.items():  # prompt tuning; also the MPT teachers and SPoT sources
      tuned[b], _ = runner.fit(prompt_method, [task], seed, steps)
      scores['prompt tuning'][b].append(accuracy(model, prompt_method, tuned[b], task,
                                                 args.input_length))
    for b, task in data.items():
      others = [o for o in data if o != b]
      if p_tuning_cls is not None:
        try:
          method = p_tuning_cls(length=L)
          params, _ = runner.fit(method, [task], seed, steps, kind='p_tuning')
          scores['P-tuning'][b].append(accuracy(model, method, params, task, args.input_length))
        except TypeError as e:
          notes.append(f'P-tuning skipped: {p_tuning_cls.__name__}(length=...) failed: {e}')
          p_tuning_cls = None
      deep = (deep_cls(length=L) if deep_cls is not None
              else PrefixTuning(length=L, style='paper', reparameterize=False))
      params, _ = runner.fit(deep, [task], seed, steps, kind='prefix')
      scores['deep prompts'][b].append(accuracy(model, deep, params, task, args.input_length))
      prefix = PrefixTuning(length=L, style='paper', reparameterize=True)
      params, _ = runner.fit(prefix, [task], seed, steps, kind='prefix')
      scores['prefix tuning'][b].append(accuracy(model, prefix, params, task, args.input_length))

      if others:
        # MPT: sources = the other tasks, teachers = their prompt-tuning prompts.
        teacher, teacher_params = stack_teachers([tuned[o]['prompt'] for o in others])
        mpt = MultitaskPromptTuning(length=L, num_tasks=len(others), rank=args.rank)
        source, _ = runner.fit(mpt, [data[o] for o in others], seed, steps,
                               distillation=Distillation(teacher, args.kl_weight,
                                                         args.hidden_weight),
                               teacher_params=teacher_params)
        target = mpt.target_adaptation(source)
        params, _ = runner.fit(target, [task], seed, steps)
        scores['MPT'][b].append(accuracy(model, target, params, task, args.input_length))

        # SPoT: the target's task embedding from a short run, then the most similar source.
        query, _ = runner.fit(prompt_method, [task], seed, max(steps // 10, 1))
        library = [LibraryPrompt(o, '', None, np.asarray(tuned[o]['prompt'])) for o in others]
        best = rank_by_similarity(np.asarray(query['prompt']), library)[0][0]
        sources[b].append(best.name)
        spot = PromptTuning(length=L, initializer='array', array=best.prompt)
        params, _ = runner.fit(spot, [task], seed, steps)
        scores['SPoT'][b].append(accuracy(model, spot, params, task, args.input_length))

  mean = lambda xs: f'{np.mean(xs):.1f}' if xs else 'n/a'
  lines = [f'backbone {args.backbone}; {steps} steps per method and stage, batch '
           f'{args.batch_size}, prompt length {L}, seeds {list(args.seeds)}; validation '
           f'accuracy (rank classification); {time.time() - start:.0f} s', '',
           '| task | ' + ' | '.join(columns) + ' | SPoT source |',
           '|---|' + '---|' * (len(columns) + 1)]
  for b in data:
    lines.append(f'| {b} | ' + ' | '.join(mean(scores[c][b]) for c in columns) +
                 f' | {", ".join(sources[b]) or "-"} |')
  lines.append('| mean | ' + ' | '.join(
      mean([np.mean(v) for v in scores[c].values() if v]) for c in columns) + ' | |')
  lines += [''] + [f'- {n}' for n in dict.fromkeys(notes)]
  return lines


def main(argv: Optional[List[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--backbone', required=True,
                      help='a jaxpt / HF / T5X model directory (random:tiny: a random tiny T5)')
  parser.add_argument('--steps', type=int, default=1000, help='steps per method and stage')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0])
  parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
  parser.add_argument('--prompt_length', type=int, default=20)
  parser.add_argument('--rank', type=int, default=1, help='MPT factor rank')
  parser.add_argument('--kl_weight', type=float, default=1.0)
  parser.add_argument('--hidden_weight', type=float, default=1.0)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--input_length', type=int, default=256, help='includes the prompt')
  parser.add_argument('--target_length', type=int, default=8)
  parser.add_argument('--eval_examples', type=int, default=None, help='cap per task')
  parser.add_argument('--data_dir', default=None, help='default: $JAXPT_DATA_DIR')
  parser.add_argument('--quick', action='store_true',
                      help='smoke check: 2 steps, 64 training / 16 validation examples, short '
                      'inputs and prompts')
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.prompt_length, args.input_length, args.batch_size = 2, 4, 48, 4
  try:
    lines = run(args)
  except (ValueError, OSError) as e:
    raise SystemExit(f'soft_prompt_family: error: {e}')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
