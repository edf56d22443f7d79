"""`DecoderOnlyModel`: a GPT-2 / Llama backbone with a soft-prompt method.

Batches use T5X's decoder-only feature layout: inputs and targets concatenated
into `decoder_target_tokens`, `decoder_input_tokens` its shift right (0 first),
`decoder_loss_weights` 1 on the target part only (`jaxpt.data.features.
decoder_only_features` builds them). Id 0 is padding (T5X's rule), so position
i is real iff `decoder_target_tokens[i] != 0`. T5X's `decoder_causal_attention`
(a bidirectional prefix LM) is not modelled: attention is causal everywhere.

Soft inputs (see `jaxpt.models.causal` for positions): a prompt goes before
the whole sequence (before any BOS the caller put first) and takes positions
0..P-1; a placed prompt (P-tuning with a template: `Template.build` marks
prompt row k with the id -(k + 1) inside the inputs, after the start id)
replaces its markers, which are real positions like tokens (hence `!= 0`
above); prefixes (prefix tuning, deep prompts) are keys/values in every layer
taking no positions. `score`, `score_targets` and `generate` take
`encoder_tokens`, the inputs (markers included), 0-padded on either side: the
row is the start id 0 then the inputs left-aligned (real tokens last), as a
training row begins, so targets and generated tokens follow the last real
input token and left- and right-padded inputs give the same results. For a GPT-2 / Llama vocabulary id 0 is a real
word ('!' / '<unk>'): jaxpt batches cannot hold it, and it starts every row.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jaxpt.models.causal import CausalLM, Output, init_cache, take_rows
from jaxpt.prompted import decoding
from jaxpt.prompted.base import STRATEGIES, PromptedModel

Array = jax.Array


def left_align(tokens: Array) -> Array:
  """Each row of 0-padded `tokens` rotated so its last non-zero id is in the last column."""
  length = tokens.shape[1]
  cols = jnp.arange(length)
  last = jnp.max(jnp.where(tokens != 0, cols, -1), axis=1)
  shift = jnp.where(last < 0, 0, length - 1 - last)
  return jnp.take_along_axis(tokens, (cols[None, :] - shift[:, None]) % length, axis=1)


def start_and_inputs(encoder_tokens: Array) -> Tuple[Array, Array]:
  """(tokens, valid): the start id 0 (T5X's shift right, always real) then the inputs,
  left-aligned, as a training row of `decoder_only_features` begins."""
  inputs = left_align(jnp.asarray(encoder_tokens, jnp.int32))
  start = jnp.zeros((inputs.shape[0], 1), jnp.int32)
  valid = jnp.concatenate([jnp.ones_like(start, bool), inputs != 0], axis=1)
  return jnp.concatenate([start, inputs], axis=1), valid


@dataclasses.dataclass(frozen=True)
class DecoderOnlyModel(PromptedModel):
  """A decoder-only backbone (`DecoderConfig`) with a soft-prompt method."""

  @property
  def network(self) -> CausalLM:
    return CausalLM(self.config, self.method.prefix_position)

  def _prompt_and_prefix(self, params, batch_size, task_ids):
    """(prompt: [P, d] / [B, P, d] before the row, a `PlacedPrompt`, or None; the
    decoder self-attention prefix or None)."""
    soft = self.soft_inputs(params, batch_size, task_ids)
    return soft.prompt, (soft.prefixes or {}).get('decoder_self')

  def forward(self, params, tokens: Array, valid: Array, task_ids: Optional[Array] = None,
              deterministic: bool = True, rng: Optional[Array] = None
              ) -> Tuple[Output, int]:
    """(the network's `Output` on `[prompt; tokens]`, the prompt length P)."""
    prompt, prefix = self._prompt_and_prefix(params, tokens.shape[0], task_ids)
    rngs = {'dropout': rng} if (rng is not None and not deterministic) else {}
    out = self.network.apply({'params': params['backbone']}, tokens, valid, prompt, prefix,
                             None, deterministic, rngs=rngs)
    return out, self.method.prompt_length

  def logits(self, params, batch, *, deterministic=True, rng=None):
    return self.logits_and_hidden(params, batch, deterministic=deterministic, rng=rng)[0]

  def logits_and_hidden(self, params, batch, *, deterministic=True, rng=None):
    tokens = batch['decoder_input_tokens']
    valid = batch['decoder_target_tokens'] != 0  # placed-prompt markers are negative
    out, p = self.forward(params, tokens, valid, batch.get('task_ids'), deterministic, rng)
    return out.logits[:, p:], out.hidden, out.valid

  def score_targets(self, params, encoder_tokens, target_tokens, task_ids=None):
    inputs, input_valid = start_and_inputs(encoder_tokens)
    targets = jnp.asarray(target_tokens, jnp.int32)
    tokens = jnp.concatenate([inputs, targets[:, :-1]], axis=1)
    valid = jnp.concatenate([input_valid, targets[:, :-1] != 0], axis=1)
    out, p = self.forward(params, tokens, valid, task_ids)
    # Position 1 + L_in - 1 + j (after the prompt) predicts target j.
    logits = out.logits[:, p + inputs.shape[1] - 1:]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(targets > 0, picked, 0.0), axis=-1)

  def score(self, params, encoder_tokens, label_tokens, task_ids=None):
    labels = jnp.asarray(label_tokens, jnp.int32)
    batch, num_labels = encoder_tokens.shape[0], labels.shape[0]
    inputs = jnp.repeat(jnp.asarray(encoder_tokens, jnp.int32), num_labels, axis=0)
    ids = None if task_ids is None else jnp.repeat(task_ids, num_labels, axis=0)
    scores = self.score_targets(params, inputs, jnp.tile(labels, (batch, 1)), ids)
    scores = scores.reshape(batch, num_labels)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32), scores

  def _prefill(self, params, encoder_tokens, max_length, task_ids):
    """(step, logits of the first generated token [batch, vocab], cache): the prefix
    written into a cache of room for `max_length` more tokens, then the prompt and
    inputs in one call; step(cache, tokens [rows]) -> (logits [rows, vocab], cache)."""
    inputs, valid = start_and_inputs(encoder_tokens)
    batch, length = inputs.shape
    prompt, prefix = self._prompt_and_prefix(params, batch, task_ids)
    module, variables = self.network, {'params': params['backbone']}
    cache = init_cache(self.config, batch, self.method.prompt_length + length + max_length,
                       prefix, self.method.prefix_position)
    out = module.apply(variables, inputs, valid, prompt, None, cache)

    def step(cache, tokens):
      out = module.apply(variables, tokens[:, None], jnp.ones((tokens.shape[0], 1), bool),
                         None, None, cache)
      return out.logits[:, -1], out.cache

    return step, out.logits[:, -1], out.cache

  def beam_search(self, params, encoder_tokens: Array, max_length: int, *, num_beams: int = 4,
                  length_penalty: float = 1.0, task_ids: Optional[Array] = None
                  ) -> Tuple[Array, Array]:
    """Beam search with transformers' semantics (`decoding.beam_loop`, T5's bookkeeping).

    Each input row is prefilled once (prefix, prompt, inputs) and its cache then
    repeated to `num_beams` rows; every step feeds one token per beam.

    Returns:
      (tokens int32 [batch, num_beams, max_length], 0 after EOS, best first;
       scores float32 [batch, num_beams], the length-normalized log-probabilities).
    """
    batch = encoder_tokens.shape[0]
    step, first, cache = self._prefill(params, encoder_tokens, max_length, task_ids)
    rows = jnp.repeat(jnp.arange(batch), num_beams)
    return decoding.beam_loop(step, first[rows], take_rows(cache, rows), take_rows,
                              batch=batch, num_beams=num_beams, max_length=max_length,
                              eos_id=self.config.eos_token_id, pad_id=0,
                              length_penalty=length_penalty)

  def generate(self, params, encoder_tokens, max_length, *, strategy='greedy', rng=None,
               task_ids=None, num_beams=4, length_penalty=1.0, temperature=1.0, top_k=0,
               top_p=1.0):
    """Greedy, sampled ('sample': `temperature`, `top_k`, `top_p`, `rng`) or beam
    ('beam': `num_beams`, `length_penalty`; the best beam) decoding with a KV cache:
    the prefix is written into the cache once, the prompt and inputs go through in
    one prefill call, then one token per step (per beam)."""
    if strategy not in STRATEGIES:
      raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
    if strategy == 'beam':
      return self.beam_search(params, encoder_tokens, max_length, num_beams=num_beams,
                              length_penalty=length_penalty, task_ids=task_ids)[0][:, 0]
    if strategy == 'sample' and rng is None:
      raise ValueError("strategy 'sample' needs a PRNG key (rng)")
    if strategy == 'sample':
      choose = decoding.sampling_choice(rng, temperature, top_k, top_p)
    else:
      choose = lambda i, logits: jnp.argmax(logits, axis=-1)
    step, logits, cache = self._prefill(params, encoder_tokens, max_length, task_ids)
    first = choose(0, logits).astype(jnp.int32)
    eos = self.config.eos_token_id

    def body(carry, i):
      cache, token, done = carry
      logits, cache = step(cache, token)
      nxt = choose(i, logits).astype(jnp.int32)
      done = done | (token == eos)
      return (cache, nxt, done), jnp.where(done, 0, nxt)

    _, rest = jax.lax.scan(body, (cache, first, jnp.zeros(first.shape, bool)),
                           jnp.arange(1, max_length))
    return jnp.concatenate([first[:, None], rest.T], axis=1)
