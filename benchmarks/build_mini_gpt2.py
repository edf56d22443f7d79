"""Builds jaxpt/assets/mini_gpt2: a GPT-2-architecture decoder pretrained as a causal LM.

    JAXPT_DATA_DIR=../shared/data python benchmarks/build_mini_gpt2.py --steps 1000

One command: the offline corpus's training split (`tasks.corpus`, training splits only)
tokenized with the mini T5's SentencePiece vocabulary, every document followed by EOS,
concatenated and cut into rows of `--length` tokens; next-token prediction on those rows
(T5X's decoder-only layout with no inputs: `decoder_only_features`, start id 0) through
`jaxpt.train.loop.train`, every parameter trained; the held-out loss (the corpus's
held-out split, cut the same way) of the random init and of the trained model; then the
asset directory: an HF GPT-2 directory (`jaxpt.save_hf`), `spiece.model`,
`metadata.json` and `README.md`. No TensorFlow or SeqIO.

A run directory (`--run_dir`, default runs/mini_gpt2) holds metrics.jsonl and the
training checkpoints; an interrupted build resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from typing import Dict, List

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxpt  # noqa: E402
from jaxpt.assets import mini_t5_path  # noqa: E402
from jaxpt.data.pretraining import causal_lm_batch, causal_lm_rows, encode_documents  # noqa: E402
from jaxpt.evaluate import held_out  # noqa: E402
from jaxpt.methods.model_tuning import ModelTuning  # noqa: E402
from jaxpt.methods.split import EVERYTHING  # noqa: E402
from jaxpt.models.backbones import init_params  # noqa: E402
from jaxpt.models.decoder_config import DecoderConfig  # noqa: E402
from jaxpt.prompted.base import prompted_model  # noqa: E402
from jaxpt.train.loop import train  # noqa: E402
from jaxpt.train.optim import make_optimizer  # noqa: E402
from jaxpt.vocabulary import EOS_ID  # noqa: E402
from tasks import corpus  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_mini_t5 import machine, write_asset  # noqa: E402

PIECES = 8000  # the mini T5's SentencePiece vocabulary (no sentinels: a causal LM needs none)


def mini_gpt2_config() -> DecoderConfig:
  """The asset's architecture: GPT-2 blocks at the mini T5's width (d 128, 4 heads x 32)."""
  return DecoderConfig(family='gpt2', vocab_size=PIECES, emb_dim=128, num_heads=4,
                       num_kv_heads=4, head_dim=32, mlp_dim=512, num_layers=4,
                       max_positions=512, tie_embeddings=True, pad_token_id=0,
                       bos_token_id=EOS_ID, eos_token_id=EOS_ID)


def batch_fn(rows: np.ndarray, batch_size: int, seed: int = 0):
  """Data position k -> the k-th batch: rows in a fresh permutation every epoch."""
  def batches(k: int) -> Dict[str, np.ndarray]:
    positions = np.arange(k * batch_size, (k + 1) * batch_size)
    picked = []
    for epoch in np.unique(positions // len(rows)):
      order = np.random.default_rng([seed, int(epoch)]).permutation(len(rows))
      picked.extend(order[positions[positions // len(rows) == epoch] % len(rows)])
    return causal_lm_batch(rows[np.asarray(picked)])
  return batches


def held_out_batches(rows: np.ndarray, batch_size: int = 32) -> List[Dict[str, np.ndarray]]:
  return [causal_lm_batch(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def readme(m: dict) -> str:
  """The asset's README from its metadata."""
  c, t, loss = m['config'], m['training'], m['held_out_loss_nats_per_token']
  corpus_rows = '\n'.join(f"| `{s['file']}` | {s['texts']:,} | {s['documents_kept']:,} | "
                          f"`{s['sha256'][:16]}` |" for s in m['corpus']['sources'])
  splits = m['corpus']['splits']
  return f"""# jaxpt's mini GPT-2 backbone

A GPT-2-architecture decoder (learned positions, pre-LayerNorm, GELU MLP, tied embeddings;
d_model {c['emb_dim']}, {c['num_heads']} heads x {c['head_dim']}, MLP {c['mlp_dim']}, \
{c['num_layers']} layers, {c['max_positions']} positions, {m['parameters']:,} parameters, \
float32) pretrained by jaxpt as a causal LM on the offline corpus, on this machine's CPU. The
decoder-only sibling of `mini_t5/`: a toy that gives decoder-only prompt tuning a pretrained
(not random) frozen model offline; it is not GPT-2 and knows little English.

- Load: `jaxpt.load_model(jaxpt.assets.mini_gpt2_path())` (an HF `GPT2LMHeadModel`
  directory, `jaxpt.save_hf`); tokenizer `spiece.model`, the mini T5's (sha256
  `{m['vocabulary']['sha256'][:16]}...`, {PIECES} pieces, pad 0 / EOS 1 / UNK 2; the \
embedding has {c['vocab_size']} rows, no sentinels). Id 0 is padding and the start id (jaxpt's
  decoder-only layout); EOS (1) ends every document and is also `bos_token_id`.
- Pretraining: next-token loss on every position of rows of {t['length']} tokens cut from
  the training documents joined with EOS (decoder input = the row shifted right behind 0),
  batch {t['batch_size']}, AdamW lr {t['learning_rate']:g} (warmup {t['warmup_steps']}, \
linear decay to 0 at the last step), weight decay {t['weight_decay']:g}, clip \
{t['clip_norm']:g}:
  {t['steps']} steps ({t['steps'] * t['batch_size']:,} rows, about \
{t['steps'] * t['batch_size'] / m['train_rows']:.1f} passes over {m['train_rows']:,} rows) in \
{t['wall_seconds'] / 60:.0f} min, final train loss {t['final_train_loss']}.
- Machine: {m['machine'].get('cpu') or m['machine']['processor'] or 'x86_64'}, \
{m['machine']['cpu_count']} CPU cores shared with other jobs, {m['machine']['device']}, \
jax {m['machine']['jax']}.

## Held-out loss (nats per token, EOS included)

The corpus's held-out split ({splits['validation']['documents']} documents, \
{m['held_out_tokens']:,} tokens in rows of {t['length']}); "untrained" is the random init the
pretraining started from (`init_params(config, jax.random.key({t['seed']}))`).

| model | causal LM loss |
|---|---|
| untrained | {loss['untrained']:.3f} |
| pretrained (this directory) | {loss['pretrained']:.3f} |

## Corpus (training splits only; `tasks/corpus.py`)

| file | texts | documents kept (deduplicated) | sha256 of the file |
|---|---|---|---|
{corpus_rows}

Built corpus: train {splits['train']['documents']:,} documents, {splits['train']['words']:,}
words, sha256 `{splits['train']['sha256']}`; held out {splits['validation']['documents']}
documents, sha256 `{splits['validation']['sha256']}`.

## Reproduce

```bash
{m['command']}
```
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  parser.add_argument('--warmup_steps', type=int, default=100)
  parser.add_argument('--weight_decay', type=float, default=0.01)
  parser.add_argument('--clip_norm', type=float, default=1.0)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--log_every', type=int, default=50)
  parser.add_argument('--run_dir', default='runs/mini_gpt2')
  parser.add_argument('--out_dir', default='jaxpt/assets/mini_gpt2')
  args = parser.parse_args()

  vocab = os.path.join(mini_t5_path(), 'spiece.model')
  train_rows = causal_lm_rows(encode_documents(corpus.documents('train'), vocab), args.length)
  held_docs = encode_documents(corpus.documents('validation'), vocab)
  held = held_out_batches(causal_lm_rows(held_docs, args.length))
  print(f'{len(train_rows)} training rows of {args.length}, {len(held)} held-out batches',
        flush=True)

  config = mini_gpt2_config()
  init = init_params(config, jax.random.key(args.seed))
  untrained = held_out.mean_loss(jaxpt.Model(config, init), held)
  print(f'held-out loss untrained: {untrained:.4f}', flush=True)

  method = ModelTuning()
  optimizer = make_optimizer('adamw', args.learning_rate, weight_decay=args.weight_decay,
                             clip_norm=args.clip_norm, warmup_steps=args.warmup_steps,
                             decay_steps=max(args.steps - args.warmup_steps, 1))
  start = time.time()
  result = train(prompted_model(config, method), init, {},
                 batch_fn(train_rows, args.batch_size, args.seed), optimizer=optimizer,
                 num_steps=args.steps, rng=jax.random.key(args.seed + 1),
                 trainable_rules=EVERYTHING, model_dir=args.run_dir,
                 checkpoint_every=max(args.steps // 4, 1), keep_checkpoints=1,
                 log_every=args.log_every, async_checkpoints=False)
  wall = time.time() - start
  model = jaxpt.Model(config, result.params['backbone'])
  pretrained = held_out.mean_loss(model, held)
  print(f'held-out loss pretrained: {pretrained:.4f} ({wall / 60:.1f} min training)', flush=True)

  if os.path.isdir(args.out_dir):
    shutil.rmtree(args.out_dir)
  jaxpt.save_hf(model, args.out_dir)
  shutil.copyfile(vocab, os.path.join(args.out_dir, 'spiece.model'))
  train_records = [r for r in result.history if r.get('split') == 'train' and 'loss' in r]
  command = (f'JAXPT_DATA_DIR=../shared/data python benchmarks/build_mini_gpt2.py '
             f'--steps {args.steps} --batch_size {args.batch_size} --length {args.length} '
             f'--learning_rate {args.learning_rate:g} --warmup_steps {args.warmup_steps} '
             f'--seed {args.seed}')
  metadata = {
      'config': config.to_dict(),
      'parameters': int(sum(np.size(x) for x in jax.tree.leaves(model.params))),
      'vocabulary': {'file': 'spiece.model', 'pieces': PIECES,
                     'sha256': hashlib.sha256(open(vocab, 'rb').read()).hexdigest()},
      'held_out_loss_nats_per_token': {'untrained': untrained, 'pretrained': pretrained},
      'held_out_tokens': sum(len(d) + 1 for d in held_docs),
      'train_rows': len(train_rows),
      'training': {'steps': result.step, 'batch_size': args.batch_size, 'length': args.length,
                   'learning_rate': args.learning_rate, 'warmup_steps': args.warmup_steps,
                   'weight_decay': args.weight_decay, 'clip_norm': args.clip_norm,
                   'seed': args.seed, 'wall_seconds': round(wall),
                   'resumed_from': result.resumed_from,
                   'final_train_loss': round(train_records[-1]['loss'], 4)
                   if train_records else None},
      'corpus': corpus.manifest(),
      'command': command,
      'machine': machine(),
  }
  write_asset(args.out_dir, metadata, readme(metadata))


if __name__ == '__main__':
  main()
