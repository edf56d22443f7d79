"""jaxpt.storage: the one reader of local and gs:// files."""

from __future__ import annotations

import time

import pytest

from jaxpt import storage


def test_local_read_and_missing_file(tmp_path):
  (tmp_path / 'a.bin').write_bytes(b'\x00\x01abc')
  assert storage.read_bytes(tmp_path / 'a.bin') == b'\x00\x01abc'
  with pytest.raises(FileNotFoundError, match='missing.bin'):
    storage.read_bytes(tmp_path / 'missing.bin')


def test_gcs_kvstore_spec():
  assert storage.gcs_kvstore('gs://bucket/a/b') == {'driver': 'gcs', 'bucket': 'bucket',
                                                    'path': 'a/b'}
  with pytest.raises(ValueError, match='gs://BUCKET/PATH'):
    storage.gcs_kvstore('gs:///a')


def test_unreachable_gcs_fails_within_the_timeout_naming_the_path():
  """Offline this times out; online the (nonexistent) bucket is refused: an error either way."""
  url = 'gs://jaxpt-no-such-bucket-7f3a/some/file.model'
  start = time.monotonic()
  with pytest.raises(OSError, match='jaxpt-no-such-bucket-7f3a/some/file.model'):
    storage.read_bytes(url, timeout_s=2)
  assert time.monotonic() - start < 30
