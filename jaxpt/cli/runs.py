"""The gin-configured runs behind `jaxpt train`, `jaxpt eval` and `jaxpt infer`.

Each run reads its settings from gin (T5X-style macros in gin/runs/*.gin:
MODEL_DIR, INITIAL_CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS,
TRAIN_STEPS, BATCH_SIZE, METHOD, OPTIMIZER, TRAINABLE_RULES) and writes into
the model directory: training checkpoints, prompt checkpoints, metrics.jsonl,
TensorBoard event files and the gin config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import gin
import jax
import numpy as np

import jaxpt
from jaxpt import storage
from jaxpt.checkpoints.prompts import MANIFEST, load_prompt
from jaxpt.cli import run_dir
from jaxpt.data.features import DecoderOnlyBatches, pad_rows
from jaxpt.evaluate.splits import eos_of, predict_texts, score_examples, score_split
from jaxpt.methods import PROMPT_ONLY, Backbone, partition
from jaxpt.methods.prompt import PromptInit
from jaxpt.models.config import T5Config, find_preset
from jaxpt.models.decoder_config import DecoderConfig, find_decoder_preset
from jaxpt.models.backbones import init_params
from jaxpt.prompted.base import prompted_model
from jaxpt.vocabulary import (UNK_ID, TokenizerVocabulary, backbone_vocabulary, model_digest,
                              shipped_model)

CONFIG_FILE = 'config.gin'
OPERATIVE_CONFIG_FILE = 'operative_config.gin'
TUNED_MODEL_DIR = 'model'
"""Under MODEL_DIR: the tuned backbone (jaxpt model directory) of a run that trains it."""


def _writable_dir(path: Optional[str], what: str = 'MODEL_DIR') -> str:
  if not path:
    raise ValueError(f'{what} is not set: pass --gin.{what}="\'/path/to/dir\'"')
  try:
    os.makedirs(path, exist_ok=True)
    # A probe of this process's own: the processes of a multi-host run share MODEL_DIR.
    with tempfile.NamedTemporaryFile(dir=path, prefix='.jaxpt_write_test'):
      pass
  except OSError as e:
    raise OSError(f'{what} {path!r} is not a writable directory: {e.strerror or e}') from e
  return path


def _run_overrides(model_config: Optional[T5Config], frozen_dtype: Optional[str]
                   ) -> Dict[str, Any]:
  """The config fields a run sets on its backbone: gin's run settings, the frozen dtype."""
  overrides: Dict[str, Any] = {}
  if model_config is not None:
    overrides.update(dtype=model_config.dtype, scan_layers=model_config.scan_layers,
                     remat_policy=model_config.remat_policy,
                     dropout_rate=model_config.dropout_rate)
  if frozen_dtype is not None:
    overrides['param_dtype'] = frozen_dtype
  return overrides


def run_config(base_config: T5Config, model_config: Optional[T5Config],
               frozen_dtype: Optional[str] = None) -> T5Config:
  """The config a run gives its backbone: the checkpoint's (or MODEL_CONFIG's) shapes with
  gin's run settings (dtype, scan_layers, remat, dropout) and the frozen weights' dtype.

  What `_backbone` builds, and what `jaxpt plan` (`jaxpt.cli.plan.train_model`) plans:
  tests/test_plan.py checks that the two agree.
  """
  return base_config.replace(**_run_overrides(model_config, frozen_dtype))


# The checkpoint's structure must be the one the model gin asks for.
_STRUCTURE = ('emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_encoder_layers',
              'num_decoder_layers', 'vocab_size', 'logits_via_embedding', 'mlp_activations')
_DECODER_STRUCTURE = ('family', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim',
                      'num_layers', 'vocab_size', 'tie_embeddings')


def _check_structure(found: Any, wanted: Any, path: str) -> None:
  if type(found) is not type(wanted):
    kind = lambda c: c.family if isinstance(c, DecoderConfig) else 'T5'
    raise ValueError(f'the checkpoint {path} is a {kind(found)} backbone but MODEL_CONFIG is a '
                     f'{kind(wanted)} one: use the model gin of this checkpoint')
  fields = _DECODER_STRUCTURE if isinstance(found, DecoderConfig) else _STRUCTURE
  diff = [f'{k} {getattr(found, k)!r} (gin: {getattr(wanted, k)!r})' for k in fields
          if getattr(found, k) != getattr(wanted, k)]
  if diff:
    raise ValueError(f'the checkpoint {path} does not have the structure MODEL_CONFIG asks for: '
                     f'{"; ".join(diff)}. Use the model gin of this checkpoint, or check that '
                     f'the checkpoint is complete')


