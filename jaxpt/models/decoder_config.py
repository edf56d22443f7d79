"""Decoder-only (causal LM) configuration: GPT-2 and the Llama architecture.

One dataclass for both families; `family` picks the block:

* 'gpt2': learned absolute positions, pre-LayerNorm with bias, GELU (tanh) MLP,
  biases on every dense layer, tied embeddings.
* 'llama': RoPE, RMSNorm, SwiGLU MLP, grouped-query attention (`num_kv_heads`),
  no biases (`qkv_bias=True` gives Qwen2's q/k/v biases), tied or untied logits.

Field names follow `T5Config` where they mean the same (`emb_dim`, `head_dim`,
`mlp_dim`, `dtype`, `scan_layers`, ...), so the shared layers in
`jaxpt.models.layers` take either config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax.numpy as jnp

FAMILIES = ('gpt2', 'llama')


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Sizes and switches of a decoder-only transformer.

  Attributes:
    family: 'gpt2' or 'llama' (see the module doc).
    vocab_size: rows of the token embedding (and logits width).
    emb_dim: model width (HF `n_embd` / `hidden_size`).
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention); divides num_heads.
    head_dim: per-head width.
    mlp_dim: feed-forward hidden width.
    num_layers: decoder blocks.
    max_positions: rows of GPT-2's position table (informational for llama).
    rope_theta: RoPE base (llama).
    tie_embeddings: logits through the token embedding (no separate lm_head).
    qkv_bias: biases on the query/key/value projections (always on for gpt2;
      Qwen2's q/k/v biases).
    out_bias: a bias on the attention output projection too (always on for gpt2;
      Llama's `attention_bias=true` sets both).
    layer_norm_epsilon: LayerNorm / RMSNorm epsilon.
    dropout_rate, dtype, param_dtype, scan_layers, remat_policy: as in `T5Config`.
    pad_token_id / bos_token_id / eos_token_id: token conventions; id 0 is
      padding in jaxpt batches whatever `pad_token_id` says (T5X's rule).
  """

  family: str = 'gpt2'
  vocab_size: int = 50257
  emb_dim: int = 768
  num_heads: int = 12
  num_kv_heads: int = 12
  head_dim: int = 64
  mlp_dim: int = 3072
  num_layers: int = 12
  max_positions: int = 1024
  rope_theta: float = 10000.0
  tie_embeddings: bool = True
  qkv_bias: bool = True
  out_bias: bool = False
  layer_norm_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  scan_layers: bool = False
  remat_policy: str = 'none'
  pad_token_id: int = 0
  bos_token_id: int = 1
  eos_token_id: int = 1

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f'DecoderConfig.family must be one of {FAMILIES}, got {self.family!r}')
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim',
                 'max_positions'):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f'DecoderConfig.{name} must be positive, got {getattr(self, name)}')
    if self.num_layers < 0:
      raise ValueError(f'DecoderConfig.num_layers must be >= 0, got {self.num_layers}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_kv_heads ({self.num_kv_heads}) must divide num_heads '
                       f'({self.num_heads})')
    if self.family == 'gpt2' and self.num_kv_heads != self.num_heads:
      raise ValueError('gpt2 has no grouped-query attention: num_kv_heads must equal num_heads')
    if self.family == 'llama' and self.head_dim % 2:
      raise ValueError(f'RoPE needs an even head_dim, got {self.head_dim}')
    if self.remat_policy not in ('none', 'full', 'minimal'):
      raise ValueError(f"remat_policy must be 'none', 'full' or 'minimal', got "
                       f'{self.remat_policy!r}')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'DecoderConfig.{name} must be float32, bfloat16 or float16, got '
                         f'{getattr(self, name)!r}')

  # What the shared layers (jaxpt.models.layers) and the methods read.
  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def mlp_activations(self) -> Tuple[str, ...]:
    return ('gelu_new',) if self.family == 'gpt2' else ('silu', 'linear')

  @property
  def gated(self) -> bool:
    return self.family == 'llama'

  @property
  def dense_bias(self) -> bool:
    """Biases on the attention output and MLP layers (GPT-2's Conv1D layers)."""
    return self.family == 'gpt2'

  @property
  def attention_bias(self) -> bool:
    return self.family == 'gpt2' or self.qkv_bias

  @property
  def attention_out_bias(self) -> bool:
    return self.family == 'gpt2' or self.out_bias

  @property
  def is_encoder_decoder(self) -> bool:
    return False

  @property
  def prefix_kinds(self) -> Dict[str, int]:
    """Attention kind -> layers holding a prefix (prefix tuning, deep prompts)."""
    return {'decoder_self': self.num_layers}

  def replace(self, **changes: Any) -> 'DecoderConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> 'DecoderConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown DecoderConfig fields {unknown}')
    return cls(**d)


