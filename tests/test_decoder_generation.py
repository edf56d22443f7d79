"""Decoder-only beam search and top-p sampling (both families' `sampling_choice`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpt.methods import PrefixTuning, PromptTuning
from jaxpt.models.t5 import T5
from jaxpt.prompted import decoding
from jaxpt.prompted.decoder_only import DecoderOnlyModel, start_and_inputs
from tests.test_decoder_only import _inputs, _model
from tests.tiny_configs import CONFIG

STEPS = 6
TASK_IDS = np.array([1, 0, 1])
# Two prompts / prefixes, so rows of one batch decode under different task ids.
MULTI = {
    'prompt': PromptTuning(length=3, initializer='uniform', num_prompts=2),
    'prefix': PrefixTuning(length=2, hidden_dim=8, num_prompts=2),
}
# An id each random tiny model emits often, as EOS: hypotheses end at different lengths.
EOS = {'gpt2': 89, 'llama': 6}


def _beam_model(family, name):
  m, params = _model(family, MULTI[name])
  return DecoderOnlyModel(m.config.replace(eos_token_id=EOS[family]), m.method), params


def _reference_beams(m, params, inputs, steps, k, length_penalty, task_ids):
  """Uncached beam search: every step re-runs the whole [prompt; inputs; generated] rows.

  transformers' rules (early_stopping=False), one example at a time in plain Python.
  """
  seq0, real0 = (np.asarray(a) for a in start_and_inputs(jnp.asarray(inputs)))
  batch, length = seq0.shape
  p, eos = m.method.prompt_length, m.config.eos_token_id
  log_probs = jax.jit(lambda prm, t, v, ids: jax.nn.log_softmax(
      m.forward(prm, t, v, ids)[0].logits[:, p + length - 1:], axis=-1))
  running = [[((), 0.0)] for _ in range(batch)]
  hyps = [[] for _ in range(batch)]
  done = [False] * batch
  for i in range(steps):
    rows = [(b, seq, score) for b in range(batch) if not done[b] for seq, score in running[b]]
    if not rows:
      break
    tokens = np.zeros((len(rows), length + steps), np.int32)
    valid = np.zeros(tokens.shape, bool)
    for r, (b, seq, _) in enumerate(rows):
      tokens[r, :length], valid[r, :length] = seq0[b], real0[b]
      tokens[r, length:length + i], valid[r, length:length + i] = seq, True
    ids = jnp.asarray([task_ids[b] for b, _, _ in rows])
    lp = np.asarray(log_probs(params, jnp.asarray(tokens), jnp.asarray(valid), ids))[:, i]
    for b in {b for b, _, _ in rows}:
      cands = sorted(((score + float(lp[r, v]), seq + (v,))
                      for r, (rb, seq, score) in enumerate(rows) if rb == b
                      for v in range(lp.shape[1])), key=lambda c: -c[0])[:2 * k]
      nxt = []
      for rank, (score, seq) in enumerate(cands):
        if seq[-1] == eos or i == steps - 1:
          if rank < k:
            hyps[b] = sorted(hyps[b] + [(score / (i + 1) ** length_penalty, seq)],
                             key=lambda h: -h[0])[:k]
        elif len(nxt) < k:
          nxt.append((seq, score))
      running[b] = nxt
      if (nxt and len(hyps[b]) == k
          and nxt[0][1] / (i + 1) ** length_penalty <= hyps[b][-1][0]):
        done[b] = True
  out = np.zeros((batch, k, steps), np.int32)
  for b in range(batch):
    for j, (_, seq) in enumerate(hyps[b]):
      out[b, j, :len(seq)] = seq
  return out, np.array([[h[0] for h in row] for row in hyps], np.float32)


@pytest.mark.slow  # 30-60 s each on 2 CPU cores
@pytest.mark.parametrize('family,name,length_penalty', [
    ('gpt2', 'prompt', 1.0), ('gpt2', 'prefix', 2.0), ('llama', 'prompt', 0.0),
    ('llama', 'prefix', 1.0)])
def test_cached_beams_equal_uncached_reference(family, name, length_penalty):
  m, params = _beam_model(family, name)
  right, left = _inputs()
  ids = jnp.asarray(TASK_IDS)
  beams = jax.jit(lambda prm, x: m.beam_search(prm, x, STEPS, num_beams=3,
                                               length_penalty=length_penalty, task_ids=ids))
  tokens, scores = (np.asarray(a) for a in beams(params, jnp.asarray(right)))
  ref_tokens, ref_scores = _reference_beams(m, params, right, STEPS, 3, length_penalty,
                                            TASK_IDS)
  np.testing.assert_array_equal(tokens, ref_tokens)  # every beam, best first
  np.testing.assert_allclose(scores, ref_scores, atol=1e-4, rtol=1e-4)
  # Some hypotheses end with EOS before the limit, others run to it.
  ended = (tokens == EOS[family]).any(-1)
  assert ended.any() and (~ended).any()
  # Left-padded inputs give the same beams; generate returns the best one.
  left_tokens, _ = beams(params, jnp.asarray(left))
  np.testing.assert_array_equal(np.asarray(left_tokens), tokens)
  best = m.generate(params, jnp.asarray(right), STEPS, strategy='beam', num_beams=3,
                    length_penalty=length_penalty, task_ids=ids)
  np.testing.assert_array_equal(np.asarray(best), tokens[:, 0])


def test_one_beam_is_greedy_and_task_ids_change_the_beams():
  m, params = _beam_model('llama', 'prefix')
  right, _ = _inputs()
  x = jnp.asarray(right)
  run = jax.jit(lambda prm, x, ids: m.generate(prm, x, STEPS, strategy='beam', num_beams=1,
                                               task_ids=ids))
  greedy = jax.jit(lambda prm, x, ids: m.generate(prm, x, STEPS, task_ids=ids))
  for ids in (jnp.asarray(TASK_IDS), jnp.asarray(1 - TASK_IDS)):
    np.testing.assert_array_equal(np.asarray(run(params, x, ids)),
                                  np.asarray(greedy(params, x, ids)))
  assert not np.array_equal(np.asarray(run(params, x, jnp.asarray(TASK_IDS))),
                            np.asarray(run(params, x, jnp.asarray(1 - TASK_IDS))))


def _nucleus_members(logits, top_p):
  """bool [rows, vocab]: tokens whose more likely tokens hold less than top_p of the mass."""
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), np.float64)
  above = np.array([[row[row > q].sum() for q in row] for row in probs])
  return above < top_p


def test_top_p_samples_lie_in_the_nucleus_and_top_p_1_is_plain_sampling():
  logits = jax.random.normal(jax.random.key(3), (4, 50))
  temperature, top_p = 0.7, 0.8
  members = _nucleus_members(np.asarray(logits) / temperature, top_p)
  assert (members.sum(-1) > 1).all() and (members.sum(-1) < 40).all()
  choose = jax.jit(decoding.sampling_choice(jax.random.key(0), temperature, 0, top_p))
  picked = np.stack([np.asarray(choose(i, logits)) for i in range(200)])
  assert members[np.arange(4)[None], picked].all()
  assert all(len(set(picked[:, r])) > 1 for r in range(4))  # not just the argmax
  plain = decoding.sampling_choice(jax.random.key(0), temperature, 0, 1.0)
  for i in range(5):
    want = jax.random.categorical(jax.random.fold_in(jax.random.key(0), i),
                                  logits / temperature, axis=-1)
    np.testing.assert_array_equal(np.asarray(plain(i, logits)), np.asarray(want))


@pytest.mark.slow  # ~50 s on 2 busy CPU cores (a T5 and a Llama compiled twice)
def test_tiny_top_p_is_greedy_for_both_families(backbone):
  m, params = _model('llama', MULTI['prefix'])
  m = DecoderOnlyModel(m.config.replace(eos_token_id=95), m.method)
  x, ids = jnp.asarray(_inputs()[0]), jnp.asarray(TASK_IDS)
  sample = jax.jit(lambda prm, key, top_p: m.generate(
      prm, x, 5, strategy='sample', rng=key, temperature=3.0, top_p=top_p, task_ids=ids))
  greedy = np.asarray(m.generate(params, x, 5, task_ids=ids))
  np.testing.assert_array_equal(np.asarray(sample(params, jax.random.key(0), 1e-6)), greedy)
  assert not np.array_equal(np.asarray(sample(params, jax.random.key(0), 1.0)), greedy)
  # T5's sample_decode takes the same top_p.
  enc = jnp.asarray(np.random.RandomState(0).randint(2, CONFIG.vocab_size, (3, 5)))
  module = T5(CONFIG)
  np.testing.assert_array_equal(
      np.asarray(decoding.sample_decode(module, backbone, enc, 4, jax.random.key(0),
                                        temperature=3.0, top_p=1e-6)),
      np.asarray(decoding.greedy_decode(module, backbone, enc, 4)))


def _strip_after_eos(tokens: np.ndarray, eos: int) -> np.ndarray:
  """0 after the first EOS (transformers fills finished beams with EOS)."""
  after = np.cumsum(tokens == eos, axis=-1) - (tokens == eos)
  return np.where(after > 0, 0, tokens)


@pytest.mark.slow  # ~60 s on 2 CPU cores (torch, three beam searches each side)
def test_beams_equal_transformers_gpt2(tmp_path):
  torch = pytest.importorskip('torch')
  import jaxpt
  from tests import hf_fixtures
  hf = hf_fixtures.gpt2()
  with torch.no_grad():  # make EOS (1) likely, so hypotheses end at different lengths
    hf.transformer.wte.weight[1] *= 6.0
  hf.save_pretrained(tmp_path)
  model = jaxpt.load_model(tmp_path)
  eos, steps = model.config.eos_token_id, 8
  enc = np.random.RandomState(0).randint(2, model.config.vocab_size, (3, 5)).astype(np.int32)
  # jaxpt's row is the start id 0 then the inputs; transformers is given the same ids.
  ids = torch.tensor(np.concatenate([np.zeros((3, 1), np.int32), enc], 1), dtype=torch.long)
  ended = []
  for length_penalty in (1.0, 2.0, 0.0):
    with torch.no_grad():
      ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=4,
                        num_return_sequences=4, do_sample=False, max_new_tokens=steps,
                        length_penalty=length_penalty, early_stopping=False,
                        output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    ref_tokens = np.zeros((3, 4, steps), np.int32)
    generated = ref.sequences.numpy()[:, ids.shape[1]:].reshape(3, 4, -1)
    ref_tokens[..., :generated.shape[-1]] = _strip_after_eos(generated, eos)
    tokens, scores = jax.jit(lambda p, x, lp=length_penalty: model.prompted.beam_search(
        p, x, steps, num_beams=4, length_penalty=lp))(model.all_params, jnp.asarray(enc))
    np.testing.assert_array_equal(np.asarray(tokens), ref_tokens)
    np.testing.assert_allclose(np.asarray(scores), ref.sequences_scores.numpy().reshape(3, 4),
                               atol=1e-5, rtol=1e-5)
    ended.append((np.asarray(tokens) == eos).any(-1))
  # Hypotheses ended by EOS and hypotheses cut at the length limit both occur.
  assert np.any(ended) and not np.all(ended)
  # The numpy front end returns the best beam.
  np.testing.assert_array_equal(model.generate(enc, steps, strategy='beam', num_beams=4,
                                               length_penalty=0.0), tokens[:, 0])