def _backbone(initial_checkpoint_path: Optional[str], model_config: Optional[T5Config],
              seed: int, partitioning: Optional[Any] = None,
              frozen_dtype: Optional[str] = None) -> jaxpt.Model:
  """The run's backbone: the checkpoint with gin's run settings, or a random init.

  With `partitioning` every leaf is read straight into its sharding (no device gets a
  whole leaf); `model_config.scan_layers` stacks the checkpoint's layers while reading;
  `frozen_dtype` (e.g. 'bfloat16') stores the weights in that dtype (the caller passes it
  only when the whole backbone is frozen). A checkpoint whose structure (layers, widths,
  heads, vocabulary, tying, activation) differs from MODEL_CONFIG's is refused.
  """
  overrides = _run_overrides(model_config, frozen_dtype)
  if initial_checkpoint_path:
    if storage.is_gs(initial_checkpoint_path):
      print(f'backbone: reading {initial_checkpoint_path} from Google Cloud Storage (needs '
            f'network; each read gives up after {storage.GS_TIMEOUT_S:g} s without an answer)',
            flush=True)
    model = jaxpt.load_model(initial_checkpoint_path, partitioning=partitioning, **overrides)
    if model_config is not None:
      _check_structure(model.config, model_config, initial_checkpoint_path)
    return model
  if model_config is None:
    raise ValueError('set INITIAL_CHECKPOINT_PATH (a T5 checkpoint) or MODEL_CONFIG '
                     '(a model gin file such as models/t5_1_1/tiny.gin)')
  family = model_config.family if isinstance(model_config, DecoderConfig) else 'T5'
  print(f'WARNING: INITIAL_CHECKPOINT_PATH is not set: the backbone is a RANDOMLY '
        f'initialized {family} (seed {seed}), not a pretrained one.', flush=True)
  config = run_config(model_config, model_config, frozen_dtype)
  if partitioning is not None:  # initialized in place, each device computing its shards
    from jaxpt.partitioning import param_shardings
    shardings = param_shardings(config, partitioning.mesh(), partitioning.rules())
    params = jax.jit(lambda key: init_params(config, key), out_shardings=shardings)(
        jax.random.key(seed))
  else:
    params = init_params(config, jax.random.key(seed))
  return jaxpt.Model(config, params, source=f'random init (seed {seed})')


def _backbone_frozen(trainable_rules: Sequence[str], model_config: Optional[T5Config]) -> bool:
  """Whether `trainable_rules` leave every backbone parameter frozen (checked on the
  parameter paths of gated and ungated, tied and untied T5s, 64 layers deep)."""
  from flax import traverse_util

  from jaxpt.methods.split import partition
  from jaxpt.models.config import preset
  from jaxpt.models.backbones import abstract_params
  paths = {}
  for family, tied in (('t5_1_1', False), ('t5_1_0', True), ('t5_1_0', False)):
    config = preset(family, 'tiny', num_encoder_layers=64, num_decoder_layers=64,
                    logits_via_embedding=tied,
                    per_layer_relpos_bias=bool(getattr(model_config, 'per_layer_relpos_bias',
                                                       False)))
    paths.update(traverse_util.flatten_dict(abstract_params(config), sep='/'))
  probe = {'backbone': traverse_util.unflatten_dict({k: 0 for k in paths}, sep='/'),
           'method': {'prompt': 0}}
  try:
    return 'backbone' not in partition(probe, trainable_rules)[0]
  except ValueError:  # the rules match only method leaves this probe lacks
    return True


def _cast_frozen(params: Dict[str, Any], trainable_rules: Sequence[str], dtype: str
                 ) -> Dict[str, Any]:
  """`params` with its frozen backbone leaves cast to `dtype` (trainable ones untouched)."""
  from jaxpt.methods.split import combine, partition
  trainable, frozen = partition(params, trainable_rules)
  if 'backbone' in frozen:
    frozen = dict(frozen, backbone=jax.tree.map(lambda x: x.astype(dtype), frozen['backbone']))
  return combine(trainable, frozen)


def _check_placement(method: Any) -> None:
  """SeqIO tasks give formatted inputs: a template has no fields to place prompts between."""
  if method.places_prompt:
    raise ValueError(
        f'{method.name} template {method.template!r} places prompt tokens inside the input, '
        f"but the jaxpt command feeds the tasks' formatted inputs, which have no template "
        f"fields. Use template='' (the prompt goes in front) here, or build templated "
        f'inputs in Python with jaxpt.methods.Template')


def _packing(pack: bool, method: Any, task_name: Optional[str],
             data_shards: Optional[int], config: Any = None) -> bool:
  """Whether this run trains on packed rows: PACK, where packing is exact and supported."""
  if not pack:
    return False
  if isinstance(config, DecoderConfig):
    print(f'data: training unpacked (packing builds T5 encoder-decoder rows; the {config.family} '
          f'backbone trains on one example a row)', flush=True)
    return False
  if method.prefix_position != 'none':
    print(f'data: training unpacked: {method.name} with peft-style prefixes (prefix keys at '
          f'positions before the row) is not exact on packed rows', flush=True)
    return False
  if task_name:
    import seqio

    import tasks
    why = None
    if not isinstance(tasks.get_task(task_name), seqio.Task):
      why = 'a mixture streams its tasks; packing reads one task\'s split'
    elif jax.process_count() > 1 or (data_shards or 1) > 1:
      why = 'packing reads the whole split on one process, in one data shard'
    if why:
      print(f'data: training unpacked ({why})', flush=True)
      return False
  return True


