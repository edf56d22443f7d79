"""The committed mini backbone (jaxpt/assets/mini_t5): loads, right config, learned something."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import jaxpt
from jaxpt.assets import mini_t5_path
from jaxpt.data import pretraining
from jaxpt.evaluate import held_out
from jaxpt.models.t5 import init_params

VOCAB_SIZE = 8100  # 8000 pieces + 100 extra ids


@pytest.fixture(scope='module')
def mini():
  return jaxpt.load_model(mini_t5_path())


def test_asset_is_small_package_data():
  root = mini_t5_path()
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
  assert size <= 25 * 2**20, f'{size / 2**20:.1f} MiB'
  for name in ('spiece.model', 'metadata.json', 'README.md', 'jaxpt_model.json'):
    assert os.path.isfile(os.path.join(root, name)), name
  text = open(os.path.join(os.path.dirname(__file__), '..', 'pyproject.toml')).read()
  assert 'assets/mini_t5/**/*' in text


def test_loads_with_the_t5_1_1_mini_config(mini):
  c = mini.config
  assert (c.vocab_size, c.emb_dim, c.num_heads, c.head_dim, c.mlp_dim) == (8192, 128, 4, 32, 512)
  assert (c.num_encoder_layers, c.num_decoder_layers) == (3, 3)
  assert c.mlp_activations == ('gelu', 'linear') and not c.logits_via_embedding
  assert mini.num_params() == json.load(open(os.path.join(mini_t5_path(), 'metadata.json')))[
      'parameters']
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=os.path.join(mini_t5_path(), 'spiece.model'))
  assert sp.get_piece_size() + 100 == VOCAB_SIZE and sp.pad_id() == 0 and sp.eos_id() == 1
  logits = mini.logits(np.array([sp.encode('a fine film .') + [1]], np.int32),
                       np.zeros((1, 2), np.int32))
  assert logits.shape == (1, 2, 8192) and np.isfinite(logits).all()


def test_held_out_span_corruption_loss_beats_the_untrained_model(mini, shared_data):
  from tasks import corpus, features
  texts = corpus.documents('validation', shared_data)[:40]
  docs = pretraining.encode_documents(texts, features.mini_vocab_path())
  batches = list(pretraining.objective_batches(docs, 'span_corruption', VOCAB_SIZE,
                                               {'inputs': 128, 'targets': 32}, 16))
  untrained = jaxpt.Model(mini.config, init_params(mini.config, jax.random.key(0)))
  trained_loss = held_out.mean_loss(mini, batches)
  untrained_loss = held_out.mean_loss(untrained, batches)
  print(f'held-out span corruption: mini {trained_loss:.3f}, untrained {untrained_loss:.3f}')
  assert trained_loss < untrained_loss - 2.0
