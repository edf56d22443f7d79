"""peft prompt-learning adapters: export / import parity of logits, loss and gradients."""

from __future__ import annotations

import json
import os
import warnings

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

from jaxpt.prompted.base import prompted_model
import jaxpt  # noqa: E402
from jaxpt.checkpoints.peft import (attach, export_peft, import_peft, load_peft,  # noqa: E402
                                prompt_encoder_from_peft, prompt_encoder_to_peft)
from jaxpt.methods import (PROMPT_ONLY, Backbone, ModelTuning, PrefixTuning,  # noqa: E402
                           PromptTuning, PTuning, partition)
from jaxpt.methods.ptuning import encode_prompt  # noqa: E402
from jaxpt.prompted.loss import loss_and_metrics  # noqa: E402
from jaxpt.train.optim import make_optimizer  # noqa: E402
from jaxpt.train.step import init_state, make_train_step  # noqa: E402
from tests import hf_fixtures  # noqa: E402
from tests.tiny_configs import tiny_config  # noqa: E402

VOCAB = 64
P = 4
TOL = 1e-4


def _hf_t5(d_kv: int, seed: int = 0):
  torch.manual_seed(seed)
  cfg = hf_fixtures.t5_config(vocab_size=VOCAB, d_kv=d_kv, feed_forward_proj='gated-gelu',
                              tie_word_embeddings=False)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # spread the random init so prompt effects show in the logits
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.2)
  return model


@pytest.fixture(scope='module')
def backbones(tmp_path_factory):
  """d_kv -> (HF directory, jaxpt Model), built once; d_kv=5 gives heads * d_kv != d_model."""
  cache = {}

  def get(d_kv):
    if d_kv not in cache:
      path = tmp_path_factory.mktemp(f'base_dkv{d_kv}')
      _hf_t5(d_kv).save_pretrained(path)
      cache[d_kv] = str(path), jaxpt.load_model(str(path))
    return cache[d_kv]

  return get


@pytest.fixture(scope='module')
def square(backbones):
  return backbones(4)