def lengths_total(feature_lengths: Mapping[str, int]) -> int:
  """Positions of a decoder-only training row: TASK_FEATURE_LENGTHS' inputs (the prompt
  included) plus targets."""
  return int(feature_lengths['inputs']) + int(feature_lengths['targets'])


def _check_positions(config: Any, prompt_length: int, length: int) -> None:
  """Refuses rows longer than GPT-2's position table (Llama's RoPE has no table)."""
  if isinstance(config, DecoderConfig) and config.family == 'gpt2' and \
      length > config.max_positions:
    raise ValueError(f'a row of {length} positions (prompt {prompt_length} + inputs + targets, '
                     f'or + decoded tokens) does not fit GPT-2\'s {config.max_positions} '
                     f'positions: lower TASK_FEATURE_LENGTHS (or max_decode_length)')


def _task_setup(task_name: str, feature_lengths: Mapping[str, int], prompt_length: int):
  import tasks
  task = tasks.get_task(task_name)
  lengths = tasks.feature_lengths(feature_lengths['inputs'], feature_lengths['targets'],
                                  prompt_length)
  return task, lengths


_TENSORBOARD_WARNED = []


def _tensorboard_writer(directory: str) -> Optional[Any]:
  """A TensorBoard event writer, or None (one warning) when TensorFlow cannot write events:
  metrics.jsonl holds every record either way, so logging never stops a run."""
  try:
    import tensorflow as tf
    return tf.summary.create_file_writer(directory)
  except Exception as e:  # ImportError, or TensorFlow failing to start
    if not _TENSORBOARD_WARNED:
      _TENSORBOARD_WARNED.append(True)
      print(f'WARNING: no TensorBoard events ({type(e).__name__}: {e}); metrics.jsonl has '
            f'every record', flush=True)
    return None


def _write_scalars(writer: Optional[Any], step: int, values: Mapping[str, Any]) -> None:
  if writer is None:
    return
  import tensorflow as tf
  with writer.as_default():
    for key, value in values.items():
      if isinstance(value, (int, float)) and key not in ('step', 'time'):
        tf.summary.scalar(key, float(value), step=step)
  writer.flush()


class _RunData(NamedTuple):
  """What a training run reads: batches, the text encoder, and an evaluation."""
  batches: Callable[[int], Dict[str, np.ndarray]]
  encode: Callable[[str], Sequence[int]]
  vocab_size: Optional[int]
  evaluate: Optional[Callable[[Any, Any], Dict[str, Any]]]
  vocab: Any  # what tokenized the data (its SentencePiece model is checked against the backbone's)


def _task_data(task_name: str, eval_split: Optional[str],
               feature_lengths: Mapping[str, int], prompt_length: int, batch_size: int,
               seed: int, eval_examples: Optional[int],
               data_shards: Optional[int] = None, pack: bool = False) -> _RunData:
  from jaxpt.data.seqio_batches import TrainBatches, eval_examples as read_eval, task_examples

  task, lengths = _task_setup(task_name, feature_lengths, prompt_length)
  vocab = task.output_features['targets'].vocabulary
  evaluate = None
  if eval_split:
    examples = read_eval(task_name, lengths, eval_split, eval_examples)
    _report_truncation(f'{task_name} {eval_split}', examples['input_texts'], vocab,
                       lengths['inputs'])
    evaluate = lambda model, params: score_split(model, params, task_name, examples)['metrics']
  if pack:
    batches = _packed(*task_examples(task_name, lengths), batch_size, feature_lengths,
                      lengths, prompt_length, seed)
  else:
    batches = TrainBatches(task_name, lengths, batch_size, seed=seed, num_shards=data_shards)
    if jax.process_count() > 1:
      print(f'data: process {jax.process_index()} of {jax.process_count()} reads data shards '
            f'{list(batches.shards)} of {batches.num_shards}: '
            f'{batch_size // jax.process_count()} of the {batch_size} rows of each batch',
            flush=True)
  return _RunData(batches,
                  lambda text: list(vocab.encode(text)), getattr(vocab, 'vocab_size', None),
                  evaluate, vocab)


def _packed(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], batch_size: int,
            feature_lengths: Mapping[str, int], lengths: Mapping[str, int], prompt_length: int,
            seed: int) -> Any:
  """`PackedBatches` of rows `feature_lengths['inputs']` long (the prompt included), the
  decoder side `packed_targets_length` long, and a line on them."""
  from jaxpt.data.packing import PackedBatches, packed_targets_length, padding_share
  inputs_length = feature_lengths['inputs']
  targets_length = packed_targets_length(inputs, lengths['targets'], inputs_length,
                                         prompt_length)
  batches = PackedBatches(inputs, targets, batch_size, inputs_length=inputs_length,
                          targets_length=targets_length, prompt_length=prompt_length, seed=seed)
  share = padding_share(batches.features)
  print(f'data: packed {batches.num_examples:,} examples into {batches.num_rows:,} rows of '
        f'{inputs_length} + {targets_length} positions ({batches.batches_per_epoch:,} batches '
        f'an epoch, {100 * share["encoder"]:.1f}% of encoder positions padding)', flush=True)
  return batches


