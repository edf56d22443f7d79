"""Random tiny Hugging Face T5 models, for parity tests against transformers.

Each builder seeds torch, builds the model (dropout 0, ids passed explicitly:
transformers 5.24's T5Config has no defaults for them) and returns it in eval
mode; the tests `save_pretrained` it. Random models greedily predict one token
(often the pad id 0) forever whatever the input, so `_diversify` damps row 0 of
the output embedding and projects the decoder's dominant hidden directions out
of it: greedy decoding then depends on the input (transformers 5 ties `lm_head`
to `shared`, so for tied models both change together).
"""

from __future__ import annotations

import torch
import transformers

IDS = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
VOCAB = 96
# The shapes every transformers-side tiny model starts from (the builders below and the
# parity tests' own models replace a few).
TINY = dict(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, **IDS)


def t5_config(**overrides) -> transformers.T5Config:
  """`transformers.T5Config` of the `TINY` shapes with `overrides` replaced."""
  return transformers.T5Config(**{**TINY, **overrides})


def _diversify(model: torch.nn.Module, tied: bool, directions: int = 3) -> torch.nn.Module:
  """Makes greedy decoding of a random model input-dependent (see the module doc)."""
  rng = torch.Generator().manual_seed(1)
  enc = torch.randint(2, VOCAB, (8, 12), generator=rng)
  dec = torch.randint(2, VOCAB, (8, 6), generator=rng)
  with torch.no_grad():
    weight = model.shared.weight if tied else model.lm_head.weight
    weight[0] *= 0.01
    hidden = model(input_ids=enc, decoder_input_ids=dec,
                   output_hidden_states=True).decoder_hidden_states[-1]
    top = torch.linalg.svd(hidden.reshape(-1, hidden.shape[-1]), full_matrices=False).Vh
    top = top[:directions]
    weight -= (weight @ top.T) @ top
  return model


def t5_1_0(seed: int = 0) -> transformers.T5ForConditionalGeneration:
  """T5 1.0: ReLU MLP, tied and scaled logits."""
  torch.manual_seed(seed)
  cfg = t5_config(feed_forward_proj='relu')
  return _diversify(transformers.T5ForConditionalGeneration(cfg).eval(), tied=True)


def t5_1_1_odd(seed: int = 0) -> transformers.T5ForConditionalGeneration:
  """T5 1.1: gated GELU, unscaled logits, heads x d_kv != d_model, 2 + 3 layers."""
  torch.manual_seed(seed)
  cfg = t5_config(d_model=20, d_kv=7, d_ff=36, num_decoder_layers=3, num_heads=3,
                  feed_forward_proj='gated-gelu', tie_word_embeddings=False)
  return _diversify(transformers.T5ForConditionalGeneration(cfg).eval(), tied=False)


def mt5(seed: int = 0) -> transformers.MT5ForConditionalGeneration:
  """mT5: gated GELU, never scaled."""
  torch.manual_seed(seed)
  cfg = transformers.MT5Config(**{**TINY, 'd_ff': 24, 'feed_forward_proj': 'gated-gelu',
                                  'tie_word_embeddings': False})
  return _diversify(transformers.MT5ForConditionalGeneration(cfg).eval(), tied=False)


def umt5(seed: int = 0) -> transformers.UMT5ForConditionalGeneration:
  """UMT5: a relative position bias in every layer's self-attention."""
  torch.manual_seed(seed)
  cfg = transformers.UMT5Config(**{**TINY, 'd_ff': 24, 'feed_forward_proj': 'gated-gelu',
                                   'tie_word_embeddings': False})
  return _diversify(transformers.UMT5ForConditionalGeneration(cfg).eval(), tied=False)


FIXTURES = {'t5_1_0': t5_1_0, 't5_1_1_odd': t5_1_1_odd, 'mt5': mt5, 'umt5': umt5}


# ------------------------------------------------------------ decoder-only (GPT-2, Llama)

DECODER_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=1)


def gpt2(seed: int = 0) -> transformers.GPT2LMHeadModel:
  """GPT-2: learned positions, LayerNorm with bias, GELU-tanh MLP, tied logits."""
  torch.manual_seed(seed)
  cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2,
                                n_head=4, n_inner=40, resid_pdrop=0.0, embd_pdrop=0.0,
                                attn_pdrop=0.0, **DECODER_IDS)
  return transformers.GPT2LMHeadModel(cfg).eval()


def llama(seed: int = 0, **overrides) -> transformers.LlamaForCausalLM:
  """Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention (4 heads, 2 kv heads), untied."""
  torch.manual_seed(seed)
  fields = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                tie_word_embeddings=False, **DECODER_IDS)
  cfg = transformers.LlamaConfig(**{**fields, **overrides})
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # random RMSNorm scales are all 1: make them matter
    for name, p in model.named_parameters():
      if name.endswith('layernorm.weight') or name.endswith('norm.weight'):
        p.uniform_(0.5, 1.5)
  return model


def word_tokenizer(words, directory, specials=('<pad>', '<s>', '</s>', '<unk>'),
                   end='<|endoftext|>', size: int = VOCAB) -> str:
  """Writes a word-level `tokenizer.json` of `size` ids into `directory`: `specials` first
  (id 0 the padding, Llama's <s> 1 and </s> 2), then `words`, filler, and `end` last (GPT-2's
  <|endoftext|>, id size - 1); returns its path."""
  import tokenizers
  names = list(specials) + sorted(set(words))
  names += [f'<filler_{i}>' for i in range(size - 1 - len(names))] + [end]
  if len(names) != size:
    raise ValueError(f'{len(set(words))} words do not fit a vocabulary of {size}')
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate(names)}, unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.decoder = tokenizers.decoders.WordPiece(prefix='##')  # joins words with spaces
  tok.add_special_tokens([*specials, end])
  path = f'{directory}/tokenizer.json'
  tok.save(path)
  return path
