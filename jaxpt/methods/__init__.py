"""What is trained on a frozen backbone: soft prompts, prefixes, and the split.

Every method is a frozen dataclass with the same three pure functions:
`init(rng, backbone) -> params`, `soft_inputs(params, config, batch_size,
task_ids) -> SoftInputs` (what the T5 forward takes: a prompt and/or prefixes) and
`merge(params) -> params` (folds any reparameterization away for inference).
"""

from jaxpt.methods.interface import Backbone, Method, SoftInputs
from jaxpt.methods.model_tuning import ModelTuning
from jaxpt.methods.multitask import MultitaskPromptTuning
from jaxpt.methods.prefix import PrefixTuning, deep_prompt_tuning
from jaxpt.methods.prompt import PromptTuning
from jaxpt.methods.ptuning import PTuning, Template
from jaxpt.methods.registry import METHODS, method_class
from jaxpt.methods.split import EVERYTHING, PROMPT_ONLY, combine, partition

__all__ = ['Backbone', 'EVERYTHING', 'METHODS', 'Method', 'ModelTuning', 'MultitaskPromptTuning',
           'PROMPT_ONLY', 'PTuning', 'PrefixTuning', 'PromptTuning', 'SoftInputs', 'Template',
           'combine', 'deep_prompt_tuning', 'method_class', 'partition']