def _file_data(train_file: str, validation_file: Optional[str], vocab: Any,
               feature_lengths: Mapping[str, int], prompt_length: int, batch_size: int,
               seed: int, *, input_template: Optional[str], input_field: str,
               target_field: str, labels: Optional[Sequence[str]],
               eval_examples: Optional[int], pack: bool = False) -> _RunData:
  import tasks
  from jaxpt.data.text_classification import ClassificationBatches, encode_inputs, label_table
  from jaxpt.data.user_files import label_list, read_examples

  lengths = tasks.feature_lengths(feature_lengths['inputs'], feature_lengths['targets'],
                                  prompt_length)
  read = lambda path: read_examples(path, input_field=input_field, target_field=target_field,
                                    input_template=input_template)
  train = read(train_file)
  words = label_list(train, labels, train_file)
  eos = eos_of(vocab)
  inputs = encode_inputs([e['inputs'] for e in train], vocab.encode, lengths['inputs'], eos)
  _report_truncation(train_file, [e['inputs'] for e in train], vocab, lengths['inputs'])
  if words:
    table = label_table(words, vocab.encode, lengths['targets'], eos)
    rows = np.asarray([words.index(e['targets']) for e in train])
  else:
    table = encode_inputs([e['targets'] for e in train], vocab.encode, lengths['targets'], eos)
    rows = np.arange(len(train))
  print(f'data: {len(train):,} training examples from {train_file}'
        + (f', labels {words}' if words else ', free-text targets'), flush=True)
  evaluate = None
  if validation_file:
    held_out = read(validation_file)[:eval_examples or None]
    label_list(held_out, words, validation_file)
    held_inputs = encode_inputs([e['inputs'] for e in held_out], vocab.encode, lengths['inputs'],
                                eos)
    targets = [e['targets'] for e in held_out]
    print(f'data: {len(held_out):,} validation examples from {validation_file}', flush=True)
    evaluate = lambda model, params: score_examples(model, params, held_inputs, targets, vocab,
                                                    words)['metrics']
  if not pack:
    batches = ClassificationBatches(inputs, rows, table, batch_size, seed)
  else:
    batches = _packed([x[x != 0] for x in inputs], [table[r][table[r] != 0] for r in rows],
                      batch_size, feature_lengths, lengths, prompt_length, seed)
  return _RunData(batches, vocab.encode, vocab.vocab_size, evaluate, vocab)


def _read_user_inputs(path: str, checkpoint: Optional[str], feature_lengths: Mapping[str, int],
                      prompt_length: int, *, input_template: Optional[str], input_field: str,
                      target_field: str, require_target: bool = True):
  """(input ids, input texts, target texts, vocabulary) of a user file, with the backbone's
  vocabulary."""
  import tasks
  from jaxpt.data.text_classification import encode_inputs
  from jaxpt.data.user_files import read_examples

  vocab = backbone_vocabulary(checkpoint)
  length = tasks.feature_lengths(feature_lengths['inputs'], feature_lengths['targets'],
                                 prompt_length)['inputs']
  examples = read_examples(path, input_field=input_field, target_field=target_field,
                           input_template=input_template, require_target=require_target)
  texts = [e['inputs'] for e in examples]
  _report_truncation(path, texts, vocab, length)
  return (encode_inputs(texts, vocab.encode, length, eos_of(vocab)), texts,
          [e['targets'] for e in examples], vocab)


def _labels_of(prompt_dir: str, labels: Optional[Sequence[str]]) -> Optional[List[str]]:
  """The labels to rank: given, or the ones the prompt was trained with (its run.json)."""
  if labels:
    return list(labels)
  identity = os.path.join(os.path.dirname(os.path.abspath(prompt_dir)), run_dir.IDENTITY_FILE)
  if os.path.isfile(identity):
    with open(identity) as f:
      return (json.load(f).get('data') or {}).get('labels')
  return None


def _report_truncation(path: str, texts: Sequence[str], vocab: Any, length: int) -> None:
  """Says how many inputs are cut to fit `length` tokens (EOS included), and how many hold
  text the vocabulary cannot represent (SentencePiece's unknown id)."""
  encoded = [list(vocab.encode(t)) for t in texts]
  cut = sum(len(ids) + 1 > length for ids in encoded)
  if cut:
    print(f'data: {cut:,} of {len(texts):,} inputs in {path} ({100 * cut / len(texts):.1f}%) '
          f'are longer than {length} tokens and are truncated (raise TASK_FEATURE_LENGTHS)',
          flush=True)
  if isinstance(vocab, TokenizerVocabulary):  # a GPT-2 / Llama id 0 is a real piece
    zero = sum(0 in ids for ids in encoded)
    if zero:
      print(f'data: {zero:,} of {len(texts):,} inputs in {path} hold the piece with id 0 '
            f'({vocab.decode_piece(0)!r}), which jaxpt batches use as padding: it is dropped',
            flush=True)
  unk = vocab.unk_id if isinstance(vocab, TokenizerVocabulary) else UNK_ID
  unknown = sum(unk in ids for ids in encoded) if unk is not None else 0
  if unknown:
    print(f'data: {unknown:,} of {len(texts):,} inputs in {path} '
          f'({100 * unknown / len(texts):.1f}%) hold characters the vocabulary maps to its '
          f'unknown token (another script or language than the backbone was trained on?)',
          flush=True)


