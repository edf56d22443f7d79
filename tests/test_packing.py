"""Packing with prompts: the packer, and packed batches computing what unpacked ones do."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.data.features import pad_rows, shift_right
from jaxpt.data.packing import (PackedBatches, first_fit, fit_examples, pack_examples,
                                packed_batches, packed_targets_length, padding_share,
                                prompt_markers)
from jaxpt.methods import (Backbone, ModelTuning, MultitaskPromptTuning, PrefixTuning,
                           PromptTuning, PTuning, Template, deep_prompt_tuning)
from jaxpt.models.t5 import prompt_marker
from jaxpt.prompted.base import prompted_model
from jaxpt.prompted.loss import cross_entropy
from tests.tiny_configs import CONFIG, VOCAB

# Input / target lengths (EOS included) of the examples the equality tests pack.
IN_LENGTHS = (5, 9, 3, 7, 4, 6)
TGT_LENGTHS = (2, 4, 1, 3, 2, 3)


def _examples(in_lengths=IN_LENGTHS, tgt_lengths=TGT_LENGTHS, seed=0):
  rng = np.random.RandomState(seed)
  def ids(n):
    return np.append(rng.randint(3, VOCAB, n - 1), 1).astype(np.int32)
  return [ids(n) for n in in_lengths], [ids(n) for n in tgt_lengths]


# ------------------------------------------------------------------------------ the packer


def test_markers_are_the_models():
  assert list(prompt_markers(3)) == [prompt_marker(k) for k in range(3)]


def test_pack_segments_positions_and_shift():
  inputs, targets = _examples()
  f = pack_examples(inputs, targets, inputs_length=20, targets_length=8, prompt_length=2,
                    task_ids=[0, 1, 2, 0, 1, 2])
  rows = first_fit(np.asarray([2 + len(x) for x in inputs]),
                   np.asarray([len(y) for y in targets]), 20, 8)
  assert f['encoder_input_tokens'].shape == (rows.max() + 1, 20)
  assert rows.max() + 1 < len(inputs)  # several examples share a row
  seen = np.zeros(len(rows), int)
  for i, (x, y) in enumerate(zip(inputs, targets)):
    r = rows[i]
    seen[r] += 1
    seg = seen[r]
    enc = f['encoder_segment_ids'][r] == seg
    dec = f['decoder_segment_ids'][r] == seg
    # Each example is there once, whole, behind its own prompt markers.
    np.testing.assert_array_equal(f['encoder_input_tokens'][r][enc],
                                  np.concatenate([[-1, -2], x]))
    np.testing.assert_array_equal(f['encoder_positions'][r][enc], np.arange(2 + len(x)))
    np.testing.assert_array_equal(f['decoder_target_tokens'][r][dec], y)
    np.testing.assert_array_equal(f['decoder_positions'][r][dec], np.arange(len(y)))
    np.testing.assert_array_equal(f['decoder_input_tokens'][r][dec], shift_right(y))
    assert (f['decoder_loss_weights'][r][dec] == 1).all()
    assert (f['encoder_task_ids'][r][enc] == i % 3).all()
    assert (f['decoder_task_ids'][r][dec] == i % 3).all()
  # Padding: segment 0, no weight, id 0, task 0.
  pad = f['decoder_segment_ids'] == 0
  assert (f['decoder_loss_weights'][pad] == 0).all() and (f['decoder_target_tokens'][pad] == 0).all()
  assert (f['encoder_input_tokens'][f['encoder_segment_ids'] == 0] == 0).all()
  assert (f['encoder_task_ids'][f['encoder_segment_ids'] == 0] == 0).all()
  assert f['decoder_segment_ids'].max() == seen.max()


def test_packed_targets_length_scales_with_the_examples_a_row_holds():
  inputs = [np.ones(n, np.int32) for n in (80, 90)]  # mean 85: 512 / (100 + 85) -> 3 a row
  assert packed_targets_length(inputs, 8, 512, prompt_length=100) == 24
  assert packed_targets_length(inputs, 8, 150, prompt_length=100) == 8


def test_first_fit_fills_earlier_rows():
  # 6 fits nowhere beside 6 (budget 10): a new row; 4 goes back to the first row.
  rows = first_fit(np.asarray([6, 6, 4, 4]), np.asarray([1, 1, 1, 1]), 10, 4)
  np.testing.assert_array_equal(rows, [0, 1, 0, 1])
  # The decoder side counts too.
  rows = first_fit(np.asarray([1, 1]), np.asarray([3, 3]), 10, 4)
  np.testing.assert_array_equal(rows, [0, 1])


def test_long_examples_are_cut_keeping_eos_and_counted():
  inputs, targets = _examples((12, 3), (2, 6))
  fitted_in, fitted_out, cut = fit_examples(inputs, targets, inputs_length=10,
                                            targets_length=4, prompt_length=2)
  assert cut == 2
  assert len(fitted_in[0]) == 8 and fitted_in[0][-1] == 1
  np.testing.assert_array_equal(fitted_in[0][:-1], inputs[0][:7])
  assert len(fitted_out[1]) == 4 and fitted_out[1][-1] == 1
  f = pack_examples(inputs, targets, inputs_length=10, targets_length=4, prompt_length=2)
  assert (f['encoder_segment_ids'] > 0).sum() == (2 + 8) + (2 + 3)
  with pytest.raises(ValueError, match='no room'):
    fit_examples(inputs, targets, inputs_length=4, targets_length=4, prompt_length=4)


def test_batches_and_padding_share():
  inputs, targets = _examples()
  f = pack_examples(inputs, targets, inputs_length=12, targets_length=5)
  rows = len(f['encoder_input_tokens'])
  batches = list(packed_batches(f, 2))
  assert len(batches) == -(-rows // 2)
  assert all(b['encoder_input_tokens'].shape == (2, 12) for b in batches)
  np.testing.assert_array_equal(np.concatenate([b['decoder_segment_ids'] for b in batches])[:rows],
                                f['decoder_segment_ids'])
  share = padding_share(f)
  real_enc, real_dec = sum(IN_LENGTHS), sum(TGT_LENGTHS)
  assert share['encoder'] == pytest.approx(1 - real_enc / (rows * 12))
  assert share['decoder'] == pytest.approx(1 - real_dec / (rows * 5))
  assert share['total'] == pytest.approx(1 - (real_enc + real_dec) / (rows * 17))
  padded = {'encoder_input_tokens': pad_rows(inputs), 'decoder_target_tokens': pad_rows(targets)}
  assert padding_share(padded)['encoder'] == pytest.approx(1 - real_enc / (6 * 9))


def test_packed_batches_are_deterministic_and_cover_each_epoch():
  inputs, targets = _examples(tuple(range(2, 14)), (2,) * 12)
  batches = PackedBatches(inputs, targets, 2, inputs_length=16, targets_length=4, seed=3)
  assert batches.num_rows < 12 and batches.batches_per_epoch == -(-batches.num_rows // 2)
  again = PackedBatches(inputs, targets, 2, inputs_length=16, targets_length=4, seed=3)
  for position in (0, 1, batches.batches_per_epoch + 1):
    for k, v in batches(position).items():
      np.testing.assert_array_equal(v, again(position)[k])
  for epoch in (0, 1):
    seen = np.concatenate([batches(epoch * batches.batches_per_epoch + i)['encoder_input_tokens']
                           for i in range(batches.batches_per_epoch)])
    real = sorted(tuple(r[r != 0]) for r in seen if (r != 0).any())
    assert real == sorted(tuple(r[r != 0]) for r in batches.features['encoder_input_tokens'])
    assert sum((r > 0).sum() for r in seen) == sum(map(len, inputs))


# -------------------------------------------------------------- packed == unpacked


def _perturbed(tree, seed):
  """Every leaf plus noise, so no two task prompts (or MPT factors) are alike."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                            for x, k in zip(leaves, keys)])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _losses_and_grad(model, wrt, params, batch):
  """Token losses [rows, length] and the gradient of the mean loss wrt `params[wrt]`."""
  def loss(trainable):
    logits = model.logits({**params, wrt: trainable}, batch)
    weights = (batch['decoder_target_tokens'] > 0).astype(jnp.float32)
    tokens = cross_entropy(logits, batch['decoder_target_tokens'], weights)[0]
    return model.loss_of_logits(logits, batch)[0], tokens
  return jax.grad(loss, has_aux=True)(params[wrt])[::-1]


