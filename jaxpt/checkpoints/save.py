"""Writing a `Model` out: HF transformers directories and jaxpt directories."""

from __future__ import annotations

import os
from typing import Optional

from jaxpt.prompted.model import Model
from jaxpt.models.scan import unstack_layers


def save_hf(model: Model, directory: str, vocab_path: Optional[str] = None) -> None:
  """Writes `model` as an HF T5 directory that transformers' `from_pretrained` loads.

  `vocab_path` (a SentencePiece model) is copied in as spiece.model so
  `AutoTokenizer.from_pretrained(directory)` works too.
  """
  from jaxpt.checkpoints import hf

  params = unstack_layers(model.params) if model.config.scan_layers else model.params
  hf.write_hf_checkpoint(model.config.replace(scan_layers=False), params,
                         os.fspath(directory), vocab_path=vocab_path)


def save_model(model: Model, directory: str) -> None:
  """Writes a jaxpt model directory (config JSON + Orbax parameters)."""
  from jaxpt.checkpoints import native

  native.write_native(model.config, model.params, os.fspath(directory))
