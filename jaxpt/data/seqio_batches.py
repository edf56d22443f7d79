"""SeqIO tasks as numpy batches in T5X's feature layout (imports SeqIO/TensorFlow).

`TrainBatches` maps a data position k to the k-th batch of a shuffled,
repeated stream, deterministic for a seed, so a resumed run continues with
exactly the batch it would have seen. Each host reads only its shard.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Optional

import jax
import numpy as np

from jaxpt.vocabulary import PAD_ID


def shard_info() -> Any:
  """This host's share of the data (SeqIO ShardInfo) on multi-host runs, else None."""
  import seqio
  if jax.process_count() == 1:
    return None
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


class TrainBatches:
  """position -> batch of `encoder_input_tokens`, `decoder_input_tokens`, ...

  Args:
    task_name: a registered SeqIO task or mixture.
    feature_lengths: {'inputs': n, 'targets': m} (the prompt already subtracted).
    batch_size: per-host batch size.
    split: the split to read.
    seed: shuffling seed; the same seed gives the same stream.
  """

  def __init__(self, task_name: str, feature_lengths: Mapping[str, int], batch_size: int,
               split: str = 'train', seed: int = 0):
    self.task_name, self.split, self.seed = task_name, split, seed
    self.feature_lengths, self.batch_size = dict(feature_lengths), batch_size
    self._iterator: Optional[Iterator[Dict[str, np.ndarray]]] = None
    self._position = -1

  def _dataset(self, skip: int):
    import seqio
    ds = seqio.get_dataset(self.task_name, self.feature_lengths, dataset_split=self.split,
                           shuffle=True, num_epochs=None, shard_info=shard_info(),
                           feature_converter=seqio.EncDecFeatureConverter(pack=False),
                           seed=self.seed)
    return ds.batch(self.batch_size, drop_remainder=True).skip(skip)

  def __call__(self, position: int) -> Dict[str, np.ndarray]:
    if self._iterator is None or position != self._position:
      self._iterator = self._dataset(position).as_numpy_iterator()
      self._position = position
    batch = next(self._iterator)
    self._position += 1
    return {k: np.asarray(v) for k, v in batch.items()
            if k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                     'decoder_loss_weights')}


def eval_examples(task_name: str, feature_lengths: Mapping[str, int], split: str,
                  max_examples: Optional[int] = None) -> Dict[str, Any]:
  """A whole split, in order: padded `inputs` ids plus the pretokenized texts."""
  import tasks
  task = tasks.get_task(task_name)
  ds = task.get_dataset(dict(feature_lengths), split=split, shuffle=False, num_epochs=1)
  if max_examples:
    ds = ds.take(max_examples)
  inputs, input_texts, target_texts = [], [], []
  for ex in ds.as_numpy_iterator():
    inputs.append(ex['inputs'])
    input_texts.append(_text(ex.get('inputs_pretokenized', b'')))
    target_texts.append(_text(ex.get('targets_pretokenized', b'')))
  if not inputs:
    raise ValueError(f'task {task_name!r} split {split!r} has no examples')
  tokens = np.full((len(inputs), feature_lengths['inputs']), PAD_ID, np.int32)
  for i, row in enumerate(inputs):
    tokens[i, :len(row)] = row
  return {'inputs': tokens, 'input_texts': input_texts, 'target_texts': target_texts,
          'vocabulary': task.output_features['targets'].vocabulary}


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)
