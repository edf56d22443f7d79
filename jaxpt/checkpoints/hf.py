"""Hugging Face T5 directories <-> jaxpt parameters (GPT-2 and Llama: `hf_decoder`).

Reads `config.json` plus `model.safetensors` / `pytorch_model.bin` (and their
sharded `*.index.json` forms) of T5, mT5 and UMT5 models. Safetensors files are
read with `safetensors.safe_open(..., framework='numpy')` (no torch; bf16 via
ml_dtypes), so a tensor, or one device's slice of it (`get_slice`), is read only
when it is needed: with `shardings`, each device's callback reads its own slice
and a large checkpoint never sits whole in one host's memory
(`read_safetensors_slice` reads one slice of one tensor). Torch is imported
only for `pytorch_model.bin`.

Parameters are returned as float32 whatever the checkpoint stores (bf16 and f16
widen exactly); the returned config says `param_dtype='float32'`. Pass
`dtype='bfloat16'` to `load_model` to compute in bf16.

Tying rules (transformers 5.24, see docs/param_layout.md):

* T5 / UMT5 scale the decoder output by d_model**-0.5 iff `scale_decoder_outputs`
  is true, or, for configs written before that key existed, iff
  `tie_word_embeddings` is not false. mT5 never scales.
* transformers always ties `lm_head` to `shared`, unless the weights file holds
  an `lm_head.weight` that differs from `shared.weight`.
* tied + scaled -> `logits_via_embedding=True`; tied + unscaled -> untied with
  `decoder/logits_dense/kernel = shared.T`; untied + scaled (rare) -> the scale
  is folded into `logits_dense`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_dtypes  # registers numpy's 'bfloat16', which safetensors' numpy reader needs
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.config import T5Config
from jaxpt.vocabulary import EOS_ID, PAD_ID

_MODEL_TYPES = ('t5', 'mt5', 'umt5')
# HF activation name (transformers.activations.ACT2FN) -> jaxpt activation name.
_FROM_HF_ACT = {'relu': 'relu', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
                'gelu': 'gelu_exact', 'gelu_python': 'gelu_exact', 'silu': 'silu',
                'swish': 'silu', 'linear': 'linear'}
# jaxpt activation name -> HF activation name.
_TO_HF_ACT = {'relu': 'relu', 'gelu': 'gelu_new', 'gelu_new': 'gelu_new', 'gelu_exact': 'gelu',
              'silu': 'silu', 'linear': 'linear'}
# Safetensors dtypes read (each widens to float32 exactly, F64 aside) and numpy dtypes written.
_SAFETENSORS_DTYPES = ('BF16', 'F16', 'F32', 'F64')
_WRITE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
# Tensors transformers itself ignores or ties to `shared.weight`.
_TIED_EMBEDDINGS = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
_IGNORED_SUFFIX = 'EncDecAttention.relative_attention_bias.weight'


# ---------------------------------------------------------------------------- config


def scales_decoder_outputs(hf_config: Dict[str, Any]) -> bool:
  """Whether transformers scales this model's decoder output by d_model**-0.5."""
  if hf_config.get('model_type') == 'mt5':
    return False
  if 'scale_decoder_outputs' in hf_config:
    return bool(hf_config['scale_decoder_outputs'])
  return hf_config.get('tie_word_embeddings', None) is not False


