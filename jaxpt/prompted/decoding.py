"""Autoregressive decoding with a per-step key/value cache.

Three T5 decoders share one cache initializer (`_init_cache`) and one decoding
step (`_step`): `greedy_decode`, `sample_decode` (temperature / top-k / top-p) and
`beam_search` (Hugging Face transformers' beam search). The encoder runs once;
every step feeds one token per row through the cached decoder. All are
jit-compatible with `module`, `max_length` (and `num_beams`, `top_k`) static.
`sampling_choice` (how a token is sampled) and `beam_loop` (the beam bookkeeping
over any cached step) also serve `DecoderOnlyModel.generate`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

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
                  top_p: float = 1.0, prompt: Optional[Array] = None,
                  prefixes: Optional[Prefixes] = None) -> Array:
  """Temperature sampling, optionally from the `top_k` most likely tokens or the `top_p`
  nucleus only.

  Args:
    module: the T5 module (static under jit).
    params: its parameters.
    encoder_tokens: int [batch, length], 0 is padding.
    max_length: number of tokens to generate (static).
    rng: a PRNG key; step i samples with `fold_in(rng, i)`.
    temperature: divides the logits; 0 (or less) means greedy. May be traced.
    top_k: if > 0 (static), keeps only the k highest logits (ties at the k-th
      value are kept, as in transformers' `TopKLogitsWarper`).
    top_p: if < 1, keeps only the nucleus (see `sampling_choice`). May be traced.
    prompt: optional soft prompt [P, d] or [batch, P, d].
    prefixes: optional attention prefixes.

  Returns:
    int32 [batch, max_length], padded with 0 after EOS.
  """
  choose = sampling_choice(rng, temperature, top_k, top_p)
  return _decode_loop(module, params, encoder_tokens, max_length, prompt, prefixes, choose)


def sampling_choice(rng: Array, temperature: Any = 1.0, top_k: int = 0, top_p: Any = 1.0):
  """choose(i, logits [rows, vocab]) -> ids [rows]: step i's sample, as `sample_decode` and
  `DecoderOnlyModel.generate` pick tokens.

  The logits are divided by `temperature`, then cut to the `top_k` highest (static; 0:
  all) and to the nucleus of `top_p` (transformers' order of warpers), then sampled with
  `fold_in(rng, i)`. temperature <= 0 is greedy. The nucleus is the fewest most likely
  tokens whose probabilities sum to at least `top_p` (the most likely one always, ties
  at its edge kept); top_p >= 1 keeps every token. temperature and top_p may be traced.
  """
  temperature = jnp.asarray(temperature, jnp.float32)
  top_p = jnp.asarray(top_p, jnp.float32)
  greedy = temperature <= 0

  def choose(i, logits):
    logits = logits.astype(jnp.float32)
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    if top_k > 0:
      kth = jax.lax.top_k(scaled, min(top_k, scaled.shape[-1]))[0][..., -1:]
      scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    scaled = jnp.where(top_p < 1.0, nucleus(scaled, top_p), scaled)
    sampled = jax.random.categorical(jax.random.fold_in(rng, i), scaled, axis=-1)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled)

  return choose


def nucleus(logits: Array, top_p: Any) -> Array:
  """`logits` [..., vocab] with -inf outside the top-p nucleus (see `sampling_choice`)."""
  ordered = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # The smallest kept logit: entries whose higher-ranked mass is still below top_p.
  first = jnp.arange(logits.shape[-1]) == 0
  kept = jnp.where((mass_before < top_p) | first, ordered, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(logits < threshold, -jnp.inf, logits)


# ----------------------------------------------------------------------------- beam search

def beam_loop(step: Callable[[Any, Array], Tuple[Array, Any]], first_logits: Array,
              cache: Any, reorder: Callable[[Any, Array], Any], *, batch: int,
              num_beams: int, max_length: int, eos_id: int, pad_id: int = 0,
              length_penalty: Any = 1.0) -> Tuple[Array, Array]:
  """transformers' beam search bookkeeping over any cached model (T5 or decoder-only).

  Follows transformers 5.x `GenerationMixin._beam_search` with its default
  `early_stopping=False`: each step keeps the best 2K continuations of all
  beams by summed log-probability; those ending in EOS (and, at the last step,
  all of them) that rank among the top K become finished hypotheses scored
  `sum_logprob / generated_len ** length_penalty` (EOS counted); the best K
  unfinished continue. A batch row stops accepting hypotheses once its K
  finished slots are full and its best running beam, normalized by the current
  length, cannot beat the worst finished one (transformers' heuristic).

  Rows are batch-major: row b * K + j is beam j of example b.

  Args:
    step: (cache, tokens [batch * K]) -> (float logits [batch * K, vocab], cache): feeds
      one token per row through the cached model.
    first_logits: [batch * K, vocab], the logits of the first generated token (equal
      across an example's K rows).
    cache: the model's cache for batch * K rows, holding everything before that token.
    reorder: (cache, rows int [batch * K]) -> cache whose row i is old row `rows[i]`.
    batch, num_beams, max_length: static sizes; max_length is HF `max_new_tokens`.
    eos_id, pad_id: EOS ends a hypothesis; pad fills what follows it.
    length_penalty: exponent of the length normalization (may be traced).

  Returns:
    (tokens int32 [batch, K, max_length], pad after EOS, best first;
     scores float32 [batch, K], the length-normalized log-probabilities).
  """
  k = num_beams
  vocab = first_logits.shape[-1]
  keep = 2 * k  # one EOS id: transformers keeps max(2, 1 + n_eos) * K candidates
  top_mask = jnp.arange(keep) < k
  length_penalty = jnp.asarray(length_penalty, jnp.float32)

  def gather(x, idx):  # x [batch, n, ...], idx [batch, m] -> [batch, m, ...]
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def cond(state):
    i, unsatisfied = state[0], state[-1]
    return (i < max_length) & jnp.any(unsatisfied)

  def body(state):
    (i, logits, cache, running, running_scores, finished, finished_scores, is_finished,
     unsatisfied) = state
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_probs = log_probs.reshape(batch, k, vocab) + running_scores[:, :, None]
    log_probs = log_probs.reshape(batch, k * vocab)

    # Top 2K continuations over all beams.
    top_scores, top_idx = jax.lax.top_k(log_probs, keep)
    parents, ids = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = gather(running, parents)
    seqs = jax.lax.dynamic_update_slice(seqs, ids[:, :, None], (0, 0, i))
    stops = (ids == eos_id) | (i == max_length - 1)

    # The best K unfinished continue.
    cont_scores = top_scores + stops.astype(jnp.float32) * _BIG_NEG
    _, next_idx = jax.lax.top_k(cont_scores, k)
    running = gather(seqs, next_idx)
    running_scores = gather(cont_scores, next_idx)
    rows = (gather(parents, next_idx) + jnp.arange(batch)[:, None] * k).reshape(-1)

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

    # The next token's logits, unless the loop ends here.
    def advance(cache):
      return step(reorder(cache, rows), running[:, :, i].reshape(-1))

    logits, cache = jax.lax.cond((i + 1 < max_length) & jnp.any(unsatisfied), advance,
                                 lambda cache: (logits, cache), cache)
    return (i + 1, logits, cache, running, running_scores, finished, finished_scores,
            is_finished, unsatisfied)

  running = jnp.full((batch, k, max_length), pad_id, jnp.int32)
  running_scores = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(_BIG_NEG)
  state = (jnp.array(0, jnp.int32), first_logits.astype(jnp.float32), cache, running,
           running_scores, running, jnp.full((batch, k), _BIG_NEG, jnp.float32),
           jnp.zeros((batch, k), bool), jnp.ones((batch, 1), bool))
  state = jax.lax.while_loop(cond, body, state)
  return state[5], state[6]


def beam_search(module: T5, params: Any, encoder_tokens: Array, max_length: int, *,
                num_beams: int = 4, length_penalty: float = 1.0,
                prompt: Optional[Array] = None,
                prefixes: Optional[Prefixes] = None) -> Tuple[Array, Array]:
  """T5 beam search with transformers' semantics (`generate(num_beams=K, do_sample=False)`).

  The bookkeeping is `beam_loop`'s. The encoder runs once; its output, mask
  and per-example prefixes are repeated per beam, and the cache rows are
  gathered from the chosen parents each step.

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
  encoded, valid = module.apply({'params': params}, encoder_tokens, prompt, prefixes,
                                method=T5.encode)
  encoded, valid = repeat_rows(encoded, k), repeat_rows(valid, k)
  prefixes = repeat_prefixes(prefixes, k)
  cache = _init_cache(module, params, encoded, valid, prefixes, max_length)

  def step(cache, tokens):
    return _step(module, params, cache, encoded, valid, prefixes, tokens, max_length)

  start = jnp.full((batch * k,), cfg.decoder_start_token_id, jnp.int32)
  first_logits, cache = step(cache, start)
  return beam_loop(step, first_logits, cache, _gather_cache, batch=batch, num_beams=k,
                   max_length=max_length, eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id,
                   length_penalty=length_penalty)
