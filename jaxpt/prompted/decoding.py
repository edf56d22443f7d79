"""Autoregressive decoding with a per-step key/value cache.

Three decoders share one cache initializer (`_init_cache`) and one decoding
step (`_step`): `greedy_decode`, `sample_decode` (temperature / top-k) and
`beam_search` (Hugging Face transformers' beam search). The encoder runs once;
every step feeds one token per row through the cached decoder. All are
jit-compatible with `module`, `max_length` (and `num_beams`, `top_k`) static.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxpt.models.t5 import T5, Prefixes

Array = jax.Array

# Added to the scores of candidates that must not be chosen (transformers' value).
_BIG_NEG = -1.0e9


# ----------------------------------------------------------------------------- shared

def repeat_rows(x: Array, n: int) -> Array:
  """Repeats every row of `x` `n` times along axis 0: row b -> rows b*n .. b*n+n-1."""
  return jnp.repeat(x, n, axis=0)


def repeat_prefixes(prefixes: Optional[Prefixes], n: int) -> Optional[Prefixes]:
  """Repeats each per-example prefix (batch axis 1 > 1) `n` times per example.

  Prefixes shared by the batch (batch axis of size 1) broadcast and are kept.
  """
  if prefixes is None:
    return None

  def rep(t: Array) -> Array:
    return t if t.shape[1] == 1 else jnp.repeat(t, n, axis=1)

  return {name: (rep(k), rep(v)) for name, (k, v) in prefixes.items()}


def _init_cache(module: T5, params: Any, encoded: Array, valid: Array,
                prefixes: Optional[Prefixes], max_length: int) -> Any:
  """A zeroed decoding cache for `encoded.shape[0]` rows and `max_length` steps.

  The cache's shapes come from an abstract initializing call on a full-length
  dummy target; nothing is computed.
  """
  dummy = jnp.zeros((encoded.shape[0], max_length), jnp.int32)

  def init(encoded, valid, prefixes):
    _, variables = module.apply({'params': params}, encoded, valid, dummy, prefixes,
                                decode=True, max_decode_length=max_length,
                                method=T5.decode, mutable=['cache'])
    return variables['cache']

  shapes = jax.eval_shape(init, encoded, valid, prefixes)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step(module: T5, params: Any, cache: Any, encoded: Array, valid: Array,
          prefixes: Optional[Prefixes], tokens: Array, max_length: int) -> Tuple[Array, Any]:
  """One cached decoder step: tokens [rows] -> (float32 logits [rows, vocab], cache)."""
  logits, updated = module.apply(
      {'params': params, 'cache': cache}, encoded, valid, tokens[:, None], prefixes,
      decode=True, max_decode_length=max_length, method=T5.decode, mutable=['cache'])
  return logits[:, -1], updated['cache']


def _gather_cache(cache: Any, rows: Array) -> Any:
  """Reorders the cache's batch rows: new row i is old row `rows[i]`.

  Cached keys/values are [..., batch, length, heads, head_dim] (a leading layer
  axis when layers are scanned); cache indices carry no batch axis.
  """

  def gather(path, leaf):
    name = getattr(path[-1], 'key', None)
    if name in ('cached_key', 'cached_value'):
      return jnp.take(leaf, rows, axis=leaf.ndim - 4)
    return leaf

  return jax.tree_util.tree_map_with_path(gather, cache)


def _decode_loop(module: T5, params: Any, encoder_tokens: Array, max_length: int,
                 prompt: Optional[Array], prefixes: Optional[Prefixes], choose) -> Array:
  """Runs one-row-per-example decoding; `choose(step, logits) -> token ids [batch]`."""
  cfg = module.config
  encoded, valid = module.apply({'params': params}, encoder_tokens, prompt, prefixes,
                                method=T5.encode)
  batch = encoder_tokens.shape[0]
  cache = _init_cache(module, params, encoded, valid, prefixes, max_length)

  def cond(state):
    i, _, _, _, done = state
    return (i < max_length) & ~jnp.all(done)

  def body(state):
    i, cache, out, last, done = state
    logits, cache = _step(module, params, cache, encoded, valid, prefixes, last, max_length)
    token = jnp.where(done, cfg.pad_token_id, choose(i, logits).astype(jnp.int32))
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
    return i + 1, cache, out, token, done | (token == cfg.eos_token_id)

  start = jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32)
  out = jnp.full((batch, max_length), cfg.pad_token_id, jnp.int32)
  state = (jnp.array(0, jnp.int32), cache, out, start, jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, state)[2]


# ----------------------------------------------------------------------------- greedy

def greedy_decode(module: T5, params: Any, encoder_tokens: Array, max_length: int, *,
                  prompt: Optional[Array] = None, prefixes: Optional[Prefixes] = None) -> Array:
  """Greedy decoding; returns [batch, max_length] ids, padded with 0 after EOS.

  Matches HF `generate(do_sample=False, num_beams=1)` minus its leading decoder
  start token. Jit-compatible (`module` static).
  """
  return _decode_loop(module, params, encoder_tokens, max_length, prompt, prefixes,
                      lambda i, logits: jnp.argmax(logits, axis=-1))


# ----------------------------------------------------------------------------- sampling

def sample_decode(module: T5, params: Any, encoder_tokens: Array, max_length: int,
                  rng: Array, *, temperature: float = 1.0, top_k: int = 0,
                  prompt: Optional[Array] = None,
                  prefixes: Optional[Prefixes] = None) -> Array:
  """Temperature sampling, optionally from the `top_k` most likely tokens only.

  Args:
    module: the T5 module (static under jit).
    params: its parameters.
    encoder_tokens: int [batch, length], 0 is padding.
    max_length: number of tokens to generate (static).
    rng: a PRNG key; step i samples with `fold_in(rng, i)`.
    temperature: divides the logits; 0 (or less) means greedy. May be traced.
    top_k: if > 0 (static), keeps only the k highest logits (ties at the k-th
      value are kept, as in transformers' `TopKLogitsWarper`).
    prompt: optional soft prompt [P, d] or [batch, P, d].
    prefixes: optional attention prefixes.

  Returns:
    int32 [batch, max_length], padded with 0 after EOS.
  """
  choose = sampling_choice(rng, temperature, top_k)
  return _decode_loop(module, params, encoder_tokens, max_length, prompt, prefixes, choose)


def sampling_choice(rng: Array, temperature: Any = 1.0, top_k: int = 0):
  """choose(i, logits [rows, vocab]) -> ids [rows]: step i's temperature / top-k sample
  (`fold_in(rng, i)`; temperature <= 0 is greedy), as `sample_decode` picks tokens."""
  temperature = jnp.asarray(temperature, jnp.float32)
  greedy = temperature <= 0

  def choose(i, logits):
    if top_k > 0:
      kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    sampled = jax.random.categorical(jax.random.fold_in(rng, i), scaled, axis=-1)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled)

  return choose


# ----------------------------------------------------------------------------- beam search

def beam_search(module: T5, params: Any, encoder_tokens: Array, max_length: int, *,
                num_beams: int = 4, length_penalty: float = 1.0,
                prompt: Optional[Array] = None,
                prefixes: Optional[Prefixes] = None) -> Tuple[Array, Array]:
  """Beam search with transformers' semantics (`generate(num_beams=K, do_sample=False)`).

  Follows transformers 5.x `GenerationMixin._beam_search` with its default
  `early_stopping=False`: each step keeps the best 2K continuations of all
  beams by summed log-probability; those ending in EOS (and, at the last step,
  all of them) that rank among the top K become finished hypotheses scored
  `sum_logprob / generated_len ** length_penalty` (EOS counted); the best K
  unfinished continue. A batch row stops accepting hypotheses once its K
  finished slots are full and its best running beam, normalized by the current
  length, cannot beat the worst finished one (transformers' heuristic).

  The encoder runs once; its output, mask and per-example prefixes are repeated
  per beam, and the cache rows are gathered from the chosen parents each step.

  Args:
    module: the T5 module (static under jit).
    params: its parameters.
    encoder_tokens: int [batch, length], 0 is padding.
    max_length: the most tokens generated (HF `max_new_tokens`; static).
    num_beams: K (static).
    length_penalty: exponent of the length normalization.
    prompt: optional soft prompt [P, d] or [batch, P, d].
    prefixes: optional attention prefixes.

  Returns:
    (tokens int32 [batch, num_beams, max_length], 0 after EOS, best first;
     scores float32 [batch, num_beams], the length-normalized log-probabilities).
  """
  cfg = module.config
  k = num_beams
  batch = encoder_tokens.shape[0]
  keep = 2 * k  # one EOS id: transformers keeps max(2, 1 + n_eos) * K candidates
  encoded, valid = module.apply({'params': params}, encoder_tokens, prompt, prefixes,
                                method=T5.encode)
  encoded, valid = repeat_rows(encoded, k), repeat_rows(valid, k)
  prefixes = repeat_prefixes(prefixes, k)
  cache = _init_cache(module, params, encoded, valid, prefixes, max_length)
  vocab = cfg.vocab_size
  pad = cfg.pad_token_id
  top_mask = jnp.arange(keep) < k
  length_penalty = jnp.asarray(length_penalty, jnp.float32)

  def gather(x, idx):  # x [batch, n, ...], idx [batch, m] -> [batch, m, ...]
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def cond(state):
    i, unsatisfied = state[0], state[-1]
    return (i < max_length) & jnp.any(unsatisfied)

  def body(state):
    (i, cache, running, running_scores, finished, finished_scores, is_finished,
     unsatisfied) = state
    last = jnp.where(i == 0, cfg.decoder_start_token_id,
                     running[:, :, jnp.maximum(i - 1, 0)]).reshape(-1)
    logits, cache = _step(module, params, cache, encoded, valid, prefixes, last, max_length)
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, k, vocab)
    log_probs = (log_probs + running_scores[:, :, None]).reshape(batch, k * vocab)

    # Top 2K continuations over all beams.
    top_scores, top_idx = jax.lax.top_k(log_probs, keep)
    parents, ids = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = gather(running, parents)
    seqs = jax.lax.dynamic_update_slice(seqs, ids[:, :, None], (0, 0, i))
    stops = (ids == cfg.eos_token_id) | (i == max_length - 1)

    # The best K unfinished continue.
    cont_scores = top_scores + stops.astype(jnp.float32) * _BIG_NEG
    _, next_idx = jax.lax.top_k(cont_scores, k)
    running = gather(seqs, next_idx)
    running_scores = gather(cont_scores, next_idx)
    rows = (gather(parents, next_idx) + jnp.arange(batch)[:, None] * k).reshape(-1)
    cache = _gather_cache(cache, rows)

    # Finished hypotheses among the top K join the pool if they beat it.
    just_finished = stops & top_mask[None]
    normalized = top_scores / ((i + 1).astype(jnp.float32) ** length_penalty)
    normalized = normalized + (~unsatisfied).astype(jnp.float32) * _BIG_NEG
    normalized = normalized + (~just_finished).astype(jnp.float32) * _BIG_NEG
    merged_scores = jnp.concatenate([finished_scores, normalized], axis=1)
    _, pool_idx = jax.lax.top_k(merged_scores, k)
    finished = gather(jnp.concatenate([finished, seqs], axis=1), pool_idx)
    finished_scores = gather(merged_scores, pool_idx)
    is_finished = gather(jnp.concatenate([is_finished, just_finished], axis=1), pool_idx)

    # transformers' early-stop heuristic (early_stopping=False): the best running
    # beam normalized at the current length against the worst finished one.
    best_running = running_scores[:, :1] / ((i + 1).astype(jnp.float32) ** length_penalty)
    worst = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), _BIG_NEG)
    unsatisfied = unsatisfied & jnp.any(best_running > worst, axis=1, keepdims=True)
    return (i + 1, cache, running, running_scores, finished, finished_scores, is_finished,
            unsatisfied)

  running = jnp.full((batch, k, max_length), pad, jnp.int32)
  running_scores = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(_BIG_NEG)
  state = (jnp.array(0, jnp.int32), cache, running, running_scores, running,
           jnp.full((batch, k), _BIG_NEG, jnp.float32), jnp.zeros((batch, k), bool),
           jnp.ones((batch, 1), bool))
  state = jax.lax.while_loop(cond, body, state)
  return state[4], state[5]