def config_from_hf(hf_config: Dict[str, Any], source: str = 'config.json') -> T5Config:
  """The T5Config of an HF config.json dict, assuming `lm_head` is tied to `shared`.

  `logits_via_embedding` is True exactly when transformers scales the decoder
  output (then the tied logits match T5X's); a tied, unscaled model gets an
  explicit `logits_dense` (filled with shared.T by `read_hf_checkpoint`).

  Args:
    hf_config: the parsed config.json.
    source: the file name used in error messages.

  Raises:
    CheckpointError: not a T5 / mT5 / UMT5 config, an unsupported
      feed_forward_proj, or missing / invalid fields.
  """
  model_type = hf_config.get('model_type')
  if model_type not in _MODEL_TYPES:
    raise CheckpointError(f'{source}: expected a T5 model_type {_MODEL_TYPES}, '
                          f'found {model_type!r}')
  proj = hf_config.get('feed_forward_proj', 'relu')
  parts = str(proj).split('-')
  gated = parts[0] == 'gated'
  act = 'gelu_new' if proj == 'gated-gelu' else parts[-1]  # transformers' legacy alias
  if act not in _FROM_HF_ACT or len(parts) > 2 or (len(parts) == 2 and not gated):
    raise CheckpointError(f'{source}: unsupported feed_forward_proj {proj!r}; expected '
                          f'[gated-]ACT with ACT one of {sorted(_FROM_HF_ACT)}')
  activations = (_FROM_HF_ACT[act], 'linear') if gated else (_FROM_HF_ACT[act],)

  def get(key, default):
    value = hf_config.get(key)
    return default if value is None else value

  try:
    num_layers = hf_config['num_layers']
    return T5Config(
        vocab_size=hf_config['vocab_size'], emb_dim=hf_config['d_model'],
        num_heads=hf_config['num_heads'], head_dim=hf_config['d_kv'],
        mlp_dim=hf_config['d_ff'], num_encoder_layers=num_layers,
        num_decoder_layers=get('num_decoder_layers', num_layers),
        mlp_activations=activations, logits_via_embedding=scales_decoder_outputs(hf_config),
        relative_attention_num_buckets=get('relative_attention_num_buckets', 32),
        relative_attention_max_distance=get('relative_attention_max_distance', 128),
        per_layer_relpos_bias=model_type == 'umt5',
        dropout_rate=float(get('dropout_rate', 0.1)),
        layer_norm_epsilon=float(get('layer_norm_epsilon', 1e-6)),
        decoder_start_token_id=get('decoder_start_token_id', PAD_ID),
        pad_token_id=get('pad_token_id', PAD_ID),
        eos_token_id=_first(get('eos_token_id', EOS_ID)))
  except KeyError as e:
    raise CheckpointError(f'{source}: missing T5 config field {e}') from e
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{source}: {e}') from e


def _first(x: Any) -> Any:
  return x[0] if isinstance(x, (list, tuple)) else x


def config_to_hf(config: T5Config) -> Dict[str, Any]:
  """The config.json dict transformers needs to rebuild `config` (T5 or UMT5).

  Raises:
    CheckpointError: the MLP activations have no HF `feed_forward_proj`
      (gated MLPs must be (ACT, 'linear')).
  """
  acts = config.mlp_activations
  if len(acts) > 2 or (len(acts) == 2 and acts[1] != 'linear') or acts[0] not in _TO_HF_ACT:
    raise CheckpointError(f'mlp_activations {acts} have no HF feed_forward_proj; expected '
                          f'(ACT,) or (ACT, "linear")')
  hf_act = _TO_HF_ACT[acts[0]]
  if not config.gated:
    proj = hf_act
  elif hf_act == 'gelu_new':
    proj = 'gated-gelu'  # transformers reads this as gelu_new
  elif hf_act == 'gelu':
    proj = 'gated-gelu_python'  # 'gated-gelu' would mean the tanh approximation
  else:
    proj = f'gated-{hf_act}'
  umt5 = config.per_layer_relpos_bias
  tied = config.logits_via_embedding
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
      'use_cache': True, 'tie_word_embeddings': tied, 'scale_decoder_outputs': tied,
      'decoder_start_token_id': config.decoder_start_token_id,
      'pad_token_id': config.pad_token_id, 'eos_token_id': config.eos_token_id,
  }


# ------------------------------------------------------------------------ safetensors


def _open_error(path: str, e: Exception) -> CheckpointError:
  """The CheckpointError naming `path` for what safetensors raised on opening it."""
  msg = str(e)
  # safetensors checks the header against the file size: 'header too small' (< 8 bytes),
  # 'invalid header length' (the header runs past the end), 'incomplete metadata, file not
  # fully covered' (the tensors run past the end, or bytes follow them).
  if any(s in msg for s in ('header too small', 'invalid header length', 'incomplete metadata')):
    return CheckpointError(f'{path}: truncated safetensors file ({os.path.getsize(path)} '
                           f'bytes), or bytes after its tensors: {msg}')
  return CheckpointError(f'{path}: corrupt safetensors file: {msg}')


