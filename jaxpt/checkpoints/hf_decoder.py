"""Hugging Face GPT-2 / Llama directories <-> jaxpt `CausalLM` parameters.

`jaxpt.checkpoints.hf` hands a directory here when its config.json's
`model_type` is 'gpt2' or 'llama' (`GPT2LMHeadModel`, `LlamaForCausalLM`);
files are read the same way (safetensors, sharded index, .bin), lazily and
slice by slice. GPT-2's fused `c_attn` (a Conv1D, kernel [in, 3 * d]) is read
as three column blocks (query, key, value), each device slice reading only its
own columns. Llama's `nn.Linear` weights are transposed to T5X's [in, out].

Not modelled (CheckpointError): GPT-2's `scale_attn_by_inverse_layer_idx` /
`reorder_and_upcast_attn`, activations other than GELU-tanh (GPT-2) or SiLU
(Llama), Llama's `mlp_bias`, and any `rope_scaling` / rope type but the default.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Tuple, Union

import jax
import numpy as np
from flax import traverse_util

from jaxpt.checkpoints import hf
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.backbones import abstract_params
from jaxpt.models.decoder_config import DecoderConfig

MODEL_TYPES = ('gpt2', 'llama')
# A tensor's role: 'T' transposed, 'N' as stored, or (block k, of width w) of the last axis.
Kind = Union[str, Tuple[int, int]]


def config_from_hf(hf_config: Dict[str, Any], source: str = 'config.json') -> DecoderConfig:
  """The DecoderConfig of a GPT-2 or Llama config.json dict.

  Raises:
    CheckpointError: missing fields or a variant jaxpt does not model.
  """
  model_type = hf_config.get('model_type')

  def get(key, default):
    value = hf_config.get(key)
    return default if value is None else value

  try:
    if model_type == 'gpt2':
      for flag in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn'):
        if hf_config.get(flag):
          raise CheckpointError(f'{source}: GPT-2 with {flag}=true is not supported')
      if get('activation_function', 'gelu_new') not in ('gelu_new', 'gelu_pytorch_tanh'):
        raise CheckpointError(f'{source}: GPT-2 activation {hf_config["activation_function"]!r} '
                              f'is not supported (expected gelu_new)')
      emb, heads = hf_config['n_embd'], hf_config['n_head']
      return DecoderConfig(
          family='gpt2', vocab_size=hf_config['vocab_size'], emb_dim=emb, num_heads=heads,
          num_kv_heads=heads, head_dim=emb // heads, mlp_dim=get('n_inner', 4 * emb),
          num_layers=hf_config['n_layer'], max_positions=hf_config['n_positions'],
          tie_embeddings=bool(get('tie_word_embeddings', True)), qkv_bias=True,
          layer_norm_epsilon=float(get('layer_norm_epsilon', 1e-5)),
          dropout_rate=float(get('resid_pdrop', 0.0)),
          pad_token_id=get('pad_token_id', 0), bos_token_id=get('bos_token_id', 50256),
          eos_token_id=hf._first(get('eos_token_id', 50256)))
    if model_type == 'llama':
      rope = dict(get('rope_parameters', {}) or {})
      scaling = hf_config.get('rope_scaling') or {}
      rope_type = rope.get('rope_type', scaling.get('rope_type', 'default'))
      if rope_type != 'default':
        raise CheckpointError(f'{source}: rope type {rope_type!r} is not supported (only '
                              f'the default RoPE)')
      if hf_config.get('mlp_bias'):
        raise CheckpointError(f'{source}: Llama with mlp_bias=true is not supported')
      if get('hidden_act', 'silu') != 'silu':
        raise CheckpointError(f'{source}: Llama activation {hf_config["hidden_act"]!r} is not '
                              f'supported (expected silu)')
      emb, heads = hf_config['hidden_size'], hf_config['num_attention_heads']
      return DecoderConfig(
          family='llama', vocab_size=hf_config['vocab_size'], emb_dim=emb, num_heads=heads,
          num_kv_heads=get('num_key_value_heads', heads),
          head_dim=get('head_dim', emb // heads), mlp_dim=hf_config['intermediate_size'],
          num_layers=hf_config['num_hidden_layers'],
          max_positions=get('max_position_embeddings', 2048),
          rope_theta=float(rope.get('rope_theta', get('rope_theta', 10000.0))),
          tie_embeddings=bool(get('tie_word_embeddings', False)),
          qkv_bias=bool(get('attention_bias', False)),
          out_bias=bool(get('attention_bias', False)),
          layer_norm_epsilon=float(get('rms_norm_eps', 1e-6)),
          dropout_rate=float(get('attention_dropout', 0.0)),
          pad_token_id=get('pad_token_id', 0), bos_token_id=get('bos_token_id', 1),
          eos_token_id=hf._first(get('eos_token_id', 2)))
  except KeyError as e:
    raise CheckpointError(f'{source}: missing {model_type} config field {e}') from e
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: {e}') from e
  raise CheckpointError(f'{source}: expected model_type one of {MODEL_TYPES}, '
                        f'found {model_type!r}')


def config_to_hf(config: DecoderConfig) -> Dict[str, Any]:
  """The config.json dict transformers needs to rebuild `config`."""
  ids = dict(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
             pad_token_id=config.pad_token_id, tie_word_embeddings=config.tie_embeddings)
  if config.family == 'gpt2':
    return dict(ids, architectures=['GPT2LMHeadModel'], model_type='gpt2',
                vocab_size=config.vocab_size, n_embd=config.emb_dim, n_head=config.num_heads,
                n_layer=config.num_layers, n_inner=config.mlp_dim,
                n_positions=config.max_positions, activation_function='gelu_new',
                layer_norm_epsilon=config.layer_norm_epsilon, resid_pdrop=config.dropout_rate,
                embd_pdrop=config.dropout_rate, attn_pdrop=config.dropout_rate)
  if config.qkv_bias != config.out_bias:
    raise CheckpointError('a Llama config.json has one attention_bias for q/k/v/o; this model '
                          f'has qkv_bias={config.qkv_bias}, out_bias={config.out_bias}')
  return dict(ids, architectures=['LlamaForCausalLM'], model_type='llama',
              vocab_size=config.vocab_size, hidden_size=config.emb_dim,
              num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
              head_dim=config.head_dim, intermediate_size=config.mlp_dim,
              num_hidden_layers=config.num_layers,
              max_position_embeddings=config.max_positions, hidden_act='silu',
              rms_norm_eps=config.layer_norm_epsilon, attention_bias=config.qkv_bias,
              mlp_bias=False, attention_dropout=config.dropout_rate,
              rope_parameters={'rope_type': 'default', 'rope_theta': config.rope_theta})


def param_map(config: DecoderConfig, prefix: str = '') -> Dict[str, Tuple[str, Kind]]:
  """jaxpt path -> (HF tensor name, kind); `prefix` is GPT-2's 'transformer.' (or '')."""
  m: Dict[str, Tuple[str, Kind]] = {}
  if config.family == 'gpt2':
    p = prefix
    m['token_embedder/embedding'] = (f'{p}wte.weight', 'N')
    m['position_embedder'] = (f'{p}wpe.weight', 'N')
    joined = config.num_heads * config.head_dim
    for i in range(config.num_layers):
      ours, theirs = f'decoder/layers_{i}', f'{p}h.{i}'
      for norm, ln in (('pre_self_attention_layer_norm', 'ln_1'), ('pre_mlp_layer_norm', 'ln_2')):
        m[f'{ours}/{norm}/scale'] = (f'{theirs}.{ln}.weight', 'N')
        m[f'{ours}/{norm}/bias'] = (f'{theirs}.{ln}.bias', 'N')
      for k, name in enumerate(('query', 'key', 'value')):
        for leaf, hf_leaf in (('kernel', 'weight'), ('bias', 'bias')):
          m[f'{ours}/self_attention/{name}/{leaf}'] = (f'{theirs}.attn.c_attn.{hf_leaf}',
                                                       (k, joined))
      for ours_name, hf_name in (('self_attention/out', 'attn.c_proj'), ('mlp/wi', 'mlp.c_fc'),
                                 ('mlp/wo', 'mlp.c_proj')):
        m[f'{ours}/{ours_name}/kernel'] = (f'{theirs}.{hf_name}.weight', 'N')
        m[f'{ours}/{ours_name}/bias'] = (f'{theirs}.{hf_name}.bias', 'N')
    m['decoder/decoder_norm/scale'] = (f'{p}ln_f.weight', 'N')
    m['decoder/decoder_norm/bias'] = (f'{p}ln_f.bias', 'N')
  else:
    m['token_embedder/embedding'] = ('model.embed_tokens.weight', 'N')
    for i in range(config.num_layers):
      ours, theirs = f'decoder/layers_{i}', f'model.layers.{i}'
      m[f'{ours}/pre_self_attention_layer_norm/scale'] = (f'{theirs}.input_layernorm.weight', 'N')
      m[f'{ours}/pre_mlp_layer_norm/scale'] = (f'{theirs}.post_attention_layernorm.weight', 'N')
      for name, proj in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
        m[f'{ours}/self_attention/{name}/kernel'] = (f'{theirs}.self_attn.{proj}_proj.weight', 'T')
        if (config.qkv_bias and name != 'out') or (config.out_bias and name == 'out'):
          m[f'{ours}/self_attention/{name}/bias'] = (f'{theirs}.self_attn.{proj}_proj.bias', 'N')
      for name, proj in (('wi_0', 'gate'), ('wi_1', 'up'), ('wo', 'down')):
        m[f'{ours}/mlp/{name}/kernel'] = (f'{theirs}.mlp.{proj}_proj.weight', 'T')
    m['decoder/decoder_norm/scale'] = ('model.norm.weight', 'N')
  if not config.tie_embeddings:
    m['decoder/logits_dense/kernel'] = ('lm_head.weight', 'T')
  return m


