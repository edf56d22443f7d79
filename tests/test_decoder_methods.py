"""P-tuning with templates, MPT and SPoT on decoder-only (GPT-2 / Llama) models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpt
from jaxpt.checkpoints import prompts, transfer
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.data.features import decoder_only_features
from jaxpt.data.toy import multi_task_batch
from jaxpt.methods import Backbone, ModelTuning, MultitaskPromptTuning, PromptTuning, PTuning
from jaxpt.methods.multitask import stack_teachers
from jaxpt.models.backbones import init_params
from jaxpt.models.decoder_config import decoder_preset
from jaxpt.prompted.base import prompted_model
from jaxpt.prompted.decoder_only import DecoderOnlyModel, left_align
from jaxpt.train.distill import Distillation, distillation_loss
from jaxpt.train.loop import train
from jaxpt.train.optim import make_optimizer
from tests.test_decoder_only import _greedy_uncached

TEMPLATE = PTuning(length=4, encoder='mlp', hidden_dim=8, template='[P2] {a} ? [P2] {b}')
WORDS = {'?': [7]}
EXAMPLES = [{'a': [20, 21, 22], 'b': [30]}, {'a': [23], 'b': [31, 32, 33, 34]},
            {'a': [24, 25], 'b': [35, 36]}]


def _backbone(family, seed=0):
  config = decoder_preset(family, 'tiny')
  backbone = init_params(config, jax.random.key(seed))
  # Scaled-down embeddings keep a random tiny model's greedy choices input-dependent.
  backbone['token_embedder']['embedding'] = backbone['token_embedder']['embedding'] * 0.1
  return config, backbone


def _params(method, config, backbone, seed=1):
  bb = Backbone(config, backbone['token_embedder']['embedding'])
  return {'backbone': backbone, 'method': method.init(jax.random.key(seed), bb)}


def _templated(eos_id):
  """Right-padded template rows (markers -1..-4 inside the inputs) and their left-aligned twin."""
  right = TEMPLATE.parsed_template.build_batch(EXAMPLES, WORDS.get, max_length=12, eos_id=eos_id)
  return right, np.asarray(left_align(jnp.asarray(right)))


# ----------------------------------------------------------------------------- P-tuning


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_placed_prompt_rows_act_as_the_tokens_they_copy(family):
  """Prompt rows equal to token embeddings, placed mid-input, are those tokens at those
  positions (GPT-2's position table, Llama's rotation): the same logits as the plain ids."""
  config, backbone = _backbone(family)
  copied = np.array([11, 12, 13, 14])
  emb = backbone['token_embedder']['embedding']
  right, _ = _templated(config.eos_token_id)
  plain = np.where(right < 0, copied[np.clip(-right - 1, 0, 3)], right)
  assert (right < 0).sum() == 12 and np.array_equal(plain != 0, right != 0)
  targets = np.array([[3, 4, 1], [5, 1, 0], [6, 1, 0]], np.int32)
  placed = prompted_model(config, TEMPLATE)
  params = {'backbone': backbone, 'method': {'prompt': emb[copied]}}  # merged P-tuning
  ours = placed.logits(params, decoder_only_features(right, targets))
  ref = prompted_model(config).logits({'backbone': backbone},
                                      decoder_only_features(plain, targets))
  assert np.abs(np.asarray(ours) - np.asarray(ref)).max() <= 1e-5
  # The loaded-model handle takes the markers too.
  model = jaxpt.Model(config, backbone, method=TEMPLATE, method_params=params['method'])
  np.testing.assert_allclose(model.logits(right), jaxpt.Model(config, backbone).logits(plain),
                             atol=1e-5)
  # Random prompt vectors change the outputs at and after the first marker only.
  other = _params(TEMPLATE, config, backbone)
  moved = np.asarray(placed.logits(other, decoder_only_features(right, targets)))
  assert np.abs(moved - np.asarray(ours)).max() > 1e-3
  np.testing.assert_allclose(moved[:, 0], np.asarray(ours)[:, 0], atol=1e-6)  # the start id


@pytest.mark.parametrize('family', [pytest.param('gpt2', marks=pytest.mark.slow), 'llama'])
def test_template_padding_sides_scores_and_cached_generate(family):
  """A templated P-tuning (LSTM-free MLP encoder, unmerged): left- and right-padded inputs
  agree, `score_targets` equals the training logits' log-likelihood, and cached greedy
  decoding equals re-running the whole row every step."""
  config, backbone = _backbone(family)
  m = DecoderOnlyModel(config.replace(eos_token_id=95), TEMPLATE)
  params = _params(TEMPLATE, config, backbone)
  right, left = _templated(eos_id=1)
  targets = np.array([[3, 4, 1], [5, 1, 0], [6, 7, 1]], np.int32)
  score = jax.jit(m.score_targets)
  scores = np.asarray(score(params, jnp.asarray(right), jnp.asarray(targets)))
  np.testing.assert_allclose(score(params, jnp.asarray(left), jnp.asarray(targets)), scores,
                             atol=1e-5)
  batch = decoder_only_features(right, targets)
  log_probs = jax.nn.log_softmax(m.logits(params, batch))
  picked = jnp.take_along_axis(log_probs, jnp.maximum(batch['decoder_target_tokens'], 0)[..., None],
                               -1)[..., 0]
  np.testing.assert_allclose(np.sum(picked * batch['decoder_loss_weights'], 1), scores,
                             atol=1e-5)
  loss, metrics = m.loss(params, batch)
  assert np.isfinite(float(loss)) and float(metrics['num_tokens']) == 8
  generate = jax.jit(lambda p, x: m.generate(p, x, 6))
  cached = np.asarray(generate(params, jnp.asarray(right)))
  np.testing.assert_array_equal(cached, _greedy_uncached(m, params, right, 6))
  np.testing.assert_array_equal(np.asarray(generate(params, jnp.asarray(left))), cached)
  assert len({tuple(r) for r in cached}) > 1  # the outputs depend on the input


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_p_tuning_without_template_is_prompt_tuning_with_its_prompt(family):
  """No template: the encoder's output goes before the row exactly as a tuned prompt."""
  config, backbone = _backbone(family)
  method = PTuning(length=3, encoder='lstm', hidden_dim=8, lstm_layers=1)
  params = _params(method, config, backbone)
  same = PromptTuning(length=3)
  same_params = {'backbone': backbone, 'method': {'prompt': method.prompt(params['method'])}}
  inputs = np.array([[5, 6, 7, 1], [9, 10, 1, 0]], np.int32)
  targets = np.array([[3, 1], [4, 1]], np.int32)
  batch = decoder_only_features(inputs, targets)
  ours = prompted_model(config, method).logits(params, batch)
  np.testing.assert_allclose(ours, prompted_model(config, same).logits(same_params, batch),
                             atol=1e-6)
  plain = prompted_model(config).logits({'backbone': backbone}, batch)
  assert np.abs(np.asarray(ours) - np.asarray(plain)).max() > 1e-3


