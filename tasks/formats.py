"""Text-to-text formats of GLUE / SuperGLUE in T5's style, in pure Python.

One formatter per benchmark turns a record in the TFDS feature layout
(`super_glue/<name>`, `glue/<name>`: flat dicts, MultiRC one record per answer,
ReCoRD one record per query with `entities` and `answers` lists) into one or
more text-to-text examples. Both sources use the same formatters: the TFDS
source converts `tfds.as_numpy` records to Python values, the local source
converts the official JSONL files to this layout (see `tasks.local`).

The formats are T5's (`t5.data.preprocessors.glue`, `wsc`, `record`):

* `"<benchmark> <key1>: <v1> <key2>: <v2> ..."` with the feature keys in
  alphabetical order, the label word as target (`tasks.labels.LABEL_WORDS`),
  e.g. `"cb hypothesis: ... premise: ..."` -> `"contradiction"`.
* MultiRC keeps T5's order `question, answer, paragraph`, drops `<br>`/`<b>`
  markup, and carries `idx/paragraph`, `idx/question`, `idx/answer` (the
  question is the group of the exact-match metric).
* WSC is T5's `wsc` format: `"wsc text: <text>"` with the candidate noun
  phrase marked `* span1 *` and the pronoun marked `# span2 #` (the marks are
  put at the given word indices; a span that is not at its index stays
  unmarked), targets `False`/`True`.
* ReCoRD is T5's `record` format: `"record query: <query> entities: <e1>, <e2>
  passage: <passage>"` with `@highlight` lines joined into sentences, one example
  per answer (target: the answer text; `answers` keeps all of them for the
  max-over-answers metric); a query without answers gives one `<unk>` example.

An unlabelled record (label -1 or absent, e.g. a test split) gets the target
`<unk>`, as in T5.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Sequence

from tasks import labels

Example = Dict[str, Any]

# Feature keys of the key-value formats, in the order they are written.
FEATURE_KEYS: Dict[str, Sequence[str]] = {
    'boolq': ('passage', 'question'),
    'cb': ('hypothesis', 'premise'),
    'copa': ('choice1', 'choice2', 'premise', 'question'),
    'multirc': ('question', 'answer', 'paragraph'),
    'rte': ('hypothesis', 'premise'),
    'wic': ('sentence1', 'sentence2', 'word'),
    'sst2': ('sentence',),
    'mrpc': ('sentence1', 'sentence2'),
    'qqp': ('question1', 'question2'),
}


def label_word(benchmark: str, label: Any) -> str:
  """The target text of a label in any of the sources' spellings.

  Args:
    benchmark: a key of `tasks.labels.LABEL_WORDS`.
    label: an int id (TFDS), a bool (official BoolQ/WiC/WSC JSONL), a label
      word (official CB/RTE JSONL), or None / -1 for an unlabelled record.

  Returns:
    The label word, or '<unk>' for an unlabelled record.

  Raises:
    ValueError: for a label that is not one of the benchmark's labels.
  """
  words = labels.LABEL_WORDS[benchmark]
  if label is None or (not isinstance(label, bool) and label == labels.UNKNOWN_LABEL):
    return labels.UNKNOWN_TARGET
  if isinstance(label, bool):
    return words[int(label)]
  if isinstance(label, int):
    if 0 <= label < len(words):
      return words[label]
  elif isinstance(label, str):
    label_id = labels.label_to_id(benchmark, label)
    if label_id != labels.UNKNOWN_LABEL:
      return words[label_id]
  raise ValueError(f'{label!r} is not a {benchmark} label (labels: {words})')


def key_value_text(benchmark: str, record: Mapping[str, Any], keys: Sequence[str]) -> str:
  """T5's `glue` input text: `"<benchmark> <key>: <value> ..."`."""
  parts = [benchmark]
  for key in keys:
    parts.append(f'{key}:')
    parts.append(str(record[key]))
  return ' '.join(parts)