def vocabulary_file(vocab: Any) -> Optional[str]:
  """The SentencePiece model file of a jaxpt or SeqIO vocabulary (None for another kind,
  e.g. SeqIO's ByteVocabulary)."""
  return getattr(vocab, 'sentencepiece_model_file', None) or (
      getattr(vocab, 'path', None) if hasattr(vocab, 'base_size')
      or isinstance(vocab, TokenizerVocabulary) else None)


_WHICH_GOES_WITH_WHICH = (
    "T5 checkpoints use the T5 vocabulary (32,100 ids: the tasks without _mini); jaxpt's mini "
    'backbone uses its own spiece.model (8,100 ids: the *_mini tasks); a GPT-2 / Llama '
    "directory its tokenizer.json (no SeqIO task uses it); TRAIN_FILE / EVAL_FILE / "
    "INPUT_FILE runs always tokenize with the backbone's own")


def _check_vocabulary(vocab: Any, embedding_rows: int, checkpoint: Optional[str]) -> None:
  """Refuses data tokenized for another backbone: another SentencePiece model than the one
  the backbone ships (compared by content), or ids the backbone's embedding does not have."""
  shipped = shipped_model(checkpoint)
  if shipped is not None:
    used = vocabulary_file(vocab)
    if used is None or model_digest(used) != model_digest(shipped):
      what = used or f'a {type(vocab).__name__}'
      raise ValueError(
          f"the data's vocabulary ({what}) is not the SentencePiece model the backbone "
          f'{checkpoint} ships ({shipped}): this data is tokenized for another backbone. '
          f'{_WHICH_GOES_WITH_WHICH}')
  vocab_size = getattr(vocab, 'vocab_size', None)
  if shipped is not None:
    # The backbone's own pieces: T5's sentinel ids on top of them come only from span
    # corruption, which a backbone without them (jaxpt's mini GPT-2) is never run on.
    vocab_size -= getattr(vocab, 'extra_ids', 0) or 0
  if vocab_size is not None and vocab_size > embedding_rows:
    raise ValueError(
        f'the vocabulary has {vocab_size} ids but the backbone '
        f'({checkpoint or "random init"}) embeds only {embedding_rows}: this data is '
        f'tokenized for another backbone. {_WHICH_GOES_WITH_WHICH}')


# ------------------------------------------------------------------------------- the runs


