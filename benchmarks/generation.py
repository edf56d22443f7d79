#!/usr/bin/env python
"""Decoder-only generation speed: jaxpt's KV cache vs re-encoding every step vs peft.

    python benchmarks/generation.py            # GPT-2 small shapes, random weights
    python benchmarks/generation.py --quick    # the tiny GPT-2: a smoke run (seconds)

A GPT-2 (`jaxpt.decoder_preset('gpt2', 'small')`, random weights; `--quick`: 'tiny')
greedily generates `--new` tokens after `--input-len` input ids, `--batch` rows, every
row the full length (no EOS stop on either side). Configs:

  jaxpt prompt cached     `DecoderOnlyModel.generate` with a `--prompt-len` soft prompt:
                          one prefill call, then one cached token per step (jitted)
  jaxpt prompt re-encode  the same greedy decoding re-running the whole
                          [prompt; inputs; generated] row every step (no cache, jitted)
  jaxpt prefix cached     prefix tuning (`--prefix-len` keys/values per layer), cached
  jaxpt prefix re-encode  the same, re-encoding every step
  peft prompt             peft `PromptTuningConfig` on transformers' GPT2LMHeadModel with
                          the same weights (written with `jaxpt.save_hf`) and the same
                          prompt: `generate(max_new_tokens=N, min_new_tokens=N)`, eager torch
  peft prompt nocache     the same with `use_cache=False` (re-encodes every step)

Tokens/s = batch * new tokens / one call's time. Timing is `benchmarks/interleave.py`'s:
configs alternated over `--rounds` rounds; ratios are medians of per-round ratios. The
greedy tokens of jaxpt prompt cached, its re-encoding twin and peft are compared (a speed
comparison of the same work); the prefix pair likewise. peft 0.21's cached `generate`
with prompt tuning on transformers 5.24 picks different tokens from the second on (its own
uncached forward and `use_cache=False` agree with jaxpt): the run prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from interleave import (footer, format_ratio, header, interleave, load_average,  # noqa: E402
                        matmul_peak_gflops, median, ratio_stats)

CONFIGS = ('jaxpt_prompt_cached', 'jaxpt_prompt_reencode', 'jaxpt_prefix_cached',
           'jaxpt_prefix_reencode', 'peft_prompt', 'peft_prompt_nocache')
RATIOS = (('jaxpt_prompt_cached', 'jaxpt_prompt_reencode'),
          ('jaxpt_prefix_cached', 'jaxpt_prefix_reencode'),
          ('jaxpt_prompt_cached', 'peft_prompt'),
          ('jaxpt_prompt_cached', 'peft_prompt_nocache'))


def reencoding_greedy(model, params, inputs, new: int):
  """Greedy ids [batch, new]: the whole row re-run every step, without a cache."""
  import jax
  import jax.numpy as jnp

  from jaxpt.prompted.decoder_only import start_and_inputs

  seq, valid = start_and_inputs(inputs)
  batch, length = seq.shape
  p = model.method.prompt_length
  tokens = jnp.concatenate([seq, jnp.zeros((batch, new), jnp.int32)], axis=1)
  valid = jnp.concatenate([valid, jnp.zeros((batch, new), bool)], axis=1)

  def step(i, carry):
    tokens, valid = carry
    logits = model.forward(params, tokens, valid)[0].logits
    last = jax.lax.dynamic_index_in_dim(logits, p + length - 1 + i, axis=1, keepdims=False)
    nxt = jnp.argmax(last, axis=-1).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, length + i))
    valid = jax.lax.dynamic_update_slice(valid, jnp.ones((batch, 1), bool), (0, length + i))
    return tokens, valid

  return jax.lax.fori_loop(0, new, step, (tokens, valid))[0][:, length:]


def build_jaxpt(args, config, backbone, method_name: str, cached: bool
                ) -> Tuple[Callable[[], Any], Dict[str, Any]]:
  import jax
  import jax.numpy as jnp

  from jaxpt.methods import Backbone, PrefixTuning, PromptTuning
  from jaxpt.prompted.base import prompted_model

  method = (PromptTuning(length=args.prompt_len, initializer='uniform')
            if method_name == 'prompt' else
            PrefixTuning(length=args.prefix_len, hidden_dim=args.prefix_mlp))
  model = prompted_model(config, method)
  params = {'backbone': backbone, 'method': method.init(
      jax.random.key(1), Backbone(config, backbone['token_embedder']['embedding']))}
  inputs = jnp.asarray(make_inputs(args, config.vocab_size))
  if cached:
    fn = jax.jit(lambda prm, x: model.generate(prm, x, args.new))
  else:
    fn = jax.jit(lambda prm, x: reencoding_greedy(model, prm, x, args.new))
  t = time.perf_counter()
  out = fn(params, inputs).block_until_ready()
  info = {'compile_s': time.perf_counter() - t, 'tokens': out.tolist(), 'params': params}
  return (lambda: fn(params, inputs).block_until_ready()), info


def build_peft(args, config, backbone, prompt, use_cache: bool = True
               ) -> Tuple[Callable[[], Any], Dict[str, Any]]:
  import numpy as np
  import torch
  import transformers
  from peft import PromptTuningConfig, get_peft_model

  import jaxpt

  torch.set_num_threads(args.threads or torch.get_num_threads())
  with tempfile.TemporaryDirectory() as d:
    jaxpt.save_hf(jaxpt.Model(config, backbone), d)
    base = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
  model = get_peft_model(base, PromptTuningConfig(task_type='CAUSAL_LM',
                                                  num_virtual_tokens=args.prompt_len))
  with torch.no_grad():
    model.prompt_encoder['default'].embedding.weight.copy_(torch.tensor(np.asarray(prompt)))
  model.eval()
  inputs = make_inputs(args, config.vocab_size)
  # jaxpt's row is the start id 0 then the inputs: give peft the same ids.
  ids = torch.tensor(np.concatenate([np.zeros((len(inputs), 1), np.int64), inputs], 1))

  def run():
    with torch.no_grad():
      return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                            max_new_tokens=args.new, min_new_tokens=args.new,
                            do_sample=False, num_beams=1, pad_token_id=0,
                            use_cache=use_cache)

  t = time.perf_counter()
  out = run()
  return run, {'compile_s': time.perf_counter() - t,
               'tokens': out[:, ids.shape[1]:].numpy().tolist()}


def make_inputs(args, vocab: int):
  import numpy as np
  return np.random.RandomState(0).randint(1, vocab, (args.batch, args.input_len)).astype(
      np.int32)


def run(args) -> Dict[str, Any]:
  import jax

  from jaxpt.models.backbones import init_params
  from jaxpt.models.decoder_config import decoder_preset

  peak = matmul_peak_gflops(args.matmul_n)
  load_start = load_average()
  print(header(peak, load_start, args.matmul_n))
  config = decoder_preset('gpt2', 'tiny' if args.quick else 'small')
  backbone = init_params(config, jax.random.key(0))
  configs = [c for c in args.configs.split(',')] if args.configs else list(CONFIGS)
  runs, infos = {}, {}
  for c in configs:
    print(f'building {c} ...', file=sys.stderr, flush=True)
    if c.startswith('peft_prompt'):
      if 'jaxpt_prompt_cached' not in infos:
        raise SystemExit(f'{c} needs jaxpt_prompt_cached first (its prompt)')
      prompt = infos['jaxpt_prompt_cached']['params']['method']['prompt']
      runs[c], infos[c] = build_peft(args, config, backbone, prompt, c == 'peft_prompt')
    else:
      _, name, mode = c.split('_')  # jaxpt_<method>_<cached|reencode>
      runs[c], infos[c] = build_jaxpt(args, config, backbone, name, mode == 'cached')
  log = lambda line: print(line, file=sys.stderr, flush=True)
  times = interleave(runs, rounds=args.rounds, warmup=1, log=log)
  tokens = args.batch * args.new
  print(f'gpt2 {"tiny" if args.quick else "small"} shapes, random weights; batch '
        f'{args.batch}, {args.input_len} input ids (+ the start id), {args.new} new tokens, '
        f'prompt {args.prompt_len}, prefix {args.prefix_len}; greedy')
  print('| config | compile / first call s | median call s | tokens/s |')
  print('|---|---|---|---|')
  rows = []
  for c in configs:
    med = median(times[c])
    print(f'| {c} | {infos[c]["compile_s"]:.1f} | {med:.3f} | {tokens / med:.1f} |')
    rows.append({'config': c, 'median_s': med, 'tokens/s': tokens / med, 'times': times[c],
                 'compile_s': infos[c]['compile_s']})
  ratios = {}
  for a, b in RATIOS:
    if a in times and b in times:
      ratios[f'{a} vs {b}'] = ratio_stats(times[b], times[a])
      print(f'speed {a} / {b}: {format_ratio(ratios[f"{a} vs {b}"])}')
  same = {}
  for a, b in RATIOS:
    if a in infos and b in infos:
      same[f'{a} vs {b}'] = infos[a]['tokens'] == infos[b]['tokens']
      print(f'same greedy tokens, {a} and {b}: {"yes" if same[f"{a} vs {b}"] else "NO"}')
  print(footer(load_start, load_average()))
  return {'args': vars(args), 'rows': rows, 'ratios': ratios, 'same_tokens': same,
          'peak_gflops': peak}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--input-len', type=int, default=32)
  p.add_argument('--new', type=int, default=16, help='tokens generated per row')
  p.add_argument('--prompt-len', type=int, default=20)
  p.add_argument('--prefix-len', type=int, default=10)
  p.add_argument('--prefix-mlp', type=int, default=64, help="prefix tuning's MLP width")
  p.add_argument('--configs', default=None, help=f'comma-separated subset of {CONFIGS}')
  p.add_argument('--threads', type=int, default=0, help='torch threads (0: its default)')
  p.add_argument('--matmul-n', type=int, default=1024)
  p.add_argument('--quick', action='store_true', help='tiny GPT-2, short rows: a smoke run')
  p.add_argument('--json', help='also write the results here')
  args = p.parse_args(argv)
  if args.quick:
    args.rounds, args.input_len, args.new, args.matmul_n = 3, 8, 6, 256
    args.prompt_len, args.prefix_len = 4, 3
  result = run(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
