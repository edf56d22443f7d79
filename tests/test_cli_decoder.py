"""`jaxpt train / eval / infer` on decoder-only (GPT-2 / Llama) backbones: batches in T5X's
decoder-only layout, the backbone's own tokenizer.json, one command end to end."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

import jaxpt
from jaxpt.data.features import DecoderOnlyBatches, decoder_only_features
from jaxpt.models.backbones import init_params
from jaxpt.models.decoder_config import decoder_preset

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / 'examples' / 'fruit_or_tool'


def _words() -> list:
  words = set()
  for name in ('train.tsv', 'dev.tsv'):
    for line in (EXAMPLE / name).read_text().splitlines()[1:]:
      words.update(line.split())
  return sorted(words)


def tiny_decoder_dir(family: str, directory: pathlib.Path) -> str:
  """A random `models/<family>/tiny.gin`-shaped backbone saved as a transformers directory
  (`jaxpt.save_hf`) with a word-level tokenizer.json over the example files' words."""
  from tests.hf_fixtures import word_tokenizer
  config = decoder_preset(family, 'tiny')
  jaxpt.save_hf(jaxpt.Model(config, init_params(config, jax.random.key(0))), directory)
  word_tokenizer(_words(), directory)
  return str(directory)


# ------------------------------------------------------------------------------- batches


def test_user_file_batches_are_decoder_only_features_of_the_examples(tmp_path):
  """A TRAIN_FILE's batches for a decoder-only backbone: each row is an example's input ids +
  EOS then its label's ids + EOS (the tokenizer's EOS), loss on the label part only."""
  from jaxpt.cli import runs
  from jaxpt.vocabulary import TokenizerVocabulary, backbone_vocabulary
  from jaxpt.data.user_files import read_examples
  path = tiny_decoder_dir('gpt2', tmp_path / 'gpt2')
  vocab = backbone_vocabulary(path)
  assert isinstance(vocab, TokenizerVocabulary) and vocab.eos_id == 95  # config.json's
  data = runs._file_data(str(EXAMPLE / 'train.tsv'), None, vocab, {'inputs': 16, 'targets': 4},
                         4, 8, 0, input_template=None, input_field='sentence',
                         target_field='label', labels=['fruit', 'tool'], eval_examples=None)
  examples = {e['inputs']: e['targets'] for e in read_examples(
      str(EXAMPLE / 'train.tsv'), input_field='sentence', target_field='label')}
  batch = DecoderOnlyBatches(data.batches)(3)
  assert set(batch) == {'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights'}
  assert batch['decoder_target_tokens'].shape == (8, 12 + 4)  # inputs less the prompt + targets
  for row, weights in zip(batch['decoder_target_tokens'], batch['decoder_loss_weights']):
    inputs, targets = row[weights == 0], row[weights == 1]
    inputs = inputs[inputs != 0]
    assert inputs[-1] == targets[-1] == 95
    text = ' '.join(vocab.decode([i]) for i in inputs[:-1])
    assert examples[text] == vocab.decode(targets[:-1])
  expected = decoder_only_features(data.batches(3)['encoder_input_tokens'],
                                   data.batches(3)['decoder_target_tokens'])
  for key, value in expected.items():
    np.testing.assert_array_equal(batch[key], value)


def test_seqio_batches_equal_seqio_prefix_lm_features():
  """A SeqIO task's batches for a decoder-only backbone equal SeqIO's own T5X decoder-only
  features (PrefixLMFeatureConverter, unpacked, loss on targets only) of the same stream."""
  import seqio

  import tasks
  from jaxpt.data.seqio_batches import TrainBatches
  lengths = {'inputs': 24, 'targets': 4}
  ours = DecoderOnlyBatches(TrainBatches('synthetic_two_class', lengths, 4, seed=3))
  tasks.get_task('synthetic_two_class')
  ds = seqio.get_dataset('synthetic_two_class', lengths, dataset_split='train', shuffle=True,
                         num_epochs=None, seed=3,
                         feature_converter=seqio.PrefixLMFeatureConverter(pack=False))
  theirs = next(ds.batch(4).skip(1).as_numpy_iterator())
  got = ours(1)
  for key in ('decoder_target_tokens', 'decoder_input_tokens', 'decoder_loss_weights'):
    np.testing.assert_array_equal(got[key], theirs[key], err_msg=key)
  assert got['decoder_loss_weights'].sum() > 0


# ------------------------------------------------------------------ vocabulary and logits


