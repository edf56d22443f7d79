"""The committed mini GPT-2 (jaxpt/assets/mini_gpt2): loads, documented config, the mini
T5's vocabulary, and a held-out causal-LM loss well below its untrained init's."""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
import pytest

import jaxpt
from jaxpt.assets import mini_gpt2_path, mini_t5_path
from jaxpt.data import pretraining
from jaxpt.evaluate import held_out
from jaxpt.models.backbones import init_params
from jaxpt.models.decoder_config import DecoderConfig


@pytest.fixture(scope='module')
def mini():
  return jaxpt.load_model(mini_gpt2_path())


def _sha256(path):
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_asset_is_small_package_data():
  root = mini_gpt2_path()
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
  assert size <= 10 * 2**20, f'{size / 2**20:.1f} MiB'
  for name in ('config.json', 'model.safetensors', 'spiece.model', 'metadata.json', 'README.md'):
    assert os.path.isfile(os.path.join(root, name)), name
  text = open(os.path.join(os.path.dirname(__file__), '..', 'pyproject.toml')).read()
  assert 'assets/mini_gpt2/*' in text


def test_loads_with_the_documented_gpt2_config(mini):
  c = mini.config
  assert isinstance(c, DecoderConfig) and c.family == 'gpt2'
  assert (c.vocab_size, c.emb_dim, c.num_heads, c.head_dim, c.mlp_dim, c.num_layers,
          c.max_positions) == (8000, 128, 4, 32, 512, 4, 512)
  assert c.tie_embeddings and (c.pad_token_id, c.eos_token_id) == (0, 1)
  metadata = json.load(open(os.path.join(mini_gpt2_path(), 'metadata.json')))
  assert DecoderConfig.from_dict(metadata['config']) == c
  assert mini.num_params() == metadata['parameters']


def test_vocabulary_is_the_mini_t5s(mini):
  ours, t5s = (os.path.join(p, 'spiece.model') for p in (mini_gpt2_path(), mini_t5_path()))
  assert _sha256(ours) == _sha256(t5s)
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=ours)
  assert sp.get_piece_size() == mini.config.vocab_size
  assert (sp.pad_id(), sp.eos_id()) == (0, 1)


def test_greedy_continuation_is_valid_tokens(mini):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=os.path.join(mini_gpt2_path(), 'spiece.model'))
  out = mini.generate(np.array([sp.encode('the film is')], np.int32), max_length=8)
  assert out.shape == (1, 8) and ((out >= 0) & (out < mini.config.vocab_size)).all()
  assert (out[0] != 0).any()


def test_held_out_loss_beats_the_untrained_init(mini, shared_data):
  from tasks import corpus
  texts = corpus.documents('validation', shared_data)[:60]
  docs = pretraining.encode_documents(texts, os.path.join(mini_gpt2_path(), 'spiece.model'))
  rows = pretraining.causal_lm_rows(docs, 128)
  batches = [pretraining.causal_lm_batch(rows[i:i + 16]) for i in range(0, len(rows), 16)]
  untrained = jaxpt.Model(mini.config, init_params(mini.config, jax.random.key(0)))
  trained_loss = held_out.mean_loss(mini, batches)
  untrained_loss = held_out.mean_loss(untrained, batches)
  print(f'held-out causal LM: mini {trained_loss:.3f}, untrained {untrained_loss:.3f}')
  assert trained_loss < untrained_loss - 2.0


def test_causal_lm_rows_and_batch_layout():
  rows = pretraining.causal_lm_rows([[5, 6, 7], [8, 9]], 4)
  np.testing.assert_array_equal(rows, [[5, 6, 7, 1], [8, 9, 1, 0]])
  batch = pretraining.causal_lm_batch(rows)
  np.testing.assert_array_equal(batch['decoder_target_tokens'], rows)
  np.testing.assert_array_equal(batch['decoder_input_tokens'], [[0, 5, 6, 7], [0, 8, 9, 1]])
  np.testing.assert_array_equal(batch['decoder_loss_weights'], [[1, 1, 1, 1], [1, 1, 1, 0]])