def _stored_shape(shape: Tuple[int, ...], kind: Kind) -> Tuple[int, ...]:
  if kind == 'T':
    return shape[::-1]
  if kind == 'N':
    return shape
  return shape[:-1] + (shape[-1] * 3,)


def _reader(loader: Callable, kind: Kind, ndim: int) -> Callable[..., np.ndarray]:
  """read(index=None): the float32 value of one parameter, or only its slice `index`."""

  def read(index: Any = None) -> np.ndarray:
    if kind == 'T':
      stored = None if index is None else hf._transposed_index(index, ndim)
      return np.asarray(loader(stored), np.float32).T
    if kind == 'N':
      return np.asarray(loader(index), np.float32)
    block, width = kind
    index = tuple(index) if isinstance(index, tuple) else ((index,) if index is not None else ())
    index = index + (slice(None),) * (ndim - len(index))
    start, stop, step = index[-1].indices(width)
    columns = slice(block * width + start, block * width + stop, step)
    return np.asarray(loader(index[:-1] + (columns,)), np.float32)

  return read


def decoder_sources(directory: str, hf_config: Dict[str, Any], config_path: str
                    ) -> Tuple[DecoderConfig, Dict[str, Tuple[Tuple[int, ...], Callable]]]:
  """(config, {jaxpt path: (shape, read)}) of a GPT-2 / Llama directory, reading nothing yet."""
  config = config_from_hf(hf_config, config_path)
  weights = hf._Weights(directory)
  prefix = 'transformer.' if 'transformer.wte.weight' in weights.shapes else ''
  mapping = param_map(config, prefix)
  expected = traverse_util.flatten_dict(abstract_params(config), sep='/')
  wanted = {path: (name, _stored_shape(tuple(expected[path].shape), kind))
            for path, (name, kind) in mapping.items()}
  # GPT-2's causal-mask buffers (attn.bias, attn.masked_bias) and Llama's rotary inv_freq.
  buffers = ('.attn.bias', '.attn.masked_bias', 'rotary_emb.inv_freq')
  hf.check_tensors(weights, wanted, {'lm_head.weight'}, buffers, directory, config_path)
  sources = {}
  for path, (name, kind) in mapping.items():
    shape = tuple(expected[path].shape)
    sources[path] = (shape, _reader(weights.loaders[name], kind, len(shape)))
  return config, sources


