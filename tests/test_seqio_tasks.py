"""The SeqIO side of `tasks/`: registration, tokenization, truncation, errors.

Imports SeqIO and TensorFlow (a few seconds); the pure-Python parts are tested
in test_tasks.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

seqio = pytest.importorskip('seqio')
tf = pytest.importorskip('tensorflow')

import tasks  # pylint: disable=wrong-import-position
from tasks import features, local, registry, synthetic  # pylint: disable=wrong-import-position

EOS = 1


@pytest.fixture
def data_dir(shared_data):
  local.set_data_dir(shared_data)
  yield shared_data
  local.set_data_dir(None)


def _decode(task, feature, ids):
  ids = [int(i) for i in ids]
  assert ids[-1] == EOS
  return task.output_features[feature].vocabulary.decode(ids[:-1])


def test_import_tasks_registers_everything():
  code = ('import seqio, tasks; names = set(seqio.TaskRegistry.names()); '
          'assert {"super_glue_rte", "super_glue_rte_local", "glue_sst2_local", '
          '"super_glue_record", "glue_qqp", "synthetic_two_class"} <= names, names; '
          'assert {"super_glue", "super_glue_local"} <= set(seqio.MixtureRegistry.names())')
  subprocess.run([sys.executable, '-c', code], check=True)
  assert set(registry.TASK_NAMES) <= set(seqio.TaskRegistry.names())


def test_rte_local_tokens_decode_to_formatter_text(data_dir):
  task = tasks.get_task('super_glue_rte_local')
  vocabulary = task.output_features['inputs'].vocabulary
  assert vocabulary.vocab_size == 32100
  dataset = task.get_dataset({'inputs': 512, 'targets': 8}, split='validation', shuffle=False)
  expected = list(local.local_examples('rte', 'validation', data_dir))[:3]
  for example, want in zip(dataset.as_numpy_iterator(), expected):
    assert _decode(task, 'inputs', example['inputs']) == want['inputs']
    assert _decode(task, 'targets', example['targets']) == want['targets']
    assert example['idx'] == want['idx']


def test_eos_survives_truncation(data_dir):
  task = tasks.get_task('super_glue_rte_local')
  lengths = features.feature_lengths(inputs=40, targets=4, prompt_length=8)
  assert lengths == {'inputs': 32, 'targets': 4}
  longest = max(local.local_examples('rte', 'validation', data_dir),
                key=lambda e: len(e['inputs']))
  dataset = task.get_dataset(lengths, split='validation', shuffle=False)
  (example,) = [e for e in dataset.as_numpy_iterator() if e['idx'] == longest['idx']]
  assert len(example['inputs']) == 32 and example['inputs'][-1] == EOS
  assert len(example['targets']) <= 4 and example['targets'][-1] == EOS
  assert longest['inputs'].startswith(_decode(task, 'inputs', example['inputs']))


def test_synthetic_task():
  task = tasks.get_task('synthetic_two_class')
  assert isinstance(task.output_features['inputs'].vocabulary, seqio.ByteVocabulary)
  dataset = task.get_dataset({'inputs': 128, 'targets': 8}, split='validation', shuffle=False)
  got = [(_decode(task, 'inputs', e['inputs']), _decode(task, 'targets', e['targets']))
         for e in dataset.as_numpy_iterator()]
  assert got == [(e['inputs'], e['targets']) for e in synthetic.synthetic_examples('validation')]
  assert task.postprocess_fn('tool') == 1 and task.postprocess_fn('spoon') == -1


def test_unknown_task_suggests_close_names():
  with pytest.raises(ValueError, match="did you mean 'super_glue_rte_local'"):
    tasks.get_task('super_glue_rte_locl')
  with pytest.raises(ValueError, match='unknown task'):
    tasks.get_task('no_such_thing_at_all')


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
  task = tasks.get_task('super_glue_cb_local')
  monkeypatch.setenv(local.ENV_VAR, str(tmp_path / 'absent'))
  with pytest.raises(FileNotFoundError, match=r'absent.*JAXPT_DATA_DIR'):
    task.get_dataset({'inputs': 64, 'targets': 8}, split='validation')
  monkeypatch.setenv(local.ENV_VAR, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r'superglue/cb/val\.jsonl'):
    task.get_dataset({'inputs': 64, 'targets': 8}, split='validation')


def test_tfds_source_uses_the_same_formatter(monkeypatch):
  """The TFDS path, on a fake `tfds.load` (no network): ints/bytes -> Python -> formatter."""
  tfds = pytest.importorskip('tensorflow_datasets')
  records = {
      'super_glue/rte': {'premise': [b'P.'], 'hypothesis': [b'H.'], 'idx': [3], 'label': [0]},
      'super_glue/multirc': {'paragraph': [b'A<br>B <b>C</b>'], 'question': [b'Q?'],
                             'answer': [b'A.'], 'label': [1],
                             'idx': {'paragraph': [0], 'question': [2], 'answer': [5]}},
  }
  monkeypatch.setattr(tfds, 'load', lambda name, **kw: tf.data.Dataset.from_tensor_slices(
      records[name]))
  rte = tasks.get_task('super_glue_rte').get_dataset({'inputs': 64, 'targets': 8},
                                                      split='validation', shuffle=False)
  (example,) = list(rte.as_numpy_iterator())
  assert example['inputs_pretokenized'].decode() == 'rte hypothesis: H. premise: P.'
  assert example['targets_pretokenized'].decode() == 'entailment'
  multirc = tasks.get_task('super_glue_multirc')
  (example,) = list(multirc.get_dataset({'inputs': 64, 'targets': 8}, split='validation',
                                        shuffle=False).as_numpy_iterator())
  assert example['inputs_pretokenized'].decode() == (
      'multirc question: Q? answer: A. paragraph: A B C')
  assert (example['idx/question'], example['targets_pretokenized']) == (2, b'True')
  target = multirc.postprocess_fn(b'True', example=example, is_target=True)
  assert target == {'value': 1, 'group': (0, 2)}
  assert registry.multirc_metric([target], [-1]) == {'exact_match': 0.0, 'f1a': 0.0}


def test_an_unreachable_tfds_source_fails_within_its_bound(monkeypatch, capsys):
  """A TFDS build that never answers (no network) stops at the bound with one line saying
  what it read and what to do offline."""
  import threading
  import time
  tfds = pytest.importorskip('tensorflow_datasets')
  release = threading.Event()
  monkeypatch.setattr(tfds, 'load', lambda name, **kw: release.wait())
  monkeypatch.setenv(registry.TFDS_TIMEOUT_VAR, '2')
  start = time.perf_counter()
  try:
    with pytest.raises(TimeoutError) as e:
      registry.tfds_dataset_fn('train', benchmark='rte')
  finally:
    release.set()
  assert time.perf_counter() - start < 10
  message = str(e.value)
  assert 'super_glue/rte' in message and 'within 2 s' in message
  assert "'super_glue_rte_local'" in message and '\n' not in message
  assert 'data: TFDS dataset super_glue/rte' in capsys.readouterr().out  # says what it reads


def test_a_failing_tfds_source_is_one_line_naming_the_dataset(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def broken(name, **kwargs):
    raise ModuleNotFoundError("No module named 'importlib_resources'\n(while downloading)")

  monkeypatch.setattr(tfds, 'load', broken)
  with pytest.raises(OSError, match=r"glue/sst2 split 'train': cannot load it .*"
                     r"ModuleNotFoundError.*'glue_sst2_local'") as e:
    registry.tfds_dataset_fn('train', benchmark='sst2')
  assert '\n' not in str(e.value)


def test_a_malformed_local_line_names_file_and_line(tmp_path):
  from jaxpt.data.seqio_batches import eval_examples
  from jaxpt.data.user_files import DataError
  (tmp_path / 'sst2').mkdir()
  for split in ('train', 'dev'):
    (tmp_path / 'sst2' / f'stsa.binary.{split}').write_text('1 a good film\nbroken\n')
  local.set_data_dir(tmp_path)
  try:
    with pytest.raises(DataError, match=r"task 'glue_sst2_local' split 'validation': .*"
                       r"stsa\.binary\.dev:2: expected"):
      eval_examples('glue_sst2_local', {'inputs': 16, 'targets': 4}, 'validation')
  finally:
    local.set_data_dir(None)


def test_tf_data_error_reasons():
  from jaxpt.data.seqio_batches import read_error_reason
  csv = ('{{function_node __wrapped__IteratorGetNext_output_types_4_device_/job:localhost}} '
         'Error in user-defined function passed to ParallelMapDatasetV2:14 transformation with '
         'iterator: Iterator::Root::MapAndBatch::ParallelMapV2: Expect 2 fields but have 3 in '
         'record 0\n\t [[{{node DecodeCSV}}]]')
  assert read_error_reason(csv) == 'Expect 2 fields but have 3 in record 0'
  generator = ('{{function_node __wrapped__X}} ValueError: a.tsv:3: bad\nTraceback (most '
               'recent call last):\n  File "x.py", line 1\nValueError: a.tsv:3: bad\n')
  assert read_error_reason(generator) == 'ValueError: a.tsv:3: bad'


def test_postprocess_and_metrics_of_a_task():
  task = tasks.get_task('super_glue_cb')
  ids = [task.postprocess_fn(t) for t in ('neutral', 'entailment', 'nonsense')]
  assert ids == [2, 0, -1]
  (metric,) = task.metric_fns
  assert metric([2, 0, 1], ids)['accuracy'] == pytest.approx(200 / 3)
  record = tasks.get_task('super_glue_record')
  example = {'answers': np.array([b'Paris', b'Paris, France'])}
  assert record.postprocess_fn(b'x', example=example, is_target=True) == ['Paris', 'Paris, France']


def test_local_mixture(data_dir):
  mixture = tasks.get_task('super_glue_local')
  assert {t.name for t in mixture.tasks} == set(registry.MIXTURES['super_glue_local'])
  dataset = mixture.get_dataset({'inputs': 64, 'targets': 8}, split='validation', shuffle=True,
                                seed=0)
  for example in dataset.take(4).as_numpy_iterator():
    assert example['inputs'][-1] == EOS and example['targets'][-1] == EOS


def test_span_corruption_task_over_the_corpus(data_dir):
  task = tasks.get_task('corpus_span_corruption_mini')
  vocab = task.output_features['targets'].vocabulary
  assert vocab.vocab_size == 8100
  ds = task.get_dataset({'inputs': 128, 'targets': 32}, split='validation', shuffle=False)
  examples = list(ds.take(4).as_numpy_iterator())
  for ex in examples:
    inputs, targets = ex['inputs'].tolist(), ex['targets'].tolist()
    assert len(inputs) == 128 and inputs[-1] == EOS  # random_spans_helper(128): exactly full
    sentinels = [t for t in inputs if t >= 8000]
    assert sentinels == list(range(8099, 8099 - len(sentinels), -1))  # <extra_id_0> = 8099
    assert [t for t in targets if t >= 8000] == sentinels and targets[0] == 8099
  stream = tasks.get_task('corpus_prefix_lm_mini').get_dataset(
      {'inputs': 96, 'targets': 96}, split='validation', shuffle=False)
  ex = next(stream.as_numpy_iterator())
  assert len(ex['inputs']) + len(ex['targets']) == 95 + 2  # a 95-token chunk split, + 2 EOS


def test_mini_tasks_use_the_mini_vocabulary(data_dir):
  mini = tasks.get_task('glue_sst2_local_mini')
  assert mini.output_features['inputs'].vocabulary.vocab_size == 8100
  assert tasks.get_task('glue_sst2_local').output_features['inputs'].vocabulary is not (
      mini.output_features['inputs'].vocabulary)
  ex = next(mini.get_dataset({'inputs': 64, 'targets': 4}, split='validation',
                             shuffle=False).as_numpy_iterator())
  assert _decode(mini, 'inputs', ex['inputs']) == ex['inputs_pretokenized'].decode()
  assert tasks.label_words('glue_sst2_local_mini') == ('negative', 'positive')


def test_nlg_tasks_train_on_pairs_and_evaluate_on_all_references(data_dir):
  if not (data_dir / 'nlg').is_dir():
    pytest.skip(f'no NLG data at {data_dir / "nlg"}')
  from jaxpt.data.seqio_batches import eval_examples
  from tasks import nlg
  task = tasks.get_task('e2e_local_mini')
  lengths = {'inputs': 64, 'targets': 64}
  train = list(task.get_dataset(lengths, split='train', shuffle=False).take(3)
               .as_numpy_iterator())
  first = nlg.e2e_examples('train', str(data_dir))[0]
  # One training example per reference, each with the input's every reference.
  assert [_decode(task, 'targets', ex['targets']) for ex in train] == list(first.references[:3])
  assert all(len(ex['references']) == len(first.references) for ex in train)
  examples = eval_examples('e2e_local_mini', lengths, 'validation')
  held_out = nlg.e2e_examples('validation', str(data_dir))
  assert examples['references'] == [list(e.references) for e in held_out]
  perfect = [refs[0] for refs in examples['references']]
  scores = tasks.metrics.compute('e2e_local_mini', examples['references'], perfect)
  assert scores['bleu'] == pytest.approx(100.0) and scores['rouge_l'] == pytest.approx(100.0)
  webnlg = eval_examples('webnlg_local', lengths, 'test', max_examples=5)
  assert webnlg['references'][0][0] == 'Abilene, Texas is served by the Abilene regional airport.'
