"""The training loop: frozen leaves, resumption, retention, divergence and the metrics log."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import optax
import pytest

from jaxpt.prompted.base import prompted_model
from jaxpt.checkpoints import prompts
from jaxpt.checkpoints.training import TrainCheckpointer
from jaxpt.data.toy import two_class_batch
from jaxpt.methods import PROMPT_ONLY, Backbone, PromptTuning, partition
from jaxpt.models.t5 import init_params
from jaxpt.train.loop import CHECKPOINT_DIR, METRICS_FILE, TrainingDiverged, train
from jaxpt.train.optim import make_optimizer
from jaxpt.train.step import init_state, make_train_step
from tests.tiny_configs import DROPOUT_CONFIG, VOCAB

BATCH = 4
# One optimizer object for every run: the loop caches its compiled step per optimizer.
ADAFACTOR = make_optimizer('adafactor', 0.3)


@pytest.fixture(scope='module')
def setup():
  config = DROPOUT_CONFIG
  backbone = init_params(config, jax.random.key(0))
  method = PromptTuning(length=5, initializer='sampled_vocab', population_size=64)
  method_params = method.init(jax.random.key(1),
                              Backbone(config, backbone['token_embedder']['embedding']))
  return config, backbone, method, method_params


def batches(position):
  """The batch at `position`, with explicit loss weights (so a test can poison them)."""
  features, _ = two_class_batch(BATCH, seed=position, vocab_size=VOCAB, length=6)
  weights = (features['decoder_target_tokens'] > 0).astype(np.float32)
  return dict(features, decoder_loss_weights=weights)


def _run(setup, **kwargs):
  config, backbone, method, method_params = setup
  kwargs.setdefault('optimizer', ADAFACTOR)
  kwargs.setdefault('rng', jax.random.key(42))
  kwargs.setdefault('print_fn', None)
  kwargs.setdefault('batches', batches)
  return train(prompted_model(config, method), backbone, method_params, **kwargs)


def _assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def test_frozen_leaves_untouched_and_optimizer_state_is_trainable_only(setup):
  _, backbone, _, method_params = setup
  before = jax.tree.map(np.array, backbone)
  result = _run(setup, optimizer=optax.adamw(1e-2), num_steps=4, log_every=2)
  _assert_bitwise(result.params['backbone'], before)
  _assert_bitwise(backbone, before)  # the caller's arrays were not donated
  assert not np.array_equal(result.method_params['prompt'], method_params['prompt'])
  trainable_leaves = jax.tree.leaves(result.state.trainable)
  assert list(result.state.trainable) == ['method']
  arrays = [x for x in jax.tree.leaves(result.state.opt_state) if np.ndim(x) > 0]
  # adamw keeps mu and nu per trainable leaf, nothing for the 27 frozen leaves.
  assert len(arrays) == 2 * len(trainable_leaves)
  assert sorted(x.shape for x in arrays) == sorted(2 * [x.shape for x in trainable_leaves])
  assert result.step == 4 and result.data_position == 4


def test_resume_is_bit_identical(setup, tmp_path):
  common = dict(checkpoint_every=3, log_every=1, keep_checkpoints=5)
  straight = _run(setup, num_steps=6, model_dir=tmp_path / 'straight', **common)
  lines = []
  first = _run(setup, num_steps=3, model_dir=tmp_path / 'resumed', print_fn=lines.append,
               **common)
  assert first.step == 3 and first.resumed_from is None
  resumed = _run(setup, num_steps=6, model_dir=tmp_path / 'resumed', print_fn=lines.append,
                 **common)
  assert resumed.resumed_from == 3 and resumed.step == 6 and resumed.data_position == 6
  _assert_bitwise(resumed.state.trainable, straight.state.trainable)
  _assert_bitwise(resumed.state.opt_state, straight.state.opt_state)
  assert any(line.startswith('resuming from') for line in lines)
  progress = [line for line in lines if line.startswith('step ')]
  assert len(progress) == 6 and 'examples/s' in progress[-1] and 'ETA' in progress[-1]

  records = [json.loads(l) for l in (tmp_path / 'resumed' / METRICS_FILE).read_text().splitlines()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r['loss']) for r in records)
  # The latest prompt checkpoint follows the run and loads on the backbone.
  config, backbone, _, _ = setup
  from jaxpt.prompted.model import Model
  method, params, manifest = prompts.load_prompt(tmp_path / 'resumed' / 'prompt',
                                                 Model(config, backbone))
  assert manifest['step'] == 6
  _assert_bitwise(params, resumed.method_params)


def test_metrics_log_has_one_line_per_logged_step(setup, tmp_path):
  result = _run(setup, num_steps=5, model_dir=tmp_path, log_every=2, checkpoint_every=10)
  records = [json.loads(l) for l in (tmp_path / METRICS_FILE).read_text().splitlines()]
  assert [r['step'] for r in records] == [2, 4, 5]
  assert records == result.history
  assert {'loss', 'token_accuracy', 'grad_norm', 'examples_per_second'} <= set(records[0])


@pytest.mark.parametrize('mode,best', [('max', 4), ('min', 2)])
def test_keeps_last_k_plus_best(setup, tmp_path, mode, best):
  scores = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.6}
  result = _run(setup, num_steps=8, model_dir=tmp_path, checkpoint_every=1, keep_checkpoints=2,
                eval_fn=lambda params, step: {'score': scores[step]}, eval_every=2,
                best_metric='score', best_mode=mode, log_every=100)
  assert result.best_step == best
  directory = tmp_path / CHECKPOINT_DIR
  assert sorted(int(n) for n in os.listdir(directory)) == sorted({best, 7, 8})
  with TrainCheckpointer(directory, keep_checkpoints=2, best_metric='score', best_mode=mode) as ckpt:
    assert ckpt.all_steps() == sorted({best, 7, 8}) and ckpt.best_step() == best
  assert prompts.read_manifest(tmp_path / 'prompt_best')['step'] == best
  assert prompts.read_manifest(tmp_path / 'prompt')['step'] == 8


def test_nan_stops_training_and_keeps_last_good_checkpoint(setup, tmp_path):
  def poisoned(position):
    batch = batches(position)
    if position == 4:  # the batch of step 5
      batch['decoder_loss_weights'] = np.full_like(batch['decoder_loss_weights'], np.nan)
    return batch

  with pytest.raises(TrainingDiverged) as err:
    _run(setup, batches=poisoned, num_steps=10, model_dir=tmp_path, checkpoint_every=2,
         log_every=100)
  e = err.value
  assert e.step == 5 and e.data_position == 4 and e.last_good_step == 4
  assert 'step 5' in str(e) and e.last_good_checkpoint in str(e)
  assert os.path.isdir(e.last_good_checkpoint)
  assert isinstance(e, RuntimeError)

  _, _, _, method_params = setup
  like = init_state({'method': method_params}, ADAFACTOR)
  with TrainCheckpointer(tmp_path / CHECKPOINT_DIR) as ckpt:
    assert ckpt.latest_step() == 4
    restored = ckpt.restore(like=like)
  assert restored.data_position == 4 and int(restored.state.step) == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.state))


def _adam_leaves(opt_state):
  """Adam's (count, mu, nu) states inside an optax chain."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1, opt_state
  return found[0]