@gin.configurable(module='jaxpt')
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: Optional[str] = None,
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
          partitioning: Optional[Any] = None, train_file: Optional[str] = None,
          validation_file: Optional[str] = None, input_template: Optional[str] = None,
          input_field: str = 'input', target_field: str = 'target',
          labels: Optional[Sequence[str]] = None,
          start_fresh: bool = False, frozen_dtype: Optional[str] = None,
          data_shards: Optional[int] = None, pack: bool = False) -> Dict[str, Any]:
  """Tunes `method` on a frozen backbone; see gin/runs/train.gin for the macros.

  The data is a SeqIO task (`mixture_or_task_name`) or the user's own files
  (`train_file`, optional `validation_file`: TSV / CSV with a header row, or
  JSONL; the input is `input_field` or `input_template` over the fields, the
  target `target_field`; `labels` makes it classification, scored by rank
  classification), tokenized with the backbone's own vocabulary.
  `partitioning` (a `jaxpt.partitioning.PartitionConfig`, bound by
  gin/partitioning/*.gin) shards the run over a ('data', 'model') mesh; the backbone
  is then read straight into its shardings. `frozen_dtype` (FROZEN_DTYPE, e.g.
  'bfloat16') stores the frozen backbone weights in that dtype (read so from the
  checkpoint); trainable parameters, gradients and optimizer state stay float32.
  MODEL_DIR is locked while the run lasts; a MODEL_DIR holding another run
  (`jaxpt.cli.run_dir`) is refused unless `start_fresh` moves it aside.
  `batch_size` is the global batch; on several processes (`jax.distributed`)
  each reads only its `batch_size / processes` rows, from its own SeqIO shards
  (`data_shards` of them in all, default one per process; fix it to get the same
  batches, and losses, on any number of processes). `pack` (PACK) packs several
  training examples into each row, each with its own prompt
  (`jaxpt.data.packing`); it is exact for every method but peft-style prefixes,
  which train unpacked. A SeqIO task is read whole (its training split) and packed
  on one process; mixtures and multi-shard runs train unpacked.
  """
  from jaxpt.train.loop import train as train_loop

  _check_placement(method)
  for name, value, low in (('BATCH_SIZE', batch_size, 1), ('TRAIN_STEPS', train_steps, 0)):
    if not isinstance(value, int) or value < low:
      raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
  if bool(mixture_or_task_name) == bool(train_file):
    raise ValueError('set exactly one of MIXTURE_OR_TASK_NAME (a SeqIO task) and TRAIN_FILE '
                     '(your own TSV / CSV / JSONL file)')
  if train_file and jax.process_count() > 1:
    raise ValueError('TRAIN_FILE runs on one process (any number of its devices); a '
                     'multi-process run reads a SeqIO task (MIXTURE_OR_TASK_NAME), sharded per '
                     'process')
  model_dir = _writable_dir(model_dir)
  with contextlib.ExitStack() as stack:
    if jax.process_index() == 0 and '://' not in model_dir:  # one writer per run directory
      stack.enter_context(run_dir.locked(model_dir))
    frozen_all = _backbone_frozen(trainable_rules, model_config)
    model = _backbone(initial_checkpoint_path, model_config, seed, partitioning,
                      frozen_dtype if frozen_all else None)
    prompted = prompted_model(model.config, method, label_smoothing=label_smoothing, z_loss=z_loss)
    pack = _packing(pack, method, mixture_or_task_name, data_shards, model.config)
    if train_file:
      data = _file_data(train_file, validation_file if eval_split else None,
                        backbone_vocabulary(initial_checkpoint_path), task_feature_lengths,
                        method.prompt_length, batch_size, seed, input_template=input_template,
                        input_field=input_field, target_field=target_field, labels=labels,
                        eval_examples=eval_examples, pack=pack)
    else:
      data = _task_data(mixture_or_task_name, eval_split, task_feature_lengths,
                        method.prompt_length, batch_size, seed, eval_examples, data_shards,
                        pack=pack)
    _check_vocabulary(data.vocab, model.config.vocab_size, initial_checkpoint_path)
    if (labels and isinstance(method, PromptInit) and method.initializer == 'class_labels'
        and not method.class_labels):  # the paper's class-label init reads the run's labels
      method = dataclasses.replace(method, class_labels=tuple(labels))
      prompted = dataclasses.replace(prompted, method=method)
    method_params = method.init(jax.random.key(seed + 1), Backbone(
        model.config, model.params['token_embedder']['embedding'], data.encode))
    backbone_params = model.params
    if frozen_dtype is not None and not frozen_all:  # cast only the frozen backbone leaves
      backbone_params = _cast_frozen({'backbone': backbone_params, 'method': method_params},
                                     trainable_rules, frozen_dtype)['backbone']
    batches = data.batches
    if isinstance(model.config, DecoderConfig):  # inputs then targets, loss on the targets
      _check_positions(model.config, method.prompt_length, lengths_total(task_feature_lengths))
      batches = DecoderOnlyBatches(batches)
    main_process = jax.process_index() == 0  # writes the files besides Orbax's checkpoints
    identity = _identity(
        model, method, mixture_or_task_name, train_file, validation_file, input_template,
        input_field, target_field, labels, seed=seed, batch_size=batch_size,
        task_feature_lengths=task_feature_lengths, trainable_rules=trainable_rules,
        label_smoothing=label_smoothing, z_loss=z_loss, **({'pack': True} if pack else {}))
    if main_process:
      run_dir.check_identity(model_dir, identity, start_fresh)
      with open(os.path.join(model_dir, CONFIG_FILE), 'w') as f:
        f.write(gin.config_str())
    if best_metric is None and train_file and validation_file and eval_every:
      best_metric = 'accuracy'  # what a user-file evaluation reports: keep the best prompt
    eval_fn = None
    if data.evaluate is not None and eval_every:
      eval_fn = lambda params, step: {k: v for k, v in data.evaluate(prompted, params).items()
                                      if isinstance(v, (int, float))}
    writers = {}

    def on_metrics(record: Dict[str, Any]) -> None:
      split = record.get('split', 'train')
      if not main_process:
        return
      if split not in writers:
        writers[split] = _tensorboard_writer(os.path.join(model_dir, split))
      _write_scalars(writers[split], int(record['step']), record)

    _say_start(model, method, method_params, trainable_rules, model_dir)
    result = train_loop(
        prompted, backbone_params, method_params, batches, optimizer=optimizer,
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
    _say_end(model_dir, result)
    return {'step': result.step, 'model_dir': model_dir}


def _identity(model: Any, method: Any, task: Optional[str], train_file: Optional[str],
              validation_file: Optional[str], input_template: Optional[str], input_field: str,
              target_field: str, labels: Optional[Sequence[str]], **settings: Any
              ) -> Dict[str, Any]:
  """What makes a run's result: backbone, data, method, optimizer and the other settings."""
  from jaxpt.checkpoints.prompts import fingerprint
  from jaxpt.methods.registry import hyperparameters

  if task:
    data = {'task': task}
  else:
    data = {'train_file': os.path.abspath(train_file), 'train_sha256': _file_sha256(train_file),
            'validation_file': os.path.abspath(validation_file) if validation_file else None,
            'input': input_template or input_field, 'target': target_field,
            'labels': list(labels) if labels else None}
  optimizer = sorted(line for line in gin.config_str().splitlines()
                     if 'make_optimizer.' in line or line.startswith('OPTIMIZER'))
  return {'backbone': fingerprint(model.params), 'data': data,
          'method': {'name': method.name, **hyperparameters(method)},
          'optimizer': optimizer,
          **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}


def _file_sha256(path: str) -> str:
  import hashlib
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()[:16]


def _say_start(model: Any, method: Any, method_params: Any, trainable_rules: Sequence[str],
               model_dir: str) -> None:
  """What the run is about to do: backbone, method, trainable share, outputs."""
  if isinstance(model.config, DecoderConfig):
    known, kind = find_decoder_preset(model.config), f'custom {model.config.family}'
  else:
    known, kind = find_preset(model.config), 'custom T5'
  total = model.num_params()
  trainable = partition({'backbone': model.params, 'method': method_params},
                        trainable_rules)[0]
  count = int(sum(np.size(x) for x in jax.tree.leaves(trainable)))
  share = count / max(total + sum(np.size(x) for x in jax.tree.leaves(method_params)), 1)
  print(f'backbone: {model.source} ({"/".join(known) if known else kind}, '
        f'{total:,} parameters)', flush=True)
  print(f'method: {method.name}; trainable: {count:,} parameters ({100 * share:.3g}% of the '
        f'model); outputs: {model_dir}', flush=True)


def _say_end(model_dir: str, result: Any) -> None:
  """The files the run wrote and its last metrics."""
  names = ['checkpoints', 'prompt', 'prompt_best', TUNED_MODEL_DIR, 'metrics.jsonl', 'train',
           'eval', OPERATIVE_CONFIG_FILE]
  written = [n for n in names if os.path.exists(os.path.join(model_dir, n))]
  last = {}
  for record in result.history:
    last[record.get('split', 'train')] = record
  shown_keys = ('loss', 'accuracy', 'token_accuracy', 'bleu', 'rouge_l')
  parts = {split: ', '.join(f'{k} {v:.4g}' for k, v in sorted(r.items())
                            if k in shown_keys and isinstance(v, float))
           for split, r in sorted(last.items())}
  shown = '; '.join(f'{split} {text}' for split, text in parts.items() if text)
  print(f'trained {result.step} steps; wrote {", ".join(written)} in {model_dir}'
        + (f'; last {shown}' if shown else ''), flush=True)


def _load_tuned(model_dir: str, initial_checkpoint_path: Optional[str],
                model_config: Optional[T5Config], seed: int, prompt_dir: Optional[str],
                partitioning: Optional[Any] = None, frozen_dtype: Optional[str] = None):
  model = _backbone(initial_checkpoint_path, model_config, seed, partitioning, frozen_dtype)
  path = prompt_dir or os.path.join(model_dir, 'prompt')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no prompt checkpoint at {path}: run `jaxpt train` with this '
                            f'MODEL_DIR first, or set PROMPT_DIR')
  method, method_params, manifest = load_prompt(path, model)
  _check_placement(method)
  return model, method, method_params, path


