"""Decoders and rank classification against transformers on a random tiny T5."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jaxpt  # noqa: E402
from jaxpt.prompted.decoding import beam_search, greedy_decode, sample_decode  # noqa: E402
from jaxpt.prompted.scoring import rank_classify, score_targets  # noqa: E402
from jaxpt.models import scan  # noqa: E402
from jaxpt.models.t5 import T5  # noqa: E402
from tests import hf_fixtures  # noqa: E402

VOCAB = 64
STEPS = 8

# Tiny models on shared CPUs: XLA compilation dominates, so compile cheaply.
_FAST_COMPILE = {'xla_backend_optimization_level': 0}
_beam = jax.jit(beam_search, static_argnums=(0, 3), static_argnames=('num_beams',),
                compiler_options=_FAST_COMPILE)
_greedy = jax.jit(greedy_decode, static_argnums=(0, 3), compiler_options=_FAST_COMPILE)
_sample = jax.jit(sample_decode, static_argnums=(0, 3), static_argnames=('top_k',),
                  compiler_options=_FAST_COMPILE)
_score = jax.jit(score_targets, static_argnums=0, compiler_options=_FAST_COMPILE)
_rank = jax.jit(rank_classify, static_argnums=0, compiler_options=_FAST_COMPILE)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(torch model, jaxpt Model) of one random gated-GELU T5 that often emits EOS."""
  torch.manual_seed(0)
  cfg = hf_fixtures.t5_config(vocab_size=VOCAB, feed_forward_proj='gated-gelu',
                              tie_word_embeddings=False)
  hf_model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # random models predict padding forever; make EOS likely instead
    hf_model.lm_head.weight[0] *= 0.01
    hf_model.lm_head.weight[1] *= 8.0
  path = tmp_path_factory.mktemp('tiny_t5')
  hf_model.save_pretrained(path)
  return hf_model, jaxpt.load_model(path)


def _encoder_batch() -> np.ndarray:
  rng = np.random.RandomState(0)
  enc = rng.randint(2, VOCAB, (3, 9)).astype(np.int32)
  enc[0, 6:] = 0
  enc[1, 3:] = 0
  return enc


def _strip_after_eos(tokens: np.ndarray, length: int) -> np.ndarray:
  """Pads with 0 after the first EOS (transformers pads beams with EOS) to `length`."""
  out = np.zeros(tokens.shape[:-1] + (length,), np.int32)
  for idx in np.ndindex(tokens.shape[:-1]):
    row = list(tokens[idx][:length])
    if 1 in row:
      row = row[:row.index(1) + 1]
    out[idx][:len(row)] = row
  return out


@pytest.mark.parametrize('length_penalty', [1.0, 2.0, 0.0])
def test_beam_search_matches_transformers(tiny, length_penalty):
  hf_model, model = tiny
  enc = _encoder_batch()
  with torch.no_grad():
    ref = hf_model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                            attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                            num_beams=4, num_return_sequences=4, do_sample=False,
                            max_new_tokens=STEPS, length_penalty=length_penalty,
                            early_stopping=False, output_scores=True,
                            return_dict_in_generate=True)
  ref_tokens = _strip_after_eos(ref.sequences.numpy()[:, 1:].reshape(3, 4, -1), STEPS)
  tokens, scores = _beam(model.module, model.params, jnp.asarray(enc), STEPS, num_beams=4,
                         length_penalty=length_penalty)
  tokens = np.asarray(tokens)
  assert tokens.shape == (3, 4, STEPS) and scores.shape == (3, 4)
  # Some hypotheses end early with EOS, others run to the length limit.
  assert (tokens[..., -1] == 0).any() and (tokens[..., -1] > 1).any()
  np.testing.assert_array_equal(tokens[:, 0], ref_tokens[:, 0])
  np.testing.assert_array_equal(tokens, ref_tokens)  # every beam, in order
  np.testing.assert_allclose(np.asarray(scores), ref.sequences_scores.numpy().reshape(3, 4),
                             rtol=1e-5, atol=1e-5)
  if length_penalty == 1.0:  # the `Model` front end returns the best beam
    np.testing.assert_array_equal(model.generate(enc, STEPS, strategy='beam', num_beams=4),
                                  ref_tokens[:, 0])


def test_beam_search_with_scanned_layers(tiny):
  """Cache rows are gathered on the batch axis also when the cache has a layer axis."""
  _, model = tiny
  enc = jnp.asarray(_encoder_batch())
  tokens, scores = _beam(model.module, model.params, enc, STEPS, num_beams=4)
  scanned = T5(dataclasses.replace(model.config, scan_layers=True))
  t2, s2 = _beam(scanned, scan.stack_layers(model.params), enc, STEPS, num_beams=4)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(t2))
  np.testing.assert_allclose(np.asarray(scores), np.asarray(s2), atol=1e-5)


def test_single_beam_is_greedy(tiny):
  _, model = tiny
  enc = jnp.asarray(_encoder_batch())
  tokens, scores = _beam(model.module, model.params, enc, STEPS, num_beams=1)
  greedy = _greedy(model.module, model.params, enc, STEPS)
  np.testing.assert_array_equal(np.asarray(tokens)[:, 0], np.asarray(greedy))
  assert np.all(np.asarray(scores) < 0)


