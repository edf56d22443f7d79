"""Tuning on the user's own files: reading, errors that name file and line, one command."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from jaxpt.data.user_files import DataError, label_list, read_examples

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / 'examples' / 'fruit_or_tool'


def _write(path: pathlib.Path, text: str) -> str:
  path.write_text(text, encoding='utf-8')
  return str(path)


def test_tsv_csv_and_jsonl_read_the_same_examples(tmp_path):
  tsv = _write(tmp_path / 'a.tsv', 'premise\thypothesis\tlabel\nA cat.\tAn animal.\tyes\n'
                                   'A car.\tA fruit.\tno\n')
  csv = _write(tmp_path / 'a.csv', 'premise,hypothesis,label\n"A cat.","An animal.",yes\n'
                                   '"A car.","A fruit.",no\n')
  jsonl = _write(tmp_path / 'a.jsonl', '\n'.join(json.dumps(r) for r in [
      {'premise': 'A cat.', 'hypothesis': 'An animal.', 'label': 'yes'},
      {'premise': 'A car.', 'hypothesis': 'A fruit.', 'label': 'no'}]) + '\n\n')
  template = 'premise: {premise} hypothesis: {hypothesis}'
  got = [read_examples(p, input_template=template, target_field='label')
         for p in (tsv, csv, jsonl)]
  assert got[0] == got[1] == got[2] == [
      {'inputs': 'premise: A cat. hypothesis: An animal.', 'targets': 'yes'},
      {'inputs': 'premise: A car. hypothesis: A fruit.', 'targets': 'no'}]


@pytest.mark.parametrize('name, text, where', [
    ('bad.jsonl', '{"input": "a", "target": "b"}\n{"input": "a", "target"\n', 'bad.jsonl:2'),
    ('bad.jsonl', '["a", "b"]\n', 'bad.jsonl:1'),
    ('bad.tsv', 'input\ttarget\na\tb\nc\td\te\n', 'bad.tsv:3'),
    ('bad.tsv', 'input\ttarget\na\tb\nc\n', 'bad.tsv:3'),
    ('bad.csv', 'input,label\nx,y\n', 'bad.csv:2'),  # no 'target' column
    ('bad.tsv', 'input\tinput\na\tb\n', 'bad.tsv:1'),
    ('empty.tsv', '', 'empty.tsv: no examples'),
    ('data.txt', 'a\tb\n', 'data.txt: unknown data file type'),
])
def test_malformed_files_name_the_file_and_line(tmp_path, name, text, where):
  path = _write(tmp_path / name, text)
  with pytest.raises(DataError, match=where.replace('.', r'\.')):
    read_examples(path)


def test_labels_must_cover_every_target(tmp_path):
  examples = read_examples(_write(tmp_path / 'a.tsv', 'input\ttarget\nx\tyes\ny\tmaybe\n'))
  assert label_list(examples, None, 'a.tsv') is None
  with pytest.raises(DataError, match="example 2 has target 'maybe'"):
    label_list(examples, ['yes', 'no'], 'a.tsv')


def test_the_shipped_example_files_read():
  train = read_examples(str(EXAMPLE / 'train.tsv'), input_field='sentence', target_field='label')
  dev = read_examples(str(EXAMPLE / 'dev.tsv'), input_field='sentence', target_field='label')
  assert (len(train), len(dev)) == (512, 128)
  assert label_list(train, ['fruit', 'tool'], 'train.tsv') == ['fruit', 'tool']


def _train(tmp_path, **overrides):
  import gin

  import jaxpt
  from jaxpt.assets import mini_t5_path
  from jaxpt.cli import runs
  from jaxpt.methods import PromptTuning
  from jaxpt.train.optim import make_optimizer

  gin.clear_config()
  kwargs = dict(
      model_dir=str(tmp_path / 'run'), task_feature_lengths={'inputs': 32, 'targets': 4},
      train_steps=2, batch_size=4, method=PromptTuning(length=4, initializer='class_labels'),
      optimizer=make_optimizer('adamw', 0.3, weight_decay=0.0),
      initial_checkpoint_path=mini_t5_path(), train_file=str(EXAMPLE / 'train.tsv'),
      validation_file=str(EXAMPLE / 'dev.tsv'), input_field='sentence', target_field='label',
      labels=['fruit', 'tool'], eval_every=2, eval_examples=8, checkpoint_every=2, log_every=1)
  kwargs.update(overrides)
  del jaxpt
  return runs.train(**kwargs)


def test_train_on_own_files_writes_prompt_and_metrics(tmp_path, capsys):
  out = _train(tmp_path)
  assert out['step'] == 2
  run = tmp_path / 'run'
  manifest = json.loads((run / 'prompt' / 'jaxpt_prompt.json').read_text())
  # the class-label init read the run's labels
  assert manifest['method']['hyperparameters']['class_labels'] == ['fruit', 'tool']
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in records if r['split'] == 'eval']
  assert evals and 0.0 <= evals[-1]['accuracy'] <= 100.0
  # with a validation file the best prompt is kept by accuracy, without any setting
  best = json.loads((run / 'prompt_best' / 'jaxpt_prompt.json').read_text())
  assert best['metrics']['accuracy'] == evals[-1]['accuracy']
  printed = capsys.readouterr().out
  assert '512 training examples' in printed and '8 validation examples' in printed
  # the start and end summaries
  assert 'method: prompt_tuning; trainable: 512 parameters' in printed  # 4 x d_model 128
  assert 'wrote checkpoints, prompt, prompt_best, metrics.jsonl' in printed


def test_packed_training_run(tmp_path, capsys):
  """PACK: the run trains on packed rows (each with its prompt) and evaluates unpacked."""
  out = _train(tmp_path, pack=True)
  assert out['step'] == 2
  printed = capsys.readouterr().out
  assert 'data: packed 512 examples into' in printed
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text()
             .splitlines()]
  train = [r for r in records if r['split'] == 'train']
  # more target tokens a step than 4 unpacked rows hold (4 rows x 2 label tokens at most)
  assert train and all(r['num_tokens'] > 8 for r in train)
  assert any(r['split'] == 'eval' for r in records)


def test_train_refuses_both_or_neither_data_source(tmp_path):
  with pytest.raises(ValueError, match='exactly one of MIXTURE_OR_TASK_NAME'):
    _train(tmp_path, mixture_or_task_name='synthetic_two_class')
  with pytest.raises(ValueError, match='exactly one of MIXTURE_OR_TASK_NAME'):
    _train(tmp_path, train_file=None)


def test_vocabulary_larger_than_the_embedding_is_refused_before_step_one(tmp_path):
  from jaxpt.cli import runs
  with pytest.raises(ValueError, match='tokenized for another backbone'):
    runs._check_vocabulary(32100, 8192, 'jaxpt/assets/mini_t5')
  runs._check_vocabulary(8100, 8192, 'jaxpt/assets/mini_t5')  # the mini vocabulary fits


def test_backbone_vocabulary_prefers_the_backbones_own_model():
  from jaxpt.assets import mini_t5_path
  from jaxpt.vocabulary import backbone_vocabulary
  vocab = backbone_vocabulary(mini_t5_path())
  assert vocab.path == os.path.join(mini_t5_path(), 'spiece.model')
  assert vocab.vocab_size == 8100
  ids = vocab.encode('apple hammer')
  assert vocab.decode(np.asarray(ids + [1, 0])) == 'apple hammer'


@pytest.mark.parametrize('overrides, message', [
    ({'batch_size': 0}, 'BATCH_SIZE must be an integer >= 1, got 0'),
    ({'batch_size': -4}, 'BATCH_SIZE must be an integer >= 1, got -4'),
    ({'train_steps': -1}, 'TRAIN_STEPS must be an integer >= 0, got -1'),
])
def test_bad_sizes_are_one_line_errors_before_any_work(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    _train(tmp_path, **overrides)
  assert not (tmp_path / 'run').exists()


def test_cli_names_the_bad_line_and_exits_2(tmp_path):
  import subprocess
  import sys
  bad = _write(tmp_path / 'bad.tsv', 'sentence\tlabel\nan apple\tfruit\na saw\n')
  out = subprocess.run(
      [sys.executable, '-m', 'jaxpt', 'train', '--gin_file=models/mini_t5/mini.gin',
       '--gin_file=methods/prompt_tuning.gin', '--gin_file=runs/train.gin',
       f"--gin.MODEL_DIR='{tmp_path / 'run'}'", f"--gin.TRAIN_FILE='{bad}'",
       "--gin.INPUT_FIELD='sentence'", "--gin.TARGET_FIELD='label'"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [line for line in out.stderr.splitlines() if 'error' in line]
  assert len(lines) == 1 and 'bad.tsv:3: 1 columns, the header has 2' in lines[0], out.stderr


def test_missing_tensorflow_does_not_stop_a_run(tmp_path, monkeypatch, capsys):
  import builtins
  real_import = builtins.__import__

  def no_tensorflow(name, *args, **kwargs):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      raise ImportError('No module named tensorflow')
    return real_import(name, *args, **kwargs)

  from jaxpt.cli import runs
  monkeypatch.setattr(runs, '_TENSORBOARD_WARNED', [])
  monkeypatch.setattr(builtins, '__import__', no_tensorflow)
  out = _train(tmp_path)
  assert out['step'] == 2
  printed = capsys.readouterr().out
  assert printed.count('WARNING: no TensorBoard events') == 1
  assert (tmp_path / 'run' / 'metrics.jsonl').read_text().count('"split": "train"') == 2


def test_resuming_with_other_settings_is_refused_and_start_fresh_restarts(tmp_path):
  _train(tmp_path)
  with pytest.raises(ValueError, match=r'holds another run \(seed: 0 -> 1\)'):
    _train(tmp_path, seed=1)
  out = _train(tmp_path, seed=1, start_fresh=True)
  assert out['step'] == 2
  assert [p.name for p in (tmp_path / 'run').iterdir() if p.name.startswith('replaced-')]


def test_truncated_and_unknown_inputs_are_reported(tmp_path, capsys):
  from jaxpt.assets import mini_t5_path
  from jaxpt.cli import runs
  from jaxpt.vocabulary import backbone_vocabulary
  vocab = backbone_vocabulary(mini_t5_path())
  texts = ['apple banana', 'apple ' * 40, '漢字のテキスト']
  runs._report_truncation('x.tsv', texts, vocab, 16)
  out = capsys.readouterr().out
  assert '1 of 3 inputs in x.tsv (33.3%) are longer than 16 tokens' in out
  assert '1 of 3 inputs in x.tsv (33.3%) hold characters the vocabulary maps to its unknown' in out


def test_an_exploding_prompt_is_reported(tmp_path, capsys):
  from jaxpt.train.optim import make_optimizer
  _train(tmp_path, optimizer=make_optimizer('sgd', 1e9), train_steps=2, validation_file=None)
  out = capsys.readouterr().out
  assert 'WARNING: at step 1 the prompt vectors are' in out
  assert 'the learning rate is likely too high' in out


def test_infer_reads_the_backbones_own_vocabulary(tmp_path):
  """A TSV through `jaxpt infer` on the mini backbone: tokenized with its own vocabulary."""
  import gin
  from jaxpt.assets import mini_t5_path
  from jaxpt.cli import runs
  _train(tmp_path, train_steps=2)
  inputs = _write(tmp_path / 'in.tsv', 'mango apple lemon banana cherry\nsaw drill rake\n')
  gin.clear_config()
  out = runs.infer(model_dir=str(tmp_path / 'run'), task_feature_lengths={'inputs': 32,
                                                                          'targets': 4},
                   input_tsv=inputs, initial_checkpoint_path=mini_t5_path(), max_decode_length=4)
  rows = [json.loads(line) for line in open(out)]
  assert [r['input'] for r in rows] == ['mango apple lemon banana cherry', 'saw drill rake']
  # decoded with the mini vocabulary: real words, not T5-vocabulary garbage or nothing
  assert all(r['prediction'].strip() for r in rows), rows
  assert all(r['prediction'].isascii() for r in rows), rows


def test_a_checkpoint_of_another_structure_than_the_model_gin_is_refused(tmp_path):
  import jax
  import jaxpt
  from jaxpt.cli import runs
  from jaxpt.models.t5 import init_params
  from tests.tiny_configs import CONFIG
  short = CONFIG.replace(num_decoder_layers=CONFIG.num_decoder_layers - 1)
  jaxpt.save_model(jaxpt.Model(short, init_params(short, jax.random.key(0))),
                   str(tmp_path / 'short'))
  with pytest.raises(ValueError, match=r'num_decoder_layers \d+ \(gin: \d+\)'):
    runs._backbone(str(tmp_path / 'short'), CONFIG, 0)
  tied = CONFIG.replace(logits_via_embedding=not CONFIG.logits_via_embedding)
  jaxpt.save_model(jaxpt.Model(tied, init_params(tied, jax.random.key(0))),
                   str(tmp_path / 'tied'))
  with pytest.raises(ValueError, match='logits_via_embedding'):
    runs._backbone(str(tmp_path / 'tied'), CONFIG, 0)
  assert runs._backbone(str(tmp_path / 'short'), short, 0).config.num_decoder_layers == (
      short.num_decoder_layers)


def test_the_first_steps_compile_is_reported_apart(tmp_path, capsys):
  _train(tmp_path, train_steps=4, log_every=2, validation_file=None)
  out = capsys.readouterr().out
  assert 'step 1: compiled and ran the first step in' in out
  assert '(not counted in examples/s)' in out


def test_eval_and_infer_read_the_same_files(tmp_path):
  import gin
  from jaxpt.assets import mini_t5_path
  from jaxpt.cli import runs
  _train(tmp_path)
  gin.clear_config()
  common = dict(model_dir=str(tmp_path / 'run'), task_feature_lengths={'inputs': 32,
                                                                         'targets': 4},
                initial_checkpoint_path=mini_t5_path(), input_field='sentence',
                target_field='label')
  record = runs.evaluate(eval_file=str(EXAMPLE / 'dev.tsv'), max_examples=16, **common)
  assert record['examples'] == 16 and 0.0 <= record['accuracy'] <= 100.0
  # the labels come from the run that trained the prompt (its run.json)
  assert runs._labels_of(str(tmp_path / 'run' / 'prompt'), None) == ['fruit', 'tool']
  out = runs.infer(input_file=str(EXAMPLE / 'dev.tsv'), max_decode_length=4, **common)
  rows = [json.loads(line) for line in open(out)]
  assert len(rows) == 128 and rows[0]['target'] in ('fruit', 'tool')
  with pytest.raises(ValueError, match='exactly one of MIXTURE_OR_TASK_NAME'):
    runs.evaluate(**common)
