"""Hugging Face peft prompt-learning adapters <-> jaxpt prompts and prefixes.

peft saves every prompt-learning method as one float32 tensor,
`prompt_embeddings`, in `adapter_model.safetensors` (or `adapter_model.bin`),
beside `adapter_config.json`. For T5 (task_type SEQ_2_SEQ_LM):

* PROMPT_TUNING / P_TUNING: `[P * num_transformer_submodules, d_model]` rows;
  only rows `[:P]` are prepended to the encoder input (the rest are dead).
  PROMPT_TUNING imports as a `PromptTuning` prompt. P_TUNING files hold the
  prompt encoder's output (the MLP / LSTM weights are never saved), so they
  import as a merged `PTuning` ({'prompt': rows[:P]}), and a `PTuning` exports
  its merged prompt. peft only prepends, so a template that puts prompt tokens
  anywhere but in front has no peft form. A live peft `PromptEncoder`'s weights
  convert with `prompt_encoder_from_peft` / `prompt_encoder_to_peft`.
* PREFIX_TUNING: `[P, 2 * L * token_dim]` with L the encoder depth and
  `token_dim = num_heads * d_kv`, laid out [layers, (key, value), heads,
  head_dim]. peft injects it only into decoder self-attention, decoder layer i
  reading layer slot (2i mod L): exactly `PrefixTuning(style='peft')`. The
  reparameterization MLP is never saved (files hold its output).

For GPT-2 and Llama (a `DecoderConfig`, task_type CAUSAL_LM) the layout is
`jaxpt.checkpoints.peft_causal`'s: the same public functions dispatch on the
config type.

`export_peft` writes what `peft.PeftModel.from_pretrained(t5, directory)`
loads with the same outputs; `import_peft` reads peft's files (and ours) and
checks their sizes against a jaxpt backbone config, which peft never does.
Note that in transformers >= 5.24, peft's `generate()` silently drops prefix
tuning prefixes (its forward is fine); on T5 `base.generate(...,
cache=peft_model.get_prompt(batch * num_beams))` works around it (causal-LM
generate bugs: `peft_causal`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax.numpy as jnp
import numpy as np

from jaxpt.checkpoints import peft_causal
from jaxpt.checkpoints.errors import CheckpointError, check_matches
from jaxpt.checkpoints.prompts import fingerprint, same_backbone
from jaxpt.methods.multitask import MultitaskPromptTuning
from jaxpt.methods.prefix import PrefixTuning
from jaxpt.methods.prompt import PromptTuning
from jaxpt.methods.ptuning import PTuning
from jaxpt.methods.registry import hyperparameters
from jaxpt.models.config import T5Config
from jaxpt.models.decoder_config import DecoderConfig

CONFIG_FILE = 'adapter_config.json'
SAFETENSORS_FILE = 'adapter_model.safetensors'
BIN_FILE = 'adapter_model.bin'
# Not the prompt manifest's name (`checkpoints.prompts.MANIFEST`): a peft export is never
# mistaken for a jaxpt prompt checkpoint.
PROVENANCE_FILE = 'jaxpt_peft_export.json'
TENSOR_KEY = 'prompt_embeddings'
TASK_TYPE = 'SEQ_2_SEQ_LM'
P_TUNING_TYPE = 'P_TUNING'
PROMPT_TYPES = ('PROMPT_TUNING', P_TUNING_TYPE)
PREFIX_TYPE = 'PREFIX_TUNING'
# The peft release whose format this module was verified against.
VERIFIED_PEFT_VERSION = '0.21.2'


def _peft_version() -> str:
  try:
    from importlib import metadata
    return metadata.version('peft')
  except Exception:  # peft is optional: the files do not need it installed.
    return VERIFIED_PEFT_VERSION


Config = Union[T5Config, DecoderConfig]


def _config_of(model: Any) -> Config:
  config = getattr(model, 'config', model)
  if not isinstance(config, (T5Config, DecoderConfig)):
    raise TypeError(f'expected a jaxpt Model, T5Config or DecoderConfig, got '
                    f'{type(model).__name__}')
  return config


def _causal(config: Config) -> bool:
  return isinstance(config, DecoderConfig)


def _default_base_path(model: Any) -> Optional[str]:
  """The model's source when it is an HF directory (so AutoPeftModel can load it)."""
  source = getattr(model, 'source', '') or ''
  if source and os.path.isfile(os.path.join(source, 'config.json')):
    return os.path.abspath(source)
  return None


