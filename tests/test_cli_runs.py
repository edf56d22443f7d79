"""`jaxpt train / eval / infer / export-peft` through gin, end to end, and their errors."""

from __future__ import annotations

import json
import os
import stat

import pytest

pytest.importorskip('seqio')

from jaxpt.cli.main import main  # noqa: E402

TINY = ['--gin_file=models/t5_1_1/tiny.gin']


def _run(capsys, *args):
  """Runs the command in-process; returns (exit code, stdout, stderr)."""
  try:
    main(list(args))
    code = 0
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.fixture()
def data_dir(shared_data, monkeypatch):
  monkeypatch.setenv('JAXPT_DATA_DIR', str(shared_data))
  return shared_data


@pytest.mark.slow
def test_train_eval_infer_export_on_local_rte(data_dir, tmp_path, capsys):
  model_dir = tmp_path / 'run'
  common = [f"--gin.MODEL_DIR='{model_dir}'", '--gin_file=local_tiny.gin']
  task = "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte_local'"
  code, out, err = _run(capsys, 'train', *TINY, '--gin_file=methods/prompt_tuning.gin',
                        '--gin_file=runs/train.gin', *common, task)
  assert code == 0, err
  assert 'RANDOMLY initialized' in out and 'step 4/4' in out and 'ETA' in out
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['2', '4']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(model_dir / 'train'))
  records = [json.loads(line) for line in open(model_dir / 'metrics.jsonl')]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3, 4]
  assert any(r['split'] == 'eval' and 'accuracy' in r for r in records)
  operative = (model_dir / 'operative_config.gin').read_text()
  assert 'TRAIN_STEPS = 4' in operative and 'PromptTuning' in operative
  assert (model_dir / 'config.gin').is_file()
  assert (model_dir / 'prompt' / 'jaxpt_prompt.json').is_file()

  code, out, err = _run(capsys, 'eval', *TINY, '--gin_file=runs/eval.gin', *common, task)
  assert code == 0, err
  metrics = [json.loads(line) for line in open(model_dir / 'eval_metrics.jsonl')]
  assert metrics[-1]['examples'] == 277 and 0 <= metrics[-1]['accuracy'] <= 100
  assert any(f.startswith('events.out') for f in os.listdir(model_dir / 'eval_validation'))

  code, out, err = _run(capsys, 'infer', *TINY, '--gin_file=runs/infer.gin', *common, task,
                        '--gin.jaxpt.infer.max_examples=3')
  assert code == 0, err
  predictions = [json.loads(line) for line in open(model_dir / 'predictions.jsonl')]
  assert len(predictions) == 3 and predictions[0]['target'] == 'not_entailment'
  assert predictions[0]['input'].startswith('rte hypothesis: Christopher Reeve had an accident.')

  code, out, err = _run(capsys, 'export-peft', *TINY, '--gin_file=runs/export.gin', *common,
                        f"--gin.OUTPUT_DIR='{tmp_path / 'peft'}'")
  assert code == 0, err
  assert json.loads((tmp_path / 'peft' / 'adapter_config.json').read_text())[
      'peft_type'] == 'PROMPT_TUNING'


TRAIN = TINY + ['--gin_file=methods/prompt_tuning.gin', '--gin_file=runs/train.gin',
                '--gin_file=local_tiny.gin']


def test_unknown_task_suggests_the_closest(data_dir, tmp_path, capsys):
  code, _, err = _run(capsys, 'train', *TRAIN, f"--gin.MODEL_DIR='{tmp_path}'",
                      "--gin.MIXTURE_OR_TASK_NAME='super_glue_rtee_local'")
  assert code == 2 and "did you mean 'super_glue_rte_local'" in err
  assert 'Traceback' not in err


