"""`--gin.*` flags: a typo in a macro name is an error, not a silently ignored binding."""

from __future__ import annotations

import pytest

import jaxpt  # noqa: F401  (registers the configurables)
from jaxpt.cli import gin_flags

FILES = ['models/mini_t5/mini.gin', 'methods/prompt_tuning.gin', 'runs/train.gin']


def test_known_macros_bind():
  gin_flags.parse(FILES, ['TRAIN_STEPS=7', "MODEL_DIR='x'"])
  import gin
  assert gin.query_parameter('TRAIN_STEPS/macro.value') == 7


def test_a_misspelt_macro_is_refused_with_a_suggestion():
  with pytest.raises(ValueError, match=r'TRAIN_STEP is not a macro .*did you mean TRAIN_STEPS'):
    gin_flags.parse(FILES, ['TRAIN_STEP=7'])
