"""SeqIO registration of every task and mixture (imports SeqIO and TensorFlow).

Importing this module registers, with the T5 SentencePiece vocabulary of
`tasks.features.default_vocab_path()` ($JAXPT_VOCAB is read at import):

* `super_glue_<boolq|cb|copa|multirc|record|rte|wic|wsc>`, `glue_<sst2|mrpc|qqp>`:
  TFDS sources (`super_glue/rte`, `super_glue/wsc.fixed`, `glue/sst2`, ...;
  they need the TFDS data or a network).
* the same names with `_local`: the official files under the local data
  directory (`tasks.local`), offline.
* `synthetic_two_class`: generated, with `seqio.ByteVocabulary()`.
* `corpus_span_corruption`, `corpus_prefix_lm`: T5's span corruption and
  prefix-LM objectives (`tasks.objectives`) over the offline corpus of
  `tasks.corpus` (splits 'train' and 'validation' = its held-out part); the
  'train' stream draws new chunk boundaries and noise every epoch, deterministically.
* `e2e_local`, `webnlg_local`: table-to-text generation (`tasks.nlg`), scored
  with BLEU / chrF / ROUGE-L against all references (`tasks.generation_metrics`).
* every `_local` task, `corpus_span_corruption` and `corpus_prefix_lm` again
  with the suffix `_mini`: the same data with the mini backbone's vocabulary
  (`tasks.features.mini_vocab_path()`), e.g. `glue_sst2_local_mini`.
* mixtures `super_glue` (the 8 TFDS SuperGLUE tasks) and `super_glue_local`
  (the 7 local ones without ReCoRD), mixed in proportion to the train sizes.

Both sources feed Python dicts to the same formatter (`tasks.formats`) and
build the dataset with `tf.data.Dataset.from_generator`. Every task
tokenizes, then `append_eos_after_trim` (EOS survives truncation), with the
postprocessor `tasks.labels.postprocess` (unknown text -> -1) and the
official metrics of `tasks.metrics`.
"""

from __future__ import annotations

import difflib
import functools
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import corpus, features, formats, labels, local, metrics, nlg, objectives, synthetic

SUPERGLUE = ('boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc')
GLUE = ('sst2', 'mrpc', 'qqp')

TFDS_NAMES: Dict[str, str] = {
    **{b: f'super_glue/{b}' for b in SUPERGLUE},
    'wsc': 'super_glue/wsc.fixed',
    **{b: f'glue/{b}' for b in GLUE},
}

TRAIN_SIZES: Dict[str, int] = {
    'boolq': 9427, 'cb': 250, 'copa': 400, 'multirc': 27243, 'record': 100730,
    'rte': 2490, 'wic': 5428, 'wsc': 554,
}
"""TFDS train sizes: the mixing rates of the SuperGLUE mixtures."""

PREPROCESSORS = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim)


def task_name(benchmark: str, source: str = 'tfds') -> str:
  """'rte', 'local' -> 'super_glue_rte_local'; 'sst2', 'tfds' -> 'glue_sst2'."""
  prefix = 'super_glue' if benchmark in SUPERGLUE else 'glue'
  return f'{prefix}_{benchmark}' + ('_local' if source == 'local' else '')


TFDS_TASKS = tuple(task_name(b) for b in SUPERGLUE + GLUE)
LOCAL_TASKS = tuple(task_name(b, 'local') for b in SUPERGLUE + GLUE)
SYNTHETIC_TASK = 'synthetic_two_class'
PRETRAINING_TASKS = ('corpus_span_corruption', 'corpus_prefix_lm')
NLG_TASKS = tuple(f'{d}_local' for d in nlg.DATASETS)
"""Table-to-text: 'e2e_local', 'webnlg_local' (`tasks.nlg`)."""
MINI = '_mini'
"""Suffix of the tasks that use the mini backbone's vocabulary."""
MIXTURES: Dict[str, Sequence[str]] = {
    'super_glue': tuple(task_name(b) for b in SUPERGLUE),
    'super_glue_local': tuple(task_name(b, 'local') for b in SUPERGLUE if b != 'record'),
}
TASK_NAMES = (TFDS_TASKS + LOCAL_TASKS + (SYNTHETIC_TASK,) + PRETRAINING_TASKS + NLG_TASKS
              + tuple(t + MINI for t in LOCAL_TASKS + PRETRAINING_TASKS + NLG_TASKS))


