"""SeqIO tasks as numpy batches in T5X's feature layout (imports SeqIO/TensorFlow).

`TrainBatches` maps a data position k to the k-th batch of a shuffled,
repeated stream, deterministic for a seed, so a resumed run continues with
exactly the batch it would have seen. Each host reads only its shard.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from jaxpt.data.features import pad_rows
from jaxpt.data.user_files import DataError


def shard_info() -> Any:
  """This host's share of the data (SeqIO ShardInfo) on multi-host runs, else None."""
  import seqio
  if jax.process_count() == 1:
    return None
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def process_shards(num_shards: int, process_index: int, process_count: int) -> range:
  """The data shards one process reads: a contiguous block of `num_shards / process_count`.

  Process p's rows are then rows p*B/P ... (p+1)*B/P of the global batch, which is
  the layout `jax.make_array_from_process_local_data` assembles the global batch from.
  """
  if num_shards % process_count:
    raise ValueError(f'{num_shards} data shards cannot be split evenly over '
                     f'{process_count} processes')
  per = num_shards // process_count
  return range(process_index * per, (process_index + 1) * per)


class TrainBatches:
  """position -> this process's rows of the global batch: `encoder_input_tokens`, ...

  The data is read in `num_shards` SeqIO shards (`seqio.ShardInfo`): global batch
  k is the concatenation of batch k of every shard (`batch_size / num_shards` rows
  each), and each process reads only its own block of shards
  (`process_shards`), never the others' examples. The default is one shard per
  process (T5X's layout); fixing `num_shards` makes the global batches, and so
  the losses, the same whatever the number of processes.

  Args:
    task_name: a registered SeqIO task or mixture.
    feature_lengths: {'inputs': n, 'targets': m} (the prompt already subtracted).
    batch_size: the global batch size (all processes together).
    split: the split to read.
    seed: shuffling seed; the same seed gives the same stream.
    num_shards: data shards (default: `jax.process_count()`); a multiple of the
      process count that divides `batch_size`.
    process_index / process_count: default `jax.process_index()` / `jax.process_count()`.
  """

  def __init__(self, task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
               split: str = 'train', seed: int = 0, num_shards: Optional[int] = None,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    self.task_name, self.split, self.seed = task_name, split, seed
    self.feature_lengths, self.batch_size = dict(feature_lengths), batch_size
    self.process_count = jax.process_count() if process_count is None else process_count
    self.process_index = jax.process_index() if process_index is None else process_index
    self.num_shards = self.process_count if num_shards is None else int(num_shards)
    if self.num_shards < 1 or batch_size % self.num_shards:
      raise ValueError(f'batch size {batch_size} cannot be split evenly into '
                       f'{self.num_shards} data shards')
    self.shards = process_shards(self.num_shards, self.process_index, self.process_count)
    self.rows_per_shard = batch_size // self.num_shards
    self._iterators: Optional[list] = None
    self._position = -1

  def shard_info(self, shard: int) -> Any:
    import seqio
    return seqio.ShardInfo(index=shard, num_shards=self.num_shards) if self.num_shards > 1 \
        else None

  def _dataset(self, shard: int, skip: int):
    import seqio
    with _no_cache_advice():
      ds = seqio.get_dataset(self.task_name, self.feature_lengths, dataset_split=self.split,
                           shuffle=True, num_epochs=None, shard_info=self.shard_info(shard),
                             feature_converter=seqio.EncDecFeatureConverter(pack=False),
                             seed=self.seed)
    return ds.batch(self.rows_per_shard, drop_remainder=True).skip(skip)

  def __call__(self, position: int) -> Dict[str, np.ndarray]:
    with naming_the_data(self.task_name, self.split):
      if self._iterators is None or position != self._position:
        self._iterators = [self._dataset(shard, position).as_numpy_iterator()
                           for shard in self.shards]
        self._position = position
      try:
        parts = [next(it) for it in self._iterators]
      except StopIteration:
        raise DataError(f'task {self.task_name!r} split {self.split!r} has no examples') from None
    self._position += 1
    keys = [k for k in parts[0] if k in ('encoder_input_tokens', 'decoder_input_tokens',
                                         'decoder_target_tokens', 'decoder_loss_weights')]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}


def task_examples(task_name: str, feature_lengths: Mapping[str, int], split: str = 'train'
                  ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
  """(inputs, targets): every example of a task's split in order, tokenized and cut as
  SeqIO cuts them (EOS kept), unpadded: what `jaxpt.data.packing` packs."""
  import seqio

  import tasks
  task = tasks.get_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f'{task_name!r} is a mixture; packing reads one task\'s split')
  ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1)
  inputs, targets = [], []
  with naming_the_data(task_name, split):
    for ex in ds.as_numpy_iterator():
      inputs.append(np.asarray(ex['inputs'], np.int32))
      targets.append(np.asarray(ex['targets'], np.int32))
  if not inputs:
    raise DataError(f'task {task_name!r} split {split!r} has no examples')
  return inputs, targets


