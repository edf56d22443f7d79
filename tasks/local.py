"""Offline data: the official files of GLUE / SuperGLUE in a local directory.

Pure Python (no TensorFlow). The directory is, in order of precedence, the one
given to `set_data_dir(path)`, the gin binding
`tasks.local.get_data_dir.data_dir = '...'`, or the environment variable
`JAXPT_DATA_DIR`. Its layout (that of `../shared/data`):

    superglue/<boolq|cb|copa|multirc|record|rte|wic|wsc>/<train|val|test|train32>.jsonl
    sst2/stsa.binary.<train|dev|test>            lines "<0|1> <sentence>"
    glue/<mrpc|qqp>/<train|dev|test>.tsv         GLUE's TSV files

SeqIO split names map to file names: 'validation' -> 'val' (SuperGLUE) or
'dev' (GLUE); 'train32' is the FewGLUE 32-example training set.

The readers convert the official records to the TFDS feature layout that the
formatters of `tasks.formats` take: MultiRC paragraphs become one record per
answer, ReCoRD passages one record per query, WSC's `target` is flattened.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Any, Dict, Iterator, List, Mapping, Optional

import gin

from tasks import formats, labels

ENV_VAR = 'JAXPT_DATA_DIR'
SUPERGLUE = ('boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc')
GLUE = ('sst2', 'mrpc', 'qqp')
SPLITS = ('train', 'validation', 'test', 'train32')

_SUPERGLUE_FILES = {'train': 'train', 'validation': 'val', 'test': 'test', 'train32': 'train32'}
_GLUE_FILES = {'train': 'train', 'validation': 'dev', 'test': 'test'}

_data_dir: Optional[str] = None

Record = Dict[str, Any]


def set_data_dir(path: Optional[str | os.PathLike]) -> None:
  """Sets the local data directory (None: back to gin / $JAXPT_DATA_DIR)."""
  global _data_dir
  _data_dir = None if path is None else os.fspath(path)


@gin.configurable(module='tasks.local')
def get_data_dir(data_dir: Optional[str] = None) -> pathlib.Path:
  """The local data directory; raises a clear error when it is unset or absent.

  Args:
    data_dir: the directory, usually bound in gin; `set_data_dir` overrides it
      and it overrides $JAXPT_DATA_DIR.

  Raises:
    FileNotFoundError: when no directory is set or it does not exist.
  """
  path = _data_dir or data_dir or os.environ.get(ENV_VAR)
  if not path:
    raise FileNotFoundError(
        f'no local data directory: set the environment variable {ENV_VAR}, call '
        f'tasks.local.set_data_dir(path) or bind tasks.local.get_data_dir.data_dir in gin')
  directory = pathlib.Path(path).expanduser()
  if not directory.is_dir():
    raise FileNotFoundError(
        f'local data directory {directory} does not exist (set by {ENV_VAR}, '
        f'tasks.local.set_data_dir or gin)')
  return directory


def split_path(benchmark: str, split: str, data_dir: Optional[str | os.PathLike] = None
              ) -> pathlib.Path:
  """The file of a split of a benchmark; raises when it is absent.

  Raises:
    ValueError: for an unknown benchmark or split.
    FileNotFoundError: when the file is absent, naming the path and $JAXPT_DATA_DIR.
  """
  directory = pathlib.Path(data_dir) if data_dir is not None else get_data_dir()
  if benchmark in SUPERGLUE:
    files = _SUPERGLUE_FILES
    make = lambda name: directory / 'superglue' / benchmark / f'{name}.jsonl'
  elif benchmark == 'sst2':
    files = _GLUE_FILES
    make = lambda name: directory / 'sst2' / f'stsa.binary.{name}'
  elif benchmark in GLUE:
    files = _GLUE_FILES
    make = lambda name: directory / 'glue' / benchmark / f'{name}.tsv'
  else:
    raise ValueError(f'no local files for benchmark {benchmark!r}')
  if split not in files:
    raise ValueError(f'split {split!r} of {benchmark} has no local file (splits: {list(files)})')
  path = make(files[split])
  if not path.is_file():
    raise FileNotFoundError(
        f'{benchmark} split {split!r}: file {path} not found (data directory from {ENV_VAR} '
        f'or tasks.local.set_data_dir)')
  return path


def read_jsonl(path: str | os.PathLike) -> Iterator[Record]:
  """The JSON objects of a JSONL file, skipping blank lines."""
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{number}: not a JSON object: {e.msg}') from None


def read_sst2(path: str | os.PathLike) -> Iterator[Record]:
  """SST-2 records from a stsa.binary file ("<label> <sentence>" lines); idx is the line number."""
  with open(path, encoding='utf-8') as f:
    for idx, line in enumerate(f):
      line = line.rstrip('\n')
      if not line.strip():
        continue
      try:
        label, sentence = line.split(' ', 1)
        label = int(label)
      except ValueError:
        raise ValueError(f'{path}:{idx + 1}: expected "<0|1> <sentence>", got '
                         f'{line[:60]!r}') from None
      yield {'sentence': sentence, 'label': label, 'idx': idx}


def read_glue_tsv(benchmark: str, path: str | os.PathLike) -> Iterator[Record]:
  """MRPC or QQP records from GLUE's TSV files (test files have no label)."""
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
    for idx, row in enumerate(reader):
      if None in row or None in row.values():
        raise ValueError(f'{path}:{reader.line_num}: the row does not have the '
                         f'{len(reader.fieldnames)} tab-separated fields of the header')
      if benchmark == 'mrpc':
        label = row.get('Quality')
        yield {'sentence1': row['#1 String'], 'sentence2': row['#2 String'],
               'label': int(label) if label not in (None, '') else -1, 'idx': idx}
      else:
        label = row.get('is_duplicate')
        yield {'question1': row['question1'], 'question2': row['question2'],
               'label': int(label) if label not in (None, '') else -1, 'idx': idx}


