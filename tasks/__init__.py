"""GLUE / SuperGLUE text-to-text tasks for prompt tuning, registered with SeqIO.

The package is split so that the pure-Python parts load without TensorFlow:

* `tasks.formats`, `tasks.labels`, `tasks.metrics`, `tasks.local`,
  `tasks.synthetic`, `tasks.features`: formatters, verbalizers, postprocessing,
  metrics, file readers, lengths (no SeqIO, no TensorFlow).
* `tasks.nlg`, `tasks.generation_metrics`: the table-to-text data (E2E,
  WebNLG 2017) and BLEU / chrF / ROUGE-L through sacrebleu and rouge-score.
* `tasks.registry`: the SeqIO tasks and mixtures (imports SeqIO/TensorFlow);
  importing it registers everything.

`import tasks` registers the SeqIO tasks at once when SeqIO is already loaded
(`import seqio; import tasks`, as T5X's `MIXTURE_OR_TASK_MODULE` does);
otherwise it stays light, and the first use of `tasks.get_task`,
`tasks.register_all` or `tasks.registry` imports SeqIO and registers them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from tasks import features, formats, labels, local, metrics, synthetic
from tasks.features import default_vocab_path, feature_lengths
from tasks.labels import label_to_id, label_words, postprocess
from tasks.local import set_data_dir

_REGISTRY_ATTRIBUTES = ('get_task', 'register_all', 'output_features', 't5_vocabulary',
                        'TASK_NAMES', 'MIXTURES')


def __getattr__(name: str) -> Any:
  """Loads `tasks.registry` (SeqIO, TensorFlow) on first use of its names."""
  if name == 'registry' or name in _REGISTRY_ATTRIBUTES:
    registry = importlib.import_module('tasks.registry')
    return registry if name == 'registry' else getattr(registry, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


if 'seqio' in sys.modules:
  importlib.import_module('tasks.registry')
