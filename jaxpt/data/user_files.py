"""A user's own examples from TSV / CSV / JSONL files, as text-to-text pairs.

Each file holds one example per row with named fields: a header row for TSV
and CSV, an object per line for JSONL. The model's input is one field
(`input_field`, default 'input') or a template over fields
(`'premise: {premise} hypothesis: {hypothesis}'`); its target is `target_field`
(default 'target'). Errors name the file and line (`DataError`).
"""

from __future__ import annotations

import csv
import json
import os
import string
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

FORMATS = {'.tsv': 'tsv', '.csv': 'csv', '.jsonl': 'jsonl', '.json': 'jsonl'}


class DataError(ValueError):
  """A user data file that cannot be read as examples; the message names file and line."""


def file_format(path: str) -> str:
  """'tsv', 'csv' or 'jsonl', from the file's extension."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise DataError(f'{path}: unknown data file type {ext or "(no extension)"!r}; expected '
                    f'one of {sorted(FORMATS)}')
  return FORMATS[ext]


def _rows(path: str) -> Iterator[tuple]:
  """(line number, {field: text}) for every example row of a file."""
  fmt = file_format(path)
  if not os.path.isfile(path):
    raise DataError(f'{path}: no such file')
  with open(path, newline='', encoding='utf-8') as f:
    if fmt == 'jsonl':
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f'{path}:{number}: not a JSON object: {e.msg}') from None
        if not isinstance(row, dict):
          raise DataError(f'{path}:{number}: expected a JSON object, got '
                          f'{type(row).__name__}')
        yield number, {k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items()}
      return
    reader = csv.reader(f, delimiter='\t' if fmt == 'tsv' else ',')
    try:
      header = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise DataError(f'{path}:1: {e}') from None
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
      raise DataError(f'{path}:1: the header row must name every column once, got {header}')
    while True:
      try:
        values = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        raise DataError(f'{path}:{reader.line_num}: {e}') from None
      if not values or not any(v.strip() for v in values):
        continue
      if len(values) != len(header):
        raise DataError(f'{path}:{reader.line_num}: {len(values)} columns, the header has '
                        f'{len(header)} ({", ".join(header)})')
      yield reader.line_num, dict(zip(header, values))


def template_fields(template: str) -> List[str]:
  """The field names a template such as 'premise: {premise} ...' reads."""
  try:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]
  except ValueError as e:
    raise DataError(f'input template {template!r}: {e}') from None


def read_examples(path: str, *, input_field: str = 'input', target_field: str = 'target',
                  input_template: Optional[str] = None,
                  require_target: bool = True) -> List[Dict[str, str]]:
  """[{'inputs': text, 'targets': text}] of every row of a TSV / CSV / JSONL file.

  Raises:
    DataError: unknown format, missing file, malformed row, a field the input
      or target needs that the row lacks, or no examples at all.
  """
  needed = template_fields(input_template) if input_template else [input_field]
  examples = []
  for number, row in _rows(os.fspath(path)):
    missing = [n for n in needed + ([target_field] if require_target else []) if n not in row]
    if missing:
      raise DataError(f'{path}:{number}: no field {missing[0]!r}; the row has '
                      f'{sorted(row)}')
    inputs = input_template.format(**row) if input_template else row[input_field]
    examples.append({'inputs': inputs, 'targets': row.get(target_field, '')})
  if not examples:
    raise DataError(f'{path}: no examples')
  return examples


def label_list(examples: Sequence[Mapping[str, str]], labels: Optional[Sequence[str]],
               path: str) -> Optional[List[str]]:
  """The label words of a classification file, checked against its targets.

  `labels` given: every target must be one of them. None: free text (no
  rank classification).
  """
  if labels is None:
    return None
  labels = list(labels)
  if len(set(labels)) != len(labels) or not labels:
    raise DataError(f'labels {labels} must be distinct and non-empty')
  for i, example in enumerate(examples):
    if example['targets'] not in labels:
      raise DataError(f'{path}: example {i + 1} has target {example["targets"]!r}, not one '
                      f'of the labels {labels}')
  return labels