def _common_config(config: Config, length: int, base: Optional[str],
                   peft_type: str) -> Dict[str, Any]:
  """Keys every peft prompt-learning config writes (values as peft fills them)."""
  if _causal(config):
    layout = peft_causal.common_config(config, peft_type)
  else:
    layout = {'num_attention_heads': config.num_heads,
              'num_layers': config.num_encoder_layers, 'task_type': TASK_TYPE}
  return {
      'auto_mapping': None,
      'base_model_name_or_path': base,
      'inference_mode': True,
      'modules_to_save': None,
      'num_virtual_tokens': int(length),
      'peft_version': _peft_version(),
      'revision': None,
      **layout,
  }


def _export_prompt(config: T5Config, method: PromptTuning,
                   params: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
  prompt = np.asarray(params['prompt'], np.float32)
  if method.num_prompts > 1 or prompt.ndim == 3:
    raise ValueError(
        f'this prompt keeps {prompt.shape[0] if prompt.ndim == 3 else method.num_prompts} '
        f'prompts side by side; a peft adapter holds one. Export one task at a time: '
        f"export_peft(model, PromptTuning(length={method.length}, initializer='array'), "
        f"{{'prompt': params['prompt'][task_id]}}, directory)")
  if prompt.shape != (method.length, config.emb_dim):
    raise ValueError(f'prompt has shape {prompt.shape}; expected [length, d_model] = '
                     f'{(method.length, config.emb_dim)} for this backbone')
  peft_config = {
      'num_transformer_submodules': 1,
      'peft_type': 'PROMPT_TUNING',
      'prompt_tuning_init': 'RANDOM',
      'prompt_tuning_init_text': None,
      'token_dim': config.emb_dim,
      'tokenizer_kwargs': None,
      'tokenizer_name_or_path': None,
  }
  return prompt, peft_config


def _export_p_tuning(config: T5Config, method: PTuning,
                     params: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
  template = method.parsed_template
  if template is not None and _causal(config):
    raise ValueError(
        f'template {method.template!r}: on a decoder-only model a template places the prompt '
        f"after the row's start id (jaxpt.prompted.decoder_only), while peft P_TUNING "
        f'prepends its virtual tokens before every input id, so peft would run a different '
        f"model. Only template='' (the prompt in front) exports to peft; keep this prompt as "
        f'a jaxpt checkpoint')
  if template is not None and not template.prefix_only:
    raise ValueError(
        f'template {method.template!r} places prompt tokens inside the input, and peft '
        f'P_TUNING can only prepend its virtual tokens to the encoder input, so peft would '
        f'run a different model. Only templates whose prompt tokens all come first (e.g. '
        f"'[P{method.length}] {{premise}} ? {{hypothesis}}') export to peft; keep this "
        f'prompt as a jaxpt checkpoint')
  prompt = np.asarray(method.merge(params)['prompt'], np.float32)
  if prompt.shape != (method.length, config.emb_dim):
    raise ValueError(f'prompt has shape {prompt.shape}; expected [length, d_model] = '
                     f'{(method.length, config.emb_dim)} for this backbone')
  peft_config = {
      'encoder_dropout': 0.0,
      'encoder_hidden_size': method.hidden_dim or config.emb_dim,
      'encoder_num_layers': method.lstm_layers,
      'encoder_reparameterization_type': method.encoder.upper(),
      'num_transformer_submodules': 1,
      'peft_type': P_TUNING_TYPE,
      'token_dim': config.emb_dim,
  }
  return prompt, peft_config


def _torch_array(x: Any) -> np.ndarray:
  return np.asarray(x.detach().cpu().numpy() if hasattr(x, 'detach') else x, np.float32)


def prompt_encoder_from_peft(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """peft `PromptEncoder.state_dict()` -> `PTuning` params (same layers, same outputs).

  Keys: `embedding.weight`, `mlp_head.{0,2,4}.{weight,bias}` (MLP) or
  `lstm_head.{weight,bias}_{ih,hh}_l{i}[_reverse]` + `mlp_head.{0,2}.*` (LSTM).
  Linear weights are transposed to [in, out]; LSTM tensors keep torch's layout.
  """
  sd = {k: _torch_array(v) for k, v in state_dict.items()}
  if 'embedding.weight' not in sd:
    raise ValueError(f'not a peft PromptEncoder state dict: no embedding.weight in '
                     f'{sorted(sd)[:10]}')
  linear = sorted({int(k.split('.')[1]) for k in sd if k.startswith('mlp_head.')})
  params = {'embedding': sd['embedding.weight'],
            'mlp': {f'layers_{i}': {'kernel': sd[f'mlp_head.{j}.weight'].T,
                                    'bias': sd[f'mlp_head.{j}.bias']}
                    for i, j in enumerate(linear)}}
  layers = sorted({int(k.rsplit('_l', 1)[1].split('_')[0]) for k in sd
                   if k.startswith('lstm_head.')})
  if layers:
    params['lstm'] = {
        f'layers_{i}': {direction: {name: sd[f'lstm_head.{name}_l{i}{suffix}']
                                    for name in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')}
                        for direction, suffix in (('forward', ''), ('backward', '_reverse'))}
        for i in layers}
  return params


def prompt_encoder_to_peft(params: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """`PTuning` params -> a state dict for peft's `PromptEncoder.load_state_dict`."""
  if 'embedding' not in params:
    raise ValueError(f'expected unmerged PTuning params (embedding, mlp[, lstm]), found '
                     f'{sorted(params)}')
  sd = {'embedding.weight': np.asarray(params['embedding'], np.float32)}
  for i in range(len(params['mlp'])):  # torch's Sequential puts ReLUs at the odd indices
    layer = params['mlp'][f'layers_{i}']
    sd[f'mlp_head.{2 * i}.weight'] = np.asarray(layer['kernel'], np.float32).T.copy()
    sd[f'mlp_head.{2 * i}.bias'] = np.asarray(layer['bias'], np.float32)
  for i in range(len(params.get('lstm', {}))):
    for direction, suffix in (('forward', ''), ('backward', '_reverse')):
      for name, value in params['lstm'][f'layers_{i}'][direction].items():
        sd[f'lstm_head.{name}_l{i}{suffix}'] = np.asarray(value, np.float32)
  return sd


def _used_slots(config: T5Config) -> list:
  """Layer slots of peft's prefix tensor that some decoder layer reads."""
  layers = config.num_encoder_layers
  return sorted({(2 * i) % layers for i in range(config.num_decoder_layers)})


def _merged_prefix(method: PrefixTuning, params: Dict[str, Any]) -> np.ndarray:
  """The one [P, F] decoder self-attention prefix of a peft-style method."""
  merged = method.merge(params)
  if set(merged) != {'decoder_self'}:
    raise ValueError(f"peft-style prefix params should hold only 'decoder_self', got "
                     f'{sorted(merged)}')
  flat = np.asarray(merged['decoder_self']['prefix'], np.float32)
  if method.num_prompts > 1 or flat.ndim == 3:
    raise ValueError(
        f'this prefix keeps {flat.shape[0] if flat.ndim == 3 else method.num_prompts} prefixes '
        f'side by side; a peft adapter holds one. Export one task at a time: merge the params, '
        f"take ['decoder_self']['prefix'][task_id] and export it with PrefixTuning("
        f"length={method.length}, style='peft', reparameterize=False)")
  return flat


def _export_prefix(config: Config, method: PrefixTuning,
                   params: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
  if _causal(config):
    if method.style != 'peft':
      raise ValueError(
          f"a style={method.style!r} prefix cannot be written as a peft adapter: its tokens "
          f'take positions from 0, and peft (whose prefix is past_key_values) numbers them '
          f"from the prefix length, so peft would run a different model. Train PrefixTuning("
          f"style='peft') to export to peft, or keep this prefix as a jaxpt checkpoint")
    return peft_causal.export_prefix(config, _merged_prefix(method, params), method.length)
  if method.style != 'peft':
    raise ValueError(
        f"a style={method.style!r} prefix cannot be written as a peft adapter: it has encoder "
        f'self-attention and decoder cross-attention prefixes, and peft has no slot for them '
        f'(on T5 peft injects prefixes into decoder self-attention only), so peft would run a '
        f"different model. Train PrefixTuning(style='peft') to export to peft, or keep this "
        f'prefix as a jaxpt checkpoint')
  if config.num_decoder_layers > config.num_encoder_layers:
    raise ValueError(
        f'peft cannot run prefixes on a T5 with more decoder than encoder layers '
        f'({config.num_encoder_layers}+{config.num_decoder_layers}): its prefix tensor has '
        f'encoder-depth layer slots and fails with an IndexError')
  flat = _merged_prefix(method, params)
  token_dim = config.num_heads * config.head_dim
  layers = config.num_encoder_layers
  if flat.shape != (method.length, 2 * layers * token_dim):
    raise ValueError(f'prefix has shape {flat.shape}; expected [length, 2 * layers * heads * '
                     f'head_dim] = {(method.length, 2 * layers * token_dim)} for this backbone')
  # Dead slots (read by no decoder layer) affect nothing in either library: write zeros.
  slots = flat.reshape(method.length, layers, 2 * token_dim).copy()
  dead = [j for j in range(layers) if j not in _used_slots(config)]
  slots[:, dead] = 0.0
  peft_config = {
      'encoder_hidden_size': token_dim,
      'init_weights': None,
      'num_transformer_submodules': 2,
      'peft_type': PREFIX_TYPE,
      'prefix_projection': False,
      'token_dim': token_dim,
  }
  return slots.reshape(flat.shape), peft_config


def _readme(base: Optional[str], peft_type: str, causal: bool) -> str:
  auto = 'AutoModelForCausalLM' if causal else 'T5ForConditionalGeneration'
  lines = ['---', f'base_model: {base or "null"}', 'library_name: peft', 'tags:',
           f'- base_model:adapter:{base}' if base else '- jaxpt', '- jaxpt', '---', '',
           f'# {peft_type} adapter exported by jaxpt', '',
           f'Load with `peft.PeftModel.from_pretrained({auto}'
           '.from_pretrained(base), this_directory)`.']
  if peft_type == PREFIX_TYPE and causal:
    lines += ['', "With transformers 5.24 peft's `generate()` drops the prefix (its forward "
              'is fine): decode with greedy steps over the forward, or with jaxpt.']
  if peft_type == PREFIX_TYPE and not causal:
    lines += ['', "Prefixes reach decoder self-attention only (peft's T5 semantics). With "
              "transformers >= 5.24 peft's `generate()` drops the prefix; use "
              '`base.generate(..., cache=peft_model.get_prompt(batch_size * num_beams))`.']
  return '\n'.join(lines) + '\n'


# Method name (the registry's) -> its peft exporter.
_EXPORTERS = {PromptTuning.name: _export_prompt, PTuning.name: _export_p_tuning,
              PrefixTuning.name: _export_prefix}


def export_peft(model: Any, method: Any, method_params: Dict[str, Any], directory: str,
                base_model_name_or_path: Optional[str] = None) -> str:
  """Writes a prompt or prefix as a peft adapter directory.

  `PromptTuning` becomes PROMPT_TUNING (`[P, d_model]` rows with
  num_transformer_submodules 1), and so does a one-task `MultitaskPromptTuning`
  (its composed prompt; `method.task_prompt(params, k)` gives task k of several);
  `PTuning` becomes P_TUNING (its merged `[P, d_model]` prompt, the encoder's
  output, as peft saves it); `PrefixTuning(style='peft')` becomes
  PREFIX_TUNING (its merged `[P, 2L*H*Dh]` prefix, token_dim H*Dh, dead slots
  zeroed; on GPT-2 / Llama H = num_kv_heads, see `peft_causal`). jaxpt's own
  record (method, backbone config) goes to `jaxpt_peft_export.json`, not into
  adapter_config.json, where peft would warn.

  Args:
    model: the backbone (`Model`, or its `T5Config` / `DecoderConfig`).
    method: a `PromptTuning`, `PTuning` or `PrefixTuning` instance.
    method_params: its params (reparameterized prefixes are merged here).
    directory: created if needed; existing adapter files are overwritten.
    base_model_name_or_path: recorded for `AutoPeftModelForSeq2SeqLM` (or
      `...ForCausalLM`);
      defaults to `model.source` when that is an HF directory.

  Returns:
    `directory`.

  Raises:
    ValueError: the prompt has no peft equivalent (paper-style prefix, several
      prompts, a template placing prompt tokens inside the input, more decoder
      than encoder layers, other methods) or the wrong shape.
  """
  from safetensors.numpy import save_file

  config = _config_of(model)
  if method.name == MultitaskPromptTuning.name:
    if method.num_tasks != 1:
      raise ValueError(f'this MPT prompt keeps {method.num_tasks} task prompts; a peft adapter '
                       f'holds one. Export one task at a time: '
                       f'export_peft(model, *method.task_prompt(params, task_id), directory)')
    method, method_params = method.task_prompt(method_params, 0)
  exporter = _EXPORTERS.get(method.name)
  if exporter is not None:
    tensor, specific = exporter(config, method, method_params)
  else:
    raise ValueError(f'{type(method).__name__} cannot be written as a peft adapter: peft '
                     f'prompt-learning adapters hold a PromptTuning prompt, a PTuning '
                     f"prompt or a PrefixTuning(style='peft') prefix")
  base = base_model_name_or_path or _default_base_path(model)
  peft_config = dict(_common_config(config, method.length, base, specific['peft_type']),
                     **specific)
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  save_file({TENSOR_KEY: np.ascontiguousarray(tensor, np.float32)},
            os.path.join(directory, SAFETENSORS_FILE), metadata={'format': 'pt'})
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(peft_config, f, indent=2, sort_keys=True)
  provenance = {
      'exported_by': 'jaxpt',
      'method': {'name': method.name, 'class': type(method).__name__,
                 **hyperparameters(method)},
      'backbone_config': config.to_dict(),
      'backbone_source': getattr(model, 'source', '') or None,
      'backbone_fingerprint': (fingerprint(model.params) if getattr(model, 'params', None)
                               is not None else None),
  }
  with open(os.path.join(directory, PROVENANCE_FILE), 'w') as f:
    json.dump(provenance, f, indent=2, sort_keys=True)
  with open(os.path.join(directory, 'README.md'), 'w') as f:
    f.write(_readme(base, peft_config['peft_type'], _causal(config)))
  return directory


def _read_tensor(directory: str) -> Tuple[np.ndarray, str]:
  """The `prompt_embeddings` array and the file it came from."""
  st_path = os.path.join(directory, SAFETENSORS_FILE)
  bin_path = os.path.join(directory, BIN_FILE)
  if os.path.isfile(st_path):
    path = st_path
    try:
      from safetensors.numpy import load_file
      tensors = load_file(path)
    except Exception as e:  # pylint: disable=broad-except  (safetensors raises its own type)
      if 'bfloat16' not in str(e) and 'BF16' not in str(e):
        raise CheckpointError(f'{path}: cannot read the adapter tensors (truncated or not a '
                              f'safetensors file): {e}') from None
      from safetensors.torch import load_file as torch_load_file  # bf16: numpy cannot hold it
      tensors = {k: v.float().numpy() for k, v in torch_load_file(path).items()}
  elif os.path.isfile(bin_path):
    import torch  # only for pickled adapters

    path = bin_path
    tensors = {k: v.detach().float().numpy()
               for k, v in torch.load(path, map_location='cpu', weights_only=True).items()}
  else:
    raise FileNotFoundError(f'{directory}: no {SAFETENSORS_FILE} or {BIN_FILE}')
  keys = [k for k in tensors if k == TENSOR_KEY or k.endswith('.' + TENSOR_KEY)]
  if len(keys) != 1:
    raise ValueError(f'{path}: expected one tensor named {TENSOR_KEY!r} (a peft '
                     f'prompt-learning adapter), found keys {sorted(tensors)[:10]}')
  return np.asarray(tensors[keys[0]], np.float32), path


def import_peft(directory: str, config: Config) -> Tuple[Any, Dict[str, Any]]:
  """Reads a peft prompt-learning adapter as a jaxpt (method, method_params).

  PROMPT_TUNING becomes `PromptTuning(length=P, initializer='array')` with
  {'prompt': rows[:P]}; P_TUNING becomes a merged `PTuning` (its encoder type
  and width from the config) with {'prompt': rows[:P]}; PREFIX_TUNING becomes `PrefixTuning(length=P,
  style='peft', reparameterize=False)` with {'decoder_self': {'prefix': ...}}
  (files written with prefix_projection hold the projected prefix; the MLP is
  not in them). For a `DecoderConfig` the adapter must be CAUSAL_LM and the
  prefix is GPT-2 / Llama's (`peft_causal.import_prefix`).

  Args:
    directory: holds adapter_config.json and adapter_model.safetensors (or .bin).
    config: the backbone's T5Config or DecoderConfig (task_type SEQ_2_SEQ_LM or
      CAUSAL_LM); the adapter's sizes are checked against it.

  Raises:
    FileNotFoundError: no adapter files.
    ValueError: unsupported peft_type / task_type, or sizes that do not fit the
      backbone (the message names the file, the expected and the found value).
  """
  directory = os.fspath(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(config_path):
    found = sorted(os.listdir(directory))[:10] if os.path.isdir(directory) else 'nothing'
    raise FileNotFoundError(f'{config_path}: not found (a peft adapter directory holds '
                            f'{CONFIG_FILE}; found {found})')
  try:
    with open(config_path) as f:
      peft_config = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f'{config_path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  if not isinstance(peft_config, dict):
    raise CheckpointError(f'{config_path}: expected a JSON object, got '
                          f'{type(peft_config).__name__}')
  peft_type = peft_config.get('peft_type')
  if peft_type not in PROMPT_TYPES + (PREFIX_TYPE,):
    raise ValueError(f'{config_path}: peft_type {peft_type!r} is not supported; jaxpt imports '
                     f'{", ".join(PROMPT_TYPES + (PREFIX_TYPE,))}')
  task_type = peft_config.get('task_type')
  expected = peft_causal.TASK_TYPE if _causal(config) else TASK_TYPE
  if task_type not in (expected, None):
    raise ValueError(f'{config_path}: task_type {task_type!r} is not a '
                     f'{"causal LM" if _causal(config) else "T5"} adapter; expected '
                     f'{expected!r}')
  length = peft_config.get('num_virtual_tokens')
  if not isinstance(length, int) or length <= 0:
    raise ValueError(f'{config_path}: num_virtual_tokens must be a positive integer, got '
                     f'{length!r}')
  rows, tensor_path = _read_tensor(directory)
  if rows.ndim != 2:
    raise ValueError(f'{tensor_path}: {TENSOR_KEY} has shape {rows.shape}; expected 2-D')

  if peft_type in PROMPT_TYPES:
    check_matches(config_path, 'token_dim (d_model)', config.emb_dim,
                  peft_config.get('token_dim') or config.emb_dim)
    check_matches(tensor_path, f'{TENSOR_KEY} width (d_model)', config.emb_dim, rows.shape[1])
    default = 1 if _causal(config) else 2
    submodules = peft_config.get('num_transformer_submodules') or default
    check_matches(tensor_path,
                  f'{TENSOR_KEY} rows (num_virtual_tokens * num_transformer_submodules)',
                  length * submodules, rows.shape[0])
    prompt = rows[:length]
    if peft_type == P_TUNING_TYPE:
      encoder = str(peft_config.get('encoder_reparameterization_type') or 'MLP').lower()
      try:
        method = PTuning(length=length, encoder=encoder,
                         hidden_dim=peft_config.get('encoder_hidden_size'),
                         lstm_layers=peft_config.get('encoder_num_layers') or 2)
      except ValueError as e:
        raise ValueError(f'{config_path}: {e}') from e
      return method, {'prompt': jnp.asarray(prompt)}
    method = PromptTuning(length=length, initializer='array', array=prompt)
    return method, {'prompt': jnp.asarray(prompt)}

  if _causal(config):
    return peft_causal.import_prefix(config_path, tensor_path, peft_config, rows, config)
  token_dim = config.num_heads * config.head_dim
  check_matches(config_path, 'token_dim (num_heads * d_kv)', token_dim,
                peft_config.get('token_dim') or config.emb_dim)
  check_matches(config_path, 'num_attention_heads', config.num_heads,
                peft_config.get('num_attention_heads') or config.num_heads)
  layers = peft_config.get('num_layers') or config.num_encoder_layers
  check_matches(config_path, 'num_layers (encoder layers)', config.num_encoder_layers, layers)
  if config.num_decoder_layers > config.num_encoder_layers:
    raise ValueError(f'{config_path}: peft prefixes cannot run on a T5 with more decoder than '
                     f'encoder layers ({config.num_encoder_layers}+'
                     f'{config.num_decoder_layers})')
  submodules = peft_config.get('num_transformer_submodules') or 2
  check_matches(config_path, 'num_transformer_submodules', 2, submodules)
  check_matches(tensor_path,
                f'{TENSOR_KEY} shape [num_virtual_tokens, 2 * num_layers * token_dim]',
                (length, 2 * layers * token_dim), tuple(rows.shape))
  method = PrefixTuning(length=length, style='peft', reparameterize=False)
  return method, {'decoder_self': {'prefix': jnp.asarray(rows)}}


def attach(model: Any, method: Any, method_params: Dict[str, Any]) -> Any:
  """A copy of `model` whose `logits` / `generate` include the prompt or prefix."""
  params = None if method_params is None else dict(method_params)
  return dataclasses.replace(model, method=method, method_params=params)


def load_peft(model: Any, directory: str) -> Any:
  """`model` with the peft adapter in `directory` attached (import_peft + attach)."""
  return attach(model, *import_peft(directory, model.config))


def check_backbone(directory: str, model: Any) -> None:
  """Refuses an adapter whose recorded backbone is not `model`'s.

  jaxpt's exports record the backbone's fingerprint beside the adapter
  (`jaxpt_peft_export.json`); adapters from elsewhere carry no identity, so only
  their sizes are checked (by `import_peft`).
  """
  path = os.path.join(os.fspath(directory), PROVENANCE_FILE)
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      recorded = json.load(f).get('backbone_fingerprint')
  except (json.JSONDecodeError, AttributeError) as e:
    raise CheckpointError(f'{path}: not a jaxpt export record: {e}') from None
  if not recorded:
    return
  same, have = same_backbone(recorded, model.params)
  if not same:
    raise CheckpointError(f'{path}: this adapter was exported from a backbone with fingerprint '
                          f'{recorded}; the model it is being attached to has {have}. A prompt '
                          f'only works on the backbone it was trained on')
