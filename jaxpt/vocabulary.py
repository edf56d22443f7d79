"""T5's SentencePiece vocabulary without TensorFlow, and a GPT-2 / Llama tokenizer.json.

Ids follow T5: pad 0, eos 1, unk 2, the SentencePiece pieces, then
`extra_ids` sentinels counted down from the top (`<extra_id_0>` is the
highest id), exactly as seqio.SentencePieceVocabulary does. A decoder-only
backbone directory's `tokenizer.json` keeps its own ids (`TokenizerVocabulary`);
jaxpt batches still pad with 0 (T5X's rule).
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
TOKENIZER_FILE = 'tokenizer.json'
"""The transformers fast-tokenizer file a GPT-2 / Llama directory ships."""
_DECODER_MODEL_TYPES = ('gpt2', 'llama')
# Tokens that end a sequence in GPT-2 / Llama 2 / Llama 3 tokenizers, when config.json names none.
_EOS_TOKENS = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<|eot_id|>')
_SHARED_VOCAB = (pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'vocab' /
                 't5_spiece.model')


def until_eos(ids: Sequence[int], eos_id: int) -> List[int]:
  """`ids` as ints, up to (not including) the first `eos_id`."""
  out = []
  for i in ids:
    if int(i) == eos_id:
      break
    out.append(int(i))
  return out


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
    return self._sp.DecodeIds([i for i in until_eos(ids, self.eos_id)
                               if i != self.pad_id and i < self.base_size])


class TokenizerVocabulary:
  """A decoder-only backbone's `tokenizer.json` (GPT-2's BPE, Llama's), read with the
  `tokenizers` library: text -> ids without special tokens, ids -> text.

  `eos_id` is the backbone's end-of-sequence id (config.json's `eos_token_id`): the
  targets end with it and decoding stops at it. Id 0 is padding in jaxpt batches, so a
  text piece whose id is 0 (GPT-2's '!') is dropped by `decode` (and by the batches).
  """

  pad_id = PAD_ID

  def __init__(self, path: str, eos_id: int):
    import tokenizers
    path = os.fspath(path)
    try:
      self._tok = tokenizers.Tokenizer.from_str(storage.read_bytes(path).decode('utf-8'))
    except Exception as e:  # OSError, or a file tokenizers cannot parse
      raise ValueError(f'{path}: cannot read the tokenizer: {e}') from e
    self.path, self.eos_id = path, int(eos_id)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def unk_id(self) -> Optional[int]:
    """The unknown token's id (None for byte-level BPE, which has none: GPT-2, Llama 3)."""
    token = getattr(self._tok.model, 'unk_token', None)
    return None if token is None else self._tok.token_to_id(token)

  def decode_piece(self, i: int) -> str:
    """The token string of one id (special tokens included)."""
    return self._tok.id_to_token(int(i))

  def encode(self, text: str) -> List[int]:
    """Ids of `text`, without BOS / EOS."""
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, stopping at `eos_id` and skipping padding (0)."""
    kept = [i for i in until_eos(ids, self.eos_id) if i != PAD_ID]
    return self._tok.decode(kept, skip_special_tokens=True)


def _hf_config(backbone_path: str) -> dict:
  """config.json of a local backbone directory ({} when there is none)."""
  import json
  path = os.path.join(os.fspath(backbone_path), 'config.json')
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError):  # none, or unreadable: loading the backbone says why
    return {}
  return config if isinstance(config, dict) else {}


def _eos_of(backbone_path: str, tokenizer_path: str) -> int:
  """The end-of-sequence id of a decoder-only directory: config.json's, else the
  tokenizer's own end token."""
  eos = _hf_config(backbone_path).get('eos_token_id')
  if isinstance(eos, list):
    eos = eos[0] if eos else None
  if eos is not None:
    return int(eos)
  import tokenizers
  tok = tokenizers.Tokenizer.from_file(tokenizer_path)
  for token in _EOS_TOKENS:
    if tok.token_to_id(token) is not None:
      return tok.token_to_id(token)
  raise ValueError(f'{backbone_path}: config.json names no eos_token_id and the tokenizer has '
                   f'none of {list(_EOS_TOKENS)}')


def default_vocab_path() -> str:
  """T5's SentencePiece model: $JAXPT_VOCAB, else `../shared/data/vocab/t5_spiece.model`
  beside the repository when present, else T5's public GCS copy."""
  if os.environ.get(VOCAB_ENV_VAR):
    return os.environ[VOCAB_ENV_VAR]
  if _SHARED_VOCAB.is_file():
    return str(_SHARED_VOCAB)
  return T5_VOCAB_GCS


def shipped_model(backbone_path: Optional[str]) -> Optional[str]:
  """The tokenizer file a local backbone directory ships: its SentencePiece model
  (`spiece.model`: HF T5 directories, jaxpt's mini T5) or, without one, its
  `tokenizer.json` (GPT-2 / Llama directories only: a T5 directory's is not read); None
  for T5X checkpoints, gs:// paths and a random init."""
  if backbone_path and not str(backbone_path).startswith('gs://'):
    own = os.path.join(os.fspath(backbone_path), SPIECE_FILE)
    if os.path.isfile(own):
      return own
    own = os.path.join(os.fspath(backbone_path), TOKENIZER_FILE)
    if os.path.isfile(own) and _is_decoder_dir(backbone_path):
      return own
  return None


def _is_decoder_dir(backbone_path: str) -> bool:
  """Whether a local directory holds a GPT-2 / Llama checkpoint (config.json `model_type`)."""
  return _hf_config(backbone_path).get('model_type') in _DECODER_MODEL_TYPES


def model_digest(path: str) -> str:
  """SHA-256 of a SentencePiece model file's bytes: two vocabularies are the same model
  when their digests are equal."""
  import hashlib
  return hashlib.sha256(storage.read_bytes(os.fspath(path))).hexdigest()


def backbone_vocabulary(backbone_path: Optional[str] = None) -> Vocabulary:
  """The vocabulary that goes with a backbone: the one entry point for tokenizers.

  A backbone directory that ships its SentencePiece model (`spiece.model`: HF
  T5 directories, jaxpt's mini T5; in a GPT-2 / Llama directory such as jaxpt's mini
  GPT-2, without T5's sentinel ids) uses it; a GPT-2 / Llama directory its
  `tokenizer.json` (`TokenizerVocabulary`, EOS from config.json); otherwise (T5X
  checkpoints, a random init, no path) T5's public vocabulary (`default_vocab_path`).
  """
  own = shipped_model(backbone_path)
  if own and own.endswith(TOKENIZER_FILE):
    return TokenizerVocabulary(own, _eos_of(backbone_path, own))
  if (own is None and backbone_path and not str(backbone_path).startswith('gs://')
      and _is_decoder_dir(backbone_path)):
    raise FileNotFoundError(
        f'{backbone_path} is a {_hf_config(backbone_path)["model_type"]} directory without '
        f'its tokenizer ({TOKENIZER_FILE}): save it there (tokenizer.save_pretrained(dir))')
  if own and backbone_path and _is_decoder_dir(backbone_path):
    # A decoder-only model has no span-corruption sentinels (jaxpt's mini GPT-2).
    return Vocabulary(own, extra_ids=0)
  return Vocabulary(own or default_vocab_path())