@pytest.fixture(scope='module')
def adam_step(setup):
  """(jitted Adam train step, initial state, frozen), compiled once for the module."""
  config, backbone, method, method_params = setup
  trainable, frozen = partition({'backbone': backbone, 'method': method_params}, PROMPT_ONLY)
  optimizer = optax.adam(1e-2)
  step = jax.jit(make_train_step(prompted_model(config, method), optimizer),
                 compiler_options={'xla_backend_optimization_level': 0})  # compiles 4x faster
  return step, init_state(trainable, optimizer), frozen


@pytest.mark.parametrize('poison', ['loss_weights', 'frozen_weight'])
def test_non_finite_step_keeps_the_old_state(adam_step, poison):
  """A step whose loss is NaN returns `trainable`, `opt_state` (Adam's mu, nu and count) and
  `step` bitwise unchanged and reports finite False; the next good step is the one it would
  have been without the NaN batch."""
  step, initial, frozen = adam_step
  rng = jax.random.key(7)
  state, metrics = step(initial, frozen, batches(0), rng)
  assert bool(metrics['finite']) and int(state.step) == 1  # mu and nu are non-zero now
  before = jax.tree.map(np.array, state)

  bad_batch, bad_frozen = batches(1), frozen
  if poison == 'loss_weights':
    bad_batch['decoder_loss_weights'] = np.full_like(bad_batch['decoder_loss_weights'], np.nan)
  else:
    scale = np.array(frozen['backbone']['decoder']['decoder_norm']['scale'])
    scale[0] = np.nan
    bad_frozen = jax.tree.map(lambda x: x, frozen)
    bad_frozen['backbone']['decoder']['decoder_norm']['scale'] = scale
  after, metrics = step(state, bad_frozen, bad_batch, rng)
  assert not bool(metrics['finite']) and not np.isfinite(float(metrics['loss']))

  assert int(after.step) == int(before.step) == 1
  _assert_bitwise(after.trainable, before.trainable)
  _assert_bitwise(after.opt_state, before.opt_state)
  for x, y in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
    assert np.array_equal(np.asarray(x), y)
  adam, adam_before = _adam_leaves(after.opt_state), _adam_leaves(before.opt_state)
  assert int(adam.count) == int(adam_before.count) == 1
  for name in ('mu', 'nu'):
    leaves = jax.tree.leaves(getattr(adam, name))
    assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
    for x, y in zip(leaves, jax.tree.leaves(getattr(adam_before, name))):
      assert np.array_equal(np.asarray(x), y)

  # The skipped step changed nothing: the next good batch gives the state it gives without it.
  resumed, _ = step(after, frozen, batches(2), rng)
  straight, _ = step(state, frozen, batches(2), rng)
  assert int(resumed.step) == 2
  _assert_bitwise(resumed, straight)


