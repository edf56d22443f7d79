"""Prompt transfer (SPoT): source prompts, the prompt library, similarity and `jaxpt similar`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.prompted.base import prompted_model
import jaxpt
from jaxpt.checkpoints import prompts
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.cli.main import main
from jaxpt.data.toy import multi_task_batch
from jaxpt.methods import Backbone, MultitaskPromptTuning, PrefixTuning, PromptTuning
from jaxpt.checkpoints import transfer
from jaxpt.models.t5 import init_params
from jaxpt.train.loop import train
from jaxpt.prompted.loss import loss_and_metrics
from jaxpt.train.optim import make_optimizer
from tests.tiny_configs import CONFIG, GIN_TINY_CONFIG, LEARN_CONFIG

D = 8


@pytest.fixture(scope='module')
def model(backbone):
  return jaxpt.Model(CONFIG, backbone, source='tiny A')


def _prompt(seed, length=6, dim=D):
  return np.asarray(jax.random.uniform(jax.random.key(seed), (length, dim), minval=-0.5,
                                       maxval=0.5))


def _save(directory, prompt, model):
  method = PromptTuning(length=prompt.shape[0], initializer='array', array=prompt)
  prompts.save_prompt(directory, method, {'prompt': jnp.asarray(prompt)}, model)
  return str(directory)


def _noisy(prompt, seed, scale=0.1):
  return prompt + scale * np.asarray(jax.random.normal(jax.random.key(seed), prompt.shape))


# ---------------------------------------------------------------------------- similarity


@pytest.mark.parametrize('by', transfer.MEASURES)
def test_similarity_ranks_a_noisy_copy_first(by):
  dim = 32
  library = [transfer.LibraryPrompt(f'p{i}', '', None, _prompt(i, 8, dim)) for i in range(8)]
  for target in range(8):
    query = _noisy(library[target].prompt, 100 + target)
    ranked = transfer.rank_by_similarity(query, library, by)
    assert ranked[0][0].name == f'p{target}', [(e.name, m, t) for e, m, t in ranked]
  # The measures are the paper's: cosine of means, mean of all pairwise cosines.
  a, b = _prompt(1, 4, dim), _prompt(2, 5, dim)
  mean, tokens = transfer.similarity(a, b)
  cos = lambda x, y: x @ y / np.linalg.norm(x) / np.linalg.norm(y)
  assert mean == pytest.approx(cos(a.mean(0), b.mean(0)), abs=1e-6)
  assert tokens == pytest.approx(np.mean([[cos(x, y) for y in b] for x in a]), abs=1e-6)
  assert transfer.similarity(a, a)[0] == pytest.approx(1.0)


def test_jaxpt_similar_prints_the_ranked_library(model, tmp_path, capsys):
  library = tmp_path / 'library'
  for i in range(4):
    _save(library / f'run{i}' / 'prompt', _prompt(i), model)
  mpt = MultitaskPromptTuning(length=6, num_tasks=2, rank=2, initializer='uniform')
  mpt_params = mpt.init(jax.random.key(9), Backbone(CONFIG, model.params['token_embedder'][
      'embedding']))
  prompts.save_prompt(library / 'mpt', mpt, mpt_params, model)
  prefix = PrefixTuning(length=2, hidden_dim=4)
  prompts.save_prompt(library / 'prefix', prefix, prefix.init(jax.random.key(1), Backbone(
      CONFIG, None)), model)
  query = _save(tmp_path / 'query', _noisy(_prompt(2), 7), model)

  for by in transfer.MEASURES:
    main(['similar', query, str(library), f'--by={by}'])
    out = capsys.readouterr().out
    rows = [line.split('|')[1:-1] for line in out.splitlines()
            if line.startswith('| ') and not line.startswith('| rank')]
    names = [r[1].strip() for r in rows]
    assert names[0] == 'run2/prompt'
    assert sorted(names) == sorted(['mpt[0]', 'mpt[1]'] + [f'run{i}/prompt' for i in range(4)])
    column = 2 if by == 'mean' else 3
    scores = [float(r[column]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert 'skipped (no prompt vectors): prefix' in out

  main(['similar', query, str(library), '--top=2', '--by=tokens'])
  out = capsys.readouterr().out
  assert len([line for line in out.splitlines() if line.startswith('| ') and
              not line.startswith('| rank')]) == 2
  # A query inside the library is not compared with itself.
  main(['similar', str(library / 'run1' / 'prompt'), str(library)])
  out = capsys.readouterr().out
  assert '| run1/prompt |' not in out and '| run2/prompt |' in out
  main(['similar', str(library / 'mpt'), str(library), '--task=1'])
  out = capsys.readouterr().out
  assert '| mpt[0] |' in out and '| mpt[1] |' not in out


def _cli_error(capsys, *args):
  with pytest.raises(SystemExit) as e:
    main(list(args))
  err = capsys.readouterr().err
  assert e.value.code == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1
  return err


def test_a_library_mixing_backbones_is_a_clear_error(model, tmp_path, capsys):
  other = jaxpt.Model(CONFIG, init_params(CONFIG, jax.random.key(1)), source='tiny B')
  library = tmp_path / 'library'
  _save(library / 'a', _prompt(0), model)
  _save(library / 'b', _prompt(1), other)
  with pytest.raises(CheckpointError, match=r'mixes backbones: a was trained on '
                     r'[\w-]*sha256:\w+, b on [\w-]*sha256:\w+'):
    transfer.load_library(library)
  query = _save(tmp_path / 'query', _prompt(2), model)
  err = _cli_error(capsys, 'similar', query, str(library))
  assert 'mixes backbones' in err
  # A query from another backbone than the library's, an empty library, bad flags.
  err = _cli_error(capsys, 'similar', _save(tmp_path / 'q2', _prompt(3), other),
                   str(library / 'a'))
  assert 'fingerprint' in err and 'one backbone' in err
  (tmp_path / 'empty').mkdir()
  assert 'no prompt checkpoints' in _cli_error(capsys, 'similar', query, str(tmp_path / 'empty'))
  assert 'no such prompt library' in _cli_error(capsys, 'similar', query, str(tmp_path / 'nope'))
  assert '--top must be positive' in _cli_error(capsys, 'similar', query, str(library / 'a'),
                                                '--top=0')


# ------------------------------------------------------------------------------ transfer


def test_a_transferred_prompt_starts_training_from_the_source(model, tmp_path):
  source = _prompt(4, length=5)
  path = _save(tmp_path / 'source', source, model)
  method = transfer.transfer(path, model=model)
  assert method.length == 5 and method.initializer == 'array'
  start = method.init(jax.random.key(0), Backbone(CONFIG, None))
  np.testing.assert_array_equal(start['prompt'], source)

  # One SGD step from the source: exactly source - lr * gradient at the source.
  batch = multi_task_batch(4, 0, 2, length=6, task=1)[0]
  batch.pop('task_ids')

  def loss(prompt):
    logits = prompted_model(CONFIG, method).logits({'backbone': model.params, 'method': {'prompt': prompt}},
                     batch)
    return loss_and_metrics(logits, batch['decoder_target_tokens'],
                            (batch['decoder_target_tokens'] > 0).astype(np.float32))[0]

  grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(source)))  # jitted: faster than eager
  result = train(prompted_model(CONFIG, method), model.params, start, lambda k: batch,
                 optimizer=make_optimizer('sgd', 0.5), num_steps=1, rng=jax.random.key(0),
                 print_fn=None)
  np.testing.assert_allclose(result.method_params['prompt'], source - 0.5 * grad, rtol=1e-5,
                             atol=1e-6)
  assert np.abs(grad).max() > 1e-4


def test_source_prompts_from_multi_task_checkpoints_and_bad_sources(model, tmp_path):
  bb = Backbone(CONFIG, model.params['token_embedder']['embedding'])
  mpt = MultitaskPromptTuning(length=4, num_tasks=3, rank=2, initializer='uniform')
  params = mpt.init(jax.random.key(2), bb)
  params = dict(params, u=jax.random.normal(jax.random.key(3), params['u'].shape))
  prompts.save_prompt(tmp_path / 'mpt', mpt, params, model)
  for k in range(3):
    np.testing.assert_array_equal(transfer.source_prompt(tmp_path / 'mpt', task=k),
                                  mpt.task_prompts(params)[k])
  np.testing.assert_array_equal(transfer.shared_prompt(tmp_path / 'mpt'), params['shared'])
  stacked = PromptTuning(length=4, initializer='uniform', num_prompts=2)
  prompts.save_prompt(tmp_path / 'two', stacked, stacked.init(jax.random.key(0), bb), model)
  two = prompts.load_prompt(tmp_path / 'two')[1]['prompt']
  np.testing.assert_array_equal(transfer.source_prompt(tmp_path / 'two', task=1), two[1])

  with pytest.raises(ValueError, match='keeps 3 task prompts: choose one with task=0..2'):
    transfer.source_prompt(tmp_path / 'mpt')
  with pytest.raises(ValueError, match=r'task ids \[3\] are out of range'):
    transfer.source_prompt(tmp_path / 'mpt', task=3)
  with pytest.raises(ValueError, match='the source prompt has 4 tokens, the target asks for 6'):
    transfer.transfer(tmp_path / 'mpt', task=0, length=6)
  prefix = PrefixTuning(length=2, hidden_dim=4)
  prompts.save_prompt(tmp_path / 'prefix', prefix, prefix.init(jax.random.key(1), bb), model)
  with pytest.raises(ValueError, match='prefix_tuning has no prompt vectors'):
    transfer.source_prompt(tmp_path / 'prefix')
  with pytest.raises(ValueError, match='has no shared prompt'):
    transfer.shared_prompt(tmp_path / 'two')
  other = jaxpt.Model(CONFIG, init_params(CONFIG, jax.random.key(1)), source='tiny B')
  with pytest.raises(CheckpointError, match='fingerprint'):
    transfer.transfer(tmp_path / 'mpt', task=0, model=other)


# ------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_spot_transfer_learns_a_related_synthetic_task():
  config = LEARN_CONFIG
  backbone = init_params(config, jax.random.key(0))
  bb = Backbone(config, backbone['token_embedder']['embedding'])
  common = dict(optimizer=make_optimizer('adamw', 0.03, weight_decay=0.0),
                rng=jax.random.key(2), print_fn=None, log_every=1, num_steps=300)
  data = lambda task, offset: lambda k: {
      key: v for key, v in multi_task_batch(32, offset + k, 2, length=10, task=task)[0].items()
      if key != 'task_ids'}
  # The source prompt starts from sampled vocabulary rows, given as an array, so the source
  # and the transferred run share one method (and one compiled step).
  init = PromptTuning(length=8, population_size=64).init(jax.random.key(1), bb)['prompt']
  source_method = PromptTuning(length=8, initializer='array', array=init)
  source = train(prompted_model(config, source_method), backbone,
                 {'prompt': init}, data(0, 0), **common)
  method = PromptTuning(length=8, initializer='array', array=source.method_params['prompt'])
  target = train(prompted_model(config, method), backbone, method.init(jax.random.key(0), bb),
                 data(1, 10_000), **common)
  loss = lambda run, a, b: float(np.mean([h['loss'] for h in run.history][a:b]))
  s_start, s_end = loss(source, 0, 5), loss(source, -20, None)
  t_start, t_end = loss(target, 0, 5), loss(target, -20, None)
  print(f'SPoT: source task {s_start:.2f} -> {s_end:.2f}; transferred to the target task '
        f'{t_start:.2f} -> {t_end:.2f}')
  # Seen when written (2-core EPYC): source 3.60 -> 0.79, target 4.30 -> 1.01.
  assert t_end < 0.4 * t_start and s_end < 0.4 * s_start


# ----------------------------------------------------------------------------------- gin


@pytest.mark.slow
def test_jaxpt_train_starts_from_a_source_prompt_through_gin(tmp_path, capsys):
  """SPoT (methods/prompt_transfer.gin) and MPT target adaptation
  (methods/multitask_prompt_tuning.gin) on the tiny random backbone; a zero learning rate
  makes the saved prompt the start itself."""
  pytest.importorskip('seqio')
  config = GIN_TINY_CONFIG  # models/t5_1_1/tiny.gin's random backbone (seed 0)
  backbone = jaxpt.Model(config, init_params(config, jax.random.key(0)))
  source = _prompt(5, length=4)
  _save(tmp_path / 'source', source, backbone)
  mpt = MultitaskPromptTuning(length=4, num_tasks=2, rank=2, initializer='uniform')
  mpt_params = mpt.init(jax.random.key(1), Backbone(config, None))
  prompts.save_prompt(tmp_path / 'mpt', mpt, mpt_params, backbone)
  common = ['--gin_file=models/t5_1_1/tiny.gin', '--gin_file=runs/train.gin',
            '--gin_file=local_tiny.gin', "--gin.MIXTURE_OR_TASK_NAME='synthetic_two_class'",
            '--gin.TRAIN_STEPS=2', '--gin.jaxpt.train.eval_every=None',
            "--gin.jaxpt.train.make_optimizer.name='sgd'",
            '--gin.jaxpt.train.make_optimizer.learning_rate=0.0']

  main(['train', '--gin_file=methods/prompt_transfer.gin', *common,
        f"--gin.MODEL_DIR='{tmp_path / 'spot'}'", f"--gin.SOURCE_PROMPT='{tmp_path / 'source'}'"])
  _, params, manifest = prompts.load_prompt(tmp_path / 'spot' / 'prompt', backbone)
  np.testing.assert_array_equal(params['prompt'], source)
  assert manifest['step'] == 2

  shared = 'jaxpt.methods.MultitaskPromptTuning'
  main(['train', '--gin_file=methods/multitask_prompt_tuning.gin', *common,
        f"--gin.MODEL_DIR='{tmp_path / 'target'}'", '--gin.FACTOR_RANK=2',
        f"--gin.{shared}.initializer='array'",
        f'--gin.{shared}.array=@jaxpt.methods.shared_prompt()',
        f"--gin.jaxpt.methods.shared_prompt.path='{tmp_path / 'mpt'}'"])
  method, params, _ = prompts.load_prompt(tmp_path / 'target' / 'prompt', backbone)
  assert isinstance(method, MultitaskPromptTuning) and method.num_tasks == 1
  np.testing.assert_array_equal(params['shared'], mpt_params['shared'])
  np.testing.assert_array_equal(method.task_prompts(params)[0], mpt_params['shared'])
  main(['export-peft', '--gin_file=models/t5_1_1/tiny.gin', '--gin_file=runs/export.gin',
        f"--gin.MODEL_DIR='{tmp_path / 'target'}'", f"--gin.OUTPUT_DIR='{tmp_path / 'peft'}'"])
  from jaxpt.checkpoints.peft import import_peft
  _, peft_params = import_peft(tmp_path / 'peft', config)
  np.testing.assert_array_equal(peft_params['prompt'], mpt_params['shared'])
  capsys.readouterr()


def test_source_prompt_unset_is_a_clear_error():
  from jaxpt.checkpoints.transfer import source_prompt
  import gin
  for unset in (None, gin.REQUIRED):
    with pytest.raises(ValueError, match='SOURCE_PROMPT'):
      source_prompt(unset)