def test_decoder_directories_use_their_tokenizer_json(tmp_path, vocab_path, capsys):
  from jaxpt.cli import runs
  from jaxpt.vocabulary import Vocabulary, backbone_vocabulary
  path = tiny_decoder_dir('llama', tmp_path / 'llama')
  vocab = backbone_vocabulary(path)
  assert vocab.eos_id == 2 and vocab.vocab_size == 96  # Llama's </s>
  ids = vocab.encode('apple saw')
  assert vocab.decode(ids + [2, 7]) == 'apple saw'  # stops at EOS
  runs._check_vocabulary(vocab, 96, path)
  with pytest.raises(ValueError, match='tokenized for another backbone'):
    runs._check_vocabulary(Vocabulary(str(vocab_path)), 96, path)  # a T5 task on Llama
  runs._report_truncation('x.tsv', ['apple <pad> saw', 'apple'], vocab, 16)
  assert ("1 of 2 inputs in x.tsv hold the piece with id 0 ('<pad>')"
          in capsys.readouterr().out)
  (tmp_path / 'llama' / 'tokenizer.json').unlink()
  with pytest.raises(FileNotFoundError, match='without its tokenizer'):
    backbone_vocabulary(path)


def test_model_logits_takes_one_token_array_on_decoder_models():
  from jaxpt.models.causal import CausalLM
  config = decoder_preset('llama', 'tiny')
  model = jaxpt.Model(config, init_params(config, jax.random.key(0)))
  tokens = np.array([[5, 6, 7, 8], [9, 10, 11, 0], [0, 0, 12, 13]], np.int32)
  got = model.logits(tokens)
  want = CausalLM(config).apply({'params': model.params}, tokens, tokens != 0).logits
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
  # Left- and right-padded rows agree on their real tokens.
  np.testing.assert_allclose(got[2, 2:], model.logits(np.array([[12, 13, 0, 0]]))[0, :2],
                             atol=1e-5)
  with pytest.raises(ValueError, match='one token array'):
    model.logits(tokens, tokens)


# ----------------------------------------------------------------------- the jaxpt command


def _main(args, capsys):
  import gin

  from jaxpt.cli.main import main
  gin.clear_config()
  main(args)
  return capsys.readouterr().out


@pytest.mark.slow  # 80-100 s per family on 2 shared CPU cores (train, eval, infer compile)
@pytest.mark.parametrize('family,method,flags', [
    ('gpt2', 'prompt_tuning', ['--gin.PROMPT_LENGTH=4',
                               "--gin.jaxpt.methods.PromptTuning.initializer='class_labels'"]),
    ('llama', 'prefix_tuning', ['--gin.PREFIX_LENGTH=2',
                                '--gin.jaxpt.methods.PrefixTuning.hidden_dim=8'])])
def test_train_eval_infer_on_a_tiny_decoder(tmp_path, capsys, family, method, flags):
  backbone = tiny_decoder_dir(family, tmp_path / family)
  run = tmp_path / 'run'
  common = [f'--gin_file=models/{family}/tiny.gin', f"--gin.INITIAL_CHECKPOINT_PATH='{backbone}'",
            f"--gin.MODEL_DIR='{run}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}",
            "--gin.INPUT_FIELD='sentence'", "--gin.TARGET_FIELD='label'"]
  out = _main(['train', *common, f'--gin_file=methods/{method}.gin', '--gin_file=runs/train.gin',
               *flags, f"--gin.TRAIN_FILE='{EXAMPLE / 'train.tsv'}'",
               f"--gin.VALIDATION_FILE='{EXAMPLE / 'dev.tsv'}'", "--gin.LABELS=['fruit', 'tool']",
               '--gin.TRAIN_STEPS=3', '--gin.BATCH_SIZE=4', '--gin.jaxpt.train.eval_every=3',
               '--gin.jaxpt.train.eval_examples=8', '--gin.jaxpt.train.log_every=1'], capsys)
  assert 'data: training unpacked (packing builds T5' in out  # PACK=True in runs/train.gin
  assert f'{family}/tiny' in out  # the start line names the preset
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  assert len(train) == 3 and all(np.isfinite(r['loss']) and r['loss'] > 0 for r in train)
  # 4 rows of one label word + EOS each: the loss counts the targets only
  assert all(r['num_tokens'] == 8 for r in train), train
  assert any(r['split'] == 'eval' for r in records)
  assert (run / 'prompt' / 'jaxpt_prompt.json').is_file()

  out = _main(['eval', *common, '--gin_file=runs/eval.gin',
               f"--gin.EVAL_FILE='{EXAMPLE / 'dev.tsv'}'",
               '--gin.jaxpt.evaluate.max_examples=16'], capsys)
  record = json.loads((run / 'eval_metrics.jsonl').read_text().splitlines()[-1])
  assert record['examples'] == 16 and 0.0 <= record['accuracy'] <= 100.0

  out = _main(['infer', *common, '--gin_file=runs/infer.gin',
               f"--gin.INPUT_FILE='{EXAMPLE / 'dev.tsv'}'",
               '--gin.jaxpt.infer.max_decode_length=3'], capsys)
  rows = [json.loads(line) for line in (run / 'predictions.jsonl').read_text().splitlines()]
  assert len(rows) == 128 and rows[0]['target'] in ('fruit', 'tool')
  vocab = json.loads((pathlib.Path(backbone) / 'tokenizer.json').read_text())['model']['vocab']
  words = {w for w in vocab if not w.startswith('<') or w.startswith('<filler')}
  # decoded with the backbone's tokenizer: its words (the random model's picks), no
  # special tokens, nothing after EOS
  assert all(set(r['prediction'].split()) <= words for r in rows), rows[:4]
  assert any(r['prediction'] for r in rows)


