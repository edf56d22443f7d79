"""`jaxpt similar PROMPT LIBRARY`: a prompt library ranked by SPoT similarity to a prompt."""

from __future__ import annotations

import argparse
import os
from typing import Callable, List

from jaxpt.checkpoints import prompts
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.checkpoints import transfer


def table(query: str, rows: List, by: str) -> List[str]:
  """The ranked markdown table of `transfer.rank_by_similarity`'s rows."""
  order = 'cosine of the average prompt vectors' if by == 'mean' else \
      'average cosine over all token pairs'
  lines = [f'prompts most similar to {query} (SPoT task embeddings), ranked by {order}:', '',
           '| rank | prompt | cos(average vectors) | average token cos | tokens | method |',
           '|---|---|---|---|---|---|']
  for i, (entry, mean, tokens) in enumerate(rows, 1):
    lines.append(f'| {i} | {entry.name} | {mean:.4f} | {tokens:.4f} | '
                 f'{entry.prompt.shape[0]} | {entry.method} |')
  return lines


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> None:
  """Prints the table; bad input raises ValueError (the CLI prints one line, exit 2)."""
  if args.top is not None and args.top <= 0:
    raise ValueError(f'--top must be positive, got {args.top}')
  query_path = os.path.abspath(args.prompt)
  method, params, manifest = prompts.load_prompt(query_path)
  query = transfer.pick_task(transfer.task_prompts(method, params), args.task, query_path)
  library = transfer.load_library(args.library)
  fp = manifest['backbone'].get('fingerprint')
  if fp != library.fingerprint:
    raise CheckpointError(f'{query_path} was trained on a backbone with fingerprint {fp}, the '
                          f'library {library.directory} on {library.fingerprint}: similarity '
                          f'is only meaningful on one backbone')
  others = [e for e in library.prompts
            if not (os.path.samefile(e.path, query_path) and (e.task or 0) == (args.task or 0))]
  if not others:
    raise ValueError(f'the library {library.directory} holds no prompt besides the query')
  rows = transfer.rank_by_similarity(query, others, args.by)[:args.top]
  for line in table(args.prompt, rows, args.by):
    print_fn(line)
  if library.skipped:
    print_fn(f'\nskipped (no prompt vectors): {", ".join(library.skipped)}')
