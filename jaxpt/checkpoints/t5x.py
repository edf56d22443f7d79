"""T5X checkpoints: the single msgpack file and the tensorstore (zarr) layouts.

A T5X checkpoint is a msgpack map `{version, optimizer: {target, state}}` (or,
from Orbax-era T5X, `{_optimizer: ...}`). jaxpt needs only `target`: the file
is streamed with `msgpack.Unpacker` and the optimizer state is skipped without
being decoded. In the tensorstore layout the msgpack holds, in place of each
large array, a tensorstore zarr spec (legacy T5X) or a `PLACEHOLDER://name`
(Orbax); arrays are then read with tensorstore, from local paths or `gs://`,
each device reading only its slice when shardings are given.
"""

from __future__ import annotations

import io
import json
import os
from typing import IO, Any, Dict, Mapping, Optional

import jax
import msgpack
import numpy as np
from flax import serialization, traverse_util

from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.config import T5Config

_PLACEHOLDER = 'PLACEHOLDER://'
_ROOTS = ('optimizer', '_optimizer')


def _index_path(path: str) -> str:
  if path.startswith('gs://'):
    return path.rstrip('/') + '/checkpoint'
  return os.path.join(path, 'checkpoint') if os.path.isdir(path) else path


_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
          0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}
_SIZED = {0xc4: (1, 0), 0xc5: (2, 0), 0xc6: (4, 0), 0xc7: (1, 1), 0xc8: (2, 1), 0xc9: (4, 1),
          0xd9: (1, 0), 0xda: (2, 0), 0xdb: (4, 0)}  # (length bytes, ext type byte)


def _read(stream: IO[bytes], n: int) -> bytes:
  data = stream.read(n)
  if len(data) != n:
    raise EOFError('unexpected end of file')
  return data


def _container(stream: IO[bytes], b: int) -> Optional[tuple]:
  """('map' | 'array', count) when byte `b` opens a container, else None."""
  if 0x80 <= b <= 0x8f:
    return 'map', b & 0x0f
  if 0x90 <= b <= 0x9f:
    return 'array', b & 0x0f
  sizes = {0xdc: ('array', 2), 0xdd: ('array', 4), 0xde: ('map', 2), 0xdf: ('map', 4)}
  if b in sizes:
    kind, width = sizes[b]
    return kind, int.from_bytes(_read(stream, width), 'big')
  return None


def _skip(stream: IO[bytes]) -> None:
  """Seeks past one msgpack object without reading its payloads into memory."""
  pending = 1
  while pending:
    pending -= 1
    b = _read(stream, 1)[0]
    container = _container(stream, b)
    if container:
      kind, count = container
      pending += 2 * count if kind == 'map' else count
    elif b <= 0x7f or b >= 0xe0:
      continue
    elif 0xa0 <= b <= 0xbf:
      stream.seek(b & 0x1f, io.SEEK_CUR)
    elif b in _FIXED:
      stream.seek(_FIXED[b], io.SEEK_CUR)
    elif b in _SIZED:
      width, ext = _SIZED[b]
      stream.seek(int.from_bytes(_read(stream, width), 'big') + ext, io.SEEK_CUR)
    else:
      raise ValueError(f'invalid msgpack byte 0x{b:02x}')


def _read_key(stream: IO[bytes]) -> Any:
  start = stream.tell()
  _skip(stream)
  end = stream.tell()
  stream.seek(start)
  return msgpack.unpackb(_read(stream, end - start), raw=False)


def _read_index_target(index_path: str) -> Any:
  """Returns only the `target` subtree; the optimizer state is seeked over, never read."""
  try:
    if index_path.startswith('gs://'):
      import tensorstore as ts
      kv = ts.KvStore.open(index_path.rsplit('/', 1)[0] + '/').result()
      stream = io.BytesIO(kv.read('checkpoint').result().value)
    else:
      stream = open(index_path, 'rb')
  except OSError as e:
    raise CheckpointError(f'{index_path}: cannot open the T5X checkpoint: {e}') from e
  with stream:
    try:
      root = _container(stream, _read(stream, 1)[0])
      if not root or root[0] != 'map':
        raise ValueError('the file does not start with a msgpack map')
      for _ in range(root[1]):
        key = _read_key(stream)
        if key not in _ROOTS:
          _skip(stream)
          continue
        sub = _container(stream, _read(stream, 1)[0])
        if not sub or sub[0] != 'map':
          raise ValueError(f'{key} is not a map')
        for _ in range(sub[1]):
          if _read_key(stream) == 'target':
            start = stream.tell()
            _skip(stream)
            end = stream.tell()
            stream.seek(start)
            return msgpack.unpackb(_read(stream, end - start), ext_hook=_ext_hook, raw=False,
                                   strict_map_key=False)
          _skip(stream)  # the optimizer state
    except (EOFError, ValueError, msgpack.ExtraData, TypeError) as e:
      raise CheckpointError(f'{index_path}: corrupt or truncated T5X msgpack checkpoint '
                            f'({type(e).__name__}: {e})') from e
  raise CheckpointError(f'{index_path}: expected a T5X checkpoint with optimizer/target, '
                        f'found no target')


