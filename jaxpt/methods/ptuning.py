"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): prompts from a prompt encoder.

Trainable pseudo-token embeddings go through a prompt encoder, the paper's
bidirectional LSTM + MLP head (`encoder='lstm'`) or an MLP alone
(`encoder='mlp'`), with exactly the layer shapes of peft's `PromptEncoder`
(`peft/tuners/p_tuning/model.py`), so weights move between the two:

  embedding  [T, d]                  T = length * num_transformer_submodules
  mlp        Linear(d, h) ReLU Linear(h, h) ReLU Linear(h, d)
  lstm       LSTM(d, h, lstm_layers, bidirectional), then
             Linear(2h, 2h) ReLU Linear(2h, d)

LSTM weights keep torch's layout and semantics (`weight_ih` [4h, in],
`weight_hh` [4h, h], `bias_ih`, `bias_hh`, gates in the order i, f, g, o);
Linear kernels are [in, out] like the rest of jaxpt. The first `length`
outputs are the prompt. `merge` replaces the encoder by them: {'prompt': [P, d]}.

A template places the prompt tokens where the task says, e.g.
'[P3] {premise} ? [P3] {hypothesis}': three prompt tokens, the premise, a kept
anchor '?', three more prompt tokens, the hypothesis. `Template.build` turns
fields into encoder ids in which prompt row k is the marker id -(k + 1); the
encoder puts the soft vectors there (`jaxpt.models.t5.PlacedPrompt`). Without a
template the prompt goes before the input, as in peft.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt.methods.interface import Backbone, SoftInputs
from jaxpt.methods.prefix import linear_init
from jaxpt.models.config import T5Config
from jaxpt.models.t5 import PlacedPrompt, prompt_marker

Array = jax.Array
ENCODERS = ('lstm', 'mlp')
_PART = re.compile(r'\[P(\d+)\]|\{([A-Za-z_]\w*)\}')


# ------------------------------------------------------------------------------ templates


@dataclasses.dataclass(frozen=True)
class Template:
  """A parsed template: parts ('prompt', n) | ('slot', name) | ('text', anchor text)."""

  parts: Tuple[Tuple[str, Any], ...]

  @classmethod
  def parse(cls, spec: str) -> 'Template':
    """Parses '[P3] {premise} ? [P3] {hypothesis}': [Pn] prompt tokens, {name} inputs,
    anything else kept text (anchors)."""
    parts, pos = [], 0
    for m in _PART.finditer(spec):
      text = spec[pos:m.start()].strip()
      if text:
        parts.append(('text', text))
      if m.group(1) is not None:
        n = int(m.group(1))
        if n <= 0:
          raise ValueError(f'template {spec!r}: [P{n}] must hold a positive number of tokens')
        parts.append(('prompt', n))
      else:
        parts.append(('slot', m.group(2)))
      pos = m.end()
    if spec[pos:].strip():
      parts.append(('text', spec[pos:].strip()))
    template = cls(tuple(parts))
    if not template.slots:
      raise ValueError(f'template {spec!r} has no input slot: write the input as {{name}}, '
                       f"e.g. '[P3] {{premise}} ? [P3] {{hypothesis}}'")
    if len(set(template.slots)) != len(template.slots):
      raise ValueError(f'template {spec!r} uses an input slot twice: {template.slots}')
    if not template.num_prompt_tokens:
      raise ValueError(f'template {spec!r} has no prompt tokens: place them with [Pn]')
    return template

  @property
  def slots(self) -> Tuple[str, ...]:
    return tuple(v for kind, v in self.parts if kind == 'slot')

  @property
  def num_prompt_tokens(self) -> int:
    return sum(v for kind, v in self.parts if kind == 'prompt')

  @property
  def prefix_only(self) -> bool:
    """All prompt tokens come first (what peft, which only prepends, can run)."""
    return self.parts[0][0] == 'prompt' and sum(k == 'prompt' for k, _ in self.parts) == 1

  def build(self, fields: Mapping[str, Union[str, Sequence[int]]],
            encode: Optional[Callable[[str], Sequence[int]]] = None,
            max_length: Optional[int] = None, eos_id: int = 1) -> np.ndarray:
    """Encoder ids for one example: prompt markers, fields, anchors, then EOS.

    Args:
      fields: slot name -> token ids (no EOS) or text (then `encode` is needed).
      encode: text -> ids without EOS, for anchors and text fields.
      max_length: the encoder length; the longest field is cut, one token at a
        time, until everything (prompt tokens and anchors included) fits.
      eos_id: appended last.

    Returns:
      int32 [length] ids; prompt row k appears as -(k + 1).
    """
    missing = [s for s in self.slots if s not in fields]
    if missing:
      raise ValueError(f'template slots {missing} have no field; got fields {sorted(fields)}')

    def ids_of(value, what):
      if isinstance(value, str):
        if encode is None:
          raise ValueError(f'{what} is text: pass `encode` (text -> token ids)')
        return [int(t) for t in encode(value)]
      return [int(t) for t in np.asarray(value).reshape(-1)]

    anchors = [ids_of(v, f'anchor {v!r}') for kind, v in self.parts if kind == 'text']
    values = {s: ids_of(fields[s], f'field {s!r}') for s in self.slots}
    fixed = self.num_prompt_tokens + sum(map(len, anchors)) + 1
    if max_length is not None:
      budget = max_length - fixed
      if budget < len(self.slots):
        raise ValueError(f'the template takes {fixed} of the {max_length} encoder positions '
                         f'(prompt tokens, anchors, EOS), leaving no room for its inputs '
                         f'{list(self.slots)}')
      lengths = {s: len(v) for s, v in values.items()}
      while sum(lengths.values()) > budget:
        longest = max(lengths, key=lengths.get)
        lengths[longest] -= 1
      values = {s: v[:lengths[s]] for s, v in values.items()}
    out, row, anchor = [], 0, iter(anchors)
    for kind, v in self.parts:
      if kind == 'prompt':
        out += [prompt_marker(row + i) for i in range(v)]
        row += v
      elif kind == 'slot':
        out += values[v]
      else:
        out += next(anchor)
    return np.asarray(out + [eos_id], np.int32)

  def build_batch(self, examples: Sequence[Mapping[str, Any]],
                  encode: Optional[Callable[[str], Sequence[int]]] = None,
                  max_length: Optional[int] = None, eos_id: int = 1) -> np.ndarray:
    """[batch, max_length] (or the longest row) of `build` rows, padded with 0."""
    rows = [self.build(e, encode, max_length, eos_id) for e in examples]
    width = max_length or max(map(len, rows))
    out = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
      out[i, :len(row)] = row
    return out