@gin.configurable(module='jaxpt')
def evaluate(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: Optional[str] = None,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             initial_checkpoint_path: Optional[str] = None,
             model_config: Optional[T5Config] = None, seed: int = 0,
             split: str = 'validation', max_examples: Optional[int] = None,
             prompt_dir: Optional[str] = None, batch_size: int = 32,
             partitioning: Optional[Any] = None,
             frozen_dtype: Optional[str] = None, eval_file: Optional[str] = None,
             input_template: Optional[str] = None, input_field: str = 'input',
             target_field: str = 'target', labels: Optional[Sequence[str]] = None,
             decoding: str = 'greedy', num_beams: int = 4
             ) -> Dict[str, Any]:
  """Scores a trained prompt on a task split, or on your own file (`eval_file`: TSV / CSV /
  JSONL read as `jaxpt train` reads TRAIN_FILE); writes eval_metrics.jsonl + TensorBoard.

  Free-text tasks (E2E, WebNLG, ...) decode up to the target length with `decoding`
  ('greedy' or 'beam' with `num_beams`; the prefix-tuning paper decodes with 5 beams), at
  least 16 tokens."""
  from jaxpt.data.seqio_batches import eval_examples as read_eval

  if bool(mixture_or_task_name) == bool(eval_file):
    raise ValueError('set exactly one of MIXTURE_OR_TASK_NAME (a SeqIO task) and EVAL_FILE '
                     '(your own TSV / CSV / JSONL file)')
  model_dir = _writable_dir(model_dir)
  model, method, method_params, path = _load_tuned(model_dir, initial_checkpoint_path,
                                                   model_config, seed, prompt_dir,
                                                   partitioning, frozen_dtype)
  prompted = prompted_model(model.config, method)
  _check_positions(model.config, method.prompt_length, lengths_total(task_feature_lengths))
  params = {'backbone': model.params, 'method': method_params}
  start = time.time()
  if eval_file:
    inputs, _, targets, vocab = _read_user_inputs(
        eval_file, initial_checkpoint_path, task_feature_lengths, method.prompt_length,
        input_template=input_template, input_field=input_field, target_field=target_field)
    words = _labels_of(path, labels)
    out = score_examples(prompted, params, inputs[:max_examples or None],
                         targets[:max_examples or None], vocab, words, batch_size=batch_size)
    split, name = os.path.basename(eval_file), eval_file
  else:
    _, lengths = _task_setup(mixture_or_task_name, task_feature_lengths, method.prompt_length)
    examples = read_eval(mixture_or_task_name, lengths, split, max_examples)
    _check_vocabulary(examples['vocabulary'], model.config.vocab_size, initial_checkpoint_path)
    out = score_split(prompted, params, mixture_or_task_name, examples, batch_size=batch_size,
                      max_decode_length=max(lengths['targets'], 16), strategy=decoding,
                      num_beams=num_beams)
    name = mixture_or_task_name
  record = {'split': split, 'task': name, 'prompt': path,
            'examples': len(out['targets']), **out['metrics'],
            'seconds': round(time.time() - start, 2)}
  with open(os.path.join(model_dir, 'eval_metrics.jsonl'), 'a') as f:
    f.write(json.dumps(record) + '\n')
  with open(os.path.join(path, MANIFEST)) as f:
    step = json.load(f).get('step') or 0
  _write_scalars(_tensorboard_writer(os.path.join(model_dir, f'eval_{split}')), int(step),
                 out['metrics'])
  print(f'{name} {split}: ' + ', '.join(
      f'{k} {v:.2f}' for k, v in out['metrics'].items() if isinstance(v, float)), flush=True)
  return record


