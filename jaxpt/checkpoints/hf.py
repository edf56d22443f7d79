"""Hugging Face T5 directories <-> jaxpt parameters.

Reads `config.json` plus `model.safetensors` / `pytorch_model.bin` (and their
sharded `*.index.json` forms). Safetensors are parsed here with numpy memory
maps (no torch, bf16 via ml_dtypes), so a tensor, or one device's slice of it,
is read only when it is needed: with `shardings`, each device reads its own
slice and a large checkpoint never sits whole on one host.

transformers 5 conventions handled: T5 always ties `lm_head` to `shared` in
config (`tie_word_embeddings` forced true) and scales the decoder output by
d_model**-0.5 when `scale_decoder_outputs` (T5 1.0); mT5 never scales. A tied,
unscaled model loads as untied with `logits_dense = shared.T`; an untied,
scaled one folds the scale into `logits_dense` (see docs/param_layout.md).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.config import T5Config

_MODEL_TYPES = ('t5', 'mt5', 'umt5')
_ACTIVATIONS = {'relu': 'relu', 'gelu_new': 'gelu', 'gelu': 'gelu_exact', 'silu': 'silu',
                'swish': 'silu', 'gelu_pytorch_tanh': 'gelu'}
_DTYPES = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64}


# ---------------------------------------------------------------------------- config


def config_from_hf(hf: Dict[str, Any], source: str = 'config.json') -> Tuple[T5Config, bool]:
  """(T5Config, scale_decoder_outputs) from an HF config dict."""
  model_type = hf.get('model_type')
  if model_type not in _MODEL_TYPES:
    raise CheckpointError(f'{source}: expected a T5 model_type {_MODEL_TYPES}, '
                          f'found {model_type!r}')
  proj = hf.get('feed_forward_proj', 'relu')
  parts = proj.split('-')
  gated = parts[0] == 'gated'
  act = 'gelu_new' if proj == 'gated-gelu' else parts[-1]
  if act not in _ACTIVATIONS or len(parts) > 2 or (len(parts) == 2 and not gated):
    raise CheckpointError(f'{source}: unsupported feed_forward_proj {proj!r}')
  activations = (_ACTIVATIONS[act], 'linear') if gated else (_ACTIVATIONS[act],)
  if model_type == 'mt5':
    scaled = False
  elif 'scale_decoder_outputs' in hf:
    scaled = bool(hf['scale_decoder_outputs'])
  else:
    scaled = hf.get('tie_word_embeddings', None) is not False
  try:
    config = T5Config(
        vocab_size=hf['vocab_size'], emb_dim=hf['d_model'], num_heads=hf['num_heads'],
        head_dim=hf['d_kv'], mlp_dim=hf['d_ff'], num_encoder_layers=hf['num_layers'],
        num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
        mlp_activations=activations, logits_via_embedding=False,
        relative_attention_num_buckets=hf.get('relative_attention_num_buckets', 32),
        relative_attention_max_distance=hf.get('relative_attention_max_distance', 128),
        per_layer_relpos_bias=model_type == 'umt5',
        layer_norm_epsilon=hf.get('layer_norm_epsilon', 1e-6),
        decoder_start_token_id=hf.get('decoder_start_token_id') or 0,
        pad_token_id=hf.get('pad_token_id') or 0,
        eos_token_id=_first(hf.get('eos_token_id', 1)))
  except KeyError as e:
    raise CheckpointError(f'{source}: missing T5 config field {e}') from e
  except ValueError as e:
    raise CheckpointError(f'{source}: {e}') from e
  return config, scaled


def _first(x):
  return x[0] if isinstance(x, (list, tuple)) else x


def config_to_hf(config: T5Config) -> Dict[str, Any]:
  """The config.json transformers needs to rebuild `config`."""
  act = config.mlp_activations[0]
  hf_act = {v: k for k, v in _ACTIVATIONS.items() if k not in ('swish', 'gelu_pytorch_tanh')}[act]
  if config.gated:
    proj = 'gated-gelu' if hf_act == 'gelu_new' else f'gated-{hf_act}'
  else:
    proj = hf_act
  umt5 = config.per_layer_relpos_bias
  return {
      'architectures': ['UMT5ForConditionalGeneration' if umt5 else 'T5ForConditionalGeneration'],
      'model_type': 'umt5' if umt5 else 't5',
      'vocab_size': config.vocab_size, 'd_model': config.emb_dim, 'd_kv': config.head_dim,
      'd_ff': config.mlp_dim, 'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers, 'num_heads': config.num_heads,
      'relative_attention_num_buckets': config.relative_attention_num_buckets,
      'relative_attention_max_distance': config.relative_attention_max_distance,
      'dropout_rate': config.dropout_rate, 'layer_norm_epsilon': config.layer_norm_epsilon,
      'initializer_factor': 1.0, 'feed_forward_proj': proj, 'is_encoder_decoder': True,
      'use_cache': True, 'tie_word_embeddings': config.logits_via_embedding,
      'scale_decoder_outputs': config.logits_via_embedding,
      'decoder_start_token_id': config.decoder_start_token_id,
      'pad_token_id': config.pad_token_id, 'eos_token_id': config.eos_token_id,
  }


# ------------------------------------------------------------------------ safetensors


class _SafetensorsFile:
  """Lazy reader of one .safetensors file (numpy memmap, any dtype incl. bf16)."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise CheckpointError(f'{path}: truncated safetensors file ({size} bytes)')
      (n,) = struct.unpack('<Q', raw)
      if n > size - 8:
        raise CheckpointError(f'{path}: truncated safetensors file: header of {n} bytes, '
                              f'file has {size}')
      try:
        header = json.loads(f.read(n))
      except ValueError as e:
        raise CheckpointError(f'{path}: corrupt safetensors header: {e}') from e
    header.pop('__metadata__', None)
    self.header, self.offset = header, 8 + n
    end = max((v['data_offsets'][1] for v in header.values()), default=0)
    if self.offset + end > size:
      raise CheckpointError(f'{path}: truncated safetensors file: tensors need '
                            f'{self.offset + end} bytes, file has {size}')

  def keys(self):
    return self.header.keys()

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(self.header[name]['shape'])

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    if info['dtype'] not in _DTYPES:
      raise CheckpointError(f'{self.path}: tensor {name} has unsupported dtype {info["dtype"]}')
    start, end = info['data_offsets']
    return np.memmap(self.path, dtype=np.dtype(_DTYPES[info['dtype']]).newbyteorder('<'),
                     mode='r', offset=self.offset + start,
                     shape=tuple(info['shape'])) if end > start else np.zeros(info['shape'])


