"""Table-to-text data of the prefix-tuning paper: E2E and WebNLG 2017, offline.

Pure Python (no TensorFlow). Files live under `<data dir>/nlg/` (the layout of
`../shared/data`, whose README says where each comes from):

    nlg/e2e/{valid,test}.txt          lines "mr||text" (Li & Liang's preprocessing)
    nlg/webnlg2017/{train,dev}/<n>triples/*.xml, nlg/webnlg2017/test/testdata_with_lex.xml

E2E's official train split is not available offline, so the splits here are
built from what is: 'train' is valid.txt's pairs without its last
`E2E_VALIDATION_MRS` meaning representations, 'validation' those held-out MRs,
'test' test.txt. A model is never trained on anything it is tested on.

An evaluation example is one input (an MR, a triple set) with all its
references; a training pair is one (input, reference) pair, as the paper
trains. WebNLG inputs are linearized as the paper does, "subject : property :
object" joined by " | ", with underscores as spaces; a test entry is "seen"
when its category occurs in the training data.
"""

from __future__ import annotations

import dataclasses
import pathlib
import xml.etree.ElementTree as ET
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from tasks import local

DATASETS = ('e2e', 'webnlg')
SPLITS = ('train', 'validation', 'test')
E2E_VALIDATION_MRS = 50
"""valid.txt's last 50 MRs are held out of 'train' as the 'validation' split."""

_WEBNLG_DIRS = {'train': 'train', 'validation': 'dev'}


@dataclasses.dataclass(frozen=True)
class NLGExample:
  """One input with every reference text; `category` and `seen` for WebNLG ('' / None for E2E)."""
  input: str
  references: Tuple[str, ...]
  category: str = ''
  seen: Optional[bool] = None


def nlg_dir(data_dir: Optional[str] = None) -> pathlib.Path:
  """`<data dir>/nlg`, the data directory from `tasks.local.get_data_dir`."""
  root = pathlib.Path(data_dir) if data_dir is not None else local.get_data_dir()
  path = root / 'nlg'
  if not path.is_dir():
    raise FileNotFoundError(f'no NLG data: {path} not found (see ../shared/data/README.md)')
  return path


def _file(path: pathlib.Path) -> pathlib.Path:
  if not path.is_file():
    raise FileNotFoundError(f'NLG data file {path} not found')
  return path


def read_e2e_file(path: str | pathlib.Path) -> List[NLGExample]:
  """The MRs of an E2E file in order of first appearance, each with all its references."""
  grouped: Dict[str, List[str]] = {}
  with open(_file(pathlib.Path(path)), encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      if '||' not in line:
        raise ValueError(f'{path}:{number}: expected "mr||text", got {line[:80]!r}')
      mr, text = line.split('||', 1)
      grouped.setdefault(mr.strip(), []).append(text.strip())
  return [NLGExample(mr, tuple(refs)) for mr, refs in grouped.items()]


def e2e_examples(split: str, data_dir: Optional[str] = None) -> List[NLGExample]:
  """E2E evaluation examples of a split (see the module docstring for the splits)."""
  _check_split(split)
  directory = nlg_dir(data_dir) / 'e2e'
  if split == 'test':
    return read_e2e_file(directory / 'test.txt')
  examples = read_e2e_file(directory / 'valid.txt')
  cut = len(examples) - E2E_VALIDATION_MRS
  return examples[:cut] if split == 'train' else examples[cut:]


def linearize_triples(triples: Sequence[str]) -> str:
  """WebNLG "s | p | o" triples as "s : p : o | ...", underscores and quotes dropped."""
  parts = []
  for triple in triples:
    fields = [f.strip().replace('_', ' ').strip('"') for f in triple.split('|')]
    if len(fields) != 3:
      raise ValueError(f'a WebNLG triple has 3 fields, got {triple!r}')
    parts.append(' : '.join(fields))
  return ' | '.join(parts)


def _webnlg_entries(files: Sequence[pathlib.Path]) -> Iterator[Tuple[str, str, Tuple[str, ...]]]:
  for path in files:
    try:
      root = ET.parse(path).getroot()
    except ET.ParseError as e:
      raise ValueError(f'{path}: not valid WebNLG XML ({e})') from None
    for entry in root.iter('entry'):
      triples = [t.text or '' for t in entry.iter('mtriple')]
      refs = tuple(' '.join((lex.text or '').split()) for lex in entry.iter('lex'))
      yield entry.get('category', ''), linearize_triples(triples), refs


def _webnlg_files(split: str, directory: pathlib.Path) -> List[pathlib.Path]:
  if split == 'test':
    return [_file(directory / 'test' / 'testdata_with_lex.xml')]
  files = sorted((directory / _WEBNLG_DIRS[split]).glob('*triples/*.xml'))
  if not files:
    raise FileNotFoundError(f'no WebNLG {split} files under {directory / _WEBNLG_DIRS[split]}')
  return files


def webnlg_seen_categories(data_dir: Optional[str] = None) -> FrozenSet[str]:
  """The categories of WebNLG's training data (the 'seen' ones)."""
  directory = nlg_dir(data_dir) / 'webnlg2017'
  return frozenset(c for c, _, _ in _webnlg_entries(_webnlg_files('train', directory)))


def webnlg_examples(split: str, data_dir: Optional[str] = None) -> List[NLGExample]:
  """WebNLG 2017 evaluation examples of a split, with category and seen / unseen."""
  _check_split(split)
  directory = nlg_dir(data_dir) / 'webnlg2017'
  seen = webnlg_seen_categories(data_dir)
  return [NLGExample(text, refs, category, category in seen)
          for category, text, refs in _webnlg_entries(_webnlg_files(split, directory))
          if refs]


def examples(dataset: str, split: str, data_dir: Optional[str] = None) -> List[NLGExample]:
  """The evaluation examples of 'e2e' or 'webnlg'."""
  if dataset == 'e2e':
    return e2e_examples(split, data_dir)
  if dataset == 'webnlg':
    return webnlg_examples(split, data_dir)
  raise ValueError(f'unknown NLG dataset {dataset!r}; expected one of {DATASETS}')


def training_pairs(examples_: Sequence[NLGExample]) -> List[Tuple[str, str]]:
  """One (input, reference) pair per reference, the paper's training data."""
  return [(ex.input, ref) for ex in examples_ for ref in ex.references]


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f'unknown NLG split {split!r}; expected one of {SPLITS}')
