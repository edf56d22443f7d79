"""The offline pretraining corpus, built from the training splits in the data directory.

Pure Python (no TensorFlow). `documents(split)` reads, from the local data
directory (`tasks.local.get_data_dir()`, e.g. `../shared/data`):

* `corpus/botchan.txt` (public domain novel): groups of `BOTCHAN_LINES` lines;
* SuperGLUE training text only: RTE and CB `train.jsonl` (premises and
  hypotheses), COPA `train.jsonl` (premises and choices), and the FewGLUE
  `train32.jsonl` files present (BoolQ passages and questions, MultiRC
  passages, questions and answers, WiC sentences, WSC texts, COPA);
* SST-2 `stsa.binary.train` sentences.

No validation or test file is read, so evaluations on them stay clean.
Documents are whitespace-normalized, deduplicated, shuffled with a fixed
seed, and split by a hash of their text: about 1 in `HELD_OUT_EVERY` goes
to 'validation' (the held-out part for the pretraining loss), the rest to
'train'. The result is the same on every machine for the same files;
`manifest()` records the files, their sha256, the counts and the sha256 of
the built corpus.

`python -m tasks.corpus --out_dir DIR [--vocab_size N]` writes the corpus
(one document per line), `manifest.json` and optionally a SentencePiece
model trained on the training part (pad 0, EOS 1, UNK 2 as T5's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import random
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from tasks import local

BOTCHAN_LINES = 8
HELD_OUT_EVERY = 50
SEED = 0
SPLITS = ('train', 'validation')

# (relative path, fields whose text goes in); MultiRC is handled by `_multirc_texts`.
JSONL_SOURCES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ('superglue/rte/train.jsonl', ('premise', 'hypothesis')),
    ('superglue/cb/train.jsonl', ('premise', 'hypothesis')),
    ('superglue/copa/train.jsonl', ('premise', 'choice1', 'choice2')),
    ('superglue/boolq/train32.jsonl', ('passage', 'question')),
    ('superglue/cb/train32.jsonl', ('premise', 'hypothesis')),
    ('superglue/copa/train32.jsonl', ('premise', 'choice1', 'choice2')),
    ('superglue/rte/train32.jsonl', ('premise', 'hypothesis')),
    ('superglue/wic/train32.jsonl', ('sentence1', 'sentence2')),
    ('superglue/wsc/train32.jsonl', ('text',)),
    ('superglue/multirc/train32.jsonl', ()),
)
BOTCHAN = 'corpus/botchan.txt'
SST2 = 'sst2/stsa.binary.train'


def _normalize(text: str) -> str:
  return re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', ' ', text.replace('\ufeff', ''))).strip()


def _multirc_texts(record: Dict) -> Iterator[str]:
  passage = record['passage']
  yield passage['text']
  for question in passage['questions']:
    yield question['question']
    for answer in question['answers']:
      yield answer['text']


def _botchan_texts(path: pathlib.Path) -> Iterator[str]:
  lines = [line.strip() for line in path.read_text(encoding='utf-8').splitlines()]
  lines = [line for line in lines if line]
  for start in range(0, len(lines), BOTCHAN_LINES):
    yield ' '.join(lines[start:start + BOTCHAN_LINES])


def source_texts(data_dir: Optional[str | os.PathLike] = None
                 ) -> Iterator[Tuple[str, List[str]]]:
  """(relative path, texts) of every source file present, in a fixed order.

  Raises:
    FileNotFoundError: when not even the novel is present.
  """
  directory = pathlib.Path(data_dir) if data_dir is not None else local.get_data_dir()
  if not (directory / BOTCHAN).is_file():
    raise FileNotFoundError(f'corpus: {directory / BOTCHAN} not found (set $JAXPT_DATA_DIR '
                            f'to the shared data directory)')
  yield BOTCHAN, list(_botchan_texts(directory / BOTCHAN))
  for relative, fields in JSONL_SOURCES:
    path = directory / relative
    if not path.is_file():
      continue
    texts = []
    for record in local.read_jsonl(path):
      texts += list(_multirc_texts(record)) if 'multirc' in relative else [
          str(record[f]) for f in fields if record.get(f)]
    yield relative, texts
  if (directory / SST2).is_file():
    yield SST2, [r['sentence'] for r in local.read_sst2(directory / SST2)]


def _split_of(text: str) -> str:
  digest = int(hashlib.sha256(text.encode('utf-8')).hexdigest(), 16)
  return 'validation' if digest % HELD_OUT_EVERY == 0 else 'train'


def build(data_dir: Optional[str | os.PathLike] = None) -> Dict[str, object]:
  """Every split's documents plus the per-source counts (see `manifest`)."""
  directory = pathlib.Path(data_dir) if data_dir is not None else local.get_data_dir()
  seen, docs, sources = set(), [], []
  for relative, texts in source_texts(directory):
    kept = 0
    for text in map(_normalize, texts):
      if text and text not in seen:
        seen.add(text)
        docs.append(text)
        kept += 1
    sources.append({'file': relative, 'texts': len(texts), 'documents_kept': kept,
                    'sha256': hashlib.sha256((directory / relative).read_bytes()).hexdigest()})
  random.Random(SEED).shuffle(docs)
  splits = {s: [d for d in docs if _split_of(d) == s] for s in SPLITS}
  return {'splits': splits, 'sources': sources}