def _load_hf(path):
  return transformers.T5ForConditionalGeneration.from_pretrained(path).eval()


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, VOCAB, (3, 7)).astype(np.int32)
  enc[1, 5:] = 0
  enc[2, 3:] = 0
  tgt = rng.randint(2, VOCAB, (3, 5)).astype(np.int32)
  tgt[:, -1] = 1
  tgt[1, 3:] = 0
  dec = np.concatenate([np.zeros((3, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt)


def _peft_logits(peft_model, batch):
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return peft_model(input_ids=enc, attention_mask=(enc != 0).long(),
                      decoder_input_ids=torch.tensor(batch['decoder_input_tokens'],
                                                     dtype=torch.long)).logits.numpy()


def _err(ours, ref, name):
  err = float(np.abs(np.asarray(ours) - ref).max())
  print(f'{name}: max |diff| {err:.2e} (scale {np.abs(ref).max():.2f})')
  return err


def _jaxpt_logits(model, method, params, batch):
  return attach(model, method, params).logits(batch['encoder_input_tokens'],
                                              batch['decoder_input_tokens'])


def _export_and_compare(tmp_path, path, model, method, params, name):
  out = export_peft(model, method, params, str(tmp_path / 'adapter'))
  peft_model = peft.PeftModel.from_pretrained(_load_hf(path), out).eval()
  batch = _batch()
  err = _err(_jaxpt_logits(model, method, params, batch), _peft_logits(peft_model, batch), name)
  assert err <= TOL
  return out


def _trained(model, method, learning_rate):
  """(initial, after 3 AdamW steps) method params."""
  tree = {'backbone': model.params,
          'method': method.init(jax.random.key(0), Backbone(model.config, None))}
  trainable, frozen = partition(tree, PROMPT_ONLY)
  optimizer = make_optimizer('adamw', learning_rate)
  step = jax.jit(make_train_step(prompted_model(model.config, method), optimizer))
  state = init_state(trainable, optimizer)
  for _ in range(3):
    state, _ = step(state, frozen, _batch(), jax.random.key(1))
  return tree['method'], state.trainable['method']


def test_trained_prompt_exports_to_peft(square, tmp_path):
  path, model = square
  method = PromptTuning(length=P, initializer='uniform')
  before, params = _trained(model, method, 0.1)
  assert not np.allclose(before['prompt'], params['prompt'])
  out = _export_and_compare(tmp_path, path, model, method, params, 'trained prompt')

  with open(os.path.join(out, 'adapter_config.json')) as f:
    cfg = json.load(f)
  assert cfg['peft_type'] == 'PROMPT_TUNING' and cfg['task_type'] == 'SEQ_2_SEQ_LM'
  assert cfg['num_transformer_submodules'] == 1 and cfg['token_dim'] == 16
  assert cfg['base_model_name_or_path'] == os.path.abspath(path)
  assert not any(k.startswith('jaxpt') for k in cfg)  # provenance lives beside it instead
  with open(os.path.join(out, 'jaxpt_peft_export.json')) as f:
    assert json.load(f)['backbone_config']['emb_dim'] == 16
  # a peft export is never mistaken for a jaxpt prompt checkpoint
  from jaxpt.checkpoints import prompts
  assert not prompts.is_prompt_directory(out)
  from safetensors import safe_open
  with safe_open(os.path.join(out, 'adapter_model.safetensors'), 'np') as f:
    assert f.metadata() == {'format': 'pt'}
    assert f.get_tensor('prompt_embeddings').shape == (P, 16)
  # And back: the same prompt.
  method2, params2 = import_peft(out, model.config)
  assert method2.length == P
  np.testing.assert_array_equal(np.asarray(params2['prompt']), np.asarray(params['prompt']))


@pytest.mark.parametrize('d_kv', [4, 5])
@pytest.mark.parametrize('reparameterize', [False, True], ids=['plain', 'mlp'])
def test_peft_style_prefix_exports_to_peft(backbones, tmp_path, reparameterize, d_kv):
  path, model = backbones(d_kv)
  method = PrefixTuning(length=P, style='peft', reparameterize=reparameterize, hidden_dim=12)
  params = method.init(jax.random.key(2), Backbone(model.config, None))
  out = _export_and_compare(tmp_path, path, model, method, params,
                            f'prefix {"mlp" if reparameterize else "plain"} '
                            f'head_dim {model.config.head_dim}')
  with open(os.path.join(out, 'adapter_config.json')) as f:
    cfg = json.load(f)
  token_dim = model.config.num_heads * model.config.head_dim
  assert cfg['peft_type'] == 'PREFIX_TUNING' and cfg['num_transformer_submodules'] == 2
  assert cfg['token_dim'] == token_dim and cfg['num_layers'] == 2
  assert not cfg['prefix_projection']
  # Import gives back a prefix with the same outputs (dead slot zeroed).
  method2, params2 = import_peft(out, model.config)
  batch = _batch()
  err = _err(_jaxpt_logits(model, method2, params2, batch),
             _jaxpt_logits(model, method, params, batch), 'prefix round trip')
  assert err <= 1e-5


def _peft_configs(token_dim):
  from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
  seq2seq = dict(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=P)
  return {
      'prompt': PromptTuningConfig(**seq2seq),
      'p_tuning': PromptEncoderConfig(encoder_hidden_size=12, **seq2seq),
      'p_tuning_lstm': PromptEncoderConfig(encoder_hidden_size=12,
                                           encoder_reparameterization_type='LSTM', **seq2seq),
      'prefix': PrefixTuningConfig(token_dim=token_dim, **seq2seq),
      'prefix_projection': PrefixTuningConfig(token_dim=token_dim, prefix_projection=True,
                                              encoder_hidden_size=12, **seq2seq),
  }


@pytest.mark.parametrize('kind,d_kv', [('prompt', 4), ('p_tuning', 4), ('p_tuning_lstm', 4),
                                       ('prefix', 4),
                                       ('prefix_projection', 4), ('prefix', 5),
                                       ('prefix_projection', 5)])
def test_peft_adapter_imports(backbones, tmp_path, kind, d_kv):
  path, model = backbones(d_kv)
  token_dim = model.config.num_heads * model.config.head_dim
  torch.manual_seed(3)
  peft_model = peft.get_peft_model(_load_hf(path), _peft_configs(token_dim)[kind]).eval()
  with torch.no_grad():
    for p in peft_model.parameters():
      if p.requires_grad:
        p.normal_(0, 0.5)
  # P-tuning goes through the pickled adapter_model.bin reader.
  peft_model.save_pretrained(str(tmp_path / 'adapter'), safe_serialization=kind != 'p_tuning')
  assert os.path.isfile(tmp_path / 'adapter' / ('adapter_model.bin' if kind == 'p_tuning'
                                               else 'adapter_model.safetensors'))
  method, params = import_peft(str(tmp_path / 'adapter'), model.config)
  batch = _batch()
  err = _err(load_peft(model, str(tmp_path / 'adapter')).logits(
      batch['encoder_input_tokens'], batch['decoder_input_tokens']),
             _peft_logits(peft_model, batch), f'import {kind} head_dim {model.config.head_dim}')
  assert err <= TOL
  assert isinstance(method, PTuning if kind.startswith('p_tuning') else
                    PrefixTuning if kind.startswith('prefix') else PromptTuning)
  if kind.startswith('p_tuning'):  # a merged P-tuning prompt, attached by load_model too
    assert set(params) == {'prompt'} and method.encoder == ('lstm' if 'lstm' in kind else 'mlp')
    err = _err(jaxpt.load_model(path, prompt=str(tmp_path / 'adapter')).logits(
        batch['encoder_input_tokens'], batch['decoder_input_tokens']),
               _peft_logits(peft_model, batch), f'load_model(prompt=peft {kind})')
    assert err <= TOL


@pytest.mark.parametrize('encoder', ['MLP', 'LSTM'])
def test_prompt_encoders_match_peft(encoder):
  """Same weights, both directions: jaxpt's MLP / LSTM encoders give peft's outputs."""
  from peft import PromptEncoderConfig
  from peft.tuners.p_tuning import PromptEncoder
  cfg = PromptEncoderConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=P, token_dim=16,
                            num_transformer_submodules=2, encoder_hidden_size=12,
                            encoder_reparameterization_type=encoder)
  torch.manual_seed(4)
  theirs = PromptEncoder(cfg).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.normal_(0, 0.5)
    ref = theirs(torch.arange(2 * P)[None]).numpy()[0]
  ours = np.asarray(encode_prompt(prompt_encoder_from_peft(theirs.state_dict())))
  assert _err(ours, ref, f'{encoder} encoder, peft weights') <= 1e-5
  # jaxpt's own init: the same tensors, shape for shape; loaded into peft, the same outputs.
  method = PTuning(length=P, encoder=encoder.lower(), hidden_dim=12, num_transformer_submodules=2)
  params = method.init(jax.random.key(0), Backbone(tiny_config(emb_dim=16), None))
  state = {k: torch.tensor(v) for k, v in prompt_encoder_to_peft(params).items()}
  other = PromptEncoder(cfg).eval()
  other.load_state_dict(state, strict=True)
  with torch.no_grad():
    ref = other(torch.arange(2 * P)[None]).numpy()[0]
  assert _err(encode_prompt(params), ref, f'{encoder} encoder, jaxpt weights') <= 1e-5


def test_trained_p_tuning_exports_to_peft(square, tmp_path):
  path, model = square
  method = PTuning(length=P, encoder='lstm', hidden_dim=12)
  before, params = _trained(model, method, 0.05)
  assert not np.allclose(method.prompt(before), method.prompt(params))
  out = _export_and_compare(tmp_path, path, model, method, params, 'trained p-tuning')
  with open(os.path.join(out, 'adapter_config.json')) as f:
    cfg = json.load(f)
  assert cfg['peft_type'] == 'P_TUNING' and cfg['encoder_reparameterization_type'] == 'LSTM'
  assert cfg['encoder_hidden_size'] == 12 and cfg['num_transformer_submodules'] == 1
  method2, params2 = import_peft(out, model.config)  # the encoder's output comes back
  assert isinstance(method2, PTuning) and method2.encoder == 'lstm'
  np.testing.assert_allclose(params2['prompt'], method.prompt(params), rtol=1e-6)


def test_p_tuning_template_export(square, tmp_path):
  """Prompt tokens inside the input have no peft form; all in front (anchors after) do."""
  _, model = square
  mid = PTuning(length=P, encoder='mlp', template='[P2] {premise} ? [P2] {hypothesis}')
  params = mid.init(jax.random.key(0), Backbone(model.config, None))
  with pytest.raises(ValueError, match='inside the input.*only prepend'):
    export_peft(model, mid, params, str(tmp_path / 'mid'))
  assert not os.path.exists(tmp_path / 'mid')
  front = PTuning(length=P, encoder='mlp', template=f'[P{P}] {{premise}} ? {{hypothesis}}')
  out = export_peft(model, front, params, str(tmp_path / 'front'))
  np.testing.assert_allclose(import_peft(out, model.config)[1]['prompt'], front.prompt(params),
                             rtol=1e-6)


def _jaxpt_loss_and_grad(model, method, params, batch):
  def loss(p):
    logits = prompted_model(model.config, method).logits({'backbone': model.params, 'method': p}, batch)
    tgt = batch['decoder_target_tokens']
    return loss_and_metrics(logits, tgt, (tgt > 0).astype(np.float32))[0]

  return jax.jit(jax.value_and_grad(loss))(params)


def _peft_loss(peft_model, batch):
  enc = torch.tensor(batch['encoder_input_tokens'], dtype=torch.long)
  labels = torch.tensor(batch['decoder_target_tokens'], dtype=torch.long)
  labels[labels == 0] = -100
  peft_model.train()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    out = peft_model(input_ids=enc, attention_mask=(enc != 0).long(), labels=labels)
  out.loss.backward()
  return float(out.loss.detach())


def _rel(ours, ref, name):
  ours, ref = np.asarray(ours), np.asarray(ref)
  rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
  print(f'{name}: relative max |diff| {rel:.2e}')
  return rel


def test_prompt_loss_and_gradient_match_peft(square):
  path, model = square
  from peft import PromptTuningConfig
  peft_model = peft.get_peft_model(
      _load_hf(path), PromptTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=P))
  weight = peft_model.prompt_encoder['default'].embedding.weight
  with torch.no_grad():
    weight.uniform_(-0.5, 0.5)
  batch = _batch(1)
  ref_loss = _peft_loss(peft_model, batch)
  method = PromptTuning(length=P, initializer='array')
  params = {'prompt': weight.detach().numpy()[:P].copy()}
  loss, grads = _jaxpt_loss_and_grad(model, method, params, batch)
  assert _rel(loss, ref_loss, 'prompt loss') <= TOL
  assert _rel(grads['prompt'], weight.grad.numpy()[:P], 'prompt grad') <= TOL
  assert np.all(weight.grad.numpy()[P:] == 0)  # peft's dead second half


def test_p_tuning_loss_and_gradient_match_peft(square):
  """Training through the LSTM encoder: the same loss and encoder gradients as peft."""
  path, model = square
  from peft import PromptEncoderConfig
  peft_model = peft.get_peft_model(_load_hf(path), PromptEncoderConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=P, encoder_hidden_size=12,
      encoder_reparameterization_type='LSTM'))
  encoder = peft_model.prompt_encoder['default']
  batch = _batch(3)
  ref_loss = _peft_loss(peft_model, batch)
  method = PTuning(length=P, encoder='lstm', hidden_dim=12, num_transformer_submodules=2)
  loss, grads = _jaxpt_loss_and_grad(model, method, prompt_encoder_from_peft(
      encoder.state_dict()), batch)
  assert _rel(loss, ref_loss, 'p-tuning loss') <= TOL
  ref_grads = prompt_encoder_from_peft({k: p.grad for k, p in encoder.named_parameters()})
  for (key, ours), ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(ref_grads)):
    assert _rel(ours, ref, f'p-tuning grad {jax.tree_util.keystr(key)}') <= TOL


