"""T5 architecture configuration: one dataclass for every public T5 variant.

Field names follow T5X (`emb_dim`, `head_dim`, `mlp_dim`, ...). Presets cover
T5 1.0, T5 1.1 / LM-adapted / Flan-T5 and mT5 at every public size, plus a
tiny config for tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Sizes and variant switches of an encoder-decoder T5.

  Attributes:
    vocab_size: rows of the token embedding (and logits width).
    emb_dim: model width (HF `d_model`).
    num_heads: attention heads.
    head_dim: per-head key/value width (HF `d_kv`); `num_heads * head_dim`
      need not equal `emb_dim`.
    mlp_dim: feed-forward hidden width (HF `d_ff`).
    num_encoder_layers / num_decoder_layers: stack depths.
    mlp_activations: ('relu',) for T5 1.0, ('gelu', 'linear') for the gated
      GELU of T5 1.1 / mT5 / Flan-T5.
    logits_via_embedding: tied input/output embedding (T5 1.0); the decoder
      output is then scaled by emb_dim**-0.5 before the logits.
    relative_attention_num_buckets / relative_attention_max_distance: T5's
      bucketed relative positions.
    per_layer_relpos_bias: UMT5-style separate position bias in every layer
      (T5 shares one per stack).
    dropout_rate: dropout on embeddings, sublayer outputs and attention.
    layer_norm_epsilon: RMSNorm epsilon.
    dtype: compute dtype of activations ('float32' or 'bfloat16'); parameters
      are always stored in `param_dtype`.
    param_dtype: storage dtype of parameters.
    scan_layers: run each stack as one `nn.scan` (fast compiles at depth 24);
      parameters then carry a leading 'layers' axis.
    remat_policy: 'none', 'full' or 'minimal' (saves matmul outputs only).
      On XLA:CPU it saves memory only with `scan_layers=True`: with unrolled
      layers the compiler computes the rematerialized values in the forward
      pass and keeps them (measured in docs/benchmarks.md, "Remat on CPU").
    decoder_start_token_id / pad_token_id / eos_token_id: T5 conventions.
  """

  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  mlp_activations: Tuple[str, ...] = ('relu',)
  logits_via_embedding: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  per_layer_relpos_bias: bool = False
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  scan_layers: bool = False
  remat_policy: str = 'none'
  decoder_start_token_id: int = 0
  pad_token_id: int = 0
  eos_token_id: int = 1

  def __post_init__(self):
    positive = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                'relative_attention_num_buckets',
                'relative_attention_max_distance')
    for name in positive:
      if int(getattr(self, name)) <= 0:
        raise ValueError(f'T5Config.{name} must be positive, got {getattr(self, name)}')
    for name in ('num_encoder_layers', 'num_decoder_layers'):
      if int(getattr(self, name)) < 0:
        raise ValueError(f'T5Config.{name} must be >= 0, got {getattr(self, name)}')
    # Tuples survive JSON / gin round trips as lists; normalize.
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    for act in self.mlp_activations:
      if act not in _ACTIVATIONS:
        raise ValueError(f'unknown MLP activation {act!r}; expected one of {sorted(_ACTIVATIONS)}')
    if self.remat_policy not in ('none', 'full', 'minimal'):
      raise ValueError(f"remat_policy must be 'none', 'full' or 'minimal', got {self.remat_policy!r}")
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'T5Config.{name} must be float32, bfloat16 or float16, got {getattr(self, name)!r}')

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def gated(self) -> bool:
    return len(self.mlp_activations) > 1

  @property
  def num_kv_heads(self) -> int:
    """Key/value heads (T5 has no grouped-query attention)."""
    return self.num_heads

  @property
  def is_encoder_decoder(self) -> bool:
    return True

  @property
  def prefix_kinds(self) -> Dict[str, int]:
    """Attention kind -> layers holding a prefix (prefix tuning, deep prompts)."""
    return {'encoder': self.num_encoder_layers, 'decoder_self': self.num_decoder_layers,
            'decoder_cross': self.num_decoder_layers}

  def replace(self, **changes: Any) -> 'T5Config':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['mlp_activations'] = list(self.mlp_activations)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> 'T5Config':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown T5Config fields {unknown}')
    return cls(**d)


