"""Reading files from local paths or Google Cloud Storage (`gs://bucket/key`).

The one place jaxpt reads `gs://` objects whole (the SentencePiece model, a
single-file T5X checkpoint): through tensorstore's `gcs` kvstore, which also
reads the zarr arrays of tensorstore-layout checkpoints (`gcs_kvstore`).

A gs:// read is bounded by a timeout: tensorstore retries an unreachable
service with backoff for a long time, so without network (or credentials a
bucket needs) a read would otherwise seem to hang.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

GS_PREFIX = 'gs://'
GS_TIMEOUT_S = 300.0
"""Default bound, in seconds, on opening and reading one gs:// object."""


def is_gs(path: str) -> bool:
  """Whether `path` is a `gs://` URL."""
  return os.fspath(path).startswith(GS_PREFIX)


def split_gs(url: str) -> Tuple[str, str]:
  """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
  bucket, _, key = url[len(GS_PREFIX):].partition('/')
  return bucket, key


def gcs_kvstore(url: str) -> Dict[str, Any]:
  """The tensorstore kvstore spec of a `gs://bucket/path` URL.

  Raises:
    ValueError: the URL names no bucket.
  """
  bucket, key = split_gs(url)
  if not bucket:
    raise ValueError(f'{url}: expected gs://BUCKET/PATH')
  return {'driver': 'gcs', 'bucket': bucket, 'path': key}


def read_bytes(path: str, timeout_s: Optional[float] = GS_TIMEOUT_S) -> bytes:
  """The whole content of a local file or a `gs://bucket/key` object.

  Args:
    path: a local path or a gs:// URL.
    timeout_s: for gs://, the most seconds to wait for the object (None: no
      bound); local reads are not bounded.

  Raises:
    FileNotFoundError: the file or object does not exist (naming `path`).
    TimeoutError: gs:// was not answered within `timeout_s` (no network?).
    OSError: any other failure to read, naming `path`.
  """
  path = os.fspath(path)
  if not is_gs(path):
    with open(path, 'rb') as f:
      return f.read()
  import tensorstore as ts
  try:
    spec = gcs_kvstore(path)
  except ValueError as e:
    raise OSError(str(e)) from e
  key = spec.pop('path')
  future = None
  try:
    future = ts.KvStore.open(spec)
    store = future.result(timeout=timeout_s)
    future = store.read(key)
    result = future.result(timeout=timeout_s)
  except TimeoutError as e:
    future.cancel()
    raise TimeoutError(f'{path}: Google Cloud Storage did not answer within {timeout_s:g} s '
                       f'(no network, or no credentials for the bucket?)') from e
  except Exception as e:  # tensorstore raises ValueError / RuntimeError variants
    raise OSError(f'{path}: cannot read from Google Cloud Storage: {e}') from e
  if result.state != 'value':
    raise FileNotFoundError(f'{path}: no such object')
  return bytes(result.value)