def test_a_decoder_only_template_is_refused_by_peft_export(tmp_path):
  config, backbone = _backbone('gpt2')
  method = PTuning(length=3, encoder='mlp', hidden_dim=8, template='[P3] {x}')
  params = method.init(jax.random.key(0), Backbone(config, None))
  with pytest.raises(ValueError, match='decoder-only model a template places the prompt'):
    jaxpt.export_peft(config, method, params, str(tmp_path / 'peft'))


# ---------------------------------------------------------------------------------- MPT


def _random_factors(params, seed=3):
  ku, kv = jax.random.split(jax.random.key(seed))
  return dict(params, u=jax.random.normal(ku, params['u'].shape),
              v=jax.random.normal(kv, params['v'].shape))


def test_mpt_task_ids_give_each_example_shared_times_its_factors():
  """Two tasks in one batch: example i runs P* * (u_k v_kT) of its task k (numpy by hand)."""
  config, backbone = _backbone('gpt2')
  mpt = MultitaskPromptTuning(length=3, num_tasks=2, rank=2, initializer='uniform')
  params = _params(mpt, config, backbone)
  params['method'] = _random_factors(params['method'])
  shared, u, v = (np.asarray(params['method'][k], np.float64) for k in ('shared', 'u', 'v'))
  inputs = np.array([[5, 6, 7, 1], [9, 10, 1, 0], [11, 12, 13, 1]], np.int32)
  targets = np.array([[3, 1], [4, 1], [3, 1]], np.int32)
  ids = np.array([1, 0, 1], np.int32)
  batch = dict(decoder_only_features(inputs, targets), task_ids=ids)
  mixed = np.asarray(prompted_model(config, mpt).logits(params, batch))
  scores = np.asarray(prompted_model(config, mpt).score_targets(
      params, jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(ids)))
  plain = PromptTuning(length=3)
  for k in (0, 1):
    prompt = jnp.asarray(shared * (u[k] @ v[k].T), jnp.float32)
    p = {'backbone': backbone, 'method': {'prompt': prompt}}
    rows = ids == k
    alone = np.asarray(prompted_model(config, plain).logits(p, batch))
    np.testing.assert_allclose(mixed[rows], alone[rows], atol=1e-5)
    np.testing.assert_allclose(scores[rows], np.asarray(prompted_model(config, plain).score_targets(
        p, jnp.asarray(inputs), jnp.asarray(targets)))[rows], atol=1e-5)
  swapped = np.asarray(prompted_model(config, mpt).logits(params, dict(batch, task_ids=1 - ids)))
  assert np.abs(swapped - mixed).max() > 1e-3