_ACTIVATIONS = ('relu', 'gelu', 'gelu_new', 'gelu_exact', 'silu', 'linear')

_T5_1_0 = dict(mlp_activations=('relu',), logits_via_embedding=True, vocab_size=32128)
_T5_1_1 = dict(mlp_activations=('gelu', 'linear'), logits_via_embedding=False, vocab_size=32128)
_MT5 = dict(_T5_1_1, vocab_size=250112)

# (emb_dim, num_heads, head_dim, mlp_dim, layers) per public size.
_SIZES_1_0 = {
    'small': (512, 8, 64, 2048, 6),
    'base': (768, 12, 64, 3072, 12),
    'large': (1024, 16, 64, 4096, 24),
    '3b': (1024, 32, 128, 16384, 24),
    '11b': (1024, 128, 128, 65536, 24),
}
_SIZES_1_0['xl'] = _SIZES_1_0['3b']  # the size names; T5 1.0 calls them 3B and 11B
_SIZES_1_0['xxl'] = _SIZES_1_0['11b']
_SIZES_1_1 = {
    'small': (512, 6, 64, 1024, 8),
    'base': (768, 12, 64, 2048, 12),
    'large': (1024, 16, 64, 2816, 24),
    'xl': (2048, 32, 64, 5120, 24),
    'xxl': (4096, 64, 64, 10240, 24),
}
_TINY = (8, 4, 3, 16, 2)  # shapes of T5X's own tiny test model

_FAMILIES = {
    't5_1_0': (_T5_1_0, dict(_SIZES_1_0, tiny=_TINY)),
    't5_1_1': (_T5_1_1, dict(_SIZES_1_1, tiny=_TINY)),
    'lm_adapt': (_T5_1_1, dict(_SIZES_1_1, tiny=_TINY)),
    'flan_t5': (_T5_1_1, dict(_SIZES_1_1, tiny=_TINY)),
    'mt5': (_MT5, dict(_SIZES_1_1, tiny=_TINY)),
}


def preset(family: str, size: str, **overrides: Any) -> T5Config:
  """Returns the config of a public T5 checkpoint, e.g. preset('t5_1_1', 'xxl').

  Families: t5_1_0 (sizes small, base, large, 3b = xl, 11b = xxl), t5_1_1, lm_adapt,
  flan_t5, mt5 (sizes small, base, large, xl, xxl); every family also has
  'tiny'. Keyword overrides replace fields (e.g. dtype='bfloat16').
  """
  if family not in _FAMILIES:
    raise ValueError(f'unknown T5 family {family!r}; expected one of {sorted(_FAMILIES)}')
  base, sizes = _FAMILIES[family]
  if size not in sizes:
    raise ValueError(f'unknown size {size!r} for {family}; expected one of {sorted(sizes)}')
  emb, heads, head_dim, mlp, layers = sizes[size]
  fields = dict(base, emb_dim=emb, num_heads=heads, head_dim=head_dim, mlp_dim=mlp,
                num_encoder_layers=layers, num_decoder_layers=layers)
  fields.update(overrides)
  return T5Config(**fields)


def preset_names() -> Sequence[Tuple[str, str]]:
  """All (family, size) pairs `preset` accepts."""
  return [(f, s) for f, (_, sizes) in _FAMILIES.items() for s in sizes]


def find_preset(config: T5Config) -> Optional[Tuple[str, str]]:
  """The first (family, size) whose shapes equal `config`'s, if any."""
  for family, size in preset_names():
    p = preset(family, size)
    if all(getattr(p, k) == getattr(config, k) for k in _SHAPE_FIELDS):
      return family, size
  return None


_SHAPE_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                 'num_encoder_layers', 'num_decoder_layers', 'mlp_activations',
                 'logits_via_embedding')
