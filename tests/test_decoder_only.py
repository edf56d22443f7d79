"""DecoderOnlyModel: prompts, prefixes, task ids, padding, scoring and cached greedy decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.data.features import decoder_only_features
from jaxpt.methods import Backbone, PrefixTuning, PromptTuning, deep_prompt_tuning
from jaxpt.models.backbones import init_params
from jaxpt.models.decoder_config import decoder_preset
from jaxpt.prompted.base import prompted_model
from jaxpt.prompted.decoder_only import DecoderOnlyModel, left_align, start_and_inputs

METHODS = {
    'prompt': PromptTuning(length=3, initializer='uniform'),
    'prefix': PrefixTuning(length=2, hidden_dim=8),
    'deep': deep_prompt_tuning(length=2),
}


def _model(family, method):
  config = decoder_preset(family, 'tiny')
  backbone = init_params(config, jax.random.key(0))
  # Scaled-down embeddings keep a random tiny model's greedy choices input-dependent.
  backbone['token_embedder']['embedding'] = backbone['token_embedder']['embedding'] * 0.1
  m = prompted_model(config, method)
  params = {'backbone': backbone, 'method': method.init(
      jax.random.key(1), Backbone(config, backbone['token_embedder']['embedding']))}
  return m, params


def _inputs():
  right = np.array([[5, 6, 7, 8], [9, 10, 0, 0], [11, 0, 0, 0]], np.int32)
  return right, np.asarray(left_align(jnp.asarray(right)))


def test_left_align_and_features():
  right, left = _inputs()
  np.testing.assert_array_equal(left, [[5, 6, 7, 8], [0, 0, 9, 10], [0, 0, 0, 11]])
  f = decoder_only_features(right, np.array([[3, 1], [4, 1], [3, 1]]))
  np.testing.assert_array_equal(f['decoder_target_tokens'][1], [9, 10, 4, 1, 0, 0])
  np.testing.assert_array_equal(f['decoder_input_tokens'][1], [0, 9, 10, 4, 1, 0])
  np.testing.assert_array_equal(f['decoder_loss_weights'][1], [0, 0, 1, 1, 0, 0])


def _greedy_uncached(m, params, inputs, steps):
  """Reference: the whole sequence re-encoded for every new token."""
  seq, real = (np.asarray(a) for a in start_and_inputs(jnp.asarray(inputs)))
  # Generated ids are real tokens, even a generated 0.
  last = jax.jit(lambda p, t, v: jnp.argmax(m.forward(p, t, v, None)[0].logits[:, -1], -1))
  out = []
  for _ in range(steps):
    valid = np.concatenate([real, np.ones((len(seq), seq.shape[1] - real.shape[1]), bool)], 1)
    nxt = np.asarray(last(params, jnp.asarray(seq), jnp.asarray(valid)), np.int32)
    out.append(nxt)
    seq = np.concatenate([seq, nxt[:, None]], 1)
  out = np.stack(out, 1)
  after_eos = np.cumsum(out == m.config.eos_token_id, axis=1) - (out == m.config.eos_token_id)
  return np.where(after_eos > 0, 0, out)


@pytest.mark.slow  # 30-55 s each on 2 CPU cores
@pytest.mark.parametrize('family,name', [('gpt2', 'prompt'), ('gpt2', 'prefix'),
                                         ('llama', 'prompt'), ('llama', 'prefix'),
                                         ('llama', 'deep')])
def test_cached_greedy_equals_uncached_and_padding_sides_agree(family, name):
  m, params = _model(family, METHODS[name])
  m = DecoderOnlyModel(m.config.replace(eos_token_id=95), m.method)
  right, left = _inputs()
  generate = jax.jit(lambda p, x: m.generate(p, x, 6))
  cached = np.asarray(generate(params, jnp.asarray(right)))
  np.testing.assert_array_equal(cached, _greedy_uncached(m, params, right, 6))
  np.testing.assert_array_equal(np.asarray(generate(params, jnp.asarray(left))), cached)
  assert len({tuple(r) for r in cached}) > 1  # the outputs depend on the input
  # Scores of targets agree between left- and right-padded inputs too.
  targets = jnp.asarray([[3, 4, 1], [5, 1, 0], [6, 7, 1]])
  np.testing.assert_allclose(m.score_targets(params, jnp.asarray(left), targets),
                             m.score_targets(params, jnp.asarray(right), targets), atol=1e-5)


@pytest.mark.parametrize('family', [pytest.param('gpt2', marks=pytest.mark.slow), 'llama'])
def test_loss_only_on_targets_and_scores_match_logits(family):
  m, params = _model(family, METHODS['prefix'])
  right, _ = _inputs()
  targets = np.array([[3, 1], [4, 1], [3, 1]], np.int32)
  batch = decoder_only_features(right, targets)
  logits = m.logits(params, batch)
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, batch['decoder_target_tokens'][..., None], -1)[..., 0]
  want = jnp.sum(picked * batch['decoder_loss_weights'], axis=1)
  np.testing.assert_allclose(m.score_targets(params, jnp.asarray(right), jnp.asarray(targets)),
                             want, atol=1e-5)
  loss, _ = m.loss(params, batch)
  np.testing.assert_allclose(loss, -jnp.sum(want) / 6, rtol=1e-5)
  preds, scores = m.score(params, jnp.asarray(right), jnp.asarray([[3, 1], [4, 1]]))
  assert preds.shape == (3,) and scores.shape == (3, 2)
  np.testing.assert_allclose(scores[0, 0], want[0], atol=1e-5)
  np.testing.assert_allclose(scores[1, 1], want[1], atol=1e-5)


@pytest.mark.parametrize('name', ['prompt', 'prefix'])
def test_task_ids_pick_each_examples_prompt(name):
  base = METHODS[name]
  multi = (PromptTuning(length=3, initializer='uniform', num_prompts=2) if name == 'prompt'
           else PrefixTuning(length=2, hidden_dim=8, num_prompts=2))
  m, params = _model('llama', multi)
  right, _ = _inputs()
  ids = jnp.asarray([1, 0, 1])
  together = m.score_targets(params, jnp.asarray(right), jnp.asarray([[3, 1]] * 3), ids)
  single = prompted_model(m.config, base)
  for task in (0, 1):
    p = {'backbone': params['backbone'],
         'method': jax.tree.map(lambda x, t=task: x[t], params['method'])}
    alone = single.score_targets(p, jnp.asarray(right), jnp.asarray([[3, 1]] * 3))
    rows = np.asarray(ids) == task
    np.testing.assert_allclose(np.asarray(together)[rows], np.asarray(alone)[rows], atol=1e-5)


def test_sampling_top_k_1_is_greedy_and_samples_depend_on_the_key():
  m, params = _model('llama', METHODS['prefix'])
  m = DecoderOnlyModel(m.config.replace(eos_token_id=95), m.method)
  right, _ = _inputs()
  x = jnp.asarray(right)
  run = jax.jit(lambda p, x, key, k: m.generate(p, x, 5, strategy='sample', rng=key,
                                                  temperature=5.0, top_k=k),
                static_argnums=3)
  greedy = np.asarray(jax.jit(lambda p, x: m.generate(p, x, 5))(params, x))
  np.testing.assert_array_equal(run(params, x, jax.random.key(0), 1), greedy)
  a, b = run(params, x, jax.random.key(0), 0), run(params, x, jax.random.key(1), 0)
  assert not np.array_equal(a, b) and np.array_equal(a, run(params, x, jax.random.key(0), 0))
  with pytest.raises(ValueError, match='strategy'):
    m.generate(params, x, 5, strategy='nucleus')
