"""Pure-Python parts of `tasks/`: formats on real examples, verbalizers, metrics.

No TensorFlow or SeqIO here (`test_no_tensorflow_import` checks the modules in a
fresh interpreter); the SeqIO side is in test_seqio_tasks.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tasks import features, formats, labels, local, metrics, synthetic

BOOLQ_PASSAGE = (
    "Ethanol fuel -- All biomass goes through at least some of these steps: it needs to be grown, "
    "collected, dried, fermented, distilled, and burned. All of these steps require resources and "
    "an infrastructure. The total amount of energy input into the process compared to the energy "
    "released by burning the resulting ethanol fuel is known as the energy balance (or ``energy "
    "returned on energy invested''). Figures compiled in a 2007 report by National Geographic "
    "Magazine point to modest results for corn ethanol produced in the US: one unit of fossil-fuel "
    "energy is required to create 1.3 energy units from the resulting ethanol. The energy balance "
    "for sugarcane ethanol produced in Brazil is more favorable, with one unit of fossil-fuel "
    "energy required to create 8 from the ethanol. Energy balance estimates are not easily "
    "produced, thus numerous such reports have been generated that are contradictory. For "
    "instance, a separate survey reports that production of ethanol from sugarcane, which "
    "requires a tropical climate to grow productively, returns from 8 to 9 units of energy for "
    "each unit expended, as compared to corn, which only returns about 1.34 units of fuel energy "
    "for each unit of energy expended. A 2006 University of California Berkeley study, after "
    "analyzing six separate studies, concluded that producing ethanol from corn uses much less "
    "petroleum than producing gasoline.")

MULTIRC_PARAGRAPH = (
    "What causes a change in motion? The application of a force. Any time an object changes "
    "motion, a force has been applied. In what ways can this happen? Force can cause an object at "
    "rest to start moving. Forces can cause objects to speed up or slow down. Forces can cause a "
    "moving object to stop. Forces can also cause a change in direction. In short, forces cause "
    "changes in motion. The moving object may change its speed, its direction, or both. We know "
    "that changes in motion require a force. We know that the size of the force determines the "
    "change in motion. How much an objects motion changes when a force is applied depends on two "
    "things. It depends on the strength of the force. It also depends on the objects mass. Think "
    "about some simple tasks you may regularly do. You may pick up a baseball. This requires only "
    "a very small force. ")

# The first example of every validation set in ../shared/data, written out.
EXPECTED_FIRST_VALIDATION = {
    'boolq': ('boolq passage: ' + BOOLQ_PASSAGE +
              ' question: does ethanol take more energy make that produces', 'False'),
    'cb': ("cb hypothesis: Valence was helping premise: Valence the void-brain, Valence the "
           "virtuous valet. Why couldn't the figger choose his own portion of titanic anatomy to "
           "shaft? Did he think he was helping?", 'contradiction'),
    'copa': ('copa choice1: The toilet filled with water. choice2: Water flowed from the spout. '
             'premise: The man turned on the faucet. question: effect', 'choice2'),
    'multirc': ('multirc question: Would the mass of a baseball affect how much force you have '
                'to use to pick it up? answer: No paragraph: ' + MULTIRC_PARAGRAPH, 'False'),
    'rte': ('rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow '
            'of the actor Christopher Reeve, has died of lung cancer at age 44, according to the '
            'Christopher Reeve Foundation.', 'not_entailment'),
    'wic': ('wic sentence1: An emerging professional class. sentence2: Apologizing for losing '
            'your temper, even though you were badly provoked, showed real class. word: class',
            'False'),
    'wsc': ('wsc text: Bernard , who had not told the government official that he was less than '
            '21 when he filed for a homestead claim, did not consider that he had done anything '
            'dishonest. Still, * anyone * who knew that he was 19 years old could take his claim '
            'away from # him # .', 'False'),
    'sst2': ('sst2 sentence: one long string of cliches .', 'negative'),
}


def test_no_tensorflow_import():
  code = ('import sys, tasks, tasks.formats, tasks.labels, tasks.metrics, tasks.local, '
          'tasks.synthetic, tasks.features; '
          'assert "tensorflow" not in sys.modules and "seqio" not in sys.modules, "TF loaded"')
  subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('benchmark', sorted(EXPECTED_FIRST_VALIDATION))
def test_format_first_real_validation_example(shared_data, benchmark):
  example = next(local.local_examples(benchmark, 'validation', shared_data))
  assert (example['inputs'], example['targets']) == EXPECTED_FIRST_VALIDATION[benchmark]


def test_multirc_one_example_per_answer_with_group(shared_data):
  examples = list(local.local_examples('multirc', 'validation', shared_data))[:4]
  assert [e['targets'] for e in examples] == ['False', 'True', 'True', 'False']
  assert [e['inputs'].split(' paragraph: ')[0].split(' answer: ')[1] for e in examples] == [
      'No', 'Yes', 'Less the mass, less the force applied',
      'It depends on the shape of the baseball']
  assert {(e['idx/paragraph'], e['idx/question']) for e in examples} == {(0, 0)}
  assert [e['idx/answer'] for e in examples] == [0, 1, 2, 3]


def test_local_split_sizes(shared_data):
  assert sum(1 for _ in local.local_examples('rte', 'validation', shared_data)) == 277
  assert sum(1 for _ in local.local_examples('sst2', 'validation', shared_data)) == 872
  assert sum(1 for _ in local.local_examples('cb', 'train', shared_data)) == 250


def test_unlabelled_test_split_gets_unk(shared_data):
  example = next(local.local_examples('rte', 'test', shared_data))
  assert example['targets'] == '<unk>'
  assert example['inputs'].startswith('rte hypothesis: ')


def test_tfds_int_labels_match_official_spellings():
  record = {'premise': 'P.', 'hypothesis': 'H.', 'idx': 7}
  assert formats.format_example('rte', {**record, 'label': 1}) == formats.format_example(
      'rte', {**record, 'label': 'not_entailment'})
  assert formats.format_example('super_glue_cb_local', {**record, 'label': 2})[0] == {
      'inputs': 'cb hypothesis: H. premise: P.', 'targets': 'neutral', 'idx': 7}
  boolq = {'question': 'q', 'passage': 'p', 'idx': 0}
  assert formats.format_example('boolq', {**boolq, 'label': 1})[0]['targets'] == 'True'
  assert formats.format_example('boolq', {**boolq, 'label': True})[0]['targets'] == 'True'
  with pytest.raises(ValueError, match='not a rte label'):
    formats.format_example('rte', {**record, 'label': 'maybe'})


def test_record_official_passage_to_examples():
  official = {
      'idx': 5,
      'passage': {
          'text': 'Tom met Anna in Paris.\n@highlight\nTom visits Paris\n@highlight\nA trip',
          'entities': [{'start': 0, 'end': 2}, {'start': 8, 'end': 11}, {'start': 16, 'end': 20},
                       {'start': 34, 'end': 36}],
      },
      'qas': [{'query': '@placeholder met Anna.', 'idx': 9,
               'answers': [{'start': 0, 'end': 2, 'text': 'Tom'}]}],
  }
  (record,) = local.official_to_tfds('record', official)
  assert record['entities'] == ['Anna', 'Paris', 'Tom']
  assert formats.format_example('record', record) == [{
      'inputs': 'record query: @placeholder met Anna. entities: Anna, Paris, Tom passage: '
                'Tom met Anna in Paris. Tom visits Paris. A trip',
      'targets': 'Tom', 'idx/passage': 5, 'idx/query': 9, 'answers': ['Tom'],
  }]


def test_record_one_example_per_answer():
  record = {'passage': 'In Paris.', 'query': 'Go to @placeholder', 'entities': ['Paris'],
            'answers': ['Paris', 'Paris, France'], 'idx': {'passage': 0, 'query': 1}}
  examples = formats.format_example('super_glue_record', record)
  assert [e['targets'] for e in examples] == ['Paris', 'Paris, France']
  assert examples[0]['inputs'] == ('record query: Go to @placeholder entities: Paris passage: '
                                   'In Paris.')
  assert all(e['answers'] == ['Paris', 'Paris, France'] for e in examples)
  no_answer = formats.format_example('record', {**record, 'answers': []})
  assert [e['targets'] for e in no_answer] == ['<unk>']


def test_mrpc_and_qqp_hand_made():
  mrpc = {'sentence1': 'He left.', 'sentence2': 'He went away.', 'label': 1, 'idx': 3}
  assert formats.format_example('glue_mrpc', mrpc) == [{
      'inputs': 'mrpc sentence1: He left. sentence2: He went away.', 'targets': 'equivalent',
      'idx': 3}]
  qqp = {'question1': 'How old is Bob?', 'question2': 'Is Bob tall?', 'label': 0, 'idx': 4}
  assert formats.format_example('glue_qqp_local', qqp) == [{
      'inputs': 'qqp question1: How old is Bob? question2: Is Bob tall?',
      'targets': 'not_duplicate', 'idx': 4}]


def test_glue_tsv_readers(tmp_path):
  (tmp_path / 'glue' / 'mrpc').mkdir(parents=True)
  (tmp_path / 'glue' / 'qqp').mkdir(parents=True)
  (tmp_path / 'glue' / 'mrpc' / 'dev.tsv').write_text(
      'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tHe left.\tHe went "away".\n')
  (tmp_path / 'glue' / 'qqp' / 'train.tsv').write_text(
      'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhy?\tHow?\t0\n')
  assert list(local.local_examples('mrpc', 'validation', tmp_path)) == [{
      'inputs': 'mrpc sentence1: He left. sentence2: He went "away".', 'targets': 'equivalent',
      'idx': 0}]
  assert list(local.local_examples('qqp', 'train', tmp_path)) == [{
      'inputs': 'qqp question1: Why? question2: How?', 'targets': 'not_duplicate', 'idx': 0}]


@pytest.mark.parametrize('name, text, where', [
    ('stsa.binary.train', '1 a good film\nbroken\n', r'stsa\.binary\.train:2: expected'),
    ('stsa.binary.train', '1 fine\nx not a label\n', r'stsa\.binary\.train:2: expected'),
    ('superglue/rte/train.jsonl', '\n{"premise"\n', r'train\.jsonl:2: not a JSON'),
    ('glue/qqp/train.tsv', 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tWhy?\n',
     r'train\.tsv:2: the row does not have the 6 tab-separated fields'),
])
def test_a_malformed_local_file_names_file_and_line(tmp_path, name, text, where):
  path = tmp_path / ('sst2/' + name if name.startswith('stsa') else name)
  path.parent.mkdir(parents=True)
  path.write_text(text)
  benchmark = {'stsa.binary.train': 'sst2', 'superglue/rte/train.jsonl': 'rte',
               'glue/qqp/train.tsv': 'qqp'}[name]
  with pytest.raises(ValueError, match=where):
    list(local.local_examples(benchmark, 'train', tmp_path))


def test_wsc_mark_span_pronoun_first():
  record = {'text': 'He said that Tom is tall .', 'span1_index': 3, 'span1_text': 'Tom',
            'span2_index': 0, 'span2_text': 'He', 'label': 1, 'idx': 2}
  assert formats.format_example('wsc', record) == [{
      'inputs': 'wsc text: # He # said that * Tom * is tall .', 'targets': 'True', 'idx': 2}]


def test_verbalizers_both_ways():
  assert labels.label_words('super_glue_cb_local') == ('entailment', 'contradiction', 'neutral')
  assert labels.label_words('glue_sst2') == ('negative', 'positive')
  for task in ('boolq', 'cb', 'copa', 'multirc', 'rte', 'wic', 'wsc', 'sst2', 'mrpc', 'qqp'):
    for i, word in enumerate(labels.label_words(task)):
      assert labels.label_to_id(task, word) == i
      assert labels.id_to_label(task, i) == word
  assert labels.id_to_label('rte', -1) == '<unk>'
  with pytest.raises(ValueError, match='free-text'):
    labels.label_words('super_glue_record')
  with pytest.raises(ValueError, match='unknown benchmark'):
    labels.label_words('super_glue_foo')


def test_postprocess_unknown_text_is_minus_one():
  assert labels.postprocess('super_glue_rte_local', 'entailment') == 0
  assert labels.postprocess('rte', ' not_entailment\n') == 1
  assert labels.postprocess('boolq', b'true') == 1
  assert labels.postprocess('rte', 'maybe') == -1
  assert labels.postprocess('cb', '') == -1
  assert labels.postprocess('cb', b'\xff\xfe') == -1
  assert labels.postprocess('super_glue_record', ' Paris ') == 'Paris'


def test_accuracy_counts_unknown_as_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {'accuracy': 50.0}
  assert metrics.accuracy([-1], [-1]) == {'accuracy': 0.0}
  with pytest.raises(ValueError):
    metrics.accuracy([0], [0, 1])


def test_accuracy_and_f1_hand_computed():
  # tp = 1, fp = 1, fn = 2 (one of them the unknown -1): F1 = 2 / (2 + 1 + 2).
  scores = metrics.compute('glue_mrpc', [1, 1, 0, 0, 1], [1, 0, 1, 0, -1])
  assert scores == pytest.approx({'accuracy': 40.0, 'f1': 40.0})


def test_cb_macro_f1_hand_computed():
  # F1 per class: 0 -> 2/4, 1 -> 2/4, 2 -> 2/3 (the -1 is a miss of class 2).
  scores = metrics.compute('super_glue_cb_local', [0, 0, 1, 2, 2, 1], [0, 1, 1, 2, -1, 0])
  assert scores == pytest.approx({'accuracy': 50.0, 'macro_f1': 100 * (0.5 + 0.5 + 2 / 3) / 3})


def test_multirc_hand_computed():
  # Question a all right, b one wrong, c unknown; F1a: tp 2, fp 1, fn 1.
  scores = metrics.compute('multirc', [1, 0, 1, 0, 0, 1], [1, 0, 1, 0, 1, -1],
                           groups=['a', 'a', 'a', 'b', 'b', 'c'])
  assert scores == pytest.approx({'exact_match': 100 / 3, 'f1a': 100 * 2 / 3})
  with pytest.raises(ValueError, match='group'):
    metrics.compute('multirc', [1], [1])


def test_record_hand_computed():
  # EM 1, 0, 0; F1 1, 2/3 (P 2/4, R 2/2), 0.
  scores = metrics.compute('record', [['Barack Obama', 'Obama'], ['the United States'], ['Paris']],
                           ['obama', 'United States of America', 'London'])
  assert scores == pytest.approx({'em': 100 / 3, 'f1': 100 * 5 / 9})


def test_feature_lengths():
  assert features.feature_lengths(512, 8, 100) == {'inputs': 412, 'targets': 8}
  assert features.feature_lengths(64, 4) == {'inputs': 64, 'targets': 4}
  with pytest.raises(ValueError, match='leaves 0'):
    features.feature_lengths(100, 8, 100)
  with pytest.raises(ValueError, match='leaves 1'):
    features.feature_lengths(100, 8, 99)
  with pytest.raises(ValueError):
    features.feature_lengths(100, 1, 10)


def test_synthetic_deterministic_and_separable():
  first = list(synthetic.synthetic_examples('train', seed=3))
  assert first == list(synthetic.synthetic_examples('train', seed=3))
  assert first != list(synthetic.synthetic_examples('train', seed=4))
  assert len(first) == 512 and len(list(synthetic.synthetic_examples('validation'))) == 64
  assert not set(synthetic.WORDS[0]) & set(synthetic.WORDS[1])
  for example in first:
    words = example['inputs'].split(': ', 1)[1].split()
    label = labels.label_to_id('synthetic_two_class', example['targets'])
    assert set(words) <= set(synthetic.WORDS[label])
  assert 0.35 < sum(e['targets'] == 'tool' for e in first) / len(first) < 0.65


def test_missing_data_dir_errors(tmp_path, monkeypatch):
  monkeypatch.delenv(local.ENV_VAR, raising=False)
  local.set_data_dir(None)
  with pytest.raises(FileNotFoundError, match='JAXPT_DATA_DIR'):
    local.get_data_dir()
  monkeypatch.setenv(local.ENV_VAR, str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    local.get_data_dir()
  try:
    local.set_data_dir(tmp_path)
    assert local.get_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=r'superglue/rte/val\.jsonl.*JAXPT_DATA_DIR'):
      next(local.read_records('rte', 'validation'))
  finally:
    local.set_data_dir(None)