def test_gpt2_rows_longer_than_its_position_table_are_refused():
  from jaxpt.cli import runs
  config = decoder_preset('gpt2', 'tiny')  # 64 positions
  runs._check_positions(config, 4, 64)
  with pytest.raises(ValueError, match="GPT-2's 64 positions"):
    runs._check_positions(config, 4, 68)
  runs._check_positions(decoder_preset('llama', 'tiny'), 4, 4096)  # RoPE: no table


@pytest.mark.slow  # about 75 s on 2 shared CPU cores (SeqIO, two compiles)
def test_train_and_eval_on_a_seqio_task_with_a_random_gpt2(tmp_path, capsys):
  """The SeqIO path: a random `models/gpt2/tiny.gin` backbone wide enough for the byte
  vocabulary of `synthetic_two_class`, trained and scored by rank classification."""
  common = ['--gin_file=models/gpt2/tiny.gin', '--gin.jaxpt.decoder_preset.vocab_size=512',
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
            "--gin.MIXTURE_OR_TASK_NAME='synthetic_two_class'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 40, 'targets': 4}"]
  out = _main(['train', *common, '--gin_file=methods/prompt_tuning.gin',
               '--gin_file=runs/train.gin', '--gin_file=local_tiny.gin',
               '--gin.TRAIN_STEPS=2', '--gin.jaxpt.train.eval_every=2'], capsys)
  assert 'data: training unpacked (packing builds T5' in out
  assert 'eval at step 2: accuracy' in out
  _main(['eval', *common, '--gin_file=runs/eval.gin', '--gin.jaxpt.evaluate.max_examples=8'],
        capsys)
  record = json.loads((tmp_path / 'run' / 'eval_metrics.jsonl').read_text().splitlines()[-1])
  assert record['task'] == 'synthetic_two_class' and record['examples'] == 8
  assert 0.0 <= record['accuracy'] <= 100.0


# ------------------------------------------------------------------------ the mini GPT-2


def test_mini_gpt2_reads_the_mini_vocabulary_without_sentinels():
  from jaxpt.assets import mini_gpt2_path, mini_t5_path
  from jaxpt.vocabulary import backbone_vocabulary
  gpt2, t5 = backbone_vocabulary(mini_gpt2_path()), backbone_vocabulary(mini_t5_path())
  assert gpt2.path.endswith('spiece.model') and gpt2.extra_ids == 0
  assert gpt2.vocab_size == 8000 == jaxpt.load_model(mini_gpt2_path()).config.vocab_size
  assert t5.vocab_size == 8100  # the mini T5 keeps T5's 100 sentinels
  text = 'a pretrained toy'
  assert list(gpt2.encode(text)) == list(t5.encode(text))


@pytest.mark.slow  # about 30 s: SeqIO, compile, beam-free greedy eval of 4 examples
def test_mini_gpt2_trains_on_a_seqio_generation_task(tmp_path, capsys, monkeypatch,
                                                      shared_data):
  """models/mini_gpt2/mini.gin with e2e_local_mini (the mini vocabulary, 8100 ids with T5's
  sentinels) on the 8000-row mini GPT-2: accepted (same SentencePiece model, text never
  holds sentinels), trained, and evaluated by BLEU."""
  monkeypatch.setenv('JAXPT_DATA_DIR', str(shared_data))
  run = tmp_path / 'run'
  out = _main(['train', '--gin_file=models/mini_gpt2/mini.gin', '--gin_file=methods/prefix_tuning.gin',
               '--gin_file=runs/train.gin', f"--gin.MODEL_DIR='{run}'",
               "--gin.MIXTURE_OR_TASK_NAME='e2e_local_mini'",
               "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 48}",
               '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=4', '--gin.jaxpt.train.eval_examples=4'],
              capsys)
  assert 'mini_gpt2' in out and 'train loss' in out
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in records if r['split'] == 'eval']
  assert evals and all(0.0 <= r['bleu'] <= 100.0 and 'rouge_l' in r for r in evals)
  assert 'eval bleu' in out.splitlines()[-1]
