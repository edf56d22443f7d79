"""Multitask prompt tuning (MPT): composition, mixed batches, distillation, target adaptation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpt.prompted.base import prompted_model
import jaxpt
from jaxpt.checkpoints import prompts
from jaxpt.data.toy import multi_task_batch
from jaxpt.checkpoints.peft import export_peft, import_peft
from jaxpt.methods import Backbone, MultitaskPromptTuning, PromptTuning
from jaxpt.methods.multitask import stack_teachers
from jaxpt.models.t5 import init_params
from jaxpt.train.distill import Distillation, distillation_loss as eager_distillation_loss
from jaxpt.train.loop import train
from jaxpt.train.optim import make_optimizer
from tests.tiny_configs import CONFIG, LEARN_CONFIG


# Jitted: one compile per method and shape is much cheaper than op-by-op dispatch.
distillation_loss = jax.jit(eager_distillation_loss, static_argnums=(0, 1))


def _bb(params, config=CONFIG):
  return Backbone(config, params['token_embedder']['embedding'])


def _random_factors(method, params, seed=3):
  """Params with every factor random (the init's all-ones product would hide mistakes)."""
  ku, kv = jax.random.split(jax.random.key(seed))
  return dict(params, u=jax.random.normal(ku, params['u'].shape),
              v=jax.random.normal(kv, params['v'].shape))


def test_composed_prompt_is_shared_times_low_rank_product(backbone):
  method = MultitaskPromptTuning(length=5, num_tasks=3, rank=2, initializer='uniform')
  params = _random_factors(method, method.init(jax.random.key(1), _bb(backbone)))
  assert params['shared'].shape == (5, 8)
  assert params['u'].shape == (3, 5, 2) and params['v'].shape == (3, 8, 2)
  composed = np.asarray(method.task_prompts(params))
  shared, u, v = (np.asarray(params[k], np.float64) for k in ('shared', 'u', 'v'))
  for k in range(3):
    np.testing.assert_allclose(composed[k], shared * (u[k] @ v[k].T), rtol=1e-5, atol=1e-6)
  # The factors really matter: tasks differ, and no task prompt equals P*.
  assert not np.allclose(composed[0], composed[1])


def test_mixed_batch_of_three_tasks_equals_three_single_task_passes(backbone):
  method = MultitaskPromptTuning(length=4, num_tasks=3, rank=2, initializer='uniform')
  params = _random_factors(method, method.init(jax.random.key(1), _bb(backbone)))
  batch, _ = multi_task_batch(6, seed=0, num_tasks=3, length=7)
  batch['task_ids'] = np.array([0, 2, 1, 1, 0, 2], np.int32)
  mixed = np.asarray(prompted_model(CONFIG, method).logits({'backbone': backbone, 'method': params}, batch))
  for k in range(3):
    rows = np.where(batch['task_ids'] == k)[0]
    single, single_params = method.task_prompt(params, k)
    part = {key: value[rows] for key, value in batch.items() if key != 'task_ids'}
    alone = np.asarray(prompted_model(CONFIG, single).logits({'backbone': backbone, 'method': single_params},
                               part))
    np.testing.assert_allclose(mixed[rows], alone, rtol=1e-5, atol=1e-5)
  # Different tasks give different outputs on the same inputs.
  swapped = dict(batch, task_ids=np.array([1, 0, 2, 0, 2, 1], np.int32))
  other = np.asarray(prompted_model(CONFIG, method).logits({'backbone': backbone, 'method': params}, swapped))
  assert np.abs(other - mixed).max() > 1e-3


def test_distillation_terms_are_zero_for_the_teacher_and_positive_otherwise(backbone):
  method = MultitaskPromptTuning(length=4, num_tasks=3, rank=2, initializer='uniform')
  params = _random_factors(method, method.init(jax.random.key(1), _bb(backbone)))
  teacher, teacher_params = stack_teachers(list(np.asarray(method.task_prompts(params))))
  batch, _ = multi_task_batch(6, seed=1, num_tasks=3, length=7)
  distill = Distillation(teacher, kl_weight=0.5, hidden_weight=2.0)
  tree = {'backbone': backbone, 'method': params, 'teacher': teacher_params}
  loss, m = distillation_loss(prompted_model(CONFIG, method), distill, tree, batch)
  assert abs(float(m['kl'])) < 1e-6 and float(m['hidden_mse']) < 1e-10
  np.testing.assert_allclose(float(loss), float(m['task_loss']), rtol=1e-5)
  other = dict(tree, teacher={'prompt': teacher_params['prompt'] + 0.3 * jax.random.normal(
      jax.random.key(5), teacher_params['prompt'].shape)})
  loss, m = distillation_loss(prompted_model(CONFIG, method), distill, other, batch)
  assert float(m['kl']) > 1e-4 and float(m['hidden_mse']) > 1e-4
  np.testing.assert_allclose(
      float(loss), float(m['task_loss']) + 0.5 * float(m['kl']) + 2.0 * float(m['hidden_mse']),
      rtol=1e-5)
  # A temperature changes the KL, not the hidden term.
  _, hot = distillation_loss(prompted_model(CONFIG, method), Distillation(teacher, temperature=2.0), other, batch)
  assert abs(float(hot['kl']) - float(m['kl'])) > 1e-6
  np.testing.assert_allclose(float(hot['hidden_mse']), float(m['hidden_mse']), rtol=1e-6)


def test_target_adaptation_starts_exactly_from_the_shared_prompt(backbone):
  source = MultitaskPromptTuning(length=5, num_tasks=3, rank=2, initializer='uniform')
  params = _random_factors(source, source.init(jax.random.key(1), _bb(backbone)))
  target = source.target_adaptation(params)
  assert target.num_tasks == 1 and target.rank == 2
  start = target.init(jax.random.key(7), _bb(backbone))
  np.testing.assert_array_equal(start['shared'], params['shared'])
  np.testing.assert_array_equal(target.task_prompts(start)[0], params['shared'])
  assert start['u'].shape == (1, 5, 2) and start['v'].shape == (1, 8, 2)
  assert not np.allclose(start['u'][0], params['u'][0])  # fresh factors
  # A fresh source run also starts every task at its P*.
  fresh = source.init(jax.random.key(2), _bb(backbone))
  for k in range(3):
    np.testing.assert_array_equal(source.task_prompts(fresh)[k], fresh['shared'])


def test_task_prompts_export_as_jaxpt_prompts_and_peft_adapters(backbone, tmp_path):
  method = MultitaskPromptTuning(length=4, num_tasks=3, rank=2, initializer='uniform')
  params = _random_factors(method, method.init(jax.random.key(1), _bb(backbone)))
  model = jaxpt.Model(CONFIG, backbone, source='tiny random')
  enc = np.array([[5, 6, 7, 1]], np.int32)
  dec = np.array([[0, 9]], np.int32)
  jaxpt.save_model(model, str(tmp_path / 'backbone'))
  for k in range(3):
    single, single_params = method.task_prompt(params, k)
    prompts.save_prompt(tmp_path / f'task{k}', single, single_params, model)
    loaded = jaxpt.load_model(str(tmp_path / 'backbone'), prompt=str(tmp_path / f'task{k}'))
    want = prompted_model(CONFIG, method).logits({'backbone': backbone, 'method': params},
                   dict(encoder_input_tokens=enc, decoder_input_tokens=dec,
                        task_ids=np.array([k], np.int32)))
    np.testing.assert_allclose(loaded.logits(enc, dec), want, rtol=1e-5, atol=1e-5)
    export_peft(model, single, single_params, tmp_path / f'peft{k}')
    peft_method, peft_params = import_peft(tmp_path / f'peft{k}', CONFIG)
    np.testing.assert_array_equal(peft_params['prompt'], method.task_prompts(params)[k])
  # The whole MPT checkpoint round-trips too.
  prompts.save_prompt(tmp_path / 'mpt', method, params, model)
  back, back_params, _ = prompts.load_prompt(tmp_path / 'mpt', model)
  assert back == method
  np.testing.assert_array_equal(back.task_prompts(back_params), method.task_prompts(params))


# ------------------------------------------------------------------------------ bad input


def test_task_ids_out_of_range_are_a_clear_error(backbone):
  method = MultitaskPromptTuning(length=3, num_tasks=3, rank=1, initializer='uniform')
  params = method.init(jax.random.key(1), _bb(backbone))
  batch, _ = multi_task_batch(4, seed=0, num_tasks=3, length=6)
  for bad in ([0, 1, 3, 2], [0, -1, 1, 2]):
    with pytest.raises(ValueError, match=r'task ids \[-?\d\] are out of range.*\[0, 2\]'):
      method.soft_inputs(params, CONFIG, 4, np.array(bad, np.int32))
  with pytest.raises(ValueError, match='out of range'):
    method.task_prompt(params, 3)
  # The training loop checks each batch on the host (inside jit, jnp.take would clamp).
  bad_batches = lambda k: dict(batch, task_ids=np.array([0, 1, 2, 5], np.int32))
  with pytest.raises(ValueError, match=r'batch at data position 0: task ids \[5\]'):
    train(prompted_model(CONFIG, method), backbone, params, bad_batches, optimizer=make_optimizer('sgd', 0.1),
          num_steps=1, rng=jax.random.key(0), print_fn=None)
  # One-task MPT: only id 0.
  one = MultitaskPromptTuning(length=3, num_tasks=1, initializer='uniform')
  with pytest.raises(ValueError, match='out of range'):
    one.soft_inputs(one.init(jax.random.key(0), _bb(backbone)), CONFIG, 4,
                    np.array([0, 0, 1, 0], np.int32))


def test_factor_rank_above_the_prompt_length_is_a_clear_error():
  with pytest.raises(ValueError, match='factor rank 6 is above the prompt length 5'):
    MultitaskPromptTuning(length=5, num_tasks=2, rank=6)
  with pytest.raises(ValueError, match='rank must be positive'):
    MultitaskPromptTuning(length=5, rank=0)
  with pytest.raises(ValueError, match='num_tasks must be positive'):
    MultitaskPromptTuning(length=5, num_tasks=0)
  MultitaskPromptTuning(length=5, rank=5)  # the prompt length itself is allowed


def test_teachers_stay_frozen_and_mismatched_arguments_fail(backbone):
  method = MultitaskPromptTuning(length=3, num_tasks=3, rank=1, initializer='uniform')
  params = method.init(jax.random.key(1), _bb(backbone))
  teacher, teacher_params = stack_teachers(
      [np.asarray(jax.random.uniform(jax.random.key(k), (3, 8))) for k in range(3)])
  before = np.asarray(teacher_params['prompt']).copy()
  result = train(prompted_model(CONFIG, method), backbone, params,
                 lambda k: multi_task_batch(4, seed=k, num_tasks=3, length=6)[0],
                 optimizer=make_optimizer('adamw', 1e-2, weight_decay=0.0), num_steps=3,
                 rng=jax.random.key(0), print_fn=None, distillation=Distillation(teacher),
                 teacher_params=teacher_params)
  assert list(result.state.trainable) == ['method']
  np.testing.assert_array_equal(result.params['teacher']['prompt'], before)
  assert not np.array_equal(result.method_params['shared'], params['shared'])
  assert {'kl', 'hidden_mse', 'task_loss'} <= set(result.history[-1])
  with pytest.raises(ValueError, match='go together'):
    train(prompted_model(CONFIG, method), backbone, params, lambda k: {}, optimizer=make_optimizer('sgd'),
          num_steps=1, rng=jax.random.key(0), distillation=Distillation(teacher))
  with pytest.raises(ValueError, match='teachers must stay frozen'):
    train(prompted_model(CONFIG, method), backbone, params, lambda k: {}, optimizer=make_optimizer('sgd'),
          num_steps=1, rng=jax.random.key(0), distillation=Distillation(teacher),
          teacher_params=teacher_params, trainable_rules=(r'method/.*', r'teacher/.*'))
  one, one_params = stack_teachers([before[0]])  # one source: a plain [L, d] teacher
  assert one.num_prompts == 1 and one_params['prompt'].shape == (3, 8)
  with pytest.raises(ValueError, match='kl_weight must be non-negative'):
    Distillation(teacher, kl_weight=-1.0)
  with pytest.raises(ValueError, match='temperature must be positive'):
    Distillation(teacher, temperature=0.0)


# ------------------------------------------------------------------------------- learning


SOURCES, TARGET, NUM_TASKS = (0, 1, 2), 3, 4


def _without_task_ids(batch):
  return {k: v for k, v in batch.items() if k != 'task_ids'}


def _mean(history, key, start, stop):
  rows = [h[key] for h in history if h.get('split') == 'train'][start:stop]
  return float(np.mean(rows))


@pytest.mark.slow
def test_mpt_recipe_learns_a_synthetic_multi_task_set():
  """(a) teachers, (b) MPT with distillation on the mixture, (c) adaptation to a held-out task."""
  backbone = init_params(LEARN_CONFIG, jax.random.key(0))
  bb = _bb(backbone, LEARN_CONFIG)
  opt = make_optimizer('adamw', 0.03, weight_decay=0.0)
  common = dict(optimizer=opt, rng=jax.random.key(2), print_fn=None, log_every=1)

  teacher_method = PromptTuning(length=8, initializer='sampled_vocab', population_size=64)
  teachers = []
  for task in SOURCES:
    data = lambda k, task=task: _without_task_ids(
        multi_task_batch(32, k, NUM_TASKS, length=10, task=task)[0])
    run = train(prompted_model(LEARN_CONFIG, teacher_method), backbone, teacher_method.init(
        jax.random.key(10 + task), bb), data, num_steps=300, **common)
    teachers.append(np.asarray(run.method_params['prompt']))

  mpt = MultitaskPromptTuning(length=8, num_tasks=len(SOURCES), rank=2,
                              initializer='sampled_vocab', population_size=64)
  teacher, teacher_params = stack_teachers(teachers)
  mixture = lambda k: multi_task_batch(32, 1000 + k, len(SOURCES), length=10)[0]
  source = train(prompted_model(LEARN_CONFIG, mpt), backbone, mpt.init(jax.random.key(3), bb), mixture,
                 num_steps=300, distillation=Distillation(teacher, 1.0, 1.0),
                 teacher_params=teacher_params, **common)
  h = source.history
  task_start, task_end = _mean(h, 'task_loss', 0, 5), _mean(h, 'task_loss', -20, None)
  total_start, total_end = _mean(h, 'loss', 0, 5), _mean(h, 'loss', -20, None)

  target = mpt.target_adaptation(source.method_params)
  held_out = lambda k: _without_task_ids(
      multi_task_batch(32, 5000 + k, NUM_TASKS, length=10, task=TARGET)[0])
  adapted = train(prompted_model(LEARN_CONFIG, target), backbone, target.init(jax.random.key(4), bb), held_out,
                  num_steps=300, **common)
  a_start, a_end = _mean(adapted.history, 'loss', 0, 5), _mean(adapted.history, 'loss', -20,
                                                               None)
  print(f'MPT source mixture: total loss {total_start:.2f} -> {total_end:.2f}, task loss '
        f'{task_start:.2f} -> {task_end:.2f}; target adaptation {a_start:.2f} -> {a_end:.2f}')
  # Seen when written (2-core EPYC): total 5.81 -> 1.53, task 4.22 -> 1.33; target 4.26 -> 1.04.
  assert task_end < 0.4 * task_start and total_end < 0.4 * total_start
  assert a_end < 0.4 * a_start
