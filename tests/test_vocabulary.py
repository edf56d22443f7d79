"""The TF-free SentencePiece vocabulary against transformers' T5 tokenizer."""

from __future__ import annotations

import shutil

import pytest

from jaxpt.vocabulary import Vocabulary

EXAMPLE = 'translate English to German: The house is wonderful.'


def test_known_example_ids(vocab_path):
  vocab = Vocabulary(vocab_path)
  assert vocab.encode(EXAMPLE) == [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5]
  assert vocab.vocab_size == 32100
  assert vocab.sentinel(0) == 32099
  assert vocab.decode(vocab.encode(EXAMPLE) + [1, 55]) == EXAMPLE


def test_matches_transformers_tokenizer(vocab_path, tmp_path):
  transformers = pytest.importorskip('transformers')
  shutil.copy(vocab_path, tmp_path / 'spiece.model')  # the name from_pretrained looks for
  hf = transformers.T5Tokenizer.from_pretrained(str(tmp_path))
  vocab = Vocabulary(vocab_path)
  texts = [EXAMPLE, 'cola sentence: The course is jumping well.',
           'rte hypothesis: A man is sleeping. premise: Nobody sleeps, ever!  ']
  for text in texts:
    assert hf(text).input_ids == vocab.encode(text) + [vocab.eos_id]
  assert hf.convert_tokens_to_ids('<extra_id_0>') == vocab.sentinel(0)


def test_bad_vocabulary_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.model'):
    Vocabulary(tmp_path / 'missing.model')
  bad = tmp_path / 'bad.model'
  bad.write_bytes(b'not a model')
  with pytest.raises(ValueError, match='bad.model'):
    Vocabulary(bad)