def test_beam_search_per_example_prompt_and_prefixes(tiny):
  """Per-example soft inputs are repeated per beam: batched == one example at a time."""
  _, model = tiny
  enc = jnp.asarray(_encoder_batch())
  keys = jax.random.split(jax.random.key(1), 7)
  prompt = jax.random.normal(keys[0], (3, 2, 16))
  shape = (2, 3, 2, 4, 4)
  prefixes = {name: (jax.random.normal(keys[2 * i + 1], shape),
                     jax.random.normal(keys[2 * i + 2], shape))
              for i, name in enumerate(('encoder', 'decoder_self', 'decoder_cross'))}
  tokens, scores = _beam(model.module, model.params, enc, STEPS, num_beams=3, prompt=prompt,
                         prefixes=prefixes)
  for b in range(3):
    one = jax.tree.map(lambda t, b=b: t[:, b:b + 1], prefixes)
    t1, s1 = _beam(model.module, model.params, enc[b:b + 1], STEPS, num_beams=3,
                   prompt=prompt[b:b + 1], prefixes=one)
    np.testing.assert_array_equal(np.asarray(tokens[b]), np.asarray(t1[0]))
    np.testing.assert_allclose(np.asarray(scores[b]), np.asarray(s1[0]), atol=1e-5)


def test_sample_decode(tiny):
  _, model = tiny
  enc = jnp.asarray(_encoder_batch())
  args = (model.module, model.params, enc, STEPS)
  greedy = np.asarray(_greedy(*args))
  key = jax.random.key(0)
  np.testing.assert_array_equal(np.asarray(_sample(*args, key, temperature=0.0)), greedy)
  np.testing.assert_array_equal(np.asarray(_sample(*args, key, temperature=1e-4)), greedy)
  np.testing.assert_array_equal(np.asarray(_sample(*args, key, temperature=1.5, top_k=1)),
                                greedy)
  a = np.asarray(_sample(*args, key, temperature=1.5))
  np.testing.assert_array_equal(a, np.asarray(_sample(*args, key, temperature=1.5)))
  b = np.asarray(_sample(*args, jax.random.key(1), temperature=1.5))
  assert a.shape == (3, STEPS) and a.dtype == np.int32
  assert not np.array_equal(a, b)
  for out in (a, b):  # 0 after the first EOS only
    for row in out:
      ends = np.flatnonzero(row == 1)
      stop = ends[0] + 1 if ends.size else STEPS
      assert np.all(row[stop:] == 0) and np.all(row[:stop] > 0)


def _targets() -> np.ndarray:
  targets = np.array([[5, 9, 1, 0], [7, 1, 0, 0], [3, 4, 12, 1]], np.int32)
  return targets


def test_score_targets_matches_transformers(tiny):
  hf_model, model = tiny
  enc, targets = _encoder_batch(), _targets()
  dec = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(enc, dtype=torch.long),
                      attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                      decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits
    log_probs = torch.log_softmax(logits.double(), -1).numpy()
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  ref = (picked * (targets > 0)).sum(-1)
  ours = _score(model.module, model.params, jnp.asarray(enc), jnp.asarray(targets))
  assert ours.shape == (3,) and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)


def _labels() -> np.ndarray:
  return np.array([[34, 1, 0, 0], [51, 1, 0, 0], [28, 46, 1, 0], [41, 1, 0, 0]], np.int32)


def _per_label_scores(model, enc, labels) -> np.ndarray:
  cols = []
  for label in labels:
    targets = jnp.asarray(np.tile(label, (enc.shape[0], 1)))
    cols.append(np.asarray(_score(model.module, model.params, jnp.asarray(enc), targets)))
  return np.stack(cols, axis=1)


def test_rank_classify_scores_every_label(tiny):
  _, model = tiny
  enc, labels = _encoder_batch(), _labels()
  preds, scores = _rank(model.module, model.params, jnp.asarray(enc), jnp.asarray(labels))
  assert preds.shape == (3,) and preds.dtype == jnp.int32 and scores.shape == (3, 4)
  ref = _per_label_scores(model, enc, labels)
  np.testing.assert_allclose(np.asarray(scores), ref, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(preds), ref.argmax(-1))
  assert len(set(np.asarray(preds).tolist())) > 1  # not a constant classifier


def test_rank_classify_per_example_prompt_and_prefixes(tiny):
  _, model = tiny
  enc, labels = _encoder_batch(), _labels()
  keys = jax.random.split(jax.random.key(2), 5)
  prompt = jax.random.normal(keys[0], (3, 3, 16))
  shape = (2, 3, 2, 4, 4)
  prefixes = {'decoder_self': (jax.random.normal(keys[1], shape),
                               jax.random.normal(keys[2], shape)),
              'decoder_cross': (jax.random.normal(keys[3], shape),
                                jax.random.normal(keys[4], shape))}
  preds, scores = _rank(model.module, model.params, jnp.asarray(enc), jnp.asarray(labels),
                        prompt=prompt, prefixes=prefixes)
  # Batched over examples (soft inputs repeated per label) == one example at a time
  # (soft inputs broadcast).
  for b in range(3):
    one = jax.tree.map(lambda t, b=b: t[:, b:b + 1], prefixes)
    p1, s1 = _rank(model.module, model.params, jnp.asarray(enc[b:b + 1]), jnp.asarray(labels),
                   prompt=prompt[b:b + 1], prefixes=one)
    np.testing.assert_allclose(np.asarray(scores[b]), np.asarray(s1[0]), atol=1e-5)
    assert int(preds[b]) == int(p1[0])
  # The prompt matters: scores differ from the unprompted ones.
  _, plain = _rank(model.module, model.params, jnp.asarray(enc), jnp.asarray(labels))
  assert not np.allclose(np.asarray(scores), np.asarray(plain), atol=1e-3)
