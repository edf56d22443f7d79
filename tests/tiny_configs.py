"""The tiny T5 configurations of the tests, in one place; each variant names what it changes.

`CONFIG` is jaxpt's 'tiny' preset of T5 1.1 (T5X's own tiny test shapes: d_model 8, 4 heads
of 3, MLP 16, 2 + 2 layers, gated GELU) with a 64-token vocabulary: the frozen backbone most
tests tune prompts on. `conftest.py` serves its seed-0 random parameters as the `backbone`
fixture. The variants replace a few fields, for the tests named beside them. The
transformers-side tiny models of the parity tests are in `hf_fixtures.py`.
"""

from __future__ import annotations

from typing import Any

import jaxpt

VOCAB = 64


def tiny_config(family: str = 't5_1_1', **overrides: Any) -> jaxpt.T5Config:
  """`jaxpt.preset(family, 'tiny', vocab_size=VOCAB)` with `overrides` replaced."""
  return jaxpt.preset(family, 'tiny', **{'vocab_size': VOCAB, **overrides})


CONFIG = tiny_config()

# The training loop with dropout on (test_training).
DROPOUT_CONFIG = tiny_config(dropout_rate=0.1)

# Wide enough (d_model 64, 4 heads of 16, MLP 128) to learn the synthetic tasks in a few
# hundred steps (synthetic_learning, test_multitask, test_transfer).
LEARN_CONFIG = tiny_config(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128)

# Encoder and decoder stacks of different depth (2 + 3 layers), vocabulary 50 (test_models).
DEEP_DECODER_CONFIG = tiny_config(vocab_size=50, num_decoder_layers=3)

# The same depths with vocabulary 40 (test_native_checkpoints).
NATIVE_CONFIG = tiny_config(vocab_size=40, num_decoder_layers=3)

# UMT5-style position bias in every layer, vocabulary 40 (test_models).
PER_LAYER_BIAS_CONFIG = tiny_config(vocab_size=40, per_layer_relpos_bias=True)

# Heads, MLP, joined kv and vocabulary all divisible by 8 (test_partitioning's meshes).
SHARDABLE_CONFIG = tiny_config(num_heads=8, head_dim=4, mlp_dim=32, emb_dim=16)

# A 4096-row embedding dominates the frozen bytes (test_methods' memory analysis).
BIG_VOCAB_CONFIG = tiny_config(vocab_size=4096, emb_dim=64, num_heads=4, head_dim=16,
                               mlp_dim=256)

# models/t5_1_1/tiny.gin: the preset itself, with T5's full 32128-token vocabulary.
GIN_TINY_CONFIG = jaxpt.preset('t5_1_1', 'tiny')