def _open_tensors(directory: str) -> Tuple[Dict[str, Callable[[], np.ndarray]],
                                           Dict[str, Tuple[int, ...]], Dict[str, str]]:
  """(name -> loader, name -> shape, name -> file) over every weights file of an HF dir."""
  loaders, shapes, files = {}, {}, {}

  def add_safetensors(path):
    st = _SafetensorsFile(path)
    for name in st.keys():
      loaders[name] = (lambda st=st, name=name: st.get(name))
      shapes[name], files[name] = st.shape(name), path

  def add_bin(path):
    try:
      import torch
    except ImportError as e:
      raise CheckpointError(f'{path}: reading pytorch_model.bin needs torch '
                            f'(pip install torch), or convert it to safetensors') from e
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many types for bad pickles
      raise CheckpointError(f'{path}: could not read the PyTorch weights: {e}') from e
    for name, tensor in state.items():
      array = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
      loaders[name] = (lambda a=array: a)
      shapes[name], files[name] = tuple(array.shape), path

  for single, index, add in (('model.safetensors', 'model.safetensors.index.json', add_safetensors),
                             ('pytorch_model.bin', 'pytorch_model.bin.index.json', add_bin)):
    if os.path.isfile(os.path.join(directory, single)):
      add(os.path.join(directory, single))
      return loaders, shapes, files
    index_path = os.path.join(directory, index)
    if os.path.isfile(index_path):
      try:
        with open(index_path) as f:
          weight_map = json.load(f)['weight_map']
      except (ValueError, KeyError) as e:
        raise CheckpointError(f'{index_path}: expected a JSON index with weight_map: {e}') from e
      for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(directory, shard)
        if not os.path.isfile(shard_path):
          raise CheckpointError(f'{index_path}: lists shard {shard}, which is missing')
        add(shard_path)
      return loaders, shapes, files
  raise CheckpointError(f'{directory}: expected model.safetensors, pytorch_model.bin or a '
                        f'sharded index beside config.json; found {sorted(os.listdir(directory))}')


# ------------------------------------------------------------------------ name mapping