@functools.lru_cache(maxsize=None)
def t5_vocabulary(path: str | None = None) -> seqio.SentencePieceVocabulary:
  """The T5 SentencePiece vocabulary with 100 extra ids (32100 ids)."""
  return seqio.SentencePieceVocabulary(path or features.default_vocab_path(),
                                       extra_ids=features.EXTRA_IDS)


def mini_vocabulary() -> seqio.SentencePieceVocabulary:
  """The mini backbone's SentencePiece vocabulary with 100 extra ids (8100 ids)."""
  return t5_vocabulary(features.mini_vocab_path())


def output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  """`inputs` and `targets` with `vocabulary` and EOS."""
  return {
      'inputs': seqio.Feature(vocabulary, add_eos=True),
      'targets': seqio.Feature(vocabulary, add_eos=True),
  }


def output_signature(benchmark: str) -> Dict[str, tf.TensorSpec]:
  """The `tf.data` signature of the formatter's examples of a benchmark."""
  text = tf.TensorSpec([], tf.string)
  index = tf.TensorSpec([], tf.int64)
  signature = {'inputs': text, 'targets': text}
  if benchmark == 'multirc':
    signature.update({f'idx/{k}': index for k in ('paragraph', 'question', 'answer')})
  elif benchmark == 'record':
    signature.update({'idx/passage': index, 'idx/query': index,
                      'answers': tf.TensorSpec([None], tf.string)})
  elif benchmark in labels.GENERATION_BENCHMARKS:
    signature['references'] = tf.TensorSpec([None], tf.string)
  else:
    signature['idx'] = index
  return signature


def to_python(value: Any) -> Any:
  """A `tfds.as_numpy` value as Python: bytes -> str, arrays -> lists, numpy scalars -> items."""
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray):
    return [to_python(v) for v in value.tolist()] if value.ndim else to_python(value.item())
  if isinstance(value, np.generic):
    return to_python(value.item())
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  return value


def examples_dataset(benchmark: str, examples: Callable[[], Iterable[Dict[str, Any]]]
                    ) -> tf.data.Dataset:
  """A dataset of the formatter's examples, made by calling `examples()`."""
  return tf.data.Dataset.from_generator(examples, output_signature=output_signature(benchmark))


def local_dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *,
                     benchmark: str) -> tf.data.Dataset:
  """A SeqIO dataset_fn over the local files (the file is checked now, not when iterated)."""
  del shuffle_files, seed  # One file per split; SeqIO shuffles the examples.
  data_dir = local.get_data_dir()
  local.split_path(benchmark, split, data_dir)
  return examples_dataset(benchmark, lambda: local.local_examples(benchmark, split, data_dir))


TFDS_TIMEOUT_S = 600.0
"""Default bound, in seconds, on building a TFDS dataset: reading its info and, when it is
not in the TFDS data directory yet, downloading and preparing it (network).
$JAXPT_TFDS_TIMEOUT_S overrides it."""
TFDS_TIMEOUT_VAR = 'JAXPT_TFDS_TIMEOUT_S'


def _within(seconds: float, build: Callable[[], Any]) -> Any:
  """`build()`'s result, or TimeoutError once `seconds` pass (the call is left running in a
  daemon thread: TFDS offers no way to cancel a download)."""
  done = threading.Event()
  out: Dict[str, Any] = {}

  def run():
    try:
      out['value'] = build()
    except BaseException as e:  # handed to the caller
      out['error'] = e
    done.set()

  threading.Thread(target=run, daemon=True, name='tfds-build').start()
  if not done.wait(seconds):
    raise TimeoutError()
  if 'error' in out:
    raise out['error']
  return out['value']


