"""jaxpt: soft-prompt and prefix tuning of frozen T5 models in JAX/Flax.

Public API:
  load_model(path, prompt=None, partitioning=None, **config_overrides) -> Model
                                 (sharded reads; scan_layers=, param_dtype= while reading)
  save_hf(model, directory)      write an HF transformers T5 directory
  save_model(model, directory)   write a jaxpt model directory
  export_peft(model, method, method_params, directory)   a peft adapter directory
  import_peft(directory, config) -> (method, method_params)
  Model, T5Config, preset
  DecoderConfig, decoder_preset(family, size)   GPT-2 / Llama backbones (load_model reads
                                 GPT2LMHeadModel / LlamaForCausalLM directories too)
  PromptedModel, prompted_model(config, method)   the pure-functional model (loss, score,
                                                 generate) every command runs

`import jaxpt` also registers jaxpt's gin configurables (see `_register_gin` below), so the
files under gin/ load with plain `gin.parse_config_files_and_bindings`.
"""

import os as _os

# What the user set, before jax (imported below) sets '1' when unset: the `jaxpt` command
# keeps TensorFlow's start-up lines quiet unless asked (jaxpt.cli.quiet).
_USER_TF_LOG_LEVEL = _os.environ.get('TF_CPP_MIN_LOG_LEVEL')

from jaxpt.checkpoints.errors import CheckpointError  # noqa: E402
from jaxpt.checkpoints.load import load_model
from jaxpt.checkpoints.save import save_hf, save_model
from jaxpt.checkpoints.peft import export_peft, import_peft
from jaxpt.models.config import T5Config, preset
from jaxpt.models.decoder_config import DecoderConfig, decoder_preset
from jaxpt.prompted.base import PromptedModel, prompted_model
from jaxpt.prompted.model import Model

__all__ = ['CheckpointError', 'DecoderConfig', 'Model', 'PromptedModel', 'T5Config',
           'decoder_preset', 'export_peft', 'import_peft', 'load_model', 'preset',
           'prompted_model', 'save_hf', 'save_model']
__version__ = '0.1.0'


# ------------------------------------------------------------------------------------ gin
# `import jaxpt` makes jaxpt's building blocks gin configurables under stable names, T5X's
# "registration on import" (the runs register on import of jaxpt.cli.runs, partitioning on
# import of jaxpt.partitioning, by their decorators). `gin.external_configurable` registers
# a wrapper: the Python objects stay unconfigured, so a parsed gin file never changes what
# `jaxpt.methods.PromptTuning(...)` or `make_optimizer(...)` do when called from Python.
# Gin files reference:
#   jaxpt.preset                      a T5Config for a public size (models/*.gin)
#   jaxpt.methods.<Class>             every method of jaxpt.methods.registry.METHODS
#   jaxpt.methods.source_prompt       a prompt checkpoint's [L, d] prompt (SPoT transfer)
#   jaxpt.methods.shared_prompt       an MPT checkpoint's shared prompt P* (target adaptation)
#   jaxpt.train.make_optimizer        the optax recipes
#   jaxpt.assets.mini_t5_path         the committed mini backbone's directory
#   jaxpt.assets.mini_gpt2_path       the committed mini GPT-2's directory
# The repository's gin/ directory (when present) goes on gin's search path, after the working
# directory, so `include 'models/t5_1_1/base.gin'` resolves as under `jaxpt train`.


def _register_gin() -> None:
  import pathlib

  import gin

  from jaxpt.assets import mini_gpt2_path, mini_t5_path
  from jaxpt.methods.registry import METHODS
  from jaxpt.checkpoints.transfer import shared_prompt, source_prompt
  from jaxpt.train.optim import make_optimizer

  gin.external_configurable(preset, module='jaxpt')
  gin.external_configurable(decoder_preset, module='jaxpt')
  for cls in METHODS.values():
    gin.external_configurable(cls, module='jaxpt.methods')
  gin.external_configurable(source_prompt, module='jaxpt.methods')
  gin.external_configurable(shared_prompt, module='jaxpt.methods')
  gin.external_configurable(make_optimizer, module='jaxpt.train')
  gin.external_configurable(mini_t5_path, module='jaxpt.assets')
  gin.external_configurable(mini_gpt2_path, module='jaxpt.assets')
  gin_dir = pathlib.Path(__file__).resolve().parents[1] / 'gin'
  if (gin_dir / 'runs' / 'train.gin').is_file():  # a source checkout, not site-packages/gin
    gin.add_config_file_search_path(str(gin_dir))


_register_gin()