@gin.configurable(module='jaxpt')
def infer(*, model_dir: str = gin.REQUIRED, task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          mixture_or_task_name: Optional[str] = None, input_tsv: Optional[str] = None,
          output_file: Optional[str] = None, initial_checkpoint_path: Optional[str] = None,
          model_config: Optional[T5Config] = None, seed: int = 0, split: str = 'validation',
          max_examples: Optional[int] = None, prompt_dir: Optional[str] = None,
          max_decode_length: int = 16, batch_size: int = 32,
          partitioning: Optional[Any] = None, frozen_dtype: Optional[str] = None,
          input_file: Optional[str] = None, input_template: Optional[str] = None,
          input_field: str = 'input', target_field: str = 'target') -> str:
  """Greedy predictions, to JSONL, for your own file (`input_file`: TSV / CSV / JSONL read
  as `jaxpt train` reads TRAIN_FILE; targets optional), a TSV of inputs (`input_tsv`,
  first column, no header) or a task split."""
  import tasks
  from jaxpt.data.seqio_batches import eval_examples as read_eval

  model_dir = _writable_dir(model_dir)
  model, method, method_params, path = _load_tuned(model_dir, initial_checkpoint_path,
                                                   model_config, seed, prompt_dir,
                                                   partitioning, frozen_dtype)
  lengths = tasks.feature_lengths(task_feature_lengths['inputs'],
                                  task_feature_lengths['targets'], method.prompt_length)
  _check_positions(model.config, method.prompt_length,
                   task_feature_lengths['inputs'] + 1 + max_decode_length)
  if input_file:
    tokens, texts, targets, vocab = _read_user_inputs(
        input_file, initial_checkpoint_path, task_feature_lengths, method.prompt_length,
        input_template=input_template, input_field=input_field, target_field=target_field,
        require_target=False)
    examples = {'inputs': tokens, 'input_texts': texts, 'target_texts': targets,
                'vocabulary': vocab}
  elif input_tsv:
    if not os.path.isfile(input_tsv):
      raise FileNotFoundError(f'INPUT_TSV {input_tsv!r} does not exist')
    vocab = backbone_vocabulary(initial_checkpoint_path)
    texts = [line.rstrip('\n').split('\t')[0] for line in open(input_tsv) if line.strip()]
    tokens = pad_rows([vocab.encode(t)[:lengths['inputs'] - 1] + [eos_of(vocab)] for t in texts],
                      lengths['inputs'])
    examples = {'inputs': tokens, 'input_texts': texts, 'target_texts': [''] * len(texts),
                'vocabulary': vocab}
  elif mixture_or_task_name:
    examples = read_eval(mixture_or_task_name, lengths, split, max_examples)
    vocab = examples['vocabulary']
    _check_vocabulary(vocab, model.config.vocab_size, initial_checkpoint_path)
  else:
    raise ValueError('infer needs INPUT_FILE, INPUT_TSV or MIXTURE_OR_TASK_NAME')
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
           prompt_dir: Optional[str] = None, partitioning: Optional[Any] = None) -> str:
  """Writes the trained prompt as a peft adapter (`fmt='peft'`) or the backbone as an HF
  directory (`fmt='hf'`, with the prompt exported beside it as `adapter/`)."""
  from jaxpt.checkpoints.peft import export_peft

  output_dir = _writable_dir(output_dir, 'OUTPUT_DIR')
  model, method, method_params, _ = _load_tuned(model_dir, initial_checkpoint_path,
                                                model_config, seed, prompt_dir, partitioning)
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
