"""`PromptedModel`: a frozen backbone and a soft-prompt method as one model.

The one place a forward pass is assembled: the method turns its parameters
into soft inputs (a prompt, prefixes) and the backbone network runs with them.
Everything else (the training step, evaluation, decoding, ensembling,
distillation, `jaxpt plan`, the benchmarks) calls these functions, as T5X's
trainer calls its `BaseModel`.

Like T5X's models, a `PromptedModel` is static (hashable: it can close over a
jitted function or be a static argument) and holds no arrays; parameters come
in as a pytree `{'backbone': ..., 'method': ...}`. A backbone family is a
subclass: `EncoderDecoderModel` here (T5), `DecoderOnlyModel` in
`decoder_only.py` (GPT-2, Llama); `prompted_model` picks by config type.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from jaxpt.methods.interface import Method, SoftInputs
from jaxpt.methods.model_tuning import ModelTuning
from jaxpt.models.config import T5Config
from jaxpt.models.t5 import T5, PlacedPrompt, Segments
from jaxpt.prompted import decoding, scoring
from jaxpt.prompted.loss import loss_and_metrics

Array = jax.Array
Batch = Mapping[str, Array]
Params = Mapping[str, Any]
STRATEGIES = ('greedy', 'sample', 'beam')


def is_packed(batch: Batch) -> bool:
  """The batch holds packed rows (`jaxpt.data.packing`): it carries segment ids."""
  return 'encoder_segment_ids' in batch


def loss_weights(batch: Batch) -> Array:
  """`decoder_loss_weights`, or 1 on every non-padding target token."""
  if 'decoder_loss_weights' in batch:
    return batch['decoder_loss_weights']
  return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class PromptedModel(abc.ABC):
  """A backbone architecture (`config`) with a method's soft inputs; pure functions of params.

  Attributes:
    config: the backbone's config (static).
    method: the soft-prompt method; `ModelTuning()` adds nothing (a plain
      backbone, or full model tuning).
    label_smoothing: the loss's label smoothing (T5X's).
    z_loss: the loss's z-loss coefficient (T5X's stabilizer).
  """

  config: T5Config
  method: Method = ModelTuning()
  label_smoothing: float = 0.0
  z_loss: float = 0.0

  def soft_inputs(self, params: Params, batch_size: int,
                  task_ids: Optional[Array] = None) -> SoftInputs:
    """The method's prompt / prefixes for a batch (`params['method']`)."""
    return self.method.soft_inputs(params.get('method', {}), self.config, batch_size, task_ids)

  def packed_soft_inputs(self, params: Params, batch: Batch) -> Tuple[SoftInputs, Segments]:
    """The method's soft inputs for packed rows, and the rows' `Segments`.

    Every task's prompt / prefix is computed once: a prompt becomes a
    `PlacedPrompt` [num_prompts, P, d] picked per token by `encoder_task_ids`
    (the packer put its markers at each segment start); prefixes of all tasks
    sit side by side and each query attends to its own task's block.
    """
    method = self.method
    if method.prefix_position != 'none':
      raise ValueError(f'{method.name} with prefix_position {method.prefix_position!r} (peft-'
                       f'style prefixes) is not exact on packed rows: its prefix positions are '
                       f'relative to the row start; train it unpacked (PACK = False)')
    k = method.num_prompts
    if k > 1 and 'encoder_task_ids' not in batch:
      raise ValueError(f'{k} prompts are kept: packed rows need encoder_task_ids and '
                       f'decoder_task_ids (pack_examples(..., task_ids=...))')
    enc_tasks = batch['encoder_task_ids'] if k > 1 else None
    dec_tasks = batch['decoder_task_ids'] if k > 1 else None
    soft = method.soft_inputs(params.get('method', {}), self.config, 1 if k == 1 else k,
                              jnp.arange(k) if k > 1 else None)
    prompt = soft.prompt
    if prompt is not None:
      vectors = prompt.vectors if isinstance(prompt, PlacedPrompt) else prompt
      prompt = PlacedPrompt(vectors, enc_tasks) if k > 1 else PlacedPrompt(vectors)
    prefixes = None
    if soft.prefixes:
      # [layers, K, P, H, D] -> [layers, 1, K * P, H, D]: task t's block is columns t*P...
      prefixes = {name: tuple(a.reshape(a.shape[0], 1, -1, *a.shape[3:]) for a in kv)
                  for name, kv in soft.prefixes.items()}
    segments = Segments(batch['encoder_segment_ids'], batch['decoder_segment_ids'],
                        enc_tasks, dec_tasks, k)
    return soft._replace(prompt=prompt, prefixes=prefixes), segments

  @abc.abstractmethod
  def logits(self, params: Params, batch: Batch, *, deterministic: bool = True,
             rng: Optional[Array] = None) -> Array:
    """Teacher-forced logits [batch, target_len, vocab] of a batch of T5X features."""

  @abc.abstractmethod
  def logits_and_hidden(self, params: Params, batch: Batch, *, deterministic: bool = True,
                        rng: Optional[Array] = None) -> Tuple[Array, Array, Array]:
    """(logits, hidden [batch, P + length, d], valid [batch, P + length]).

    `hidden` is the representation of the input (the encoder's output); its
    first `method.prompt_length` positions are the prompt's (in packed rows,
    the marker slots at each segment's start).
    """

  @abc.abstractmethod
  def score(self, params: Params, encoder_tokens: Array, label_tokens: Array,
            task_ids: Optional[Array] = None) -> Tuple[Array, Array]:
    """Rank classification: (predictions [batch], log-likelihoods [batch, num_labels])."""

  @abc.abstractmethod
  def score_targets(self, params: Params, encoder_tokens: Array, target_tokens: Array,
                    task_ids: Optional[Array] = None) -> Array:
    """Total log-likelihood [batch] of each target (EOS-terminated, 0-padded)."""

  @abc.abstractmethod
  def generate(self, params: Params, encoder_tokens: Array, max_length: int, *,
               strategy: str = 'greedy', rng: Optional[Array] = None,
               task_ids: Optional[Array] = None, num_beams: int = 4,
               length_penalty: float = 1.0, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0) -> Array:
    """Decoded ids [batch, max_length], 0 after EOS (jit with the sizes static): 'greedy',
    'sample' (`rng`, `temperature`, `top_k`, `top_p`) or 'beam' (`num_beams`,
    `length_penalty`; the best beam, as transformers' `generate(num_beams=...)`)."""

  def loss(self, params: Params, batch: Batch, rng: Optional[Array] = None, *,
           deterministic: Optional[bool] = None) -> Tuple[Array, Dict[str, Array]]:
    """(mean token loss, metrics) of a batch; dropout on when `rng` is given."""
    if deterministic is None:
      deterministic = rng is None
    logits = self.logits(params, batch, deterministic=deterministic, rng=rng)
    return self.loss_of_logits(logits, batch)

  def loss_of_logits(self, logits: Array, batch: Batch) -> Tuple[Array, Dict[str, Array]]:
    """The model's loss (label smoothing, z-loss) of given logits on a batch's targets."""
    return loss_and_metrics(logits, batch['decoder_target_tokens'], loss_weights(batch),
                            label_smoothing=self.label_smoothing, z_loss=self.z_loss)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderModel(PromptedModel):
  """T5 (every variant jaxpt loads) with a soft-prompt method."""

  @property
  def network(self) -> T5:
    """The flax module, built with the method's prefix positions."""
    return T5(self.config, self.method.prefix_position)

  def _rngs(self, deterministic: bool, rng: Optional[Array]) -> Dict[str, Array]:
    return {'dropout': rng} if (rng is not None and not deterministic) else {}

  def _inputs(self, params, batch) -> Tuple[SoftInputs, Optional[Segments]]:
    if is_packed(batch):
      return self.packed_soft_inputs(params, batch)
    enc = batch['encoder_input_tokens']
    return self.soft_inputs(params, enc.shape[0], batch.get('task_ids')), None

  def logits(self, params, batch, *, deterministic=True, rng=None):
    soft, segments = self._inputs(params, batch)
    return self.network.apply({'params': params['backbone']}, batch['encoder_input_tokens'],
                              batch['decoder_input_tokens'], prompt=soft.prompt,
                              prefixes=soft.prefixes, deterministic=deterministic,
                              rngs=self._rngs(deterministic, rng), segments=segments)

  def logits_and_hidden(self, params, batch, *, deterministic=True, rng=None):
    soft, segments = self._inputs(params, batch)
    module, rngs = self.network, self._rngs(deterministic, rng)
    variables = {'params': params['backbone']}
    encoded, valid = module.apply(variables, batch['encoder_input_tokens'], soft.prompt,
                                  soft.prefixes, deterministic, segments,
                                  method=T5.encode, rngs=rngs)
    logits = module.apply(variables, encoded, valid, batch['decoder_input_tokens'],
                          soft.prefixes, deterministic, segments=segments,
                          method=T5.decode, rngs=rngs)
    return logits, encoded, valid

  def score(self, params, encoder_tokens, label_tokens, task_ids=None):
    soft = self.soft_inputs(params, encoder_tokens.shape[0], task_ids)
    return scoring.rank_classify(self.network, params['backbone'], encoder_tokens, label_tokens,
                                 prompt=soft.prompt, prefixes=soft.prefixes)

  def score_targets(self, params, encoder_tokens, target_tokens, task_ids=None):
    soft = self.soft_inputs(params, encoder_tokens.shape[0], task_ids)
    return scoring.score_targets(self.network, params['backbone'], encoder_tokens,
                                 target_tokens, prompt=soft.prompt, prefixes=soft.prefixes)

  def generate(self, params, encoder_tokens, max_length, *, strategy='greedy', rng=None,
               task_ids=None, num_beams=4, length_penalty=1.0, temperature=1.0, top_k=0,
               top_p=1.0):
    if strategy not in STRATEGIES:
      raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
    soft = self.soft_inputs(params, encoder_tokens.shape[0], task_ids)
    module, backbone = self.network, params['backbone']
    if strategy == 'greedy':
      return decoding.greedy_decode(module, backbone, encoder_tokens, max_length,
                                    prompt=soft.prompt, prefixes=soft.prefixes)
    if strategy == 'sample':
      if rng is None:
        raise ValueError("strategy 'sample' needs a PRNG key (rng)")
      return decoding.sample_decode(module, backbone, encoder_tokens, max_length, rng,
                                    temperature=temperature, top_k=top_k, top_p=top_p,
                                    prompt=soft.prompt,
                                    prefixes=soft.prefixes)
    return decoding.beam_search(module, backbone, encoder_tokens, max_length,
                                num_beams=num_beams, length_penalty=length_penalty,
                                prompt=soft.prompt, prefixes=soft.prefixes)[0][:, 0]


def prompted_model(config: Any, method: Optional[Method] = None, *,
                   label_smoothing: float = 0.0, z_loss: float = 0.0) -> PromptedModel:
  """The `PromptedModel` of a backbone config's family with `method` (None: no method)."""
  if isinstance(config, T5Config):
    return EncoderDecoderModel(config, method if method is not None else ModelTuning(),
                               label_smoothing=label_smoothing, z_loss=z_loss)
  from jaxpt.models.decoder_config import DecoderConfig
  if isinstance(config, DecoderConfig):
    from jaxpt.prompted.decoder_only import DecoderOnlyModel
    return DecoderOnlyModel(config, method if method is not None else ModelTuning(),
                            label_smoothing=label_smoothing, z_loss=z_loss)
  raise TypeError(f'no prompted model for a backbone config of type {type(config).__name__}')
