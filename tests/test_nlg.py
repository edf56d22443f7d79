"""E2E / WebNLG readers and the generation metrics (sacrebleu, rouge-score)."""

from __future__ import annotations

import pytest

from tasks import generation_metrics as gm
from tasks import nlg


@pytest.fixture(scope='module')
def data_dir(shared_data):
  if not (shared_data / 'nlg').is_dir():
    pytest.skip(f'no NLG data at {shared_data / "nlg"}')
  return str(shared_data)


def test_e2e_splits_match_the_files(data_dir):
  train = nlg.e2e_examples('train', data_dir)
  validation = nlg.e2e_examples('validation', data_dir)
  test = nlg.e2e_examples('test', data_dir)
  # The README: valid 4672 pairs over 547 MRs, test 4693 pairs over 630 MRs.
  assert len(train) + len(validation) == 547
  assert len(validation) == nlg.E2E_VALIDATION_MRS
  assert sum(len(e.references) for e in train + validation) == 4672
  assert (len(test), sum(len(e.references) for e in test)) == (630, 4693)
  assert not {e.input for e in train} & {e.input for e in validation}
  assert test[0].input.startswith('name : ') and len(test[0].references) > 1
  assert len(nlg.training_pairs(train)) == sum(len(e.references) for e in train)


def test_webnlg_splits_categories_and_linearization(data_dir):
  train = nlg.webnlg_examples('train', data_dir)
  dev = nlg.webnlg_examples('validation', data_dir)
  test = nlg.webnlg_examples('test', data_dir)
  assert (len(train), len(dev), len(test)) == (6940, 872, 1862)
  assert all(e.seen for e in train + dev)
  seen = nlg.webnlg_seen_categories(data_dir)
  assert len(seen) == 10 and 'Airport' in seen and 'Artist' not in seen
  unseen = {e.category for e in test if not e.seen}
  assert unseen == {'Artist', 'Athlete', 'CelestialBody', 'MeanOfTransportation', 'Politician'}
  first = test[0]
  assert first.input == 'Abilene Regional Airport : cityServed : Abilene, Texas'
  assert first.references[0] == 'Abilene, Texas is served by the Abilene regional airport.'


def test_linearize_triples_rejects_malformed():
  assert nlg.linearize_triples(['A_b | p | "c d"', 'x | q | y']) == 'A b : p : c d | x : q : y'
  with pytest.raises(ValueError, match='3 fields'):
    nlg.linearize_triples(['only | two'])


def test_e2e_reader_names_a_bad_line(tmp_path):
  path = tmp_path / 'bad.txt'
  path.write_text('name : A||A is a place .\nno separator here\n')
  with pytest.raises(ValueError, match=r'bad.txt:2'):
    nlg.read_e2e_file(path)


REFS = [('the cat sat on the mat', 'a cat was sitting on the mat'),
        ('it is raining today',),
        ('dogs bark at night', 'at night the dogs bark', 'the dogs are barking at night')]


def test_any_one_reference_scores_perfectly():
  # Variable reference counts: predicting any one reference of each input is perfect.
  for pick in (0, -1):
    preds = [refs[pick] for refs in REFS]
    scores = gm.generation_scores(preds, REFS)
    assert scores['bleu'] == pytest.approx(100.0)
    assert scores['chrf'] == pytest.approx(100.0)
    assert scores['rouge_l'] == pytest.approx(100.0)


def test_scores_agree_with_the_libraries_called_directly():
  import sacrebleu
  from rouge_score import rouge_scorer
  preds = ['the cat sat on a mat', 'it rains today', 'the dogs bark at night']
  direct = sacrebleu.corpus_bleu(preds, [[r[0] for r in REFS], [r[1] if len(r) > 1 else None
                                                              for r in REFS],
                                         [r[2] if len(r) > 2 else None for r in REFS]]).score
  assert gm.bleu(preds, REFS) == pytest.approx(direct)
  scorer = rouge_scorer.RougeScorer(['rougeL'])
  best = [max(scorer.score(ref, p)['rougeL'].fmeasure for ref in refs)
          for p, refs in zip(preds, REFS)]
  assert gm.rouge_l(preds, REFS) == pytest.approx(100 * sum(best) / 3)
  # Only the first reference: lower BLEU than with all of them.
  assert gm.bleu(preds, [r[:1] for r in REFS]) < gm.bleu(preds, REFS)


def test_bootstrap_interval_brackets_the_score():
  preds = ['the cat sat on a mat', 'it rains today', 'the dogs bark at night'] * 20
  refs = REFS * 20
  for metric in gm.METRICS:
    score = gm.generation_scores(preds, refs, [metric])[metric]
    low, high = gm.bootstrap_interval(preds, refs, metric, samples=200)
    assert low <= score <= high and low < high
    assert gm.bootstrap_interval(preds, refs, metric, samples=200) == (low, high)


def test_grouped_scores_and_bad_input():
  preds = [r[0] for r in REFS]
  groups = gm.grouped_scores(preds, REFS, {'all': [True] * 3, 'first': [True, False, False],
                                           'none': [False] * 3})
  assert set(groups) == {'all', 'first'}
  assert groups['first']['bleu'] == pytest.approx(100.0)
  with pytest.raises(ValueError, match='2 predictions for 3 inputs'):
    gm.bleu(preds[:2], REFS)
  with pytest.raises(ValueError, match='at least one reference'):
    gm.bleu(['x'], [()])
  with pytest.raises(ValueError, match='unknown generation metrics'):
    gm.generation_scores(preds, REFS, ['meteor'])


class _Letters:
  """A toy vocabulary: id k > 1 is the letter chr(ord('a') + k % 26)."""

  def decode(self, ids):
    return ' '.join(chr(ord('a') + i % 26) for i in ids)


def test_score_split_decodes_generation_tasks_with_beams_against_every_reference():
  import jax
  import numpy as np
  from jaxpt.evaluate.splits import score_split
  from jaxpt.models.t5 import init_params
  from jaxpt.prompted.base import prompted_model
  from tests.tiny_configs import CONFIG
  model = prompted_model(CONFIG)
  params = {'backbone': init_params(CONFIG, jax.random.key(0)), 'method': {}}
  inputs = np.asarray([[5, 6, 7, 1], [8, 9, 1, 0], [10, 1, 0, 0]], np.int32)
  references = [['a b', 'c d'], ['e'], ['f g h']]
  examples = {'inputs': inputs, 'target_texts': [r[0] for r in references],
              'references': references, 'vocabulary': _Letters()}
  out = {s: score_split(model, params, 'e2e_local', examples, batch_size=2, max_decode_length=6,
                        strategy=s, num_beams=3) for s in ('greedy', 'beam')}
  for result in out.values():
    assert set(result['metrics']) == set(gm.METRICS) and len(result['predictions']) == 3
    assert result['targets'] == [r[0] for r in references]
  # The scores are those of the decoded texts against all references.
  beam = out['beam']
  assert beam['metrics'] == gm.generation_scores(beam['predictions'], references)
