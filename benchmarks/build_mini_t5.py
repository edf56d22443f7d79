"""Builds jaxpt/assets/mini_t5 from the pretraining and LM-adaptation runs, with its numbers.

    python benchmarks/build_mini_t5.py --pretrain_dir runs/mini_pretrain \
        --lm_adapt_dir runs/mini_lm_adapt --out_dir jaxpt/assets/mini_t5

Writes the LM-adapted backbone (jaxpt model directory, float32) into
`--out_dir` beside its `spiece.model`, and `metadata.json`: the held-out
span-corruption and prefix-LM losses of the untrained model (the same random
init the pretraining started from), the pretrained one and the LM-adapted
one; steps and wall times of both runs; the corpus manifest; the machine.
The exact commands of the runs are in README.md there.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import re
import shutil
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxpt  # noqa: E402
from jaxpt.data import pretraining  # noqa: E402
from jaxpt.evaluate import held_out  # noqa: E402
from jaxpt.models.t5 import init_params  # noqa: E402
from tasks import corpus, features  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from interleave import cpu_name  # noqa: E402

SPAN_LENGTHS = {'inputs': 128, 'targets': 32}  # gin/runs/pretrain.gin
PREFIX_LENGTHS = {'inputs': 96, 'targets': 96}  # gin/runs/lm_adapt.gin
VOCAB_SIZE = 8100  # 8000 pieces + 100 extra ids


def machine() -> dict:
  """The machine an asset was built on, for its metadata.json."""
  return {'platform': platform.platform(), 'processor': platform.processor(),
          'cpu': cpu_name(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'device': str(jax.devices()[0])}


def write_asset(out_dir: str, metadata: dict, readme_text: str) -> None:
  """Writes an asset's metadata.json and README.md and says the directory's size."""
  with open(os.path.join(out_dir, 'metadata.json'), 'w') as f:
    json.dump(metadata, f, indent=2)
  with open(os.path.join(out_dir, 'README.md'), 'w') as f:
    f.write(readme_text)
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs)
  print(f'wrote {out_dir}: {size / 1e6:.1f} MB')


def held_out_losses(model: jaxpt.Model, documents) -> dict:
  """Span-corruption and prefix-LM loss on the corpus's held-out split (seed 0)."""
  return {
      'span_corruption': held_out.mean_loss(model, list(pretraining.objective_batches(
          documents, 'span_corruption', VOCAB_SIZE, SPAN_LENGTHS, 32))),
      'prefix_lm': held_out.mean_loss(model, list(pretraining.objective_batches(
          documents, 'prefix_lm', VOCAB_SIZE, PREFIX_LENGTHS, 32))),
  }


def run_info(model_dir: str) -> dict:
  """Steps, examples/s and wall time (config.gin written at start -> model/ at the end)."""
  records = [json.loads(line) for line in open(os.path.join(model_dir, 'metrics.jsonl'))]
  train = [r for r in records if r.get('split') == 'train']
  start = os.path.getmtime(os.path.join(model_dir, 'config.gin'))
  end = os.path.getmtime(os.path.join(model_dir, 'model', 'jaxpt_model.json'))
  return {'steps': train[-1]['step'], 'final_train_loss': round(train[-1]['loss'], 4),
          'wall_seconds': round(end - start), 'operative_config': open(
              os.path.join(model_dir, 'operative_config.gin')).read()}


