"""jaxpt's own model directory, format detection and the loader's errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import jaxpt
from jaxpt.checkpoints.load import detect_format
from jaxpt.models.t5 import init_params
from tests.tiny_configs import NATIVE_CONFIG


@pytest.fixture(scope='module')
def model():
  return jaxpt.Model(NATIVE_CONFIG, init_params(NATIVE_CONFIG, jax.random.key(3)), source='test')


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_native_round_trip(model, tmp_path):
  jaxpt.save_model(model, tmp_path / 'm')
  assert detect_format(str(tmp_path / 'm')) == 'jaxpt'
  loaded = jaxpt.load_model(tmp_path / 'm')
  assert loaded.config == model.config
  _leaves_equal(loaded.params, model.params)


def test_scanned_model_is_stored_unscanned(model, tmp_path):
  scanned = jaxpt.load_model(_saved(model, tmp_path), scan_layers=True)
  assert 'layers' in scanned.params['encoder']
  jaxpt.save_model(scanned, tmp_path / 'again')
  manifest = json.loads((tmp_path / 'again' / 'jaxpt_model.json').read_text())
  assert manifest['config']['scan_layers'] is True
  reloaded = jaxpt.load_model(tmp_path / 'again', scan_layers=False)
  _leaves_equal(reloaded.params, model.params)


def _saved(model, tmp_path):
  path = tmp_path / 'saved'
  if not path.exists():
    jaxpt.save_model(model, path)
  return path


def test_config_overrides(model, tmp_path):
  loaded = jaxpt.load_model(_saved(model, tmp_path), dtype='bfloat16', dropout_rate=0.1)
  assert loaded.config.dtype == 'bfloat16' and loaded.config.dropout_rate == 0.1
  with pytest.raises(ValueError, match='bad config override'):
    jaxpt.load_model(_saved(model, tmp_path), d_model=3)


def test_missing_path(tmp_path):
  with pytest.raises(jaxpt.CheckpointError, match='nowhere.*no such file'):
    jaxpt.load_model(tmp_path / 'nowhere')


def test_unknown_formats(tmp_path):
  (tmp_path / 'dir').mkdir()
  (tmp_path / 'dir' / 'weights.npz').write_bytes(b'x')
  with pytest.raises(jaxpt.CheckpointError, match=r'unknown checkpoint directory.*config.json'
                     r'.*weights.npz'):
    jaxpt.load_model(tmp_path / 'dir')
  (tmp_path / 'file.txt').write_text('hello')
  with pytest.raises(jaxpt.CheckpointError, match='file.txt: unknown checkpoint format'):
    jaxpt.load_model(tmp_path / 'file.txt')


def test_corrupt_manifest_and_missing_params(model, tmp_path):
  path = tmp_path / 'm'
  jaxpt.save_model(model, path)
  manifest = path / 'jaxpt_model.json'
  text = manifest.read_text()
  manifest.write_text(text[:20])
  with pytest.raises(jaxpt.CheckpointError, match='jaxpt_model.json.*could not read'):
    jaxpt.load_model(path)
  manifest.write_text(text.replace('"emb_dim": 8', '"emb_dim": 10'))
  with pytest.raises(jaxpt.CheckpointError, match='params'):
    jaxpt.load_model(path)
