"""Every gin file under gin/ loads with plain gin after `import jaxpt`, not only through the CLI.

One child process (this file run as a script, outside the repository) does
`import gin, jaxpt` and nothing else of jaxpt, then for each file: parses it alone, and
parses it finalized in a complete run (a model, a method, a run file, required macros set)
and evaluates what it configures (MODEL_CONFIG, METHOD, OPTIMIZER, PARTITIONING, the loss
macros). A file that needs `jaxpt.cli.gin_flags` or any registration the CLI does
fails here. The tests below read the child's JSON report.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import pytest

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[1]
GIN_DIR = REPO / 'gin'
GIN_FILES = sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob('*.gin'))
# T5 families (jaxpt.preset) and decoder-only ones (jaxpt.decoder_preset: gpt2, llama).
FAMILIES = sorted(p.parent.name for p in GIN_DIR.glob('models/*/base.gin')
                  if '@jaxpt.preset()' in p.read_text())
DECODER_FAMILIES = sorted(p.parent.name for p in GIN_DIR.glob('models/*/base.gin')
                          if '@jaxpt.decoder_preset()' in p.read_text())
SIZES = ('tiny', 'small', 'base', 'large', 'xl', 'xxl')
XXL_SUBMESH = {'partitioning/xxl_v3_32.gin': ((2, 2, 1, 2), 8),
               'partitioning/xxl_v4_32.gin': ((2, 2, 4, 1), 16)}
METADATA = REPO / 'jaxpt' / 'assets' / 'mini_t5' / 'metadata.json'

# ------------------------------------------------------------------- the child process

TINY = 'models/t5_1_1/tiny.gin'
PROMPT = 'methods/prompt_tuning.gin'
TRAIN = 'runs/train.gin'
MINI_RUN = ['models/mini_t5/mini.gin', 'methods/model_tuning.gin', TRAIN, 'runs/pretrain.gin']
RUN_MACROS = ["MODEL_DIR = '/tmp/jaxpt_gin_test'", "MIXTURE_OR_TASK_NAME = 'task'"]
# What each recorded asset run was: its gin files and the command line's paths.
ASSET_RUNS = {'pretrain': (MINI_RUN, []),
              'lm_adapt': (MINI_RUN + ['runs/lm_adapt.gin'], ["INITIAL_CHECKPOINT_PATH = 'x'"])}
# The recipe: macros and parameters the assets' operative configs record.
RECIPE_KEYS = ['TRAIN_STEPS', 'BATCH_SIZE', 'WARMUP_STEPS', 'TASK_FEATURE_LENGTHS',
               'MIXTURE_OR_TASK_NAME', 'TRAINABLE_RULES', 'SEED'] + [
    f'make_optimizer.{k}' for k in ('name', 'learning_rate', 'weight_decay', 'clip_norm',
                                    'warmup_steps', 'decay_steps')] + [
    f'train.{k}' for k in ('z_loss', 'label_smoothing', 'checkpoint_every', 'log_every',
                           'eval_every')] + [
    f'preset.{k}' for k in ('family', 'size', 'vocab_size', 'emb_dim', 'num_heads', 'head_dim',
                            'mlp_dim', 'num_encoder_layers', 'num_decoder_layers')]
FULL_NAMES = {'make_optimizer': 'jaxpt.train.make_optimizer', 'train': 'jaxpt.train',
              'preset': 'jaxpt.preset'}


def context(rel: str) -> Tuple[List[str], List[str]]:
  """The files (in order, `rel` among them) and bindings of a complete run using `rel`."""
  if rel == 'runs/lm_adapt.gin':
    return ASSET_RUNS['lm_adapt'][0], [RUN_MACROS[0]] + ASSET_RUNS['lm_adapt'][1]
  if rel == 'runs/pretrain.gin':
    return MINI_RUN, [RUN_MACROS[0]]
  if rel in ('runs/eval.gin', 'runs/infer.gin', 'runs/export.gin'):
    return [TINY, rel], RUN_MACROS + ["OUTPUT_DIR = '/tmp/jaxpt_gin_test_out'"]
  if rel.startswith('models/'):
    return [rel, PROMPT, TRAIN], RUN_MACROS
  if rel.startswith('methods/'):
    extra = ["SOURCE_PROMPT = '/tmp/source_prompt'"] if rel == 'methods/prompt_transfer.gin' else []
    return [TINY, rel, TRAIN], RUN_MACROS + extra
  if rel.startswith('partitioning/xxl'):
    return ['models/t5_1_1/xxl.gin', PROMPT, TRAIN, rel], RUN_MACROS
  if rel.startswith('partitioning/llama'):
    return ['models/llama/llama3_8b.gin', PROMPT, TRAIN, rel], RUN_MACROS
  return [TINY, PROMPT, TRAIN] + ([] if rel == TRAIN else [rel]), RUN_MACROS


def _child(out_path: str) -> None:
  import dataclasses

  import gin

  import jaxpt  # noqa: F401  (registers the configurables: the point of this check)

  assert 'jaxpt.cli.gin_flags' not in sys.modules and 'jaxpt.cli.runs' not in sys.modules
  probe = gin.external_configurable(lambda **kw: kw, name='probe', module='jaxpt_gin_test')

  def resolve(value: Any) -> Any:
    while repr(value).startswith('%'):  # a macro reference
      value = gin.query_parameter(repr(value))
    return value

  def macros(*names: str) -> Dict[str, Any]:
    """Evaluates the macros this config defines (configurable references are called)."""
    defined = []
    for name in names:
      try:
        gin.query_parameter(f'%{name}')
        defined.append(name)
      except ValueError:
        pass
    with gin.unlock_config():
      gin.parse_config([f'jaxpt_gin_test.probe.{n} = %{n}' for n in defined])
    return probe()

  def report(values: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    if 'MODEL_CONFIG' in values:
      c = values['MODEL_CONFIG']
      out['config'] = {k: v for k, v in dataclasses.asdict(c).items()
                       if isinstance(v, (int, float, str, bool, type(None)))}
      name = 'decoder_preset' if isinstance(c, jaxpt.DecoderConfig) else 'preset'
      out['family'] = gin.query_parameter(f'jaxpt.{name}.family')
      out['size'] = gin.query_parameter(f'jaxpt.{name}.size')
    if 'INITIAL_CHECKPOINT_PATH' in values:
      out['checkpoint'] = values['INITIAL_CHECKPOINT_PATH']
    if 'METHOD' in values:
      out['method'] = values['METHOD'].name
    if 'OPTIMIZER' in values:
      out['optimizer'] = type(values['OPTIMIZER']).__name__
    if values.get('PARTITIONING') is not None:
      p = values['PARTITIONING']
      out['partitioning'] = [p.num_partitions, p.model_parallel_submesh and
                             list(p.model_parallel_submesh)]
    for name in ('Z_LOSS', 'LABEL_SMOOTHING'):
      if name in values:
        out[name] = values[name]
    for param in ('z_loss', 'label_smoothing'):
      try:
        out[f'train.{param}'] = repr(gin.query_parameter(f'jaxpt.train.{param}'))
      except ValueError:
        pass
    return out

  def parse_alone(rel: str) -> Any:
    """Parses `rel` alone in a fork of this clean process: what an earlier file imported
    (and so registered) cannot make a later file load."""
    def parse() -> Any:
      try:
        gin.parse_config_files_and_bindings([str(GIN_DIR / rel)], [], finalize_config=False)
        return None
      except Exception as e:  # pylint: disable=broad-except
        return f'{type(e).__name__}: {e}'
    if not hasattr(os, 'fork'):
      gin.clear_config()
      return parse()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the fork: report, then leave without running any exit handler
      os.close(read)
      os.write(write, json.dumps(parse()).encode())
      os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
      out = f.read()
    _, status = os.waitpid(pid, 0)
    return json.loads(out) if status == 0 and out else f'the fork failed (status {status})'

  results: Dict[str, Any] = {'files': {rel: {'alone': parse_alone(rel)} for rel in GIN_FILES}}
  for rel in GIN_FILES:
    r = results['files'][rel]
    gin.clear_config()
    files, bindings = context(rel)
    try:  # short names: through the search path `import jaxpt` registered, like includes
      gin.parse_config_files_and_bindings(files, bindings)
      values = macros('MODEL_CONFIG', 'INITIAL_CHECKPOINT_PATH', 'OPTIMIZER', 'PARTITIONING',
                      'Z_LOSS', 'LABEL_SMOOTHING',
                      *([] if rel == 'methods/prompt_transfer.gin' else ['METHOD']))
      r.update(report(values), finalized=None)
    except Exception as e:  # pylint: disable=broad-except
      r['finalized'] = f'{type(e).__name__}: {e}'

  # The committed mini backbone's runs, as the gin files configure them today.
  results['asset_runs'] = {}
  for stage, (files, bindings) in ASSET_RUNS.items():
    gin.clear_config()
    gin.parse_config_files_and_bindings(files, [RUN_MACROS[0]] + bindings)  # MODEL_DIR
    recipe = {}
    for key in RECIPE_KEYS:
      if '.' in key:
        fn, param = key.split('.')
        value = resolve(gin.query_parameter(f'{FULL_NAMES[fn]}.{param}'))
      else:
        value = resolve(gin.query_parameter(f'%{key}'))
      recipe[key] = value
    results['asset_runs'][stage] = recipe

  # Older operative configs (the asset's) say `import jaxpt.cli.gin_flags`: still loadable.
  results['legacy'] = {}
  for stage, record in json.loads(METADATA.read_text()).items():
    if isinstance(record, dict) and 'operative_config' in record:
      gin.clear_config()
      try:
        gin.parse_config(record['operative_config'])
        results['legacy'][stage] = None
      except Exception as e:  # pylint: disable=broad-except
        results['legacy'][stage] = f'{type(e).__name__}: {e}'
  gin.clear_config()
  with open(out_path, 'w') as f:
    json.dump(results, f, indent=1, default=repr)


# ------------------------------------------------------------------------------- tests


@pytest.fixture(scope='module')
def loaded(tmp_path_factory) -> Dict[str, Any]:
  tmp = tmp_path_factory.mktemp('gin_files')
  out = tmp / 'report.json'
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
  proc = subprocess.run([sys.executable, str(HERE), str(out)], cwd=tmp, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text())


def test_every_gin_file_is_found():
  assert len(GIN_FILES) >= 48 and 'runs/train.gin' in GIN_FILES
  assert len(FAMILIES) == 5


@pytest.mark.parametrize('rel', GIN_FILES)
def test_loads_with_plain_gin(loaded, rel):
  r = loaded['files'][rel]
  assert r['alone'] is None, r['alone']
  assert r['finalized'] is None, (context(rel), r['finalized'])
  assert 'gin_flags' not in (GIN_DIR / rel).read_text()


def test_model_files_build_their_preset(loaded):
  import jaxpt
  for rel, r in loaded['files'].items():
    if not rel.startswith('models/') or rel in ('models/mini_t5/mini.gin',
                                                  'models/mini_gpt2/mini.gin'):
      continue
    family, size = rel.split('/')[1], rel.split('/')[2][:-len('.gin')]
    if family in DECODER_FAMILIES:  # base.gin is the family at one of its public sizes
      size = r['size'] if size == 'base' else size
      assert (r['family'], r['size']) == (family, size), rel
      expected = jaxpt.decoder_preset(family, size)
      assert r['config'] == {k: v for k, v in expected.__dict__.items() if k in r['config']}, rel
      assert r['checkpoint'] is None, rel  # transformers directories: the user's own copy
      continue
    assert (r['family'], r['size']) == (family, size), rel
    expected = jaxpt.preset(family, size)
    assert r['config']['emb_dim'] == expected.emb_dim and r['config'] == {
        k: v for k, v in expected.__dict__.items() if k in r['config']}, rel
    if size == 'tiny':
      assert r['checkpoint'] is None
    else:
      assert r['checkpoint'].startswith('gs://t5-data/pretrained_models/t5x/'), rel
  mini = loaded['files']['models/mini_t5/mini.gin']
  assert mini['config']['emb_dim'] == 128 and mini['config']['vocab_size'] == 8192
  assert os.path.isfile(os.path.join(mini['checkpoint'], 'metadata.json'))
  mini_gpt2 = loaded['files']['models/mini_gpt2/mini.gin']
  assert mini_gpt2['config']['emb_dim'] == 128 and mini_gpt2['config']['vocab_size'] == 8000
  asset = jaxpt.load_model(mini_gpt2['checkpoint']).config  # the gin config is the asset's
  assert mini_gpt2['config'] == {k: v for k, v in asset.__dict__.items()
                                 if k in mini_gpt2['config']}


@pytest.mark.parametrize('family', FAMILIES)
def test_size_files_include_their_family_base(family):
  base = (GIN_DIR / 'models' / family / 'base.gin').read_text()
  assert f"jaxpt.preset.family = '{family}'" in base and 'MODEL_CONFIG = @jaxpt.preset()' in base
  for size in SIZES:
    if size == 'base':
      continue
    text = (GIN_DIR / 'models' / family / f'{size}.gin').read_text()
    statements = [line for line in text.splitlines() if line and not line.startswith('#')]
    assert statements[0] == f"include 'models/{family}/base.gin'", (family, size)
    # Only the size and the checkpoint change.
    assert [s.split(' =')[0] for s in statements[1:]] == [
        'jaxpt.preset.size', 'INITIAL_CHECKPOINT_PATH'], (family, size)


@pytest.mark.parametrize('family', DECODER_FAMILIES)
def test_decoder_size_files_include_their_family_base(family):
  from jaxpt.models.decoder_config import decoder_preset_names
  base = (GIN_DIR / 'models' / family / 'base.gin').read_text()
  assert f"jaxpt.decoder_preset.family = '{family}'" in base
  base_size = re.search(r"jaxpt.decoder_preset.size = '(\w+)'", base)[1]
  sizes = [s for f, s in decoder_preset_names() if f == family and s != base_size]
  assert sorted(p.stem for p in (GIN_DIR / 'models' / family).glob('*.gin')) == sorted(
      sizes + ['base'])
  for size in sizes:
    text = (GIN_DIR / 'models' / family / f'{size}.gin').read_text()
    statements = [line for line in text.splitlines() if line and not line.startswith('#')]
    assert statements == [f"include 'models/{family}/base.gin'",
                          f"jaxpt.decoder_preset.size = '{size}'"], (family, size)


def test_methods_come_from_the_registry(loaded):
  from jaxpt.methods.registry import METHODS
  built = {r['method'] for r in loaded['files'].values() if 'method' in r}
  assert built <= set(METHODS) and len(built) >= 4


@pytest.mark.parametrize('rel', sorted(XXL_SUBMESH))
def test_xxl_partitioning_sets_the_submesh(loaded, rel):
  submesh, partitions = XXL_SUBMESH[rel]
  text = (GIN_DIR / rel).read_text()
  assert f'MODEL_PARALLEL_SUBMESH = {submesh}' in text
  r = loaded['files'][rel]
  assert r['partitioning'] == [partitions, list(submesh)]
  prod = 1
  for n in submesh:
    prod *= n
  assert prod == partitions  # make_mesh accepts the pair
  assert r['config']['dtype'] == 'bfloat16' and r['config']['remat_policy'] == 'full'


def test_v4_includes_v3_and_v3_includes_pjit():
  v4 = (GIN_DIR / 'partitioning/xxl_v4_32.gin').read_text()
  v3 = (GIN_DIR / 'partitioning/xxl_v3_32.gin').read_text()
  assert "include 'partitioning/xxl_v3_32.gin'" in v4 and 'jaxpt.preset' not in v4
  assert "include 'partitioning/pjit.gin'" in v3


def test_loss_macros_have_one_default(loaded):
  train = (GIN_DIR / 'runs/train.gin').read_text()
  assert re.search(r'^Z_LOSS = 1e-4$', train, re.M)
  assert re.search(r'^LABEL_SMOOTHING = 0.0$', train, re.M)
  for rel in GIN_FILES:  # defined once, in runs/train.gin
    if rel != 'runs/train.gin':
      assert not re.search(r'^(Z_LOSS|LABEL_SMOOTHING) =', (GIN_DIR / rel).read_text(), re.M)
  r = loaded['files']['runs/train.gin']
  assert (r['Z_LOSS'], r['LABEL_SMOOTHING']) == (1e-4, 0.0)
  assert (r['train.z_loss'], r['train.label_smoothing']) == ('%Z_LOSS', '%LABEL_SMOOTHING')


def _recorded(config: str, key: str) -> Any:
  """A value in a recorded operative config (scopes dropped, macros followed)."""
  bindings = {}
  for line in config.splitlines():
    m = re.match(r'^(?:\w+/)?([\w.]+) = (.+)$', line)
    if m:
      bindings[m.group(1)] = m.group(2)
  value = bindings[key]
  while value.startswith('%'):
    value = bindings[value[1:]]
  return ast.literal_eval(value)


@pytest.mark.parametrize('stage', sorted(ASSET_RUNS))
def test_run_files_agree_with_the_committed_asset(loaded, stage):
  """runs/pretrain.gin and runs/lm_adapt.gin configure the runs that built jaxpt/assets/mini_t5."""
  recorded = json.loads(METADATA.read_text())[stage]
  ours = loaded['asset_runs'][stage]
  for key in RECIPE_KEYS:
    value = _recorded(recorded['operative_config'], key)
    if isinstance(value, tuple):
      value = list(value)
    assert ours[key] == value, (stage, key)
  assert ours['TRAIN_STEPS'] == recorded['steps']


def test_recorded_operative_configs_still_load(loaded):
  assert loaded['legacy'] and all(v is None for v in loaded['legacy'].values()), loaded['legacy']


def test_cli_resolves_includes_from_anywhere(tmp_path, monkeypatch, caplog):
  import logging

  import gin

  from jaxpt.cli import gin_flags
  monkeypatch.chdir(tmp_path)
  caplog.set_level(logging.INFO)
  try:
    gin_flags.parse(['models/t5_1_1/small.gin', PROMPT, TRAIN, 'partitioning/xxl_v4_32.gin'],
                    ["MODEL_DIR='x'", "MIXTURE_OR_TASK_NAME='y'"])
    assert gin.query_parameter('jaxpt.preset.size') == 'small'
    assert gin.query_parameter('jaxpt.preset.family') == 't5_1_1'
    assert gin.query_parameter('%MODEL_PARALLEL_SUBMESH') == (2, 2, 4, 1)
    assert gin.query_parameter('%Z_LOSS') == 1e-4
  finally:
    gin.clear_config()
  assert 'Path not found' not in caplog.text  # gin's per-search-path misses stay quiet


if __name__ == '__main__':
  _child(sys.argv[1])