_CACHE: Dict[str, Dict[str, object]] = {}


def documents(split: str = 'train', data_dir: Optional[str | os.PathLike] = None) -> List[str]:
  """The documents of a split ('train' or 'validation'), cached per directory.

  Raises:
    ValueError: for an unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown corpus split {split!r} (splits: {list(SPLITS)})')
  directory = str(pathlib.Path(data_dir) if data_dir is not None else local.get_data_dir())
  if directory not in _CACHE:
    _CACHE[directory] = build(directory)
  return _CACHE[directory]['splits'][split]


def _sha256_lines(lines: Sequence[str]) -> str:
  return hashlib.sha256(''.join(line + '\n' for line in lines).encode('utf-8')).hexdigest()


def manifest(data_dir: Optional[str | os.PathLike] = None) -> Dict[str, object]:
  """What went in: source files (sha256, texts, documents kept), split sizes, corpus sha256."""
  built = build(data_dir)
  splits = built['splits']
  return {
      'sources': built['sources'],
      'splits': {s: {'documents': len(d), 'characters': sum(map(len, d)),
                     'words': sum(len(x.split()) for x in d),
                     'sha256': _sha256_lines(d)} for s, d in splits.items()},
      'rules': {'botchan_lines_per_document': BOTCHAN_LINES, 'held_out_every': HELD_OUT_EVERY,
                'shuffle_seed': SEED},
  }


def train_vocabulary(out_prefix: str, vocab_size: int = 8000,
                     data_dir: Optional[str | os.PathLike] = None) -> str:
  """Trains a unigram SentencePiece model on the training split; returns the .model path.

  Ids as T5's: pad 0, EOS 1, UNK 2, no BOS (SeqIO adds the extra ids on top).
  """
  import sentencepiece as spm

  from jaxpt.vocabulary import EOS_ID, PAD_ID
  text_path = out_prefix + '.train.txt'
  with open(text_path, 'w', encoding='utf-8') as f:
    f.writelines(d + '\n' for d in documents('train', data_dir))
  spm.SentencePieceTrainer.train(
      input=text_path, model_prefix=out_prefix, vocab_size=vocab_size, model_type='unigram',
      character_coverage=1.0, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=2, bos_id=-1,
      input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, seed_sentencepiece_size=200000,
      minloglevel=2)
  os.remove(text_path)
  return out_prefix + '.model'


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default=None, help='default: $JAXPT_DATA_DIR')
  parser.add_argument('--out_dir', required=True)
  parser.add_argument('--vocab_size', type=int, default=0,
                      help='also train a SentencePiece model of this size (0: no)')
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  info = manifest(args.data_dir)
  for split in SPLITS:
    with open(os.path.join(args.out_dir, f'corpus_{split}.txt'), 'w', encoding='utf-8') as f:
      f.writelines(d + '\n' for d in documents(split, args.data_dir))
  if args.vocab_size:
    model = train_vocabulary(os.path.join(args.out_dir, 'spiece'), args.vocab_size,
                             args.data_dir)
    info['vocabulary'] = {'pieces': args.vocab_size, 'file': os.path.basename(model),
                          'sha256': hashlib.sha256(open(model, 'rb').read()).hexdigest()}
  with open(os.path.join(args.out_dir, 'manifest.json'), 'w') as f:
    json.dump(info, f, indent=2)
  print(json.dumps(info['splits'], indent=2))


if __name__ == '__main__':
  main()
