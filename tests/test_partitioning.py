"""Partitioning: T5X rules, meshes, sharded steps equal to one device's, checkpoints
across meshes, and `jaxpt plan`.

The multi-device checks run this file as a script in a child process with 8 forced
CPU devices (XLA_FLAGS must be set before JAX starts; the suite itself has one
device) and read the JSON line it prints.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Dict

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxpt
from jaxpt import partitioning as pt
from jaxpt.checkpoints.load import read_backbone_sharded
from jaxpt.prompted.base import prompted_model
from jaxpt.train.sharding import ShardedStep, train_shardings
from tests.simulated_devices import run_scenario
from tests.tiny_configs import SHARDABLE_CONFIG, VOCAB

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[1]
MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))  # (data, model)
TOL = 1e-5

# Weights, their logical axes and where the 1-D rules put them.
EXPECTED_SPECS = {
    'token_embedder/embedding': ('model',),
    'encoder/layers_0/mlp/wi_0/kernel': (None, 'model'),
    'encoder/layers_0/mlp/wo/kernel': ('model',),
    'encoder/layers_0/attention/query/kernel': (None, 'model'),
    'encoder/layers_0/attention/out/kernel': ('model',),
    'decoder/layers_1/encoder_decoder_attention/value/kernel': (None, 'model'),
    'decoder/logits_dense/kernel': (None, 'model'),
    'encoder/relpos_bias/rel_embedding': ('model',),
    'encoder/layers_0/pre_mlp_layer_norm/scale': (),
}


def tiny_config(**overrides: Any) -> jaxpt.T5Config:
  """Heads, MLP, joined kv and vocabulary all divisible by 8 (tests.tiny_configs)."""
  return SHARDABLE_CONFIG.replace(**overrides)


def _child(scenario: str, tmp: pathlib.Path) -> Dict[str, Any]:
  return run_scenario(HERE, scenario, tmp)


@pytest.fixture(scope='module')
def steps(tmp_path_factory) -> Dict[str, Any]:
  return _child('steps', tmp_path_factory.mktemp('steps'))


@pytest.fixture(scope='module')
def restored(tmp_path_factory) -> Dict[str, Any]:
  return _child('checkpoint', tmp_path_factory.mktemp('checkpoint'))


# ------------------------------------------------------------------------ in process


def test_standard_rules_are_t5x():
  one = dict(pt.standard_logical_axis_rules())
  assert pt.standard_logical_axis_rules()[:7] == (
      ('batch', 'data'), ('vocab', 'model'), ('embed', None), ('mlp', 'model'),
      ('heads', 'model'), ('kv', None), ('joined_kv', 'model'))
  for name in ('relpos_buckets', 'abspos_buckets', 'length', 'layers', 'stack',
               'mlp_activations'):
    assert one[name] is None
  two = pt.standard_logical_axis_rules(2, 2)
  assert [r for r in two if r[0] == 'embed'] == [('embed', 'model'), ('embed', 'data')]
  assert ('embed', 'data') in pt.standard_logical_axis_rules(1, 2)
  assert ('embed', 'model') in pt.standard_logical_axis_rules(2, 1)
  with pytest.raises(ValueError, match='partitioning_dims'):
    pt.standard_logical_axis_rules(3, 1)
  extra = pt.standard_logical_axis_rules(additional_rules=[('foo', 'model')])
  assert extra[-1] == ('foo', 'model')


def test_prompt_axes_stay_replicated_even_in_2d():
  import flax.linen as nn
  for dims in ((1, 1), (2, 2), (1, 2)):
    rules = pt.logical_axis_rules(*dims)
    assert tuple(nn.logical_to_mesh_axes(('prompt', 'prompt_embed'), rules)) == (None, None)
    assert tuple(nn.logical_to_mesh_axes(('tasks', 'prompt', 'prompt_embed'), rules)) == (
        None, None, None)
  rules2 = pt.logical_axis_rules(1, 2)
  assert tuple(nn.logical_to_mesh_axes(('embed', 'mlp'), rules2)) == ('data', 'model')
  assert tuple(nn.logical_to_mesh_axes(('layers', 'embed', 'mlp'), rules2)) == (
      None, 'data', 'model')


def test_make_mesh_and_config():
  mesh = pt.make_mesh()
  assert mesh.axis_names == ('data', 'model') and mesh.shape['model'] == 1
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match='model-parallel groups of 2'):
    pt.make_mesh(2)
  with pytest.raises(ValueError, match='disagrees'):
    pt.make_mesh(4, (2, 1, 1, 1))
  cfg = pt.PartitionConfig(additional_rules=(('foo', 'model'),))
  assert cfg.mesh().size == jax.device_count()
  assert cfg.rules()[-1] == ('foo', 'model') and ('prompt', None) in cfg.rules()
  assert pt.PartitionConfig(rules_override=(('batch', 'data'),)).rules() == (('batch', 'data'),)


def test_spec_for_replicates_indivisible_dims():
  import numpy as np
  devices = np.asarray(jax.devices()[:1] * 1)
  mesh = jax.sharding.Mesh(devices.reshape(1, 1), ('data', 'model'))
  rules = pt.logical_axis_rules()
  assert pt.spec_for(('embed', 'mlp'), (16, 32), mesh, rules) == P(None, 'model')
  assert pt.spec_for(('vocab', 'embed'), (64, 16), mesh, rules) == P('model')
  assert pt.spec_for(None, (3,), mesh, rules) == P()


def test_optimizer_state_follows_parameters():
  import optax
  from jax.sharding import NamedSharding
  mesh = pt.make_mesh()
  params = {'w': jax.ShapeDtypeStruct((256, 512), np.float32),
            'b': jax.ShapeDtypeStruct((512,), np.float32)}
  shardings = {'w': NamedSharding(mesh, P(None, 'model')), 'b': NamedSharding(mesh, P())}
  for tx in (optax.adafactor(1e-3), optax.adamw(1e-3)):
    state = jax.eval_shape(tx.init, params)
    specs = pt.opt_state_shardings(state, params, shardings, mesh)
    flat = {jax.tree_util.keystr(k): (leaf.shape, s.spec) for (k, leaf), s in zip(
        jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(specs))}
    for name, (shape, spec) in flat.items():
      if "['w']" in name and shape == (256, 512):
        assert spec == P(None, 'model'), name
      if "['w']" in name and shape == (256,):  # Adafactor's row factor drops the columns
        assert spec == P(None), name
      if "['w']" in name and shape == (512,):
        assert spec == P('model'), name
      if 'count' in name:
        assert spec == P(), name


def test_multihost_detection():
  assert not pt.is_multihost_env({})
  assert not pt.is_multihost_env({'TPU_WORKER_HOSTNAMES': 'localhost'})
  assert pt.is_multihost_env({'TPU_WORKER_HOSTNAMES': 'a,b,c,d'})
  assert pt.is_multihost_env({'SLURM_NTASKS': '4'})
  assert pt.is_multihost_env({'JAXPT_MULTIHOST': '1'})
  calls = []
  assert not pt.initialize_distributed({}, initialize=lambda: calls.append(1))
  assert pt.initialize_distributed({'JAX_COORDINATOR_ADDRESS': 'h:1234'},
                                   initialize=lambda: calls.append(1))
  assert calls == [1]


def test_partitioning_gin_file():
  import gin
  from jaxpt.cli import gin_flags
  gin_flags.parse(['models/t5_1_1/tiny.gin', 'methods/prompt_tuning.gin', 'runs/train.gin',
                   'partitioning/pjit.gin', 'partitioning/xxl_v3_32.gin'],
                   ['MODEL_PARALLEL_SUBMESH=(2, 2, 1, 2)'])
  try:
    cfg = gin.query_parameter('jaxpt.train.partitioning')
    assert cfg is not None
    config = pt.PartitionConfig()
    assert config.num_partitions == 8 and tuple(config.model_parallel_submesh) == (2, 2, 1, 2)
  finally:
    gin.clear_config()


# ----------------------------------------------------------------- 8 forced devices


@pytest.mark.parametrize('mesh', MESHES, ids=lambda m: f'data{m[0]}_model{m[1]}')
def test_sharded_prompt_step_equals_single_device(steps, mesh):
  r = steps['prompt'][f'{mesh[0]}x{mesh[1]}']
  assert r['mesh'] == list(mesh)
  assert abs(r['loss'] - steps['reference']['loss']) < TOL
  assert r['prompt_max_diff'] < TOL
  assert r['prompt_max_change'] > 1e-4  # the prompt did move
  for name, spec in EXPECTED_SPECS.items():
    assert tuple(r['specs'][name]) == spec, name
    # the arrays are really split: a device holds 1/model of the partitioned dim
    dim = 0 if spec[:1] == ('model',) else 1
    if 'model' in spec:
      assert r['shard_shapes'][name][dim] * mesh[1] == r['shapes'][name][dim], name
    else:
      assert r['shard_shapes'][name] == r['shapes'][name], name
  assert tuple(r['specs']['method/prompt']) == ()
  assert r['constraints'] > 0  # the with_logical_constraints made it into the program


def test_sharded_scanned_step(steps):
  r = steps['scanned']
  assert abs(r['loss'] - r['reference_loss']) < TOL
  assert r['prompt_max_diff'] < TOL
  assert tuple(r['spec_wi']) == (None, None, 'model')


def test_sharded_prefix_step(steps):
  r = steps['prefix']
  assert abs(r['loss'] - r['reference_loss']) < TOL
  assert r['max_diff'] < TOL and r['max_change'] > 1e-6


def test_sharded_full_tuning_step(steps):
  r = steps['full']
  assert abs(r['loss'] - r['reference_loss']) < TOL
  assert r['max_diff'] < TOL
  assert tuple(r['spec_wi']) == (None, 'model')
  assert tuple(r['opt_spec_wi_v_col']) in ((('model',)), ())


def test_training_loop_hook(steps):
  r = steps['loop']
  assert r['max_diff'] < TOL
  assert r['steps'] == 2


def test_checkpoint_restores_across_meshes(restored):
  assert restored['saved_mesh'] == [4, 2]
  for target in ('2x4', 'single', '4x2'):
    r = restored[target]
    assert r['max_diff'] == 0.0, target
    assert r['shardings_match'], target
  assert restored['2x4']['wi_spec'] == [None, 'model']
  assert restored['2x4']['wi_shard_shape'][1] * 4 == restored['2x4']['wi_shape'][1]
  assert restored['single']['single_device']


def test_backbone_loads_directly_sharded(restored):
  r = restored['backbone']
  assert r['max_diff'] == 0.0
  assert r['embedding_spec'] == ['model'] and r['embedding_shard_rows'] == 64 // 4


@pytest.mark.slow
def test_plan_command(tmp_path):
  out_json = tmp_path / 'plan.json'
  cmd = [sys.executable, '-m', 'jaxpt', 'plan', '--gin_file=models/t5_1_1/tiny.gin',
         '--gin_file=methods/prompt_tuning.gin', '--gin_file=runs/train.gin',
         '--gin_file=partitioning/pjit.gin', '--gin_file=local_tiny.gin',
         '--gin.NUM_PARTITIONS=2', '--gin.BATCH_SIZE=8', '--num_devices=8',
         '--device_memory_gib=1', f'--json={out_json}']
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAXPT_PLAN_CHILD')}
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  text = out.stdout
  for field in ('mesh               data=4 x model=2 (8 cpu devices)', 'frozen params',
                'trainable params', 'optimizer state', 'temporaries', 'generated code',
                'peak', 'fits 1 GiB/device: yes', 'full model tuning', 'prompt-only training saves'):
    assert field in text, field
  plans = json.loads(out_json.read_text())
  prompt, full = plans
  assert prompt['trainable_rules'] == ['method/.*'] and full['trainable_rules'] == ['.*']
  assert prompt['trainable_params'] < full['trainable_params']
  assert prompt['frozen_params'] > 0 and full['frozen_params'] == 0
  assert prompt['peak'] < full['peak'] and prompt['temporaries'] > 0


# -------------------------------------------------------------- the child processes


def _batch(n: int = 8):
  rng = np.random.RandomState(0)
  return {'encoder_input_tokens': rng.randint(2, VOCAB, (n, 12)).astype(np.int32),
          'decoder_input_tokens': rng.randint(2, VOCAB, (n, 5)).astype(np.int32),
          'decoder_target_tokens': rng.randint(2, VOCAB, (n, 5)).astype(np.int32)}


def _setup(config, method, rules):
  from jaxpt.methods import Backbone, partition
  from jaxpt.models.t5 import init_params
  params = init_params(config, jax.random.key(0))
  mp = method.init(jax.random.key(1), Backbone(config, params['token_embedder']['embedding']))
  full = {'backbone': params, 'method': mp}
  return full, partition(full, rules)


def _max_diff(a, b) -> float:
  return float(max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _one_step(config, method, optimizer, rules, mesh_shape):
  """(reference state, metrics), (sharded state, metrics), frozen, step, state placed."""
  from jaxpt.train.step import init_state, make_train_step
  full, (trainable, frozen) = _setup(config, method, rules)
  step = make_train_step(prompted_model(config, method), optimizer)
  batch, key = _batch(), jax.random.key(2)
  ref = jax.jit(step)(init_state(trainable, optimizer), frozen, batch, key)
  mesh = pt.make_mesh(mesh_shape[1])
  assert tuple(mesh.devices.shape) == tuple(mesh_shape)
  sh = train_shardings(config, full, optimizer, rules, mesh, pt.logical_axis_rules())
  state = pt.place(init_state(trainable, optimizer), sh.state)
  frozen_placed = pt.place(frozen, sh.frozen)
  sharded = ShardedStep(step, sh, donate=False)
  out = sharded(state, frozen_placed, batch, key)
  return ref, out, frozen_placed, sharded, state


def _child_steps() -> Dict[str, Any]:
  from flax import traverse_util
  from jaxpt.methods import EVERYTHING, PROMPT_ONLY, PrefixTuning, PromptTuning
  from jaxpt.train.optim import make_optimizer
  assert jax.device_count() == 8
  config = tiny_config()
  method = PromptTuning(length=4, initializer='uniform')
  opt = make_optimizer('adafactor')
  result: Dict[str, Any] = {'prompt': {}}
  for mesh_shape in MESHES:
    (ref_state, ref_m), (state, m), frozen, sharded, state_in = _one_step(
        config, method, opt, PROMPT_ONLY, mesh_shape)
    result['reference'] = {'loss': float(ref_m['loss'])}
    flat = traverse_util.flatten_dict(frozen['backbone'], sep='/')
    flat['method/prompt'] = state.trainable['method']['prompt']
    text = sharded.lower(state_in, frozen, _batch(), jax.random.key(2)).as_text()
    result['prompt'][f'{mesh_shape[0]}x{mesh_shape[1]}'] = {
        'mesh': list(mesh_shape), 'loss': float(m['loss']),
        'prompt_max_diff': _max_diff(state.trainable, ref_state.trainable),
        'prompt_max_change': _max_diff(state.trainable, state_in.trainable),
        'specs': {k: list(v.sharding.spec) for k, v in flat.items()},
        'shapes': {k: list(v.shape) for k, v in flat.items()},
        'shard_shapes': {k: list(v.addressable_shards[0].data.shape) for k, v in flat.items()},
        'constraints': text.count('sharding_constraint'),
    }
  # scanned layers on (2, 4)
  scanned = tiny_config(scan_layers=True)
  (ref_state, ref_m), (state, m), frozen, _, _ = _one_step(scanned, method, opt, PROMPT_ONLY,
                                                           (2, 4))
  result['scanned'] = {
      'loss': float(m['loss']), 'reference_loss': float(ref_m['loss']),
      'prompt_max_diff': _max_diff(state.trainable, ref_state.trainable),
      'spec_wi': list(frozen['backbone']['encoder']['layers']['mlp']['wi_0']['kernel']
                      .sharding.spec)}
  # prefix tuning on (4, 2)
  prefix = PrefixTuning(length=3, hidden_dim=16)
  adamw = make_optimizer('adamw', 1e-2)
  (ref_state, ref_m), (state, m), _, _, state_in = _one_step(config, prefix, adamw, PROMPT_ONLY,
                                                             (4, 2))
  result['prefix'] = {'loss': float(m['loss']), 'reference_loss': float(ref_m['loss']),
                      'max_diff': _max_diff(state.trainable, ref_state.trainable),
                      'max_change': _max_diff(state.trainable, state_in.trainable)}
  # full model tuning on (2, 4): sharded trainable weights and Adafactor state
  (ref_state, ref_m), (state, m), _, _, _ = _one_step(config, method, opt, EVERYTHING, (2, 4))
  wi = state.trainable['backbone']['encoder']['layers_0']['mlp']['wi_0']['kernel']
  v_col = [s for (k, s) in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
           if 'v_col' in jax.tree_util.keystr(k) and 'layers_0' in jax.tree_util.keystr(k)
           and 'wi_0' in jax.tree_util.keystr(k)][0]
  result['full'] = {'loss': float(m['loss']), 'reference_loss': float(ref_m['loss']),
                    'max_diff': _max_diff(state.trainable, ref_state.trainable),
                    'spec_wi': list(wi.sharding.spec), 'opt_spec_wi_v_col': list(v_col.sharding.spec)}
  # the training loop's hook
  from jaxpt.train.loop import train
  full, _ = _setup(config, method, PROMPT_ONLY)
  batches = lambda k: {key: np.roll(v, k, axis=0) for key, v in _batch().items()}
  kwargs = dict(optimizer=opt, num_steps=2, rng=jax.random.key(3), print_fn=None)
  plain = train(prompted_model(config, method), full['backbone'], full['method'], batches, **kwargs)
  sharded = train(prompted_model(config, method), full['backbone'], full['method'], batches,
                  partitioning=pt.PartitionConfig(num_partitions=4), **kwargs)
  result['loop'] = {'max_diff': _max_diff(plain.method_params, sharded.method_params),
                    'steps': sharded.step}
  return result


def _child_checkpoint(tmp: str) -> Dict[str, Any]:
  from jax.sharding import SingleDeviceSharding
  from jaxpt.checkpoints.training import TrainCheckpointer
  from jaxpt.methods import EVERYTHING, PromptTuning
  from jaxpt.train.optim import make_optimizer
  from jaxpt.train.step import init_state
  config = tiny_config()
  method = PromptTuning(length=4, initializer='uniform')
  opt = make_optimizer('adafactor')
  full, (trainable, _) = _setup(config, method, EVERYTHING)
  rules = pt.logical_axis_rules()

  def shardings(model):
    return train_shardings(config, full, opt, EVERYTHING, pt.make_mesh(model), rules).state

  state = init_state(trainable, opt)
  state = state.replace(step=state.step + 7, trainable=jax.tree.map(
      lambda x: x + 0.5, state.trainable))
  saved = pt.place(state, shardings(2))
  with TrainCheckpointer(os.path.join(tmp, 'ckpt'), async_save=False) as ckpt:
    ckpt.save(7, saved, data_position=7, rng=jax.random.key(0))
  out: Dict[str, Any] = {'saved_mesh': [4, 2]}
  abstract = jax.eval_shape(lambda: state)
  single = SingleDeviceSharding(jax.devices()[0])
  targets = {'2x4': shardings(4), '4x2': shardings(2),
             'single': jax.tree.map(lambda _: single, abstract)}
  for name, target in targets.items():
    like = pt.abstract_with_shardings(abstract, target)
    with TrainCheckpointer(os.path.join(tmp, 'ckpt')) as ckpt:
      restored = ckpt.restore(7, like=like).state
    got = jax.tree.leaves(restored)
    want = jax.tree.leaves(target, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    wi = restored.trainable['backbone']['encoder']['layers_0']['mlp']['wi_0']['kernel']
    out[name] = {
        'max_diff': _max_diff(restored, state),
        'shardings_match': all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(got, want)),
        'wi_spec': list(getattr(wi.sharding, 'spec', ())), 'wi_shape': list(wi.shape),
        'wi_shard_shape': list(wi.addressable_shards[0].data.shape),
        'single_device': all(len(a.sharding.device_set) == 1 for a in got),
    }
  # the frozen backbone read straight into its shardings
  model = jaxpt.Model(config, full['backbone'], source='test')
  jaxpt.save_model(model, os.path.join(tmp, 'backbone'))
  _, params = read_backbone_sharded(os.path.join(tmp, 'backbone'), config, pt.make_mesh(4),
                                       rules)
  emb = params['token_embedder']['embedding']
  out['backbone'] = {'max_diff': _max_diff(params, full['backbone']),
                     'embedding_spec': list(emb.sharding.spec),
                     'embedding_shard_rows': int(emb.addressable_shards[0].data.shape[0])}
  return out


if __name__ == '__main__':
  scenario, tmp_dir = sys.argv[1], sys.argv[2]
  data = _child_steps() if scenario == 'steps' else _child_checkpoint(tmp_dir)
  print(json.dumps(data))