def test_mpt_distillation_and_source_training_on_gpt2():
  """Step (b) on a decoder-only mixture: teachers equal to the task prompts give zero KL and
  hidden MSE; the training loop runs with them; target adaptation starts at P*."""
  config, backbone = _backbone('gpt2')
  mpt = MultitaskPromptTuning(length=3, num_tasks=2, rank=1, initializer='uniform')
  params = _params(mpt, config, backbone)
  params['method'] = _random_factors(params['method'])
  teacher, teacher_params = stack_teachers(list(np.asarray(mpt.task_prompts(params['method']))))
  student = prompted_model(config, mpt)

  def mixture(k):
    features, _ = multi_task_batch(4, k, 2, vocab_size=config.vocab_size, length=5)
    return dict(decoder_only_features(features['encoder_input_tokens'],
                                      features['decoder_target_tokens']),
                task_ids=features['task_ids'])

  loss = jax.jit(distillation_loss, static_argnums=(0, 1))
  distill = Distillation(teacher, kl_weight=0.5, hidden_weight=2.0)
  _, same = loss(student, distill, dict(params, teacher=teacher_params), mixture(0))
  assert abs(float(same['kl'])) < 1e-6 and float(same['hidden_mse']) < 1e-10
  noisy = {'prompt': teacher_params['prompt'] + 0.3 * jax.random.normal(
      jax.random.key(5), teacher_params['prompt'].shape)}
  _, other = loss(student, distill, dict(params, teacher=noisy), mixture(0))
  assert float(other['kl']) > 1e-5 and float(other['hidden_mse']) > 1e-5

  run = train(student, backbone, params['method'], mixture,
              optimizer=make_optimizer('adamw', 0.01, weight_decay=0.0), num_steps=2,
              rng=jax.random.key(0), print_fn=None, distillation=distill,
              teacher_params=noisy)
  assert all(np.isfinite(r['loss']) for r in run.history if 'loss' in r)
  assert not np.allclose(run.method_params['u'], params['method']['u'])
  target = mpt.target_adaptation(run.method_params)
  start = target.init(jax.random.key(7), Backbone(config, None))
  np.testing.assert_array_equal(target.task_prompts(start)[0], run.method_params['shared'])


# --------------------------------------------------------------------------------- SPoT