def eval_examples(task_name: str, feature_lengths: Mapping[str, int], split: str,
                  max_examples: Optional[int] = None) -> Dict[str, Any]:
  """A whole split, in order: padded `inputs` ids plus the pretokenized texts.

  Generation tasks (E2E, WebNLG) also give `references`: every reference text of each input.
  """
  import tasks
  task = tasks.get_task(task_name)
  if split not in task.splits:
    raise ValueError(f'task {task_name!r} has no split {split!r} (its splits: '
                     f'{", ".join(task.splits)}): set jaxpt.train.eval_split (None: no evaluation), '
                     f'jaxpt.evaluate.split or jaxpt.infer.split')
  ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1)
  if max_examples:
    ds = ds.take(max_examples)
  inputs, input_texts, target_texts, references = [], [], [], []
  with naming_the_data(task_name, split):
    for ex in ds.as_numpy_iterator():
      inputs.append(ex['inputs'])
      input_texts.append(_text(ex.get('inputs_pretokenized', b'')))
      target_texts.append(_text(ex.get('targets_pretokenized', b'')))
      if 'references' in ex:
        references.append([_text(r) for r in ex['references']])
  if not inputs:
    raise ValueError(f'task {task_name!r} split {split!r} has no examples')
  out = {'inputs': pad_rows(inputs, feature_lengths['inputs']), 'input_texts': input_texts,
         'target_texts': target_texts, 'vocabulary': task.output_features['targets'].vocabulary}
  if references:
    out['references'] = references
  return out


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


class _CacheAdvice(logging.Filter):
  """Drops SeqIO's advice to cache a FunctionDataSource task before training on it.

  The advice is about reshuffled restarts; `TrainBatches` rebuilds the same seeded stream
  and skips to the data position, so a resumed run sees exactly its batches.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using an uncached FunctionDataset for training')


@contextlib.contextmanager
def _no_cache_advice():
  logger, advice = logging.getLogger('absl'), _CacheAdvice()
  logger.addFilter(advice)
  try:
    yield
  finally:
    logger.removeFilter(advice)


@contextlib.contextmanager
def naming_the_data(task_name: str, split: str):
  """Turns TensorFlow's failure to read a task's examples into a one-line `DataError`
  naming the task, its files (and the line, when the error says enough to find it)."""
  import tensorflow as tf
  try:
    yield
  except tf.errors.OpError as e:
    reason = read_error_reason(e.message)
    files = _source_files(task_name, split)
    line = _bad_field_count_line(files, reason)
    where = f'{line}: ' if line else (f'{", ".join(files)}: ' if files else '')
    raise DataError(f'task {task_name!r} split {split!r}: {where}cannot read an example: '
                    f'{reason}') from None


def read_error_reason(message: str) -> str:
  """The cause in a tf.data error message, on one line: a Python generator's exception
  (`ValueError: ...`), or the failing op's own words without TensorFlow's node and
  iterator names."""
  for line in message.splitlines():
    match = re.match(r'^(?:\{\{[^}]*\}\}\s*)?(\w*(?:Error|Exception): .*)$', line.strip())
    if match:
      return match[1]
  first = re.sub(r'^\{\{[^}]*\}\}\s*', '', message.strip().splitlines()[0] if message.strip()
                 else '')
  first = re.sub(r'^.*transformation with iterator: [\w:]+: ', '', first)
  return first.strip() or 'unknown error'


def _source_files(task_name: str, split: str) -> List[str]:
  """The local files a task (or a mixture's tasks) reads for `split`, when its source is
  a SeqIO file source (TextLineDataSource, TFExampleDataSource, ...)."""
  import seqio
  try:
    provider = seqio.get_mixture_or_task(task_name)
    found = []
    for task in getattr(provider, 'tasks', None) or [provider]:
      if isinstance(task.source, seqio.FileDataSource) and split in task.source.splits:
        found += [f for pattern in task.source.list_shards(split)
                  for f in (sorted(glob.glob(pattern)) or [pattern])]
    return found
  except Exception:  # naming the files is a courtesy: the error itself is what matters
    return []


def _bad_field_count_line(files: List[str], reason: str) -> Optional[str]:
  """'file:line' of the first row with the field count a CSV/TSV parse error names."""
  match = re.search(r'Expect (\d+) fields but have (\d+)', reason)
  if not match:
    return None
  have = int(match[2])
  for path in files:
    if '://' in path:
      continue
    delimiter = ',' if path.endswith('.csv') else '\t'
    try:
      with open(path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, 1):
          if len(line.rstrip('\r\n').split(delimiter)) == have:
            return f'{path}:{number}'
    except OSError:
      continue
  return None