def test_corrupt_checkpoint_raises_checkpoint_error(setup, tmp_path):
  from jaxpt.checkpoints.errors import CheckpointError

  _, _, _, method_params = setup
  like = init_state({'method': method_params}, optax.sgd(0.1))
  with TrainCheckpointer(tmp_path, keep_checkpoints=1, async_save=False) as ckpt:
    ckpt.save(1, like, 1, jax.random.key(0))
  for root, _, files in os.walk(tmp_path / '1' / 'state'):
    for name in files:
      if 'ocdbt' in root or name.startswith('manifest'):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'corrupt')
  with TrainCheckpointer(tmp_path, keep_checkpoints=1) as ckpt:
    with pytest.raises(CheckpointError, match=str(tmp_path)):
      ckpt.restore(like=like)


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(setup, tmp_path, capsys):
  _, _, _, method_params = setup
  like = init_state({'method': method_params}, optax.sgd(0.1))
  later = like.replace(step=like.step + 2)
  with TrainCheckpointer(tmp_path, keep_checkpoints=3, async_save=False) as ckpt:
    ckpt.save(1, like, 1, jax.random.key(0))
    ckpt.save(2, later, 2, jax.random.key(0))
  for root, _, files in os.walk(tmp_path / '2' / 'state'):  # cut step 2 short
    for name in files:
      if 'ocdbt' in root or name.startswith('manifest'):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'')
  with TrainCheckpointer(tmp_path, keep_checkpoints=3) as ckpt:
    restored = ckpt.restore(like=like)
  assert restored.step == 1 and restored.data_position == 1
  warning = [line for line in capsys.readouterr().out.splitlines() if 'WARNING' in line]
  assert len(warning) == 1 and str(tmp_path / '2') in warning[0]
  assert len(warning[0]) < 600  # one line, not Orbax's dump


def test_the_exported_prompt_never_runs_ahead_of_a_committed_checkpoint(setup, tmp_path,
                                                                      monkeypatch):
  """A kill at any moment leaves prompt/ at a step whose training checkpoint is complete:
  each prompt export comes after its checkpoint's save *and* a wait for it, and finds the
  finished step directory on disk (not Orbax's temporary one)."""
  events = []
  real_save, real_wait = TrainCheckpointer.save, TrainCheckpointer.wait
  real_export = prompts.save_prompt

  def save(self, step, *args, **kwargs):
    events.append(('save', step))
    return real_save(self, step, *args, **kwargs)

  def wait(self):
    real_wait(self)
    events.append(('committed', None))

  def export(directory, *args, step=None, **kwargs):
    events.append(('prompt', step))
    done = tmp_path / CHECKPOINT_DIR / str(step)
    assert done.is_dir(), f'prompt step {step} exported before checkpoint {step} was written'
    return real_export(directory, *args, step=step, **kwargs)

  monkeypatch.setattr(TrainCheckpointer, 'save', save)
  monkeypatch.setattr(TrainCheckpointer, 'wait', wait)
  monkeypatch.setattr(prompts, 'save_prompt', export)
  _run(setup, num_steps=4, model_dir=tmp_path, checkpoint_every=2, log_every=10,
       async_checkpoints=True, trainable_rules=PROMPT_ONLY)
  exported = [i for i, (kind, _) in enumerate(events) if kind == 'prompt']
  assert [events[i][1] for i in exported] == [2, 4]
  for i in exported:
    step = events[i][1]
    saved = events.index(('save', step))
    assert ('committed', None) in events[saved:i], events
