"""The gin-configured runs behind `jaxpt train`, `jaxpt eval` and `jaxpt infer`.

Each run reads its settings from gin (T5X-style macros in gin/runs/*.gin:
MODEL_DIR, INITIAL_CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS,
TRAIN_STEPS, BATCH_SIZE, METHOD, OPTIMIZER, TRAINABLE_RULES) and writes into
the model directory: training checkpoints, prompt checkpoints, metrics.jsonl,
TensorBoard event files and the gin config.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import gin
import jax

import jaxpt
from jaxpt.checkpoints.prompts import MANIFEST, load_prompt
from jaxpt.data.features import pad_rows
from jaxpt.evaluate.splits import predict_texts, score_split
from jaxpt.methods import PROMPT_ONLY, Backbone, partition
from jaxpt.models.config import T5Config
from jaxpt.models.t5 import init_params
from jaxpt.prompted.base import prompted_model
from jaxpt.vocabulary import EOS_ID, backbone_vocabulary

CONFIG_FILE = 'config.gin'
OPERATIVE_CONFIG_FILE = 'operative_config.gin'
TUNED_MODEL_DIR = 'model'
"""Under MODEL_DIR: the tuned backbone (jaxpt model directory) of a run that trains it."""


def _writable_dir(path: Optional[str], what: str = 'MODEL_DIR') -> str:
  if not path:
    raise ValueError(f'{what} is not set: pass --gin.{what}="\'/path/to/dir\'"')
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, '.jaxpt_write_test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise OSError(f'{what} {path!r} is not a writable directory: {e.strerror or e}') from e
  return path


def _backbone(initial_checkpoint_path: Optional[str], model_config: Optional[T5Config],
              seed: int) -> jaxpt.Model:
  if initial_checkpoint_path:
    model = jaxpt.load_model(initial_checkpoint_path)
    if model_config is not None and model_config.emb_dim != model.config.emb_dim:
      raise ValueError(f'MODEL_CONFIG (d_model {model_config.emb_dim}) does not match the '
                       f'checkpoint {initial_checkpoint_path} (d_model {model.config.emb_dim})')
    if model_config is not None:  # run settings (dtype, scan, remat, dropout) from gin
      model = jaxpt.Model(model.config.replace(
          dtype=model_config.dtype, scan_layers=False, remat_policy=model_config.remat_policy,
          dropout_rate=model_config.dropout_rate), model.params, model.source)
    return model
  if model_config is None:
    raise ValueError('set INITIAL_CHECKPOINT_PATH (a T5 checkpoint) or MODEL_CONFIG '
                     '(a model gin file such as models/t5_1_1/tiny.gin)')
  print(f'WARNING: INITIAL_CHECKPOINT_PATH is not set: the backbone is a RANDOMLY '
        f'initialized T5 (seed {seed}), not a pretrained one.', flush=True)
  return jaxpt.Model(model_config, init_params(model_config, jax.random.key(seed)),
                     source=f'random init (seed {seed})')


def _check_placement(method: Any) -> None:
  """SeqIO tasks give formatted inputs: a template has no fields to place prompts between."""
  if method.places_prompt:
    raise ValueError(
        f'{method.name} template {method.template!r} places prompt tokens inside the input, '
        f"but the jaxpt command feeds the tasks' formatted inputs, which have no template "
        f"fields. Use template='' (the prompt goes in front) here, or build templated "
        f'inputs in Python with jaxpt.methods.Template')


def _task_setup(task_name: str, feature_lengths: Mapping[str, int], prompt_length: int):
  import tasks
  task = tasks.get_task(task_name)
  lengths = tasks.feature_lengths(feature_lengths['inputs'], feature_lengths['targets'],
                                  prompt_length)
  return task, lengths


def _vocabulary_encoder(task: Any):
  vocab = task.output_features['targets'].vocabulary
  return lambda text: list(vocab.encode(text))


def _tensorboard_writer(directory: str):
  import tensorflow as tf
  return tf.summary.create_file_writer(directory)


def _write_scalars(writer: Any, step: int, values: Mapping[str, Any]) -> None:
  import tensorflow as tf
  with writer.as_default():
    for key, value in values.items():
      if isinstance(value, (int, float)) and key not in ('step', 'time'):
        tf.summary.scalar(key, float(value), step=step)
  writer.flush()


# ------------------------------------------------------------------------------- the runs


@gin.configurable(module='jaxpt')
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          method: Any = gin.REQUIRED, optimizer: Any = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None,
          model_config: Optional[T5Config] = None,
          trainable_rules: Sequence[str] = PROMPT_ONLY, seed: int = 0,
          eval_split: Optional[str] = 'validation', eval_every: Optional[int] = None,
          eval_examples: Optional[int] = None, best_metric: Optional[str] = None,
          checkpoint_every: int = 1000, keep_checkpoints: int = 3, log_every: int = 100,
          label_smoothing: float = 0.0, z_loss: float = 0.0,
          partitioning: Optional[Any] = None,
          data_shards: Optional[int] = None) -> Dict[str, Any]:
  """Tunes `method` on a frozen backbone; see gin/runs/train.gin for the macros.

  `partitioning` (a `jaxpt.partitioning.PartitionConfig`, bound by
  gin/partitioning/*.gin) shards the run over a ('data', 'model') mesh.
  `batch_size` is the global batch; on several processes (`jax.distributed`)
  each reads only its `batch_size / processes` rows, from its own SeqIO shards
  (`data_shards` of them in all, default one per process; fix it to get the same
  batches, and losses, on any number of processes).
  """
  from jaxpt.data.seqio_batches import TrainBatches, eval_examples as read_eval
  from jaxpt.train.loop import train as train_loop

  _check_placement(method)
  model_dir = _writable_dir(model_dir)
  task, lengths = _task_setup(mixture_or_task_name, task_feature_lengths, method.prompt_length)
  main_process = jax.process_index() == 0  # writes the files besides Orbax's checkpoints
  if main_process:
    with open(os.path.join(model_dir, CONFIG_FILE), 'w') as f:
      f.write(gin.config_str())
  model = _backbone(initial_checkpoint_path, model_config, seed)
  prompted = prompted_model(model.config, method, label_smoothing=label_smoothing, z_loss=z_loss)
  method_params = method.init(jax.random.key(seed + 1), Backbone(
      model.config, model.params['token_embedder']['embedding'], _vocabulary_encoder(task)))
  batches = TrainBatches(mixture_or_task_name, lengths, batch_size, seed=seed,
                         num_shards=data_shards)
  if jax.process_count() > 1:
    print(f'data: process {jax.process_index()} of {jax.process_count()} reads data shards '
          f'{list(batches.shards)} of {batches.num_shards}: {batch_size // jax.process_count()} '
          f'of the {batch_size} rows of each batch', flush=True)

  eval_fn = None
  if eval_split and eval_every:
    examples = read_eval(mixture_or_task_name, lengths, eval_split, eval_examples)
    eval_fn = lambda params, step: {k: v for k, v in score_split(
        prompted, params, mixture_or_task_name, examples)['metrics'].items()
                                    if isinstance(v, (int, float))}
  writers = {}

  def on_metrics(record: Dict[str, Any]) -> None:
    split = record.get('split', 'train')
    if not main_process:
      return
    if split not in writers:
      writers[split] = _tensorboard_writer(os.path.join(model_dir, split))
    _write_scalars(writers[split], int(record['step']), record)

  result = train_loop(
      prompted, model.params, method_params, batches, optimizer=optimizer,
      num_steps=train_steps, rng=jax.random.key(seed + 2), trainable_rules=trainable_rules,
      model_dir=model_dir, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
      eval_fn=eval_fn, eval_every=eval_every, best_metric=best_metric,
      log_every=log_every, on_metrics=on_metrics, backbone_source=model.source,
      partitioning=partitioning)
  if main_process:
    with open(os.path.join(model_dir, OPERATIVE_CONFIG_FILE), 'w') as f:
      f.write(gin.operative_config_str())
  if 'backbone' in partition(result.params, trainable_rules)[0]:  # the backbone was tuned
    if jax.process_count() > 1:
      raise NotImplementedError('writing the tuned backbone of a multi-process run is not '
                                'supported yet; its training checkpoints are in '
                                f'{model_dir}/checkpoints')
    jaxpt.save_model(jaxpt.Model(model.config, result.params['backbone'],
                                 source=f'{model_dir} step {result.step}'),
                     os.path.join(model_dir, TUNED_MODEL_DIR))
  print(f'trained {result.step} steps; checkpoints and prompts in {model_dir}', flush=True)
  return {'step': result.step, 'model_dir': model_dir}


def _load_tuned(model_dir: str, initial_checkpoint_path: Optional[str],
                model_config: Optional[T5Config], seed: int, prompt_dir: Optional[str]):
  model = _backbone(initial_checkpoint_path, model_config, seed)
  path = prompt_dir or os.path.join(model_dir, 'prompt')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no prompt checkpoint at {path}: run `jaxpt train` with this '
                            f'MODEL_DIR first, or set PROMPT_DIR')
  method, method_params, manifest = load_prompt(path, model)
  _check_placement(method)
  return model, method, method_params, path


@gin.configurable(module='jaxpt')
def evaluate(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: Optional[str] = None,
             model_config: Optional[T5Config] = None, seed: int = 0,
             split: str = 'validation', max_examples: Optional[int] = None,
             prompt_dir: Optional[str] = None, batch_size: int = 32) -> Dict[str, Any]:
  """Scores a trained prompt on a task split; writes eval_metrics.jsonl + TensorBoard."""
  from jaxpt.data.seqio_batches import eval_examples as read_eval

  model_dir = _writable_dir(model_dir)
  model, method, method_params, path = _load_tuned(model_dir, initial_checkpoint_path,
                                                   model_config, seed, prompt_dir)
  _, lengths = _task_setup(mixture_or_task_name, task_feature_lengths, method.prompt_length)
  examples = read_eval(mixture_or_task_name, lengths, split, max_examples)
  start = time.time()
  out = score_split(prompted_model(model.config, method),
                    {'backbone': model.params, 'method': method_params},
                    mixture_or_task_name, examples, batch_size=batch_size)
  record = {'split': split, 'task': mixture_or_task_name, 'prompt': path,
            'examples': len(out['targets']), **out['metrics'],
            'seconds': round(time.time() - start, 2)}
  with open(os.path.join(model_dir, 'eval_metrics.jsonl'), 'a') as f:
    f.write(json.dumps(record) + '\n')
  with open(os.path.join(path, MANIFEST)) as f:
    step = json.load(f).get('step') or 0
  _write_scalars(_tensorboard_writer(os.path.join(model_dir, f'eval_{split}')), int(step),
                 out['metrics'])
  print(f'{mixture_or_task_name} {split}: ' + ', '.join(
      f'{k} {v:.2f}' for k, v in out['metrics'].items() if isinstance(v, float)), flush=True)
  return record


@gin.configurable(module='jaxpt')
def infer(*, model_dir: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          mixture_or_task_name: Optional[str] = None, input_tsv: Optional[str] = None,
          output_file: Optional[str] = None, initial_checkpoint_path: Optional[str] = None,
          model_config: Optional[T5Config] = None, seed: int = 0, split: str = 'validation',
          max_examples: Optional[int] = None, prompt_dir: Optional[str] = None,
          max_decode_length: int = 16, batch_size: int = 32) -> str:
  """Greedy predictions for a TSV of inputs (first column) or a task split, to JSONL."""
  import tasks
  from jaxpt.data.seqio_batches import eval_examples as read_eval

  model_dir = _writable_dir(model_dir)
  model, method, method_params, path = _load_tuned(model_dir, initial_checkpoint_path,
                                                   model_config, seed, prompt_dir)
  lengths = tasks.feature_lengths(task_feature_lengths['inputs'],
                                  task_feature_lengths['targets'], method.prompt_length)
  if input_tsv:
    if not os.path.isfile(input_tsv):
      raise FileNotFoundError(f'INPUT_TSV {input_tsv!r} does not exist')
    vocab = backbone_vocabulary(initial_checkpoint_path)
    texts = [line.rstrip('\n').split('\t')[0] for line in open(input_tsv) if line.strip()]
    tokens = pad_rows([vocab.encode(t)[:lengths['inputs'] - 1] + [EOS_ID] for t in texts],
                      lengths['inputs'])
    examples = {'inputs': tokens, 'input_texts': texts, 'target_texts': [''] * len(texts),
                'vocabulary': vocab}
  elif mixture_or_task_name:
    examples = read_eval(mixture_or_task_name, lengths, split, max_examples)
    vocab = examples['vocabulary']
  else:
    raise ValueError('infer needs INPUT_TSV or MIXTURE_OR_TASK_NAME')
  params = {'backbone': model.params, 'method': method_params}
  texts = predict_texts(prompted_model(model.config, method), params, examples['inputs'], vocab,
                        batch_size=batch_size, max_decode_length=max_decode_length)
  output_file = output_file or os.path.join(model_dir, 'predictions.jsonl')
  n = len(texts)
  with open(output_file, 'w') as f:
    for j, text in enumerate(texts):
      f.write(json.dumps({'input': examples['input_texts'][j], 'prediction': text,
                          'target': examples['target_texts'][j]}) + '\n')
  print(f'wrote {n} predictions to {output_file}', flush=True)
  return output_file


@gin.configurable(module='jaxpt')
def export(*, model_dir: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
           fmt: str = 'peft', initial_checkpoint_path: Optional[str] = None,
           model_config: Optional[T5Config] = None, seed: int = 0,
           prompt_dir: Optional[str] = None) -> str:
  """Writes the trained prompt as a peft adapter (`fmt='peft'`) or the backbone as an HF
  directory (`fmt='hf'`, with the prompt exported beside it as `adapter/`)."""
  from jaxpt.checkpoints.peft import export_peft

  output_dir = _writable_dir(output_dir, 'OUTPUT_DIR')
  model, method, method_params, _ = _load_tuned(model_dir, initial_checkpoint_path,
                                                model_config, seed, prompt_dir)
  if fmt == 'peft':
    export_peft(model, method, method_params, output_dir)
  elif fmt == 'hf':
    jaxpt.save_hf(model, output_dir)
    export_peft(model, method, method_params, os.path.join(output_dir, 'adapter'),
                base_model_name_or_path=output_dir)
  else:
    raise ValueError(f"export format must be 'peft' or 'hf', got {fmt!r}")
  print(f'wrote {fmt} export to {output_dir}', flush=True)
  return output_dir