def test_missing_data_directory(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv('JAXPT_DATA_DIR', str(tmp_path / 'nowhere'))
  code, _, err = _run(capsys, 'train', *TRAIN, f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                      "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte_local'")
  assert code == 2 and 'nowhere' in err and 'JAXPT_DATA_DIR' in err


def test_gin_typos(tmp_path, capsys):
  code, _, err = _run(capsys, 'train', *TRAIN, '--gin.jaxpt.train.trian_steps=3')
  assert code == 2 and 'trian_steps' in err
  code, _, err = _run(capsys, 'train', '--gin_file=runs/trian.gin')
  assert code == 2 and 'runs/train.gin' in err  # the suggestion


def test_output_directory_not_writable(data_dir, tmp_path, capsys):
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
  if os.access(locked, os.W_OK):  # root ignores permissions
    locked = tmp_path / 'a_file'
    locked.write_text('x')
  code, _, err = _run(capsys, 'train', *TRAIN, f"--gin.MODEL_DIR='{locked / 'run'}'",
                      "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte_local'")
  assert code == 2 and 'not a writable directory' in err


def test_sequence_length_too_short_for_the_prompt(data_dir, tmp_path, capsys):
  code, _, err = _run(capsys, 'train', *TRAIN, f"--gin.MODEL_DIR='{tmp_path}'",
                      "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte_local'",
                      '--gin.PROMPT_LENGTH=100')
  assert code == 2 and 'prompt' in err and '64' in err


P_TUNING = TINY + ['--gin_file=methods/p_tuning.gin', '--gin_file=runs/train.gin',
                   '--gin_file=local_tiny.gin', "--gin.MIXTURE_OR_TASK_NAME='synthetic_two_class'"]


@pytest.mark.slow
def test_train_p_tuning_then_export_to_peft(tmp_path, capsys):
  model_dir = tmp_path / 'run'
  code, out, err = _run(capsys, 'train', *P_TUNING, f"--gin.MODEL_DIR='{model_dir}'",
                        '--gin.jaxpt.train.eval_every=None')
  assert code == 0, err
  assert 'step 4/4' in out
  manifest = json.loads((model_dir / 'prompt' / 'jaxpt_prompt.json').read_text())
  assert manifest['method']['name'] == 'p_tuning'
  assert manifest['method']['hyperparameters']['encoder'] == 'lstm'
  assert 'PTuning' in (model_dir / 'operative_config.gin').read_text()
  code, out, err = _run(capsys, 'export-peft', *TINY, '--gin_file=runs/export.gin',
                        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.OUTPUT_DIR='{tmp_path / 'peft'}'")
  assert code == 0, err
  assert json.loads((tmp_path / 'peft' / 'adapter_config.json').read_text())[
      'peft_type'] == 'P_TUNING'


def test_train_refuses_a_template_inside_the_input(tmp_path, capsys):
  code, _, err = _run(capsys, 'train', *P_TUNING, f"--gin.MODEL_DIR='{tmp_path}'",
                      '--gin.PROMPT_LENGTH=4',
                      "--gin.jaxpt.methods.PTuning.template='[P2] {inputs} [P2]'")
  assert code == 2 and 'places prompt tokens inside the input' in err


@pytest.mark.slow
def test_pretrain_run_writes_the_tuned_backbone(data_dir, tmp_path, capsys):
  """runs/pretrain.gin (span corruption, every parameter trainable) on a tiny model."""
  import jaxpt
  model_dir = tmp_path / 'pretrain'
  code, out, err = _run(
      capsys, 'train', '--gin_file=models/mini_t5/mini.gin', '--gin_file=methods/model_tuning.gin',
      '--gin_file=runs/train.gin', '--gin_file=runs/pretrain.gin', f"--gin.MODEL_DIR='{model_dir}'",
      '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=2', '--gin.WARMUP_STEPS=1',
      "--gin.jaxpt.preset.num_encoder_layers=1", "--gin.jaxpt.preset.num_decoder_layers=1")
  assert code == 0, err
  assert 'step 2/2' in out
  tuned = jaxpt.load_model(str(model_dir / 'model'))
  assert tuned.config.vocab_size == 8192 and tuned.config.num_encoder_layers == 1


@pytest.mark.slow
def test_train_packs_a_seqio_task(tmp_path, capsys):
  """PACK (runs/train.gin's default) packs a task's training split; PACK=False does not."""
  args = [*TINY, '--gin_file=methods/prompt_tuning.gin', '--gin_file=runs/train.gin',
          '--gin_file=local_tiny.gin', "--gin.MIXTURE_OR_TASK_NAME='synthetic_two_class'",
          '--gin.TRAIN_STEPS=2', '--gin.jaxpt.train.eval_split=None']
  code, out, err = _run(capsys, 'train', *args, f"--gin.MODEL_DIR='{tmp_path / 'packed'}'")
  assert code == 0, err
  assert 'data: packed' in out and 'step 2/2' in out
  code, out, err = _run(capsys, 'train', *args, f"--gin.MODEL_DIR='{tmp_path / 'padded'}'",
                        '--gin.PACK=False')
  assert code == 0, err
  assert 'data: packed' not in out and 'step 2/2' in out