# ------------------------------------------------------------------------ prompt encoder


def _lstm_init(rng: Array, in_dim: int, hidden: int) -> Dict[str, Array]:
  """torch.nn.LSTM's init: every tensor U(-1/sqrt(h), 1/sqrt(h))."""
  bound = 1.0 / math.sqrt(hidden)
  shapes = {'weight_ih': (4 * hidden, in_dim), 'weight_hh': (4 * hidden, hidden),
            'bias_ih': (4 * hidden,), 'bias_hh': (4 * hidden,)}
  keys = jax.random.split(rng, len(shapes))
  return {name: jax.random.uniform(k, shape, jnp.float32, -bound, bound)
          for k, (name, shape) in zip(keys, shapes.items())}


def lstm_direction(params: Mapping[str, Array], xs: Array) -> Array:
  """One LSTM direction over xs [T, in] -> [T, h], torch semantics (gates i, f, g, o)."""
  hidden = params['weight_hh'].shape[1]
  inputs = xs @ params['weight_ih'].T + params['bias_ih'] + params['bias_hh']

  def cell(carry, x_gates):
    h, c = carry
    i, f, g, o = jnp.split(x_gates + h @ params['weight_hh'].T, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((hidden,), xs.dtype)
  _, hs = jax.lax.scan(cell, (zeros, zeros), inputs)
  return hs


def bidirectional_lstm(layers: Mapping[str, Any], xs: Array) -> Array:
  """Stacked bidirectional LSTM (torch's, no dropout): [T, in] -> [T, 2h]."""
  for i in range(len(layers)):
    layer = layers[f'layers_{i}']
    forward = lstm_direction(layer['forward'], xs)
    backward = lstm_direction(layer['backward'], xs[::-1])[::-1]
    xs = jnp.concatenate([forward, backward], axis=-1)
  return xs


def _dense(p: Mapping[str, Array], x: Array) -> Array:
  return x @ p['kernel'] + p['bias']


def encode_prompt(params: Mapping[str, Any]) -> Array:
  """The prompt encoder's output [T, d] for all T pseudo tokens (peft's forward)."""
  x = params['embedding']
  mlp = params['mlp']
  if 'lstm' in params:
    x = bidirectional_lstm(params['lstm'], x)
  for i in range(len(mlp) - 1):
    x = jax.nn.relu(_dense(mlp[f'layers_{i}'], x))
  return _dense(mlp[f'layers_{len(mlp) - 1}'], x)


# -------------------------------------------------------------------------------- method


@dataclasses.dataclass(frozen=True)
class PTuning:
  """`length` pseudo tokens through a prompt encoder, placed by an optional template.

  Attributes:
    length: prompt tokens (peft's num_virtual_tokens); a template's [Pn] must sum to it.
    encoder: 'lstm' (the paper's bidirectional LSTM + MLP head) or 'mlp'.
    hidden_dim: the encoder width h (peft's encoder_hidden_size); None: d_model.
    lstm_layers: stacked LSTM layers (peft's encoder_num_layers, 2).
    template: '' puts the prompt before the input; otherwise a `Template` spec
      such as '[P3] {premise} ? [P3] {hypothesis}' (inputs from `Template.build`).
    num_transformer_submodules: pseudo tokens = length * this, as in peft (its
      T5 default is 2, the extra tokens feed only the LSTM); 1 keeps no dead rows.
  """

  length: int = 20
  encoder: str = 'lstm'
  hidden_dim: Optional[int] = None
  lstm_layers: int = 2
  template: str = ''
  num_transformer_submodules: int = 1
  name: str = 'p_tuning'

  def __post_init__(self):
    if self.length <= 0:
      raise ValueError(f'prompt length must be positive, got {self.length}')
    if self.encoder not in ENCODERS:
      raise ValueError(f'unknown prompt encoder {self.encoder!r}; expected one of {ENCODERS}')
    if self.hidden_dim is not None and self.hidden_dim <= 0:
      raise ValueError(f'hidden_dim must be positive, got {self.hidden_dim}')
    if self.lstm_layers <= 0:
      raise ValueError(f'lstm_layers must be positive, got {self.lstm_layers}')
    if self.num_transformer_submodules <= 0:
      raise ValueError(f'num_transformer_submodules must be positive, got '
                       f'{self.num_transformer_submodules}')
    if self.template:
      count = self.parsed_template.num_prompt_tokens
      if count != self.length:
        raise ValueError(f'template {self.template!r} places {count} prompt tokens but the '
                         f'method has length={self.length}; make them equal')

  @property
  def parsed_template(self) -> Optional[Template]:
    return Template.parse(self.template) if self.template else None

  prefix_position = 'none'
  num_prompts = 1
  has_prompt_vectors = False

  @property
  def places_prompt(self) -> bool:
    """True when the prompt goes where the input's markers are (a template)."""
    return bool(self.template)

  @property
  def prompt_length(self) -> int:
    # A template's prompt tokens are inside the input (Template.build counts them).
    return 0 if self.places_prompt else self.length

  def init(self, rng: Array, backbone: Backbone) -> Dict[str, Any]:
    d = backbone.config.emb_dim
    h = self.hidden_dim or d
    k_emb, k_lstm, k_mlp = jax.random.split(rng, 3)
    tokens = self.length * self.num_transformer_submodules
    params = {'embedding': jax.random.normal(k_emb, (tokens, d), jnp.float32)}  # torch's N(0, 1)
    if self.encoder == 'mlp':
      widths = [(d, h), (h, h), (h, d)]
    else:
      lstm, in_dim = {}, d
      for i, k in enumerate(jax.random.split(k_lstm, self.lstm_layers)):
        kf, kb = jax.random.split(k)
        lstm[f'layers_{i}'] = {'forward': _lstm_init(kf, in_dim, h),
                               'backward': _lstm_init(kb, in_dim, h)}
        in_dim = 2 * h
      params['lstm'] = lstm
      widths = [(2 * h, 2 * h), (2 * h, d)]
    keys = jax.random.split(k_mlp, len(widths))
    params['mlp'] = {f'layers_{i}': linear_init(k, a, b)
                     for i, (k, (a, b)) in enumerate(zip(keys, widths))}
    return params

  def prompt(self, params: Mapping[str, Any]) -> Array:
    """The [length, d] prompt: the merged one, or the encoder's first `length` outputs."""
    if 'prompt' in params:
      return params['prompt']
    return encode_prompt(params)[:self.length]

  def soft_inputs(self, params: Dict[str, Any], config: T5Config, batch_size: int,
                  task_ids: Optional[Array] = None) -> SoftInputs:
    prompt = self.prompt(params)
    return SoftInputs(prompt=PlacedPrompt(prompt) if self.places_prompt else prompt)

  def merge(self, params: Dict[str, Any]) -> Dict[str, Any]:
    return {'prompt': self.prompt(params)}

  def task_prompts(self, params: Dict[str, Any]) -> Array:
    raise ValueError('p_tuning prompts come from an encoder; merge them into prompt_tuning '
                     'to transfer or compare them')