# (emb_dim, num_heads, num_kv_heads, head_dim, mlp_dim, num_layers) per public size.
_GPT2 = dict(family='gpt2', vocab_size=50257, max_positions=1024, tie_embeddings=True,
             qkv_bias=True, layer_norm_epsilon=1e-5, bos_token_id=50256, eos_token_id=50256)
_GPT2_SIZES = {
    'small': (768, 12, 12, 64, 3072, 12),
    'medium': (1024, 16, 16, 64, 4096, 24),
    'large': (1280, 20, 20, 64, 5120, 36),
    'xl': (1600, 25, 25, 64, 6400, 48),
    'tiny': (16, 4, 4, 4, 64, 2),
}
_LLAMA2 = dict(family='llama', vocab_size=32000, max_positions=4096, tie_embeddings=False,
               qkv_bias=False, layer_norm_epsilon=1e-5, rope_theta=10000.0, bos_token_id=1,
               eos_token_id=2)
_LLAMA3 = dict(_LLAMA2, vocab_size=128256, max_positions=8192, rope_theta=500000.0,
               bos_token_id=128000, eos_token_id=128001)
_LLAMA_SIZES = {
    # TinyLlama-1.1B (Llama 2 vocabulary, grouped-query attention).
    'tinyllama': (dict(_LLAMA2, max_positions=2048), (2048, 32, 4, 64, 5632, 22)),
    'llama2_7b': (_LLAMA2, (4096, 32, 32, 128, 11008, 32)),
    'llama3_8b': (_LLAMA3, (4096, 32, 8, 128, 14336, 32)),
    'llama3_70b': (_LLAMA3, (8192, 64, 8, 128, 28672, 80)),
    'llama3_2_1b': (dict(_LLAMA3, tie_embeddings=True), (2048, 32, 8, 64, 8192, 16)),
    'tiny': (dict(_LLAMA2, vocab_size=96), (16, 4, 2, 4, 32, 2)),
}


def decoder_preset(family: str, size: str, **overrides: Any) -> DecoderConfig:
  """The config of a public decoder-only model, e.g. decoder_preset('llama', 'llama3_8b').

  Families and sizes: gpt2 (small, medium, large, xl, tiny); llama (tinyllama,
  llama2_7b, llama3_8b, llama3_70b, llama3_2_1b, tiny). Shapes only: Llama 3's
  `rope_scaling` (long context) is not modelled. Keyword overrides replace fields.
  """
  if family == 'gpt2':
    sizes = {k: (_GPT2, v) for k, v in _GPT2_SIZES.items()}
  elif family == 'llama':
    sizes = _LLAMA_SIZES
  else:
    raise ValueError(f'unknown decoder family {family!r}; expected one of {FAMILIES}')
  if size not in sizes:
    raise ValueError(f'unknown size {size!r} for {family}; expected one of {sorted(sizes)}')
  base, (emb, heads, kv_heads, head_dim, mlp, layers) = sizes[size]
  fields = dict(base, emb_dim=emb, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                mlp_dim=mlp, num_layers=layers)
  if size == 'tiny' and family == 'gpt2':
    # GPT-2's <|endoftext|> is its last id (50256): the tiny vocabulary's last id here.
    fields.update(vocab_size=96, max_positions=64, bos_token_id=95, eos_token_id=95)
  fields.update(overrides)
  return DecoderConfig(**fields)


def decoder_preset_names() -> Sequence[Tuple[str, str]]:
  """All (family, size) pairs `decoder_preset` accepts."""
  return [('gpt2', s) for s in _GPT2_SIZES] + [('llama', s) for s in _LLAMA_SIZES]


def find_decoder_preset(config: DecoderConfig) -> Optional[Tuple[str, str]]:
  """The first (family, size) whose shapes equal `config`'s, if any."""
  shape = ('family', 'vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim',
           'mlp_dim', 'num_layers', 'tie_embeddings')
  for family, size in decoder_preset_names():
    p = decoder_preset(family, size)
    if all(getattr(p, k) == getattr(config, k) for k in shape):
      return family, size
  return None
