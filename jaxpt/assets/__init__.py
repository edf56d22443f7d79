"""Model files shipped with jaxpt (package data).

`mini_t5/`: jaxpt's own mini backbone, a T5 1.1-style model pretrained with
span corruption and LM-adapted on the offline corpus of `tasks.corpus`, with
its SentencePiece vocabulary (`spiece.model`); see `mini_t5/README.md`.
`mini_gpt2/`: its decoder-only sibling, a GPT-2-architecture causal LM pretrained on
the same corpus with the same vocabulary (an HF GPT-2 directory); see
`mini_gpt2/README.md`.
"""

from __future__ import annotations

import pathlib

MINI_T5 = pathlib.Path(__file__).resolve().parent / 'mini_t5'
MINI_GPT2 = pathlib.Path(__file__).resolve().parent / 'mini_gpt2'


def mini_t5_path() -> str:
  """The mini backbone's directory (load it with `jaxpt.load_model`)."""
  return str(MINI_T5)


def mini_gpt2_path() -> str:
  """The mini GPT-2's directory (load it with `jaxpt.load_model`)."""
  return str(MINI_GPT2)
