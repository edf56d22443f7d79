"""T5's SentencePiece vocabulary without TensorFlow.

Ids follow T5: pad 0, eos 1, unk 2, the SentencePiece pieces, then
`extra_ids` sentinels counted down from the top (`<extra_id_0>` is the
highest id), exactly as seqio.SentencePieceVocabulary does.
"""

from __future__ import annotations

import os
import pathlib
from typing import List, Optional, Sequence

import sentencepiece as spm

from jaxpt import storage

PAD_ID = 0
"""T5's padding id; also the id the decoder starts from (`decoder_start_token_id`)."""
EOS_ID = 1
"""T5's end-of-sequence id."""
UNK_ID = 2
"""SentencePiece's unknown-piece id in T5 vocabularies."""
DEFAULT_EXTRA_IDS = 100
# The public T5 vocabulary; readable with network access only.
T5_VOCAB_GCS = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
VOCAB_ENV_VAR = 'JAXPT_VOCAB'
SPIECE_FILE = 'spiece.model'
_SHARED_VOCAB = (pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'vocab' /
                 't5_spiece.model')


class Vocabulary:
  """Encode/decode text with a SentencePiece model plus T5 sentinel ids."""

  def __init__(self, path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
    path = os.fspath(path)
    try:
      proto = storage.read_bytes(path)
    except OSError as e:
      raise FileNotFoundError(f'{path}: cannot read the SentencePiece model: {e}') from e
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(proto)
    except RuntimeError as e:
      raise ValueError(f'{path}: not a SentencePiece model: {e}') from e
    self.path = path
    self.extra_ids = extra_ids

  @property
  def base_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def vocab_size(self) -> int:
    return self.base_size + self.extra_ids

  pad_id = PAD_ID
  eos_id = EOS_ID

  def sentinel(self, i: int) -> int:
    """Id of `<extra_id_i>`."""
    if not 0 <= i < self.extra_ids:
      raise ValueError(f'sentinel index {i} outside [0, {self.extra_ids})')
    return self.vocab_size - 1 - i

  def encode(self, text: str) -> List[int]:
    """Ids of `text`, without EOS."""
    return list(self._sp.EncodeAsIds(text))

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, stopping at EOS and skipping padding and sentinels."""
    kept = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != self.pad_id and i < self.base_size:
        kept.append(i)
    return self._sp.DecodeIds(kept)


def default_vocab_path() -> str:
  """T5's SentencePiece model: $JAXPT_VOCAB, else `../shared/data/vocab/t5_spiece.model`
  beside the repository when present, else T5's public GCS copy."""
  if os.environ.get(VOCAB_ENV_VAR):
    return os.environ[VOCAB_ENV_VAR]
  if _SHARED_VOCAB.is_file():
    return str(_SHARED_VOCAB)
  return T5_VOCAB_GCS


def shipped_model(backbone_path: Optional[str]) -> Optional[str]:
  """The SentencePiece model a local backbone directory ships (`spiece.model`: HF T5
  directories, jaxpt's mini T5), or None (T5X checkpoints, gs:// paths, a random init)."""
  if backbone_path and not str(backbone_path).startswith('gs://'):
    own = os.path.join(os.fspath(backbone_path), SPIECE_FILE)
    if os.path.isfile(own):
      return own
  return None


def model_digest(path: str) -> str:
  """SHA-256 of a SentencePiece model file's bytes: two vocabularies are the same model
  when their digests are equal."""
  import hashlib
  return hashlib.sha256(storage.read_bytes(os.fspath(path))).hexdigest()


def backbone_vocabulary(backbone_path: Optional[str] = None) -> Vocabulary:
  """The vocabulary that goes with a backbone: the one entry point for tokenizers.

  A backbone directory that ships its SentencePiece model (`spiece.model`: HF
  T5 directories, jaxpt's mini T5) uses it; otherwise (T5X checkpoints, a
  random init, no path) T5's public vocabulary (`default_vocab_path`).
  """
  own = shipped_model(backbone_path)
  return Vocabulary(own or default_vocab_path())
