"""Generation metrics through maintained packages: sacrebleu and rouge-score.

Corpus BLEU and chrF with every reference of each input (sacrebleu takes a
variable number of references per segment as `None`-padded streams), ROUGE-L
as rouge-score's best F-measure over an input's references, averaged. Scores
are percentages. METEOR, NIST and CIDEr, also reported by the E2E challenge,
are left out: no maintained package computes them offline (NLTK's METEOR needs
WordNet data downloaded at run time).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Scores = Dict[str, float]
METRICS = ('bleu', 'chrf', 'rouge_l')


def reference_streams(references: Sequence[Sequence[str]]) -> List[List[Optional[str]]]:
  """Per-input reference lists -> sacrebleu's streams (stream k = every input's k-th reference)."""
  if any(not refs for refs in references):
    raise ValueError('every input needs at least one reference')
  width = max(len(refs) for refs in references)
  return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions for {len(references)} inputs')
  if not predictions:
    raise ValueError('no predictions to score')


def _sacrebleu_metric(name: str):
  from sacrebleu.metrics import BLEU, CHRF
  # force: E2E's references are tokenized text; scoring them as such is intended.
  return BLEU(force=True) if name == 'bleu' else CHRF()


def _segment_statistics(name: str, predictions: Sequence[str],
                        references: Sequence[Sequence[str]]) -> Tuple[object, np.ndarray]:
  """(sacrebleu metric, per-input sufficient statistics [inputs, k]) of BLEU or chrF.

  The corpus score is a function of the summed statistics: sacrebleu's own
  bootstrap (`sacrebleu.significance`) resamples them this way.
  """
  metric = _sacrebleu_metric(name)
  stats = metric._extract_corpus_statistics(list(predictions), reference_streams(references))
  return metric, np.asarray(stats, np.float64)


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """sacrebleu's corpus BLEU (13a tokenization, exp smoothing), multi-reference."""
  _check(predictions, references)
  metric = _sacrebleu_metric('bleu')
  return float(metric.corpus_score(list(predictions), reference_streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """sacrebleu's corpus chrF, multi-reference."""
  _check(predictions, references)
  metric = _sacrebleu_metric('chrf')
  return float(metric.corpus_score(list(predictions), reference_streams(references)).score)


def rouge_l_per_input(predictions: Sequence[str],
                      references: Sequence[Sequence[str]]) -> np.ndarray:
  """rouge-score's ROUGE-L F-measure (0-100) of each input against its best reference."""
  from rouge_score import rouge_scorer
  _check(predictions, references)
  scorer = rouge_scorer.RougeScorer(['rougeL'])
  return 100.0 * np.asarray([scorer.score_multi(list(refs), pred)['rougeL'].fmeasure
                             for pred, refs in zip(predictions, references)])


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Mean over inputs of ROUGE-L against the best reference."""
  return float(np.mean(rouge_l_per_input(predictions, references)))


_FUNCTIONS = {'bleu': bleu, 'chrf': chrf, 'rouge_l': rouge_l}


def generation_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                      metrics: Sequence[str] = METRICS) -> Scores:
  """{metric: score} for the named metrics (BLEU, chrF, ROUGE-L by default)."""
  unknown = [m for m in metrics if m not in _FUNCTIONS]
  if unknown:
    raise ValueError(f'unknown generation metrics {unknown}; expected some of {METRICS}')
  return {m: _FUNCTIONS[m](predictions, references) for m in metrics}


def bootstrap_interval(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       metric: str = 'bleu', *, samples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> Tuple[float, float]:
  """A percentile bootstrap interval of a corpus metric, resampling inputs with replacement."""
  _check(predictions, references)
  if metric not in _FUNCTIONS:
    raise ValueError(f'unknown generation metric {metric!r}; expected one of {METRICS}')
  picks = np.random.default_rng(seed).integers(0, len(predictions), (samples, len(predictions)))
  if metric == 'rouge_l':
    draws = rouge_l_per_input(predictions, references)[picks].mean(axis=1)
  else:
    scorer, stats = _segment_statistics(metric, predictions, references)
    draws = [scorer._compute_score_from_stats(stats[p].sum(axis=0)).score for p in picks]
  tail = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(draws, [tail, 100.0 - tail])
  return float(low), float(high)


def grouped_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   groups: Dict[str, Sequence[bool]],
                   metrics: Sequence[str] = METRICS) -> Dict[str, Scores]:
  """Scores of each named subset (e.g. WebNLG's 'seen' / 'unseen' / 'all' masks)."""
  out = {}
  for name, mask in groups.items():
    if len(mask) != len(predictions):
      raise ValueError(f'group {name!r} has {len(mask)} flags for {len(predictions)} inputs')
    index = [i for i, keep in enumerate(mask) if keep]
    if index:
      out[name] = generation_scores([predictions[i] for i in index],
                                    [references[i] for i in index], metrics)
  return out