COMMANDS = """\
export JAXPT_DATA_DIR=../shared/data   # the corpus is built from it at run time
python -m tasks.corpus --out_dir runs/corpus --vocab_size 8000   # manifest + spiece.model
jaxpt train --gin_file=models/mini_t5/mini.gin --gin_file=methods/model_tuning.gin \\
  --gin_file=runs/train.gin --gin_file=runs/pretrain.gin --gin.MODEL_DIR="'runs/mini_pretrain'" \\
  --gin.TRAIN_STEPS={pretrain_steps} --gin.jaxpt.train.make_optimizer.decay_steps={pretrain_decay}
jaxpt train --gin_file=models/mini_t5/mini.gin --gin_file=methods/model_tuning.gin \\
  --gin_file=runs/train.gin --gin_file=runs/pretrain.gin --gin_file=runs/lm_adapt.gin \\
  --gin.MODEL_DIR="'runs/mini_lm_adapt'" --gin.INITIAL_CHECKPOINT_PATH="'runs/mini_pretrain/model'" \\
  --gin.TRAIN_STEPS={lm_steps}
python benchmarks/build_mini_t5.py     # this directory, metadata.json and this README
"""


def gin_value(operative_config: str, name: str) -> str:
  """The value bound to `name` (a macro or `scope/fn.arg`) in an operative gin config."""
  match = re.search(rf'^(?:\S+/)?{re.escape(name)} = (.+)$', operative_config, re.M)
  if match is None:
    raise KeyError(f'{name} is not in the operative config')
  return match.group(1).strip()


def decay_steps(run: dict) -> int:
  """The step a run's linear learning-rate decay reaches 0 (`%TRAIN_STEPS` resolved)."""
  g = lambda name: gin_value(run['operative_config'], name)
  return int(g('make_optimizer.decay_steps').replace('%TRAIN_STEPS', g('TRAIN_STEPS')))


def recipe(run: dict) -> str:
  """'batch B, adamw lr L (warmup W, linear decay to 0 at D), ...' from a run's gin config."""
  g = lambda name: gin_value(run['operative_config'], name)
  lengths = ast.literal_eval(g('TASK_FEATURE_LENGTHS'))
  optimizer = ast.literal_eval(g('make_optimizer.name'))
  return (f"inputs {lengths['inputs']} / targets {lengths['targets']}, batch {g('BATCH_SIZE')}, "
          f"{optimizer} lr "
          f"{float(g('make_optimizer.learning_rate')):g} (warmup {g('WARMUP_STEPS')}, linear "
          f"decay to 0 at step {decay_steps(run)}), weight decay {float(g('make_optimizer.weight_decay')):g}, clip "
          f"{float(g('make_optimizer.clip_norm')):g}")


