"""Decoder-only backbones (GPT-2, Llama): presets, axes, scan, and parity with transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpt
from jaxpt.models.backbones import abstract_params, init_params, logical_axes
from jaxpt.models.causal import CausalLM
from jaxpt.models.decoder_config import decoder_preset
from jaxpt.models.scan import stack_layers, unstack_layers

# Published parameter counts (the checkpoints' safetensors totals).
PUBLISHED = {
    ('gpt2', 'small'): 124_439_808,
    ('gpt2', 'xl'): 1_557_611_200,
    ('llama', 'tinyllama'): 1_100_048_384,
    ('llama', 'llama3_8b'): 8_030_261_248,
    ('llama', 'llama3_2_1b'): 1_235_814_400,
}


@pytest.mark.parametrize('family,size', sorted(PUBLISHED))
def test_preset_parameter_counts_equal_published(family, size):
  shapes = abstract_params(decoder_preset(family, size))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == PUBLISHED[family, size]


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_every_parameter_has_logical_axes(family):
  for cfg in (decoder_preset(family, 'tiny'), decoder_preset(family, 'tiny', scan_layers=True)):
    axes = jax.tree.leaves(logical_axes(cfg),
                           is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    shapes = jax.tree.leaves(abstract_params(cfg))
    assert len(axes) == len(shapes)
    for spec, shape in zip(axes, shapes):
      assert len(spec) == len(shape.shape) and all(isinstance(n, str) for n in spec)
      if cfg.scan_layers and len(spec) > 1 and spec[0] == 'layers':
        assert shape.shape[0] == cfg.num_layers


def _padded(vocab, seed=0):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(2, vocab, (3, 7)).astype(np.int32)
  valid = np.ones_like(tokens, bool)
  valid[1, 5:] = False  # right-padded
  valid[2, :3] = False  # left-padded
  return np.where(valid, tokens, 0), valid


@pytest.mark.slow  # 10-40 s each on 2 CPU cores
@pytest.mark.parametrize('family', ['gpt2', 'llama'])
@pytest.mark.parametrize('policy', ['none', 'full'])
def test_scan_and_remat_equal_unscanned(family, policy):
  config = decoder_preset(family, 'tiny')
  params = init_params(config, jax.random.key(0))
  tokens, valid = _padded(config.vocab_size)

  def loss(cfg, p):
    return jnp.mean(jax.nn.log_softmax(CausalLM(cfg).apply({'params': p}, tokens, valid).logits))

  ref, ref_grad = jax.value_and_grad(lambda p: loss(config, p))(params)
  scanned = config.replace(scan_layers=True, remat_policy=policy)
  got, got_grad = jax.value_and_grad(lambda p: loss(scanned, p))(stack_layers(params))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(unstack_layers(got_grad)), jax.tree.leaves(ref_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _hf_logits(model, tokens, valid):
  torch = pytest.importorskip('torch')
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(valid, dtype=torch.long),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.numpy()


@pytest.mark.slow  # 12-35 s each (transformers and torch import, three models)
@pytest.mark.parametrize('family', ['gpt2', 'llama', 'llama_tied_bias'])
def test_logits_equal_transformers_with_padding(family, tmp_path):
  from tests import hf_fixtures
  hf_model = {'gpt2': hf_fixtures.gpt2, 'llama': hf_fixtures.llama,
              'llama_tied_bias': lambda: hf_fixtures.llama(
                  tie_word_embeddings=True, attention_bias=True, num_key_value_heads=1)}[family]()
  hf_model.save_pretrained(tmp_path / 'hf')
  model = jaxpt.load_model(tmp_path / 'hf')
  tokens, valid = _padded(model.config.vocab_size)
  ours = CausalLM(model.config).apply({'params': model.params}, tokens, valid).logits
  ref = _hf_logits(hf_model, tokens, valid)
  np.testing.assert_allclose(np.asarray(ours)[valid], ref[valid], atol=1e-4, rtol=1e-4)
  # The numpy handle: model.logits(tokens), padding read from the 0 ids.
  np.testing.assert_allclose(model.logits(tokens)[valid], ref[valid], atol=1e-4, rtol=1e-4)
  # Left- and right-padded copies of a row give the same logits on its real tokens.
  np.testing.assert_allclose(np.asarray(ours)[2, 3:], CausalLM(model.config).apply(
      {'params': model.params}, tokens[2:3, 3:], valid[2:3, 3:]).logits[0], atol=1e-5)
  # save_hf writes a directory transformers loads to the same logits.
  jaxpt.save_hf(model, tmp_path / 'out')
  import transformers
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
  np.testing.assert_allclose(_hf_logits(back, tokens, valid)[valid], ref[valid], atol=1e-5)


def test_partitioning_shards_decoder_params_by_their_axes():
  from jaxpt.partitioning import logical_axis_rules, make_mesh, param_shardings
  config = decoder_preset('llama', 'tiny', scan_layers=True)
  shardings = param_shardings(config, make_mesh(num_partitions=1), logical_axis_rules())
  shapes = abstract_params(config)
  assert jax.tree.structure(shardings) == jax.tree.structure(shapes)
  query = shardings['decoder']['layers']['self_attention']['query']['kernel']
  assert query.spec == jax.sharding.PartitionSpec(None, None, 'model')  # joined_kv -> model


def test_summary_names_the_preset():
  config = decoder_preset('gpt2', 'tiny')
  model = jaxpt.Model(config, init_params(config, jax.random.key(0)))
  assert model.summary().startswith('gpt2 (gpt2/tiny)')