def _ext_hook(code: int, data: bytes) -> Any:
  """flax's msgpack ext types (ndarray, native complex, dtype) -> numpy."""
  return serialization._msgpack_ext_unpack(code, data)


def _unchunk(tree: Any) -> Any:
  """Reassembles flax's `__msgpack_chunked_array__` leaves (arrays > 2 GiB)."""
  if isinstance(tree, dict):
    if '__msgpack_chunked_array__' in tree:
      return serialization._unchunk(tree)
    return {k: _unchunk(v) for k, v in tree.items()}
  return tree


class _ZarrArray:
  """A lazily read zarr array of a tensorstore-layout checkpoint."""

  def __init__(self, directory: str, spec: Any, name: str,
               metadata: Optional[Mapping[str, Any]] = None):
    self.directory, self.name = directory, name
    if isinstance(spec, str):  # Orbax placeholder: the array dir is named after the path
      self.subdir, self.meta = spec[len(_PLACEHOLDER):], None
    else:
      self.subdir = spec['kvstore']['path'].rstrip('/')
      self.meta = dict(spec.get('metadata', {}), dtype=spec.get('dtype'))
    if metadata is not None:
      self.meta = dict(metadata)
    self._store = None

  @property
  def location(self) -> str:
    if self.directory.startswith('gs://'):
      return f'{self.directory.rstrip("/")}/{self.subdir}/'
    return os.path.join(self.directory, self.subdir)

  def _open(self):
    import tensorstore as ts
    if self._store is not None:
      return self._store
    loc = self.location
    if loc.startswith('gs://'):
      bucket, _, rest = loc[len('gs://'):].partition('/')
      kvstore = {'driver': 'gcs', 'bucket': bucket, 'path': rest}
    else:
      if not os.path.isdir(loc):
        raise CheckpointError(f'{self.directory}: array {self.name} expected in {loc}, '
                              f'which is missing')
      kvstore = {'driver': 'file', 'path': loc + '/'}
    has_zarray = loc.startswith('gs://') or os.path.isfile(os.path.join(loc, '.zarray'))
    try:
      if has_zarray:
        self._store = ts.open({'driver': 'zarr', 'kvstore': kvstore}, read=True).result()
      else:
        self._store = self._open_without_zarray(loc)
    except CheckpointError:
      raise
    except Exception as e:  # tensorstore raises ValueError/RuntimeError variants
      raise CheckpointError(f'{loc}: cannot read zarr array {self.name}: {e}') from e
    return self._store

  def _open_without_zarray(self, loc: str):
    """Copies whose `.zarray` was lost: rebuild it from the index spec (or given metadata)."""
    import tensorstore as ts
    if not self.meta or 'shape' not in self.meta or not self.meta.get('dtype'):
      raise CheckpointError(
          f'{loc}: zarr metadata (.zarray) for {self.name} is missing and the checkpoint '
          f'index does not record shape and dtype; the checkpoint copy is incomplete '
          f'(pass array_metadata to read it anyway)')
    zarray = {'zarr_format': 2, 'shape': list(self.meta['shape']),
              'chunks': list(self.meta.get('chunks', self.meta['shape'])),
              'dtype': np.dtype(self.meta['dtype']).newbyteorder('<').str,
              'compressor': self.meta.get('compressor'), 'fill_value': None, 'order': 'C',
              'filters': None}
    context = ts.Context()
    memory = {'driver': 'memory'}
    kv = ts.KvStore.open(memory, context=context).result()
    kv.write('.zarray', json.dumps(zarray).encode()).result()
    for chunk in os.listdir(loc):
      with open(os.path.join(loc, chunk), 'rb') as f:
        kv.write(chunk, f.read()).result()
    return ts.open({'driver': 'zarr', 'kvstore': memory}, context=context).result()

  @property
  def shape(self):
    return tuple(self._open().shape)

  def read(self, index=None) -> np.ndarray:
    store = self._open()
    return np.asarray((store if index is None else store[index]).read().result())