def format_key_value(benchmark: str, record: Mapping[str, Any]) -> List[Example]:
  """BoolQ, CB, COPA, RTE, WiC, SST-2, MRPC, QQP: one key-value example."""
  return [{
      'inputs': key_value_text(benchmark, record, FEATURE_KEYS[benchmark]),
      'targets': label_word(benchmark, record.get('label')),
      'idx': int(record.get('idx', -1)),
  }]


def format_multirc(record: Mapping[str, Any]) -> List[Example]:
  """MultiRC: one record per answer (TFDS layout) -> one example."""
  text = key_value_text('multirc', record, FEATURE_KEYS['multirc'])
  text = re.sub(r'<(/)?b>', '', text.replace('<br>', ' '))
  idx = record['idx']
  return [{
      'inputs': text,
      'targets': label_word('multirc', record.get('label')),
      'idx/paragraph': int(idx['paragraph']),
      'idx/question': int(idx['question']),
      'idx/answer': int(idx['answer']),
  }]


def mark_span(text: str, span: str, word_index: int, mark: str) -> str:
  """Surround `span` with `mark` where it starts at whitespace word `word_index`.

  The Python twin of T5's `_mark_span`: the span must follow exactly
  `word_index` words each followed by one whitespace character.
  """
  pattern = r'^((?:\S+\s){%d})(%s)' % (word_index, re.escape(span))
  return re.sub(pattern, lambda m: f'{m.group(1)}{mark} {m.group(2)} {mark}', text, count=1)


def format_wsc(record: Mapping[str, Any]) -> List[Example]:
  """WSC (TFDS `wsc.fixed` layout): T5's marked-span format."""
  span1_index = int(record['span1_index'])
  span2_index = int(record['span2_index'])
  text = mark_span(record['text'], record['span1_text'], span1_index, '*')
  # The first mark added two words before the pronoun when it came first.
  if span1_index < span2_index:
    span2_index += 2
  text = mark_span(text, record['span2_text'], span2_index, '#')
  return [{
      'inputs': f'wsc text: {text}',
      'targets': label_word('wsc', record.get('label')),
      'idx': int(record.get('idx', -1)),
  }]


def record_passage(passage: str) -> str:
  """ReCoRD passage with its `@highlight` lines joined as sentences (T5's way)."""
  passage = re.sub(r'(\.|\?|\!|\"|\')\n@highlight\n', r'\1 ', passage)
  return re.sub(r'\n@highlight\n', '. ', passage)


def format_record(record: Mapping[str, Any]) -> List[Example]:
  """ReCoRD (TFDS layout: one record per query) -> one example per answer."""
  inputs = ' '.join([
      'record query:', record['query'], 'entities:', ', '.join(record['entities']),
      'passage:', record_passage(record['passage'])
  ])
  answers = [str(a) for a in record.get('answers', [])]
  idx = record['idx']
  return [{
      'inputs': inputs,
      'targets': answer,
      'idx/passage': int(idx['passage']),
      'idx/query': int(idx['query']),
      'answers': list(answers),
  } for answer in (answers or [labels.UNKNOWN_TARGET])]


FORMATTERS: Dict[str, Callable[[Mapping[str, Any]], List[Example]]] = {
    'multirc': format_multirc,
    'record': format_record,
    'wsc': format_wsc,
}


def format_example(benchmark: str, record: Mapping[str, Any]) -> List[Example]:
  """The text-to-text examples of one record of a benchmark.

  Args:
    benchmark: 'boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc',
      'sst2', 'mrpc' or 'qqp' (a task name such as 'super_glue_rte_local' works
      too).
    record: a record in the TFDS feature layout, with Python values.

  Returns:
    A list of dicts with 'inputs' and 'targets' strings and the index fields
    (one element except for ReCoRD queries with several answers).
  """
  benchmark = labels.benchmark_of(benchmark)
  if benchmark in FORMATTERS:
    return FORMATTERS[benchmark](record)
  if benchmark not in FEATURE_KEYS:
    raise ValueError(f'no text-to-text format for {benchmark!r}')
  return format_key_value(benchmark, record)
