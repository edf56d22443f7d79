"""jaxpt: soft-prompt and prefix tuning of frozen T5 models in JAX/Flax.

Public API:
  load_model(path, prompt=None, **config_overrides) -> Model
  save_hf(model, directory)      write an HF transformers T5 directory
  save_model(model, directory)   write a jaxpt model directory
  export_peft(model, method, method_params, directory)   a peft adapter directory
  import_peft(directory, config) -> (method, method_params)
  Model, T5Config, preset
  PromptedModel, prompted_model(config, method)   the pure-functional model (loss, score,
                                                 generate) every command runs
"""

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.checkpoints.load import load_model
from jaxpt.checkpoints.save import save_hf, save_model
from jaxpt.checkpoints.peft import export_peft, import_peft
from jaxpt.models.config import T5Config, preset
from jaxpt.prompted.base import PromptedModel, prompted_model
from jaxpt.prompted.model import Model

__all__ = ['CheckpointError', 'Model', 'PromptedModel', 'T5Config', 'export_peft', 'import_peft',
           'load_model', 'preset', 'prompted_model', 'save_hf', 'save_model']
__version__ = '0.1.0'