class SafetensorsFile:
  """One .safetensors file opened lazily (memory-mapped by `safetensors.safe_open`).

  Nothing is read on opening but the header: `read(name, index)` reads one
  tensor, or only the slice `index` of it (what one device's shard needs).

  bf16 tensors come back as `ml_dtypes.bfloat16` arrays: safetensors' numpy
  reader asks numpy for the dtype 'bfloat16', which exists once ml_dtypes is
  imported (this module imports it).

  Raises:
    CheckpointError: naming the file, when it is truncated or corrupt, or holds
      a tensor of a dtype other than F32 / F16 / BF16 / F64.
  """

  def __init__(self, path: str):
    self.path = os.fspath(path)
    try:
      self._file = safetensors.safe_open(self.path, framework='numpy')
      names = list(self._file.keys())
      self._slices = {name: self._file.get_slice(name) for name in names}
    except safetensors.SafetensorError as e:
      raise _open_error(self.path, e) from e
    for name, piece in self._slices.items():
      if piece.get_dtype() not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f'{self.path}: tensor {name} has unsupported dtype '
                              f'{piece.get_dtype()}; expected one of {_SAFETENSORS_DTYPES}')

  def names(self) -> List[str]:
    return list(self._slices)

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(self._slices[name].get_shape())

  def read(self, name: str, index: Any = None) -> np.ndarray:
    """Tensor `name`, or only its slice `index` (a tuple of slices / ints) read alone."""
    try:
      if index is None or 0 in self.shape(name):  # get_slice rejects empty tensors
        whole = self._file.get_tensor(name)
        return whole if index is None else whole[index]
      return self._slices[name][index]
    except safetensors.SafetensorError as e:
      raise CheckpointError(f'{self.path}: cannot read tensor {name} (slice {index}): '
                            f'{e}') from e


def read_safetensors_slice(path: str, name: str, index: Any = None) -> np.ndarray:
  """Tensor `name` of the .safetensors file `path`, or only its slice `index`.

  Only the bytes of the slice are read (e.g. `index=(slice(0, 512), slice(None))`
  reads 512 rows), so each host can place its devices' slices of a tensor
  without reading the whole tensor.
  """
  return SafetensorsFile(path).read(name, index)


def _transposed_index(index: Any, ndim: int) -> Tuple[Any, ...]:
  """The index into `x` of the slice `x.T[index]` (then transposed back by the caller)."""
  index = tuple(index) if isinstance(index, tuple) else (index,)
  index = index + (slice(None),) * (ndim - len(index))
  return index[::-1]


class _Weights:
  """Every tensor of an HF directory: name -> lazy loader, shape and file.

  `loaders[name](index=None)` reads the tensor, or only its slice `index`.
  """

  def __init__(self, directory: str):
    self.loaders: Dict[str, Callable[..., np.ndarray]] = {}
    self.shapes: Dict[str, Tuple[int, ...]] = {}
    self.files: Dict[str, str] = {}
    for single, index, add in (
        ('model.safetensors', 'model.safetensors.index.json', self._add_safetensors),
        ('pytorch_model.bin', 'pytorch_model.bin.index.json', self._add_bin)):
      if os.path.isfile(os.path.join(directory, single)):
        self.source = os.path.join(directory, single)
        add(self.source)
        return
      index_path = os.path.join(directory, index)
      if os.path.isfile(index_path):
        self.source = index_path
        try:
          with open(index_path) as f:
            weight_map = json.load(f)['weight_map']
          shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
          raise CheckpointError(f'{index_path}: expected a JSON index with a weight_map: '
                                f'{e}') from e
        for shard in shards:
          shard_path = os.path.join(directory, shard)
          if not os.path.isfile(shard_path):
            raise CheckpointError(f'{index_path}: lists shard {shard}, which is missing')
          add(shard_path)
        return
    raise CheckpointError(
        f'{directory}: expected model.safetensors, model.safetensors.index.json, '
        f'pytorch_model.bin or pytorch_model.bin.index.json beside config.json; found '
        f'{sorted(os.listdir(directory))[:10]}')

  def _add_safetensors(self, path: str) -> None:
    st = SafetensorsFile(path)
    for name in st.names():
      self.loaders[name] = (lambda index=None, st=st, name=name: st.read(name, index))
      self.shapes[name], self.files[name] = st.shape(name), path

  def _add_bin(self, path: str) -> None:
    try:
      import torch
    except ImportError as e:
      raise CheckpointError(f'{path}: reading pytorch_model.bin needs torch '
                            f'(pip install torch); or convert it to safetensors') from e
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many types for bad or truncated pickles
      raise CheckpointError(f'{path}: could not read the PyTorch weights: {e}') from e
    if not isinstance(state, dict):
      raise CheckpointError(f'{path}: expected a state_dict, found {type(state).__name__}')
    for name, tensor in state.items():
      tensor = tensor.detach()
      # bf16 -> f32 is exact; numpy has no bf16 view of a torch tensor.
      array = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
      self.loaders[name] = (lambda index=None, a=array: a if index is None else a[index])
      self.shapes[name], self.files[name] = tuple(array.shape), path

  def equal(self, a: str, b: str) -> bool:
    """Whether tensors `a` and `b` are both present and identical."""
    if a not in self.loaders or b not in self.loaders or self.shapes[a] != self.shapes[b]:
      return False
    x, y = self.loaders[a](), self.loaders[b]()
    return x.dtype == y.dtype and np.array_equal(x, y)