def write_decoder_checkpoint(config: DecoderConfig, params: Dict[str, Any], directory: str
                             ) -> None:
  """Writes config.json, generation_config.json and model.safetensors for transformers."""
  flat = traverse_util.flatten_dict(params, sep='/')
  tensors: Dict[str, Any] = {}
  blocks: Dict[str, Dict[int, np.ndarray]] = {}
  for path, (name, kind) in param_map(config, 'transformer.').items():
    array = np.asarray(jax.device_get(flat[path]))
    if array.dtype not in hf._WRITE_DTYPES:
      array = array.astype(np.float32)
    if kind == 'T':
      tensors[name] = np.ascontiguousarray(array.T)
    elif kind == 'N':
      tensors[name] = np.ascontiguousarray(array)
    else:
      blocks.setdefault(name, {})[kind[0]] = array
  for name, parts in blocks.items():
    tensors[name] = np.ascontiguousarray(np.concatenate([parts[k] for k in range(3)], -1))
  hf_config = config_to_hf(config)
  dtypes = {str(a.dtype) for a in tensors.values()}
  if len(dtypes) == 1:
    hf_config['dtype'] = dtypes.pop()
  os.makedirs(directory, exist_ok=True)
  hf._write_safetensors(os.path.join(directory, 'model.safetensors'), tensors)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  with open(os.path.join(directory, 'generation_config.json'), 'w') as f:
    json.dump({'bos_token_id': config.bos_token_id, 'eos_token_id': config.eos_token_id,
               'pad_token_id': config.pad_token_id}, f, indent=2)
