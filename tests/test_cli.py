"""The `jaxpt` command: the README's main job and clean errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jaxpt.cli.main import main


DEMO_RESULT = re.compile(
    r'majority class ([\d.]+)%\): zero-shot ([\d.]+)%, prompt-tuned ([\d.]+)%')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The README's first command, run once for the module: `python -m jaxpt demo` (300 steps
  on the committed mini backbone, about 2 minutes on 2 cores) in a fresh process, offline,
  with a time limit; (completed process, its output directory runs/demo)."""
  cwd = tmp_path_factory.mktemp('demo')
  proc = subprocess.run([sys.executable, '-m', 'jaxpt', 'demo'], cwd=cwd,
                        env=dict(os.environ), capture_output=True, text=True, timeout=600)
  print(proc.stdout)
  return proc, cwd / 'runs' / 'demo'


@pytest.mark.slow
def test_demo_tunes_a_prompt_on_the_mini_backbone(demo_run):
  from jaxpt.checkpoints import prompts
  proc, out_dir = demo_run
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert "jaxpt's mini T5" in out and 'A toy, not T5' in out  # says what the backbone is
  assert 'synthetic two-class task' in out
  match = DEMO_RESULT.search(out)
  assert match, out
  # demo.run's return value, as it records it in the prompt checkpoint's metrics
  accuracy = prompts.read_manifest(str(out_dir / 'prompt'))['metrics']['accuracy']
  assert float(match[3]) == pytest.approx(100 * accuracy, abs=0.06)
  assert accuracy >= 0.9 and 100 * accuracy > float(match[1]) + 20
  assert 'predictions match' in out
  assert (out_dir / 'prompt' / 'jaxpt_prompt.json').is_file()
  assert (out_dir / 'backbone_hf' / 'config.json').is_file()


def test_demo_rejects_an_unknown_task():
  from jaxpt.cli import demo
  with pytest.raises(ValueError, match="'auto', 'sst2' or 'synthetic'"):
    demo.load_task('sst5')


@pytest.mark.slow
def test_readme_first_command_beats_the_majority_class(demo_run):
  """`make demo` runs `jaxpt demo`: the default task (synthetic two-class text) on the
  committed mini backbone, in a fresh process (the module's one demo run)."""
  proc, _ = demo_run
  assert proc.returncode == 0, proc.stderr[-2000:]
  match = DEMO_RESULT.search(proc.stdout)
  assert match, proc.stdout
  assert float(match[3]) > float(match[1]) + 20


def test_each_demo_task_writes_its_own_directory(tmp_path, monkeypatch):
  """`jaxpt demo --task sst2` writes runs/demo_sst2 and leaves the default's runs/demo alone."""
  from jaxpt.cli import demo
  assert demo.output_dir('synthetic_two_class') == os.path.join('runs', 'demo')
  assert demo.output_dir('glue_sst2_local_mini') == os.path.join('runs', 'demo_sst2')
  # run() takes the directory from the task it loaded: stop it right after that choice
  monkeypatch.chdir(tmp_path)
  chosen = []
  monkeypatch.setattr(demo, 'load_task', lambda task: ('glue_sst2_local_mini', [], [], 'SST-2'))
  monkeypatch.setattr(demo, 'output_dir', lambda name: chosen.append(name) or 'x')

  def stop(*args, **kwargs):
    raise RuntimeError('stop')

  monkeypatch.setattr(demo.jaxpt, 'load_model', stop)
  with pytest.raises(RuntimeError, match='stop'):
    demo.run(task='sst2')
  assert chosen == ['glue_sst2_local_mini']


def test_bad_path_exits_2_without_traceback(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'jaxpt', 'summary', str(tmp_path / 'nope')],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'no such file or directory' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_unknown_command_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as e:
    main(['tran'])
  assert e.value.code == 2


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI_TRAIN = ['train', '--gin_file=models/mini_t5/mini.gin', '--gin_file=runs/train.gin']
# What a CPU machine must not see from a working run: TensorFlow's CUDA probing, SeqIO's
# per-run cache advice, gin's ERROR for an include it then finds, tracebacks.
NOISE = re.compile(r'cuInit|CUDA|cuda|cudart|uncached|cache this task|ERROR|Traceback')


def _jaxpt(args, cwd, timeout, **env):
  """`python -m jaxpt ARGS` in a fresh process, TensorFlow's log level left to jaxpt."""
  environ = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  environ.update(PYTHONPATH=os.pathsep.join([REPO, str(cwd)]), **env)
  return subprocess.run([sys.executable, '-m', 'jaxpt', *args], cwd=cwd, env=environ,
                        capture_output=True, text=True, timeout=timeout)


MY_TASKS = '''
import seqio
import tensorflow as tf
from tasks.registry import PREPROCESSORS, mini_vocabulary, output_features


def parse_tsv(dataset):
  def parse(line):
    inputs, targets = tf.io.decode_csv(line, ['', ''], field_delim='\\t', use_quote_delim=False)
    return {'inputs': inputs, 'targets': targets}
  return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


seqio.TaskRegistry.add(
    'my_fruit_or_tool_mini',
    source=seqio.TextLineDataSource({'train': 'my_data/train.tsv',
                                     'validation': 'my_data/validation.tsv'}),
    preprocessors=[parse_tsv, *PREPROCESSORS],
    output_features=output_features(mini_vocabulary()))
'''


def test_a_malformed_line_in_a_seqio_task_is_one_line_and_exit_2(tmp_path):
  """docs/cli.md's own SeqIO task over a TSV whose second line has 3 columns: one line
  naming the file and line, exit 2, and no hang in TensorFlow's teardown (time limit)."""
  (tmp_path / 'my_data').mkdir()
  (tmp_path / 'my_data' / 'train.tsv').write_text('apple mango\tfruit\nsaw drill\trake\ttool\n')
  (tmp_path / 'my_data' / 'validation.tsv').write_text('banana cherry\tfruit\n')
  (tmp_path / 'my_tasks.py').write_text(MY_TASKS)
  (tmp_path / 'my_task.gin').write_text("import my_tasks\ninclude 'methods/prompt_tuning.gin'\n")
  out = _jaxpt([*MINI_TRAIN, '--gin_file=my_task.gin', "--gin.MODEL_DIR='run'",
                "--gin.MIXTURE_OR_TASK_NAME='my_fruit_or_tool_mini'", '--gin.PROMPT_LENGTH=4',
                "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
                '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=2', '--gin.jaxpt.train.eval_every=None'],
               tmp_path, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]  # nothing but the error: no CUDA lines either
  assert 'my_data/train.tsv:2' in lines[0] and 'Expect 2 fields but have 3' in lines[0]


@pytest.mark.slow
def test_a_short_train_run_on_cpu_is_quiet(tmp_path, shared_data):
  """Two steps on the mini backbone with a SeqIO task and a gin include: stderr holds none
  of TensorFlow's CUDA lines, SeqIO's cache advice or gin's include misses."""
  (tmp_path / 'method.gin').write_text("include 'methods/prompt_tuning.gin'\n")
  out = _jaxpt([*MINI_TRAIN, '--gin_file=method.gin', '--gin_file=local_tiny.gin',
                "--gin.MODEL_DIR='run'", "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_local_mini'",
                '--gin.TRAIN_STEPS=2', '--gin.jaxpt.train.eval_every=2'],
               tmp_path, timeout=600, JAXPT_DATA_DIR=str(shared_data))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'step 2/2' in out.stdout and 'eval at step 2' in out.stdout
  assert not NOISE.search(out.stderr), out.stderr[-3000:]
