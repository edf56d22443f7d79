"""peft's prompt-learning layout for causal LMs (GPT-2, Llama; task_type CAUSAL_LM).

What differs from T5's layout (`jaxpt.checkpoints.peft`, which dispatches here
for a `DecoderConfig`), as peft 0.21.2 with transformers 5.x runs it:

* PROMPT_TUNING / P_TUNING: `num_transformer_submodules` 1, so the tensor is
  exactly `[P, d_model]`, prepended to the input embeddings. Prompt rows take
  positions 0..P-1 and the first token P, as in `CausalLM`. peft drops any
  `position_ids` it is given (with a warning) and transformers then numbers
  the row 0..P+L-1 whatever the attention mask, so only right-padded (or
  unpadded) batches give peft the positions jaxpt uses.
* PREFIX_TUNING: `[P, 2 * L * token_dim]`, laid out [layers, (key, value),
  kv_heads, head_dim]; layer i reads slot i. Under grouped-query attention
  peft sets `token_dim = num_key_value_heads * head_dim` and
  `num_attention_heads = num_key_value_heads`. The prefix enters as
  `past_key_values` (keys not rotated), so tokens take positions P.. (peft adds
  P to `position_ids` when given them): `PrefixTuning(style='peft')`, whose
  `prefix_position` is 'offset'.

peft bugs (0.21.2 with transformers 5.24): `PeftModel.generate` drops a
PREFIX_TUNING prefix (it returns the base model's tokens), and with
PROMPT_TUNING its scores after the first new token differ from peft's own
forward on the same tokens. jaxpt's `generate` matches greedy steps of peft's
forward (tests/test_peft_causal.py).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax.numpy as jnp
import numpy as np

from jaxpt.checkpoints.errors import check_matches
from jaxpt.methods.prefix import PrefixTuning
from jaxpt.models.decoder_config import DecoderConfig

TASK_TYPE = 'CAUSAL_LM'
PREFIX_TYPE = 'PREFIX_TUNING'


def token_dim(config: DecoderConfig) -> int:
  """peft's prefix `token_dim`: one layer's key (or value) width."""
  return config.num_kv_heads * config.head_dim


def common_config(config: DecoderConfig, peft_type: str) -> Dict[str, Any]:
  """The layout keys of adapter_config.json (values as peft fills them for this model)."""
  prefix = peft_type == PREFIX_TYPE
  return {'num_attention_heads': config.num_kv_heads if prefix else config.num_heads,
          'num_layers': config.num_layers, 'task_type': TASK_TYPE}


def export_prefix(config: DecoderConfig, flat: np.ndarray,
                  length: int) -> Tuple[np.ndarray, Dict[str, Any]]:
  """A merged `PrefixTuning(style='peft')` prefix [P, 2L*kv_heads*head_dim] -> peft's tensor."""
  width = 2 * config.num_layers * token_dim(config)
  if flat.shape != (length, width):
    raise ValueError(f'prefix has shape {flat.shape}; expected [length, 2 * layers * kv_heads '
                     f'* head_dim] = {(length, width)} for this backbone')
  return flat, {
      'encoder_hidden_size': token_dim(config),
      'init_weights': None,
      'num_transformer_submodules': 1,
      'peft_type': PREFIX_TYPE,
      'prefix_projection': False,
      'token_dim': token_dim(config),
  }


def import_prefix(config_path: str, tensor_path: str, peft_config: Dict[str, Any],
                  rows: np.ndarray, config: DecoderConfig
                  ) -> Tuple[PrefixTuning, Dict[str, Any]]:
  """peft's PREFIX_TUNING tensor -> (`PrefixTuning(style='peft')`, its merged params)."""
  length = peft_config['num_virtual_tokens']
  dim = token_dim(config)
  check_matches(config_path, 'token_dim (num_kv_heads * head_dim)', dim,
                peft_config.get('token_dim') or dim)
  check_matches(config_path, 'num_attention_heads (num_kv_heads)', config.num_kv_heads,
                peft_config.get('num_attention_heads') or config.num_kv_heads)
  layers = peft_config.get('num_layers') or config.num_layers
  check_matches(config_path, 'num_layers', config.num_layers, layers)
  check_matches(config_path, 'num_transformer_submodules', 1,
                peft_config.get('num_transformer_submodules') or 1)
  check_matches(tensor_path,
                'prompt_embeddings shape [num_virtual_tokens, 2 * num_layers * token_dim]',
                (length, 2 * layers * dim), tuple(rows.shape))
  method = PrefixTuning(length=length, style='peft', reparameterize=False)
  return method, {'decoder_self': {'prefix': jnp.asarray(rows)}}