def multirc_records(paragraph: Mapping[str, Any]) -> Iterator[Record]:
  """An official MultiRC paragraph -> one TFDS-layout record per answer."""
  passage = paragraph['passage']
  for question in passage['questions']:
    for answer in question['answers']:
      yield {
          'paragraph': passage['text'],
          'question': question['question'],
          'answer': answer['text'],
          'label': answer.get('label', -1),
          'idx': {'paragraph': paragraph['idx'], 'question': question['idx'],
                  'answer': answer['idx']},
      }


def record_records(passage_record: Mapping[str, Any]) -> Iterator[Record]:
  """An official ReCoRD passage -> one TFDS-layout record per query.

  Entities and answers are the sorted unique texts, as in TFDS (the official
  `end` offsets are inclusive).
  """
  passage = passage_record['passage']
  text = passage['text']
  entities = sorted({text[e['start']:e['end'] + 1] for e in passage['entities']})
  for qa in passage_record['qas']:
    yield {
        'passage': text,
        'query': qa['query'],
        'entities': entities,
        'answers': sorted({a['text'] for a in qa.get('answers', [])}),
        'idx': {'passage': passage_record['idx'], 'query': qa['idx']},
    }


def wsc_record(record: Mapping[str, Any]) -> Record:
  """An official WSC record -> the TFDS layout (the `target` fields flattened)."""
  flat = {k: v for k, v in record.items() if k != 'target'}
  flat.update(record['target'])
  return flat


def official_to_tfds(benchmark: str, record: Mapping[str, Any]) -> List[Record]:
  """An official JSONL record -> its TFDS-layout records."""
  if benchmark == 'multirc':
    return list(multirc_records(record))
  if benchmark == 'record':
    return list(record_records(record))
  if benchmark == 'wsc':
    return [wsc_record(record)]
  return [dict(record)]


def read_records(benchmark: str, split: str,
                 data_dir: Optional[str | os.PathLike] = None) -> Iterator[Record]:
  """The TFDS-layout records of a local split.

  Args:
    benchmark: e.g. 'rte' or a task name such as 'super_glue_rte_local'.
    split: 'train', 'validation', 'test' or (SuperGLUE) 'train32'.
    data_dir: the data directory; by default `get_data_dir()`.
  """
  benchmark = labels.benchmark_of(benchmark)
  path = split_path(benchmark, split, data_dir)
  if benchmark == 'sst2':
    yield from read_sst2(path)
  elif benchmark in GLUE:
    yield from read_glue_tsv(benchmark, path)
  else:
    for record in read_jsonl(path):
      yield from official_to_tfds(benchmark, record)


def local_examples(benchmark: str, split: str,
                   data_dir: Optional[str | os.PathLike] = None) -> Iterator[formats.Example]:
  """The text-to-text examples of a local split (records -> `tasks.formats`)."""
  for record in read_records(benchmark, split, data_dir):
    yield from formats.format_example(benchmark, record)