def readme(m: dict) -> str:
  """The asset's README from its metadata."""
  loss = m['held_out_loss_nats_per_target_token']
  rows = '\n'.join(f"| {name} | {v['span_corruption']:.3f} | {v['prefix_lm']:.3f} |"
                   for name, v in loss.items())
  corpus_rows = '\n'.join(f"| `{s['file']}` | {s['texts']:,} | {s['documents_kept']:,} | "
                          f"`{s['sha256'][:16]}` |" for s in m['corpus']['sources'])
  splits = m['corpus']['splits']
  pre, lm = m['pretrain'], m['lm_adapt']
  commands = COMMANDS.format(pretrain_steps=pre['steps'], pretrain_decay=decay_steps(pre),
                             lm_steps=lm['steps'])
  return f"""# jaxpt's mini T5 backbone

A T5 1.1-style encoder-decoder (gated GELU, untied logits, d_model 128, 4 heads x 32, MLP 512,
3 + 3 layers, {m['parameters']:,} parameters, float32) pretrained by jaxpt with T5's span
corruption, then LM-adapted with the prefix-LM objective, on this machine's CPU. A toy made
to give prompt tuning a pretrained (not random) frozen model offline; it is not T5 and knows
little English.

- Load: `jaxpt.load_model(jaxpt.assets.mini_t5_path())`; tokenizer `spiece.model`
  (SentencePiece unigram, 8000 pieces trained on the corpus, pad 0 / EOS 1 / UNK 2 as T5's;
  SeqIO adds 100 sentinels: {m['vocabulary']['ids_with_extra_ids']} ids, `<extra_id_0>` = 8099;
  the embedding has 8192 rows), sha256 `{m['vocabulary']['sha256'][:16]}...`. The `*_mini`
  SeqIO tasks use it.
- Pretraining (`gin/runs/pretrain.gin`): `corpus_span_corruption_mini` (15% noise, mean span
  3), {recipe(pre)}: {pre['steps']} steps in {pre['wall_seconds'] / 60:.0f} min (final train
  loss {pre['final_train_loss']}).
- LM adaptation (`gin/runs/lm_adapt.gin`): `corpus_prefix_lm_mini`, {recipe(lm)}:
  {lm['steps']} steps in {lm['wall_seconds'] / 60:.0f} min (final train loss
  {lm['final_train_loss']}).
- Machine: {m['machine'].get('cpu') or m['machine']['processor'] or 'x86_64'},
  {m['machine']['cpu_count']} CPU cores, {m['machine']['device']}, jax {m['machine']['jax']}.

## Held-out loss (nats per target token, EOS included)

On the corpus's held-out split ({splits['validation']['documents']} documents,
{m['held_out_tokens']:,} tokens), seed 0; "untrained" is the random init the pretraining started
from (same config, `init_params(config, jax.random.key(0))`).

| model | span corruption | prefix LM |
|---|---|---|
{rows}

## Corpus (training splits only; `tasks/corpus.py`)

| file | texts | documents kept (deduplicated) | sha256 of the file |
|---|---|---|---|
{corpus_rows}

Built corpus: train {splits['train']['documents']:,} documents, {splits['train']['words']:,}
words, sha256 `{splits['train']['sha256']}`; held out {splits['validation']['documents']}
documents, sha256 `{splits['validation']['sha256']}`.

## Reproduce

```bash
{commands}```

The operative gin configs are in `metadata.json`. Rebuilding the vocabulary gives the same
pieces and scores, but not the same file bytes: SentencePiece records the training paths in
the model.

## Prompt tuning on it

The paper's comparison in miniature (SST-2 and RTE; prompt tuning, prefix tuning, full model
tuning, peft) is made by `benchmarks/paper_comparison.py`; its results are in the repository
README.
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pretrain_dir', default='runs/mini_pretrain')
  parser.add_argument('--lm_adapt_dir', default='runs/mini_lm_adapt')
  parser.add_argument('--out_dir', default='jaxpt/assets/mini_t5')
  args = parser.parse_args()

  pretrained = jaxpt.load_model(os.path.join(args.pretrain_dir, 'model'))
  adapted = jaxpt.load_model(os.path.join(args.lm_adapt_dir, 'model'))
  untrained = jaxpt.Model(pretrained.config, init_params(pretrained.config, jax.random.key(0)))
  vocab = features.mini_vocab_path()
  documents = pretraining.encode_documents(corpus.documents('validation'), vocab)
  losses = {name: held_out_losses(m, documents) for name, m in
            (('untrained', untrained), ('pretrained', pretrained), ('lm_adapted', adapted))}
  print(json.dumps(losses, indent=2))

  keep = os.path.join(args.out_dir, 'spiece.model')
  if os.path.exists(os.path.join(args.out_dir, 'params')):
    shutil.rmtree(os.path.join(args.out_dir, 'params'))
  jaxpt.save_model(adapted, args.out_dir)
  metadata = {
      'config': adapted.config.to_dict(),
      'parameters': adapted.num_params(),
      'vocabulary': {'file': 'spiece.model', 'pieces': 8000, 'ids_with_extra_ids': VOCAB_SIZE,
                     'sha256': hashlib.sha256(open(keep, 'rb').read()).hexdigest()},
      'held_out_loss_nats_per_target_token': losses,
      'held_out_tokens': sum(map(len, documents)),
      'pretrain': run_info(args.pretrain_dir),
      'lm_adapt': run_info(args.lm_adapt_dir),
      'corpus': corpus.manifest(),
      'machine': machine(),
  }
  write_asset(args.out_dir, metadata, readme(metadata))


if __name__ == '__main__':
  main()