# ------------------------------------------------------------------------ name mapping


def check_tensors(weights: '_Weights', wanted: Dict[str, Tuple[str, Tuple[int, ...]]],
                  also_used: Any, ignored_suffixes: Tuple[str, ...], directory: str,
                  config_path: str) -> None:
  """Raises one CheckpointError listing every missing, misshapen or unexpected tensor.

  wanted: jaxpt path -> (HF tensor name, the shape config.json implies for it);
  also_used: other names that may be present; ignored_suffixes: buffers to skip.
  """
  problems: List[str] = []
  for path, (name, want) in wanted.items():
    if name not in weights.shapes:
      problems.append(f'{weights.source}: missing tensor {name} (for {path}); expected shape '
                      f'{want} from config.json')
    elif weights.shapes[name] != want:
      problems.append(f'{weights.files[name]}: tensor {name} has shape {weights.shapes[name]}, '
                      f'config.json implies {want}')
  used = {name for name, _ in wanted.values()} | set(also_used)
  problems += [f'{weights.files[n]}: unexpected tensor {n} with shape {weights.shapes[n]}'
               for n in sorted(set(weights.shapes) - used) if not n.endswith(ignored_suffixes)]
  if problems:
    shown = '\n  '.join(problems[:20])
    more = f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
    raise CheckpointError(f'{directory}: weights do not match {config_path} '
                          f'({len(problems)} problems):\n  {shown}{more}')