def test_reparameterized_prefix_loss_and_gradient_match_peft(square):
  path, model = square
  from peft import PrefixTuningConfig
  hidden = 12
  peft_model = peft.get_peft_model(
      _load_hf(path), PrefixTuningConfig(task_type='SEQ_2_SEQ_LM', num_virtual_tokens=P,
                                         prefix_projection=True, encoder_hidden_size=hidden))
  encoder = peft_model.prompt_encoder['default']
  batch = _batch(2)
  ref_loss = _peft_loss(peft_model, batch)
  t = lambda x: x.detach().numpy().copy()
  params = {'decoder_self': {
      'embedding': t(encoder.embedding.weight),
      'hidden': {'kernel': t(encoder.transform[0].weight).T, 'bias': t(encoder.transform[0].bias)},
      'output': {'kernel': t(encoder.transform[2].weight).T, 'bias': t(encoder.transform[2].bias)},
  }}
  method = PrefixTuning(length=P, style='peft', reparameterize=True, hidden_dim=hidden)
  loss, grads = _jaxpt_loss_and_grad(model, method, params, batch)
  assert _rel(loss, ref_loss, 'prefix loss') <= TOL
  g = grads['decoder_self']
  pairs = {'embedding': (g['embedding'], encoder.embedding.weight.grad),
           'hidden.kernel': (g['hidden']['kernel'], encoder.transform[0].weight.grad.T),
           'hidden.bias': (g['hidden']['bias'], encoder.transform[0].bias.grad),
           'output.kernel': (g['output']['kernel'], encoder.transform[2].weight.grad.T),
           'output.bias': (g['output']['bias'], encoder.transform[2].bias.grad)}
  for name, (ours, ref) in pairs.items():
    assert _rel(ours, ref.numpy(), f'prefix grad {name}') <= TOL