TEMPLATE = '[P2] {a} [P2] {b}'

CASES = {
    'prompt_tuning': (PromptTuning(length=3, initializer='uniform'), False),
    'multi_prompt': (PromptTuning(length=3, initializer='uniform', num_prompts=3), True),
    'mpt': (MultitaskPromptTuning(length=3, initializer='uniform', num_tasks=3, rank=2), True),
    'prefix_mlp': (PrefixTuning(length=2, hidden_dim=8), False),
    'prefix_mixed': (PrefixTuning(length=2, hidden_dim=8, num_prompts=3), True),
    'deep_prompts': (deep_prompt_tuning(length=2), False),
    'p_tuning': (PTuning(length=3, encoder='mlp', hidden_dim=8), False),
    'p_tuning_template': (PTuning(length=4, encoder='lstm', hidden_dim=4, lstm_layers=1,
                                  template=TEMPLATE), False),
    'model_tuning': (ModelTuning(), False),
}


# One case per mechanism stays fast (mixed-task prompts, mixed-task prefixes, a template).
FAST = ('multi_prompt', 'prefix_mixed', 'p_tuning_template')


@pytest.mark.parametrize('case', [c if c in FAST else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(CASES)])
def test_packed_equals_unpacked(case, backbone):
  """Per-example losses and the trainable parameters' gradient, packed vs one example a row."""
  method, mixed = CASES[case]
  inputs, targets = _examples()
  n = len(inputs)
  if method.places_prompt:
    template = Template.parse(TEMPLATE)
    inputs = [template.build({'a': x[:len(x) // 2], 'b': x[len(x) // 2:-1]}) for x in inputs]
  task_ids = np.asarray([2, 0, 1, 2, 1, 0]) if mixed else None
  p = method.prompt_length
  params = {'backbone': backbone,
            'method': _perturbed(method.init(jax.random.key(1), Backbone(CONFIG, backbone[
                'token_embedder']['embedding'])), 2)}
  model = prompted_model(CONFIG, method)

  tgt = pad_rows(targets)
  unpacked = {'encoder_input_tokens': pad_rows(inputs), 'decoder_target_tokens': tgt,
              'decoder_input_tokens': shift_right(tgt)}
  if mixed:
    unpacked['task_ids'] = task_ids
  in_len = p + max(map(len, inputs))
  packed = pack_examples(inputs, targets, inputs_length=2 * in_len, targets_length=8,
                         prompt_length=p, task_ids=task_ids)
  rows = first_fit(np.asarray([p + len(x) for x in inputs]),
                   np.asarray([len(y) for y in targets]), 2 * in_len, 8)
  assert rows.max() + 1 < n  # examples really share rows

  wrt = 'backbone' if case == 'model_tuning' else 'method'
  flat, g_flat = _losses_and_grad(model, wrt, params, unpacked)
  token, g_packed = _losses_and_grad(model, wrt, params, packed)
  flat, token = np.asarray(flat).sum(-1), np.asarray(token)
  segment = np.zeros(rows.max() + 1, int)
  per_example = []
  for r in rows:
    segment[r] += 1
    per_example.append(token[r][packed['decoder_segment_ids'][r] == segment[r]].sum())
  np.testing.assert_allclose(per_example, flat, rtol=1e-5, atol=1e-5)

  scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_flat))
  assert scale > 0
  for a, b in zip(jax.tree.leaves(g_flat), jax.tree.leaves(g_packed)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_packing_refuses_peft_style_prefixes(backbone):
  method = PrefixTuning(length=2, style='peft', hidden_dim=8)
  inputs, targets = _examples()
  params = {'backbone': backbone, 'method': method.init(jax.random.key(0), Backbone(CONFIG, None))}
  packed = pack_examples(inputs, targets, inputs_length=24, targets_length=8)
  with pytest.raises(ValueError, match='not exact on packed rows'):
    prompted_model(CONFIG, method).loss(params, packed)


def test_mixed_tasks_need_task_ids(backbone):
  method = PromptTuning(length=2, initializer='uniform', num_prompts=2)
  inputs, targets = _examples()
  params = {'backbone': backbone, 'method': method.init(jax.random.key(0), Backbone(CONFIG, None))}
  packed = pack_examples(inputs, targets, inputs_length=24, targets_length=8, prompt_length=2)
  with pytest.raises(ValueError, match='encoder_task_ids'):
    prompted_model(CONFIG, method).loss(params, packed)


@pytest.mark.slow
def test_mpt_distillation_packed_equals_unpacked(backbone):
  """MPT's step (b): task loss + KL + hidden MSE (prompt slots left out) alike packed."""
  from jaxpt.methods.multitask import stack_teachers
  from jaxpt.train.distill import Distillation, distillation_loss

  student_method = MultitaskPromptTuning(length=3, initializer='uniform', num_tasks=2, rank=1)
  embedding = backbone['token_embedder']['embedding']
  student = _perturbed(student_method.init(jax.random.key(1), Backbone(CONFIG, embedding)), 2)
  teachers = jax.random.normal(jax.random.key(3), (2, 3, CONFIG.emb_dim))
  teacher_method, teacher = stack_teachers(list(np.asarray(teachers)))
  params = {'backbone': backbone, 'method': student, 'teacher': teacher}
  model = prompted_model(CONFIG, student_method)
  distillation = Distillation(teacher_method, kl_weight=0.5, hidden_weight=2.0)
  inputs, targets = _examples()
  task_ids = np.asarray([1, 0, 0, 1, 1, 0])
  tgt = pad_rows(targets)
  unpacked = {'encoder_input_tokens': pad_rows(inputs), 'decoder_target_tokens': tgt,
              'decoder_input_tokens': shift_right(tgt), 'task_ids': task_ids}
  packed = pack_examples(inputs, targets, inputs_length=24, targets_length=8, prompt_length=3,
                         task_ids=task_ids)
  loss = jax.jit(lambda p, b: distillation_loss(model, distillation, p, b)[1])
  a, b = loss(params, unpacked), loss(params, packed)
  for key in ('loss', 'task_loss', 'kl', 'hidden_mse'):
    assert float(a[key]) > 0
    np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=1e-5, atol=1e-6)