def _param_map(config: T5Config, lm_head: str = 'lm_head.weight'
               ) -> Dict[str, Tuple[str, bool]]:
  """jaxpt path -> (HF tensor name, transposed?); `lm_head` feeds logits_dense."""
  m = {'token_embedder/embedding': ('shared.weight', False)}
  qkvo = (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o'))
  mlp = ('wi_0', 'wi_1', 'wo') if config.gated else ('wi', 'wo')

  def attention(ours: str, theirs: str) -> None:
    for a, b in qkvo:
      m[f'{ours}/{a}/kernel'] = (f'{theirs}.{b}.weight', True)

  def feed_forward(ours: str, theirs: str) -> None:
    for name in mlp:
      m[f'{ours}/mlp/{name}/kernel'] = (f'{theirs}.DenseReluDense.{name}.weight', True)

  for stack, n in (('encoder', config.num_encoder_layers), ('decoder', config.num_decoder_layers)):
    if not config.per_layer_relpos_bias:
      m[f'{stack}/relpos_bias/rel_embedding'] = (
          f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', True)
    for i in range(n):
      ours, theirs = f'{stack}/layers_{i}', f'{stack}.block.{i}.layer'
      if config.per_layer_relpos_bias:
        m[f'{ours}/relpos_bias/rel_embedding'] = (
            f'{theirs}.0.SelfAttention.relative_attention_bias.weight', True)
      if stack == 'encoder':
        m[f'{ours}/pre_attention_layer_norm/scale'] = (f'{theirs}.0.layer_norm.weight', False)
        attention(f'{ours}/attention', f'{theirs}.0.SelfAttention')
        m[f'{ours}/pre_mlp_layer_norm/scale'] = (f'{theirs}.1.layer_norm.weight', False)
        feed_forward(ours, f'{theirs}.1')
      else:
        m[f'{ours}/pre_self_attention_layer_norm/scale'] = (f'{theirs}.0.layer_norm.weight', False)
        attention(f'{ours}/self_attention', f'{theirs}.0.SelfAttention')
        m[f'{ours}/pre_cross_attention_layer_norm/scale'] = (
            f'{theirs}.1.layer_norm.weight', False)
        attention(f'{ours}/encoder_decoder_attention', f'{theirs}.1.EncDecAttention')
        m[f'{ours}/pre_mlp_layer_norm/scale'] = (f'{theirs}.2.layer_norm.weight', False)
        feed_forward(ours, f'{theirs}.2')
  m['encoder/encoder_norm/scale'] = ('encoder.final_layer_norm.weight', False)
  m['decoder/decoder_norm/scale'] = ('decoder.final_layer_norm.weight', False)
  if not config.logits_via_embedding:
    m['decoder/logits_dense/kernel'] = (lm_head, True)
  return m


# ------------------------------------------------------------------------------- read


def read_hf_checkpoint(directory: str, shardings: Optional[Any] = None
                       ) -> Tuple[T5Config, Dict[str, Any]]:
  """Reads an HF T5 / mT5 / UMT5 directory into jaxpt's unscanned parameter tree.

  Args:
    directory: holds config.json and model.safetensors, a sharded
      model.safetensors.index.json, pytorch_model.bin or a sharded
      pytorch_model.bin.index.json (.bin needs torch).
    shardings: optional pytree of `jax.sharding.Sharding`s shaped like the
      returned params (leaves may be missing: those load as numpy). Each array
      is then built with `jax.make_array_from_callback`, every device reading
      only its slice of the (memory-mapped) tensor.

  Returns:
    (config, params): params are float32 numpy arrays (or jax Arrays where a
    sharding was given), whatever the checkpoint's dtype.

  Raises:
    CheckpointError: naming the file, the tensor, and the expected (from
      config.json) and found shapes, for missing / unexpected / misshapen
      tensors, truncated or corrupt files, or a config that is not T5's.
  """
  config, sources = hf_sources(directory)
  flat_shardings = (traverse_util.flatten_dict(shardings, sep='/')
                    if shardings is not None else {})
  params = {}
  for path, (shape, read) in sources.items():
    if flat_shardings.get(path) is not None:
      params[path] = jax.make_array_from_callback(shape, flat_shardings[path], read)
    else:
      # A jax array now, so a jitted step is not handed numpy views to copy (transposed)
      # on every call.
      params[path] = jnp.asarray(read())
  return config, traverse_util.unflatten_dict(params, sep='/')


def hf_sources(directory: str) -> Tuple[T5Config, Dict[str, Tuple[Tuple[int, ...], Callable]]]:
  """(config, {jaxpt path: (shape, read)}) of an HF directory, reading nothing yet.

  `read(index=None)` returns the float32 numpy value of one unscanned parameter, or
  only its slice `index` (a tuple of slices, as `jax.make_array_from_callback` passes):
  for safetensors only that slice's bytes are read (`get_slice`). Everything
  `read_hf_checkpoint` checks (names, shapes, tying) is checked here.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such directory (expected an HF T5 directory)')
  config_path = os.path.join(directory, 'config.json')
  try:
    with open(config_path) as f:
      hf_config = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{config_path}: expected an HF T5 config (JSON): {e}') from e
  if not isinstance(hf_config, dict):
    raise CheckpointError(f'{config_path}: expected a JSON object')
  from jaxpt.checkpoints import hf_decoder
  if hf_config.get('model_type') in hf_decoder.MODEL_TYPES:  # GPT-2, Llama
    return hf_decoder.decoder_sources(directory, hf_config, config_path)
  config = config_from_hf(hf_config, config_path).replace(param_dtype='float32')
  weights = _Weights(directory)
  scaled = config.logits_via_embedding

  for name in _TIED_EMBEDDINGS:  # transformers ties them to shared; jaxpt cannot untie them
    if (name in weights.shapes and 'shared.weight' in weights.shapes
        and not weights.equal(name, 'shared.weight')):
      raise CheckpointError(f'{weights.files[name]}: tensor {name} differs from shared.weight; '
                            f'jaxpt needs the input embeddings tied')
  untied = 'lm_head.weight' in weights.shapes and not weights.equal('lm_head.weight',
                                                                     'shared.weight')
  if untied:
    config = config.replace(logits_via_embedding=False)
  mapping = _param_map(config, 'lm_head.weight' if untied else 'shared.weight')

  from jaxpt.models.backbones import abstract_params
  expected = traverse_util.flatten_dict(abstract_params(config), sep='/')
  wanted = {}
  for path, (name, transpose) in mapping.items():
    want = tuple(expected[path].shape)
    wanted[path] = (name, want[::-1] if transpose else want)
  check_tensors(weights, wanted, set(_TIED_EMBEDDINGS) | {'lm_head.weight'}, (_IGNORED_SUFFIX,),
                directory, config_path)

  fold = np.float32(config.emb_dim ** -0.5) if (untied and scaled) else None
  sources = {}
  for path, (name, transpose) in mapping.items():

    def read(index=None, name=name, transpose=transpose, path=path):
      # Reads only the slice `index` of the stored tensor (safetensors' get_slice).
      if transpose:
        ndim = len(weights.shapes[name])
        stored = None if index is None else _transposed_index(index, ndim)
        array = weights.loaders[name](stored).T
      else:
        array = weights.loaders[name](index)
      out = np.asarray(array, np.float32)
      if fold is not None and path == 'decoder/logits_dense/kernel':
        out = out * fold
      return out

    sources[path] = (tuple(expected[path].shape), read)
  return config, sources


# ------------------------------------------------------------------------------ write


def _write_safetensors(path: str, tensors: Dict[str, np.ndarray]) -> None:
  """Writes `tensors` (f32 / f16 / bf16 numpy arrays) as one safetensors file, atomically."""
  tmp = path + '.tmp'
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                              metadata={'format': 'pt'})
  os.replace(tmp, path)


def write_hf_checkpoint(config: T5Config, params: Dict[str, Any], directory: str,
                        vocab_path: Optional[str] = None) -> None:
  """Writes an HF T5 (or UMT5) directory transformers' `from_pretrained` loads.

  Writes config.json, generation_config.json, model.safetensors and, given
  `vocab_path`, spiece.model. Tensors keep their dtype when it is float32,
  bfloat16 or float16 (anything else is written as float32). A tied
  (`logits_via_embedding`) model is written tied and scaled without
  `lm_head.weight`; any other gets `tie_word_embeddings: false` and
  `lm_head.weight = logits_dense.T`.

  Args:
    config: the model's config (unscanned).
    params: the unscanned parameter tree (numpy or jax arrays).
    directory: created if missing; existing files of the same names are replaced.
    vocab_path: a SentencePiece model to copy in as spiece.model.
  """
  from jaxpt.checkpoints.validate import check_params

  directory = os.fspath(directory)
  check_params(params, config.replace(scan_layers=False), directory)
  if not isinstance(config, T5Config):  # GPT-2, Llama
    from jaxpt.checkpoints import hf_decoder
    hf_decoder.write_decoder_checkpoint(config, params, directory)
    return
  hf_config = config_to_hf(config)
  os.makedirs(directory, exist_ok=True)
  flat = traverse_util.flatten_dict(params, sep='/')
  tensors = {}
  for path, (name, transpose) in _param_map(config).items():
    array = np.asarray(jax.device_get(flat[path]))
    if array.dtype not in _WRITE_DTYPES:
      array = array.astype(np.float32)
    tensors[name] = np.ascontiguousarray(array.T if transpose else array)
  dtypes = {str(a.dtype) for a in tensors.values()}
  if len(dtypes) == 1:
    hf_config['dtype'] = dtypes.pop()
  _write_safetensors(os.path.join(directory, 'model.safetensors'), tensors)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  with open(os.path.join(directory, 'generation_config.json'), 'w') as f:
    json.dump({'decoder_start_token_id': config.decoder_start_token_id,
               'pad_token_id': config.pad_token_id, 'eos_token_id': config.eos_token_id},
              f, indent=2)
  if vocab_path is not None:
    shutil.copy(os.fspath(vocab_path), os.path.join(directory, 'spiece.model'))