def test_export_refuses_what_peft_cannot_hold(square, tmp_path):
  _, model = square
  paper = PrefixTuning(length=P, style='paper', hidden_dim=8)
  params = paper.init(jax.random.key(0), Backbone(model.config, None))
  with pytest.raises(ValueError, match='style=.paper.*encoder.*cross-attention'):
    export_peft(model, paper, params, str(tmp_path / 'a'))
  multi = PromptTuning(length=P, initializer='uniform', num_prompts=2)
  params = multi.init(jax.random.key(0), Backbone(model.config, None))
  with pytest.raises(ValueError, match='one task at a time'):
    export_peft(model, multi, params, str(tmp_path / 'b'))
  with pytest.raises(ValueError, match='ModelTuning'):
    export_peft(model, ModelTuning(), {}, str(tmp_path / 'c'))
  deep = model.config.replace(num_decoder_layers=3)
  peft_prefix = PrefixTuning(length=P, style='peft', reparameterize=False)
  with pytest.raises(ValueError, match='more decoder than encoder'):
    export_peft(deep, peft_prefix, {'decoder_self': {'prefix': np.zeros((P, 128), np.float32)}},
                str(tmp_path / 'd'))
  assert not os.path.exists(tmp_path / 'a')


def test_import_names_file_and_sizes_on_mismatch(square, tmp_path):
  _, model = square
  method = PrefixTuning(length=P, style='peft', reparameterize=False)
  params = method.init(jax.random.key(0), Backbone(model.config, None))
  out = export_peft(model, method, params, str(tmp_path / 'prefix'))
  odd = model.config.replace(head_dim=5)
  with pytest.raises(ValueError, match=r'adapter_config\.json.*token_dim.*expected 20, found 16'):
    import_peft(out, odd)
  prompt = PromptTuning(length=P, initializer='uniform')
  out = export_peft(model, prompt, prompt.init(jax.random.key(0), Backbone(model.config, None)),
                    str(tmp_path / 'prompt'))
  with pytest.raises(ValueError, match=r'adapter_config\.json.*d_model.*expected 32, found 16'):
    import_peft(out, model.config.replace(emb_dim=32))
  with pytest.raises(FileNotFoundError, match='adapter_config.json'):
    import_peft(str(tmp_path), model.config)