def read_t5x_arrays(path: str, root: str = 'target',
                    array_metadata: Optional[Mapping[str, Mapping[str, Any]]] = None
                    ) -> Dict[str, Any]:
  """Flat {'a/b/c': leaf} of the params (`root='target'`) or of the whole checkpoint.

  Leaves are numpy arrays (msgpack) or lazy `_ZarrArray`s with `.shape` and
  `.read(index)` (tensorstore layouts). `root=None` reads everything, the
  optimizer state included (small checkpoints, tests). `array_metadata`
  (path -> {shape, dtype, chunks, compressor}) rescues copies whose zarr
  `.zarray` files were lost.
  """
  index_path = _index_path(path)
  directory = path if index_path != path else os.path.dirname(path)
  if root == 'target':
    tree = _read_index_target(index_path)
  else:
    try:
      with open(index_path, 'rb') as f:
        tree = msgpack.unpackb(f.read(), ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (OSError, ValueError, msgpack.ExtraData) as e:
      raise CheckpointError(f'{index_path}: cannot read the T5X checkpoint: {e}') from e
  tree = _unchunk(tree) if isinstance(tree, dict) else tree
  flat = traverse_util.flatten_dict(tree, sep='/') if isinstance(tree, dict) and tree else {}
  out = {}
  for name, leaf in flat.items():
    is_spec = isinstance(leaf, dict) and leaf.get('driver') == 'zarr'
    is_placeholder = isinstance(leaf, str) and leaf.startswith(_PLACEHOLDER)
    if is_spec or is_placeholder:
      out[name] = _ZarrArray(directory, leaf, name, (array_metadata or {}).get(name))
    else:
      out[name] = leaf
  # flatten_dict stops at spec dicts only if they are leaves; zarr specs are dicts, so
  # regroup their flattened keys.
  return _regroup_specs(out, directory, array_metadata)


def _regroup_specs(flat: Dict[str, Any], directory: str,
                   array_metadata: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Any]:
  specs = {k[:-len('/driver')] for k, v in flat.items() if k.endswith('/driver') and v == 'zarr'}
  if not specs:
    return flat
  out = {k: v for k, v in flat.items() if not any(k.startswith(s + '/') for s in specs)}
  for s in specs:
    spec = traverse_util.unflatten_dict(
        {tuple(k[len(s) + 1:].split('/')): v for k, v in flat.items()
         if k.startswith(s + '/')})
    out[s] = _ZarrArray(directory, spec, s, (array_metadata or {}).get(s))
  return out


def read_t5x_checkpoint(path: str, shardings: Optional[Any] = None) -> Dict[str, Any]:
  """The parameter tree (`target`) of a T5X checkpoint, as float32 arrays.

  With `shardings` (a pytree of jax Shardings shaped like the params) each
  array is built with `jax.make_array_from_callback`, so each device reads
  only its slice from tensorstore.
  """
  flat = read_t5x_arrays(path)
  if not flat:
    raise CheckpointError(f'{_index_path(path)}: the checkpoint target holds no parameters')
  flat_shardings = (traverse_util.flatten_dict(shardings, sep='/')
                    if shardings is not None else {})
  params = {}
  for name, leaf in flat.items():
    def read(index=None, leaf=leaf):
      if isinstance(leaf, _ZarrArray):
        return leaf.read(index).astype(np.float32)
      array = np.asarray(leaf)
      return (array if index is None else array[index]).astype(np.float32)
    if name in flat_shardings:
      shape = leaf.shape if isinstance(leaf, _ZarrArray) else np.shape(leaf)
      params[name] = jax.make_array_from_callback(tuple(shape), flat_shardings[name], read)
    else:
      params[name] = read()
  return traverse_util.unflatten_dict(params, sep='/')


def config_from_t5x_params(params: Dict[str, Any], source: str = 'T5X checkpoint') -> T5Config:
  """Infers every size of a T5 from its T5X parameter tree."""
  flat = traverse_util.flatten_dict(params, sep='/')

  def shape(path):
    if path not in flat:
      raise CheckpointError(f'{source}: expected parameter {path}, not found; found '
                            f'{sorted(flat)[:8]}...')
    return tuple(np.shape(flat[path]))

  vocab, emb = shape('token_embedder/embedding')
  per_layer = 'encoder/relpos_bias/rel_embedding' not in flat
  relpos = shape('encoder/layers_0/relpos_bias/rel_embedding' if per_layer
                 else 'encoder/relpos_bias/rel_embedding')
  heads, buckets = relpos
  joined = shape('encoder/layers_0/attention/query/kernel')[1]
  gated = 'encoder/layers_0/mlp/wi_0/kernel' in flat
  mlp = shape('encoder/layers_0/mlp/wi_0/kernel' if gated else 'encoder/layers_0/mlp/wi/kernel')[1]
  count = lambda stack: len({k.split('/')[1] for k in flat
                             if k.startswith(f'{stack}/layers_')})
  return T5Config(vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined // heads,
                  mlp_dim=mlp, num_encoder_layers=count('encoder'),
                  num_decoder_layers=count('decoder'),
                  mlp_activations=('gelu', 'linear') if gated else ('relu',),
                  logits_via_embedding='decoder/logits_dense/kernel' not in flat,
                  relative_attention_num_buckets=buckets, per_layer_relpos_bias=per_layer)


def write_t5x_checkpoint(params: Dict[str, Any], path: str,
                         optimizer_state: Optional[Dict[str, Any]] = None, step: int = 0) -> None:
  """Writes a single-file T5X checkpoint (`{version, optimizer: {target, state}}`)."""
  state = {'step': np.asarray(step, np.int32), 'param_states': optimizer_state or {}}
  tree = {'version': 3, 'optimizer': {'target': jax.tree.map(np.asarray, params),
                                      'state': state}}
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(tree))