def _param_map(config: T5Config, untied_lm_head: bool) -> Dict[str, Tuple[str, bool]]:
  """jaxpt path -> (HF tensor name, transpose?)."""
  m = {'token_embedder/embedding': ('shared.weight', False)}
  qkvo = (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o'))
  mlp = ['wi_0', 'wi_1', 'wo'] if config.gated else ['wi', 'wo']

  def attention(jx, hf):
    for ours, theirs in qkvo:
      m[f'{jx}/{ours}/kernel'] = (f'{hf}.{theirs}.weight', True)

  def feed_forward(jx, hf):
    for name in mlp:
      m[f'{jx}/mlp/{name}/kernel'] = (f'{hf}.DenseReluDense.{name}.weight', True)

  for stack, n in (('encoder', config.num_encoder_layers), ('decoder', config.num_decoder_layers)):
    if not config.per_layer_relpos_bias:
      m[f'{stack}/relpos_bias/rel_embedding'] = (
          f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', True)
    for i in range(n):
      jx, hf = f'{stack}/layers_{i}', f'{stack}.block.{i}.layer'
      if config.per_layer_relpos_bias:
        m[f'{jx}/relpos_bias/rel_embedding'] = (
            f'{hf}.0.SelfAttention.relative_attention_bias.weight', True)
      if stack == 'encoder':
        m[f'{jx}/pre_attention_layer_norm/scale'] = (f'{hf}.0.layer_norm.weight', False)
        attention(f'{jx}/attention', f'{hf}.0.SelfAttention')
        m[f'{jx}/pre_mlp_layer_norm/scale'] = (f'{hf}.1.layer_norm.weight', False)
        feed_forward(jx, f'{hf}.1')
      else:
        m[f'{jx}/pre_self_attention_layer_norm/scale'] = (f'{hf}.0.layer_norm.weight', False)
        attention(f'{jx}/self_attention', f'{hf}.0.SelfAttention')
        m[f'{jx}/pre_cross_attention_layer_norm/scale'] = (f'{hf}.1.layer_norm.weight', False)
        attention(f'{jx}/encoder_decoder_attention', f'{hf}.1.EncDecAttention')
        m[f'{jx}/pre_mlp_layer_norm/scale'] = (f'{hf}.2.layer_norm.weight', False)
        feed_forward(jx, f'{hf}.2')
  m['encoder/encoder_norm/scale'] = ('encoder.final_layer_norm.weight', False)
  m['decoder/decoder_norm/scale'] = ('decoder.final_layer_norm.weight', False)
  if not config.logits_via_embedding:
    m['decoder/logits_dense/kernel'] = (
        'lm_head.weight' if untied_lm_head else 'shared.weight', True)
  return m


_IGNORED = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')


def read_hf_checkpoint(directory: str, shardings: Optional[Any] = None
                       ) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, params) from an HF T5 directory; float32 numpy arrays, or jax Arrays in
  `shardings` (a pytree like the params) where each device reads only its slice."""
  config_path = os.path.join(directory, 'config.json')
  try:
    with open(config_path) as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{config_path}: expected an HF T5 config (JSON): {e}') from e
  config, scaled = config_from_hf(hf, config_path)
  loaders, shapes, files = _open_tensors(directory)
  untied = 'lm_head.weight' in loaders and not _same(loaders, 'lm_head.weight', 'shared.weight')
  config = config.replace(logits_via_embedding=scaled and not untied)
  mapping = _param_map(config, untied)

  from jaxpt.models.t5 import abstract_params
  expected = traverse_util.flatten_dict(abstract_params(config), sep='/')
  problems = []
  for path, (name, transpose) in mapping.items():
    want = tuple(expected[path].shape)
    if name not in shapes:
      problems.append(f'missing tensor {name} (for {path}, expected shape '
                      f'{want[::-1] if transpose else want})')
      continue
    got = shapes[name][::-1] if transpose else shapes[name]
    if got != want:
      problems.append(f'{files[name]}: tensor {name} has shape {shapes[name]}, config.json '
                      f'implies {want[::-1] if transpose else want}')
  used = {name for name, _ in mapping.values()} | set(_IGNORED) | {'lm_head.weight'}
  problems += [f'{files[n]}: unexpected tensor {n} {shapes[n]}'
               for n in sorted(set(shapes) - used)]
  if problems:
    shown = '\n  '.join(problems[:20])
    raise CheckpointError(f'{directory}: weights do not match {config_path} '
                          f'({len(problems)} problems):\n  {shown}')

  flat_shardings = (traverse_util.flatten_dict(shardings, sep='/')
                    if shardings is not None else {})
  scale = config.emb_dim ** -0.5 if (untied and scaled) else None
  params = {}
  for path, (name, transpose) in mapping.items():
    def read(index=None, name=name, transpose=transpose, path=path):
      array = loaders[name]()
      if transpose:
        array = array.T
      if index is not None:
        array = array[index]
      out = np.asarray(array, np.float32)
      if scale is not None and path == 'decoder/logits_dense/kernel':
        out = out * np.float32(scale)
      return out
    if path in flat_shardings:
      shape = tuple(expected[path].shape)
      params[path] = jax.make_array_from_callback(shape, flat_shardings[path], read)
    else:
      params[path] = read()
  return config, traverse_util.unflatten_dict(params, sep='/')


def _same(loaders, a: str, b: str) -> bool:
  x, y = loaders[a](), loaders[b]()
  return x.shape == y.shape and np.array_equal(x, y)


# ------------------------------------------------------------------------------ write


def write_hf_checkpoint(config: T5Config, params: Dict[str, Any], directory: str,
                        vocab_path: Optional[str] = None) -> None:
  """Writes config.json, generation_config.json, model.safetensors (+ spiece.model)."""
  from safetensors.numpy import save_file

  os.makedirs(directory, exist_ok=True)
  flat = traverse_util.flatten_dict(params, sep='/')
  tensors = {}
  for path, (name, transpose) in _param_map(config, untied_lm_head=True).items():
    array = np.asarray(jax.device_get(flat[path]), np.float32)
    tensors[name] = np.ascontiguousarray(array.T if transpose else array)
  save_file(tensors, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config_to_hf(config), f, indent=2, sort_keys=True)
  with open(os.path.join(directory, 'generation_config.json'), 'w') as f:
    json.dump({'decoder_start_token_id': config.decoder_start_token_id,
               'pad_token_id': config.pad_token_id, 'eos_token_id': config.eos_token_id},
              f, indent=2)
  if vocab_path is not None:
    shutil.copy(os.fspath(vocab_path), os.path.join(directory, 'spiece.model'))