def test_spot_a_gpt2_prompt_saved_and_transferred_starts_the_next_run(tmp_path):
  """A prompt tuned on tiny GPT-2, saved as a prompt checkpoint, is the init of a transfer
  run on the same backbone (and refused on another)."""
  config, backbone = _backbone('gpt2')
  model = jaxpt.Model(config, backbone, source='tiny gpt2')
  method = PromptTuning(length=3, initializer='uniform')
  params = _params(method, config, backbone)
  inputs = np.array([[5, 6, 7, 1], [9, 10, 1, 0]], np.int32)
  batch = decoder_only_features(inputs, np.array([[3, 1], [4, 1]], np.int32))
  source = train(prompted_model(config, method), backbone, params['method'], lambda k: batch,
                 optimizer=make_optimizer('adamw', 0.05, weight_decay=0.0), num_steps=2,
                 rng=jax.random.key(0), print_fn=None)
  tuned = np.asarray(source.method_params['prompt'])
  assert not np.allclose(tuned, params['method']['prompt'])
  prompts.save_prompt(tmp_path / 'source', method, source.method_params, model)

  spot = transfer.transfer(str(tmp_path / 'source'), model=model)
  assert spot.initializer == 'array' and spot.length == 3
  start = spot.init(jax.random.key(9), Backbone(config, backbone['token_embedder']['embedding']))
  np.testing.assert_array_equal(start['prompt'], tuned)
  # The transferred start runs the model exactly as the source prompt did.
  np.testing.assert_array_equal(
      prompted_model(config, spot).logits({'backbone': backbone, 'method': start}, batch),
      prompted_model(config, method).logits(source.params, batch))
  _, other = _backbone('gpt2', seed=1)
  with pytest.raises(CheckpointError, match='fingerprint'):
    transfer.transfer(str(tmp_path / 'source'), model=jaxpt.Model(config, other))


@pytest.mark.slow  # two `jaxpt train` runs on a tiny GPT-2 directory
def test_jaxpt_train_transfers_prompts_on_a_gpt2_through_gin(tmp_path, capsys):
  """methods/prompt_transfer.gin (SPoT) and methods/multitask_prompt_tuning.gin (MPT target
  adaptation) on a GPT-2 directory: with a zero learning rate the saved prompt is the start."""
  from tests.test_cli_decoder import EXAMPLE, _main, tiny_decoder_dir
  path = tiny_decoder_dir('gpt2', tmp_path / 'gpt2')
  model = jaxpt.load_model(path)
  source = np.asarray(jax.random.uniform(jax.random.key(4), (4, model.config.emb_dim),
                                         minval=-0.5, maxval=0.5))
  prompts.save_prompt(tmp_path / 'source', PromptTuning(length=4, initializer='array',
                                                        array=source),
                      {'prompt': jnp.asarray(source)}, model)
  mpt = MultitaskPromptTuning(length=4, num_tasks=2, rank=2, initializer='uniform')
  mpt_params = mpt.init(jax.random.key(1), Backbone(model.config, None))
  prompts.save_prompt(tmp_path / 'mpt', mpt, mpt_params, model)
  common = ['--gin_file=models/gpt2/tiny.gin', f"--gin.INITIAL_CHECKPOINT_PATH='{path}'",
            '--gin_file=runs/train.gin', "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}",
            "--gin.INPUT_FIELD='sentence'", "--gin.TARGET_FIELD='label'",
            f"--gin.TRAIN_FILE='{EXAMPLE / 'train.tsv'}'", '--gin.PROMPT_LENGTH=4',
            '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=4', '--gin.jaxpt.train.eval_every=None',
            "--gin.jaxpt.train.make_optimizer.name='sgd'",
            '--gin.jaxpt.train.make_optimizer.learning_rate=0.0']
  _main(['train', '--gin_file=methods/prompt_transfer.gin', *common,
         f"--gin.MODEL_DIR='{tmp_path / 'spot'}'", f"--gin.SOURCE_PROMPT='{tmp_path / 'source'}'"],
        capsys)
  _, params, manifest = prompts.load_prompt(tmp_path / 'spot' / 'prompt', model)
  np.testing.assert_array_equal(params['prompt'], source)
  assert manifest['step'] == 2

  shared = 'jaxpt.methods.MultitaskPromptTuning'
  _main(['train', '--gin_file=methods/multitask_prompt_tuning.gin', *common,
         f"--gin.MODEL_DIR='{tmp_path / 'target'}'", '--gin.FACTOR_RANK=2',
         f"--gin.{shared}.initializer='array'",
         f'--gin.{shared}.array=@jaxpt.methods.shared_prompt()',
         f"--gin.jaxpt.methods.shared_prompt.path='{tmp_path / 'mpt'}'"], capsys)
  method, params, _ = prompts.load_prompt(tmp_path / 'target' / 'prompt', model)
  assert isinstance(method, MultitaskPromptTuning) and method.num_tasks == 1
  np.testing.assert_array_equal(method.task_prompts(params)[0], mpt_params['shared'])
