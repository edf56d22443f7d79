"""Random tiny Hugging Face T5 models saved with `save_pretrained`, for parity tests."""

from __future__ import annotations

import torch
import transformers

IDS = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)


def _damp_padding(model, tied: bool):
  """Random models predict the pad id forever; make other tokens win so decoding is nontrivial."""
  with torch.no_grad():
    if tied:
      model.shared.weight[0] *= 0.01
    else:
      model.lm_head.weight[0] *= 0.01
  return model


def t5_1_0(seed: int = 0):
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=96, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                              num_heads=4, feed_forward_proj='relu', **IDS)
  return _damp_padding(transformers.T5ForConditionalGeneration(cfg).eval(), tied=True)


def t5_1_1_odd(seed: int = 0):
  """heads x d_kv != d_model, 2 encoder and 3 decoder layers, untied, gated GELU."""
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=96, d_model=20, d_kv=7, d_ff=36, num_layers=2,
                              num_decoder_layers=3, num_heads=3, feed_forward_proj='gated-gelu',
                              tie_word_embeddings=False, **IDS)
  return _damp_padding(transformers.T5ForConditionalGeneration(cfg).eval(), tied=False)


def mt5(seed: int = 0):
  torch.manual_seed(seed)
  cfg = transformers.MT5Config(vocab_size=96, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                               num_heads=4, feed_forward_proj='gated-gelu',
                               tie_word_embeddings=False, **IDS)
  return _damp_padding(transformers.MT5ForConditionalGeneration(cfg).eval(), tied=False)


def umt5(seed: int = 0):
  torch.manual_seed(seed)
  cfg = transformers.UMT5Config(vocab_size=96, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                                num_heads=4, feed_forward_proj='gated-gelu',
                                tie_word_embeddings=False, **IDS)
  return _damp_padding(transformers.UMT5ForConditionalGeneration(cfg).eval(), tied=False)


FIXTURES = {'t5_1_0': t5_1_0, 't5_1_1_odd': t5_1_1_odd, 'mt5': mt5, 'umt5': umt5}