def tfds_dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *,
                    benchmark: str) -> tf.data.Dataset:
  """A SeqIO dataset_fn over TFDS: `tfds.as_numpy` records -> Python -> the formatter.

  It says what it reads, and fails with one line (OSError, TimeoutError) when the
  dataset cannot be built within `TFDS_TIMEOUT_S` (no network to download it, say).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = TFDS_NAMES[benchmark]
  where = os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  seconds = float(os.environ.get(TFDS_TIMEOUT_VAR) or TFDS_TIMEOUT_S)
  print(f'data: TFDS dataset {name} split {split!r} from {where} (downloaded and prepared '
        f'there first when absent: needs network)', flush=True)
  offline = (f'offline, use the task {task_name(benchmark, "local")!r} over the official '
             f'files in $JAXPT_DATA_DIR')
  read_config = tfds.ReadConfig(shuffle_seed=seed) if seed is not None else None
  try:
    records = _within(seconds, lambda: tfds.load(name, split=split, shuffle_files=shuffle_files,
                                                 read_config=read_config))
  except TimeoutError:
    raise TimeoutError(f'TFDS dataset {name} split {split!r}: not built from {where} within '
                       f'{seconds:g} s (no network to download it?); {offline}, or raise '
                       f'${TFDS_TIMEOUT_VAR}') from None
  except Exception as e:  # TFDS raises many kinds: download, missing module, GCS errors
    reason = ' '.join(str(e).split())[:300]
    raise OSError(f'TFDS dataset {name} split {split!r}: cannot load it from {where} '
                  f'({type(e).__name__}: {reason}); {offline}') from e

  def examples():
    for record in tfds.as_numpy(records):
      yield from formats.format_example(benchmark, to_python(record))

  return examples_dataset(benchmark, examples)


def _decode(value: Any) -> str:
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def seqio_postprocessor(output_or_target: Any, example: Mapping[str, Any] | None = None,
                        is_target: bool = False, *, benchmark: str) -> Any:
  """SeqIO postprocess_fn: text -> label id (-1 for unknown text).

  MultiRC targets become {'value': id, 'group': (paragraph, question)};
  ReCoRD targets the list of answers, ReCoRD predictions the text.
  """
  if benchmark == 'record' and is_target and example is not None:
    return [_decode(a) for a in np.asarray(example['answers']).tolist()]
  if benchmark in labels.GENERATION_BENCHMARKS and is_target and example is not None:
    return [_decode(r) for r in np.asarray(example['references']).tolist()]
  value = labels.postprocess(benchmark, output_or_target)
  if benchmark == 'multirc' and is_target and example is not None:
    return {'value': value,
            'group': (int(example['idx/paragraph']), int(example['idx/question']))}
  return value


def multirc_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[int]
                  ) -> Dict[str, float]:
  """SeqIO metric_fn of MultiRC over the postprocessed {'value', 'group'} targets."""
  return metrics.multirc_metrics([t['value'] for t in targets], predictions,
                                 [t['group'] for t in targets])


def _task(name: str, source: seqio.DataSource, benchmark: str,
          vocabulary: seqio.Vocabulary) -> seqio.Task:
  metric = multirc_metric if benchmark == 'multirc' else metrics.METRICS[benchmark]
  return seqio.Task(
      name,
      source=source,
      output_features=output_features(vocabulary),
      preprocessors=list(PREPROCESSORS),
      postprocess_fn=functools.partial(seqio_postprocessor, benchmark=benchmark),
      metric_fns=[metric],
  )


def nlg_dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *,
                   dataset: str) -> tf.data.Dataset:
  """E2E / WebNLG: 'train' gives one example per reference, the other splits one per input.

  Every example carries all `references` of its input; an evaluation example's
  `targets` is its first reference.
  """
  del shuffle_files, seed  # SeqIO shuffles the examples.
  examples = nlg.examples(dataset, split)  # read (and checked) now, not when iterated

  def generate():
    for ex in examples:
      targets = ex.references if split == 'train' else ex.references[:1]
      for target in targets:
        yield {'inputs': ex.input, 'targets': target, 'references': list(ex.references)}

  return examples_dataset(dataset, generate)


def _nlg_task(name: str, dataset: str, vocabulary: seqio.Vocabulary) -> seqio.Task:
  source = seqio.FunctionDataSource(functools.partial(nlg_dataset_fn, dataset=dataset),
                                    splits=nlg.SPLITS)
  return _task(name, source, dataset, vocabulary)


def _add(*, name: str, make: Callable[[], Any], registry: Any) -> None:
  if name not in registry.names():
    registry.add_provider(name, make())


def corpus_dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None
                     ) -> tf.data.Dataset:
  """A SeqIO dataset_fn over the documents of `tasks.corpus` ({'targets': text})."""
  del shuffle_files, seed  # the objectives draw chunks and noise themselves
  documents = corpus.documents(split)
  return tf.data.Dataset.from_generator(
      lambda: ({'targets': d} for d in documents),
      output_signature={'targets': tf.TensorSpec([], tf.string)})


def objective_preprocessor(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                           output_features: Mapping[str, seqio.Feature], *, objective: str,
                           seed: int = 0) -> tf.data.Dataset:
  """Tokenized documents -> T5 span corruption or prefix-LM examples (`tasks.objectives`).

  The documents are joined and cut into chunks (`objectives.chunk_length`:
  what leaves `sequence_length['inputs']` after corruption). SeqIO repeats the
  documents before this step, so on a training stream every pass over the
  corpus gets new chunk boundaries and new noise from one generator seeded
  by `seed`: a rebuilt pipeline yields the same stream.
  """
  vocab_size = output_features['targets'].vocabulary.vocab_size
  objectives.chunk_length(objective, sequence_length['inputs'])  # checks the name now

  def examples():
    documents = (ex['targets'] for ex in dataset.as_numpy_iterator())
    for inputs, targets in objectives.objective_examples(
        documents, objective, vocab_size, sequence_length['inputs'],
        np.random.default_rng(seed)):
      yield {'inputs': inputs, 'targets': targets}

  spec = tf.TensorSpec([None], tf.int32)
  return tf.data.Dataset.from_generator(examples,
                                        output_signature={'inputs': spec, 'targets': spec})


def _pretraining_task(name: str, vocabulary: seqio.Vocabulary) -> seqio.Task:
  objective = 'span_corruption' if 'span_corruption' in name else 'prefix_lm'
  return seqio.Task(
      name,
      source=seqio.FunctionDataSource(corpus_dataset_fn, splits=corpus.SPLITS),
      output_features=output_features(vocabulary),
      preprocessors=[seqio.preprocessors.tokenize,
                     functools.partial(objective_preprocessor, objective=objective),
                     seqio.preprocessors.append_eos_after_trim],
      metric_fns=[])


def register_all() -> List[str]:
  """Registers every task and mixture (idempotent); returns their names."""
  vocabularies = {'': t5_vocabulary, MINI: mini_vocabulary}
  for benchmark in SUPERGLUE + GLUE:
    for source, dataset_fn in (('tfds', tfds_dataset_fn), ('local', local_dataset_fn)):
      splits = local.SPLITS if source == 'local' and benchmark in SUPERGLUE else (
          'train', 'validation', 'test')
      for suffix, vocabulary in vocabularies.items():
        if suffix and source != 'local':
          continue
        name = task_name(benchmark, source) + suffix
        make = functools.partial(
            _task, name,
            seqio.FunctionDataSource(functools.partial(dataset_fn, benchmark=benchmark),
                                     splits=splits),
            benchmark, vocabulary())
        _add(name=name, make=make, registry=seqio.TaskRegistry)
  for base in PRETRAINING_TASKS:
    for suffix, vocabulary in vocabularies.items():
      _add(name=base + suffix, make=lambda n=base + suffix, v=vocabulary: _pretraining_task(
          n, v()), registry=seqio.TaskRegistry)
  for dataset in nlg.DATASETS:
    for suffix, vocabulary in vocabularies.items():
      name = f'{dataset}_local{suffix}'
      _add(name=name, make=lambda n=name, d=dataset, v=vocabulary: _nlg_task(n, d, v()),
           registry=seqio.TaskRegistry)
  _add(name=SYNTHETIC_TASK, make=_synthetic_task, registry=seqio.TaskRegistry)
  for name, members in MIXTURES.items():
    rates = [(t, float(TRAIN_SIZES[labels.benchmark_of(t)])) for t in members]
    _add(name=name, make=functools.partial(seqio.Mixture, name, rates),
         registry=seqio.MixtureRegistry)
  return list(TASK_NAMES) + list(MIXTURES)


def _synthetic_task() -> seqio.Task:
  def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
    del shuffle_files, seed
    return examples_dataset('synthetic_two_class',
                            lambda: synthetic.synthetic_examples(split))

  return _task(SYNTHETIC_TASK,
               seqio.FunctionDataSource(dataset_fn, splits=tuple(synthetic.NUM_EXAMPLES)),
               'synthetic_two_class', seqio.ByteVocabulary())


def get_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture `name`.

  Raises:
    ValueError: for an unknown name, suggesting the closest registered names.
  """
  register_all()
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  if name not in known:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f'; did you mean {" or ".join(repr(c) for c in close)}?' if close else (
        f'; the tasks of this package: {", ".join(TASK_NAMES + tuple(MIXTURES))}')
    raise ValueError(f'unknown task or mixture {name!r}{hint}')
  return seqio.get_mixture_or_task(name)


register_all()
