"""T5X checkpoints: the single msgpack file and the tensorstore (zarr) layouts.

A T5X checkpoint is a msgpack map `{version, optimizer: {target, state}}`
(Orbax-era T5X: `{_optimizer: {target, state}, flax_mutables, ...}`; newer
layouts may put `target` and `state` at the root). jaxpt needs only `target`.
The file is walked by seeking: the optimizer state (often 2-3x the parameters)
is skipped without its bytes being read, so reading a checkpoint's parameters
costs about their own size in memory (`msgpack.Unpacker.skip()` would buffer
each skipped object whole; tests/test_t5x_checkpoints.py bounds the peak).

In the tensorstore layouts the msgpack file is an index named `checkpoint`
holding, in place of each large array, a tensorstore zarr spec (legacy T5X,
`{'driver': 'zarr', 'kvstore': {'path': 'target.encoder...'}, ...}`) or a
`PLACEHOLDER://name` string (T5X through Orbax); each array is a zarr
directory beside the index, read with tensorstore from local paths or
`gs://` (tensorstore's gcs kvstore, `jaxpt.storage.gcs_kvstore`). Only arrays
under the requested prefix are opened, and with shardings each device reads
only its own slice.
"""

from __future__ import annotations

import io
import json
import os
from typing import IO, Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import msgpack
import numpy as np
from flax import serialization, traverse_util

from jaxpt import storage
from jaxpt.checkpoints.errors import CheckpointError
from jaxpt.models.config import T5Config

_PLACEHOLDER = 'PLACEHOLDER://'
_ROOTS = ('optimizer', '_optimizer')
_INDEX = 'checkpoint'

# ---------------------------------------------------------------------------
# Locating the msgpack file (local file, local directory, gs:// via jaxpt.storage).


def _open_stream(path: str) -> Tuple[IO[bytes], str, str]:
  """(stream over the msgpack file, its name, the directory its arrays live in)."""
  if storage.is_gs(path):
    url = path.rstrip('/')
    candidates = [(url + '/' + _INDEX, url)]
    if not path.endswith('/'):  # may name the msgpack file itself
      candidates.append((url, url.rsplit('/', 1)[0]))
    for name, directory in candidates:
      try:
        return io.BytesIO(storage.read_bytes(name)), name, directory
      except FileNotFoundError:
        continue
      except OSError as e:
        raise CheckpointError(f'{name}: cannot read the T5X checkpoint: {e}') from e
    raise CheckpointError(f'{path}: expected a T5X checkpoint (a msgpack file, or a directory '
                          f'holding `{_INDEX}`), found neither')
  if os.path.isdir(path):
    name, directory = os.path.join(path, _INDEX), path
  else:
    name, directory = path, os.path.dirname(path) or '.'
  try:
    return open(name, 'rb'), name, directory
  except OSError as e:
    raise CheckpointError(f'{name}: cannot open the T5X checkpoint: {e}') from e


# ---------------------------------------------------------------------------
# A seeking msgpack walker: skips objects without reading their payloads.
#
# Why not a library: `flax.serialization.msgpack_restore` decodes a whole byte
# string (the optimizer state included, 2-3x the parameters, and the file held
# whole besides), `msgpack.Unpacker.skip()` buffers each skipped object whole,
# and neither tensorstore nor Orbax reads a subtree of a single msgpack file.
# So the walker below only locates the subtree's bytes (seeking over the rest);
# the subtree itself is decoded by flax's public `msgpack_restore` (its ndarray /
# bfloat16 / scalar ext types and `__msgpack_chunked_array__` leaves).

_FIXED = {0xc0: 0, 0xc2: 0, 0xc3: 0, 0xca: 4, 0xcb: 8, 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8,
          0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xd4: 2, 0xd5: 3, 0xd6: 5, 0xd7: 9, 0xd8: 17}
_SIZED = {0xc4: (1, 0), 0xc5: (2, 0), 0xc6: (4, 0), 0xc7: (1, 1), 0xc8: (2, 1), 0xc9: (4, 1),
          0xd9: (1, 0), 0xda: (2, 0), 0xdb: (4, 0)}  # (length bytes, ext type byte)


def _read(stream: IO[bytes], n: int) -> bytes:
  data = stream.read(n)
  if len(data) != n:
    raise EOFError(f'unexpected end of file at byte {stream.tell()} (wanted {n} more bytes)')
  return data


def _container(stream: IO[bytes], b: int) -> Optional[Tuple[str, int]]:
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
      raise ValueError(f'invalid msgpack byte 0x{b:02x} at byte {stream.tell() - 1}')
  # Seeking past the end does not fail; the bytes we skipped must exist.
  here = stream.tell()
  end = stream.seek(0, io.SEEK_END)
  if here > end:
    raise EOFError(f'unexpected end of file: an object ends at byte {here}, the file has {end}')
  stream.seek(here)


def _decode_next(stream: IO[bytes]) -> Any:
  """Decodes the next object (reading exactly its bytes) as flax does."""
  start = stream.tell()
  _skip(stream)
  end = stream.tell()
  stream.seek(start)
  return serialization.msgpack_restore(_read(stream, end - start))


def _map_header(stream: IO[bytes]) -> Optional[int]:
  """The entry count if the next object is a map (consumed), else None (stream unmoved)."""
  start = stream.tell()
  container = _container(stream, _read(stream, 1)[0])
  if container and container[0] == 'map':
    return container[1]
  stream.seek(start)
  return None


def _find(stream: IO[bytes], parts: Sequence[str], top: bool) -> Optional[Any]:
  """Decodes the subtree at `parts` of the map at the stream position; None if absent.

  At the top level a T5X root (`optimizer` / `_optimizer`) is descended into
  too, so `parts=('target',)` finds `optimizer/target` and a root `target` alike.
  """
  count = _map_header(stream)
  if count is None:
    _skip(stream)
    return None
  for _ in range(count):
    key = _decode_next(stream)
    if key == parts[0]:
      if len(parts) == 1:
        return _decode_next(stream)
      found = _find(stream, parts[1:], top=False)
    elif top and key in _ROOTS:
      found = _find(stream, parts, top=False)
    else:
      _skip(stream)  # e.g. the optimizer state: seeked over, never read
      continue
    if found is not None:
      return found
  return None


def _read_tree(path: str, prefix: Optional[str]) -> Tuple[Any, str, str]:
  """(decoded subtree at `prefix` or the whole file, msgpack file name, array directory)."""
  stream, name, directory = _open_stream(path)
  with stream:
    try:
      if prefix is None:
        tree = _decode_next(stream)
      else:
        parts = tuple(p for p in prefix.split('/') if p)
        if _map_header(stream) is None:
          raise ValueError('the file does not start with a msgpack map')
        stream.seek(0)
        tree = _find(stream, parts, top=True)
    except (EOFError, ValueError, TypeError, msgpack.ExtraData,
            msgpack.exceptions.UnpackException) as e:
      raise CheckpointError(f'{name}: corrupt or truncated T5X msgpack checkpoint '
                            f'({type(e).__name__}: {e})') from e
  if tree is None:
    raise CheckpointError(
        f'{name}: expected a T5X checkpoint with {prefix} (under optimizer/, _optimizer/ or '
        f'at the root), found no {prefix}')
  return tree, name, directory


# ---------------------------------------------------------------------------
# Lazily read zarr arrays of the tensorstore layouts.


class ZarrArray:
  """A lazily read zarr array of a tensorstore-layout checkpoint.

  Attributes:
    name: the array's path in the checkpoint tree ('a/b/c').
    location: its zarr directory (local path or gs:// URL).
  """

  def __init__(self, directory: str, spec: Any, name: str,
               metadata: Optional[Mapping[str, Any]] = None):
    self.directory, self.name = directory, name
    if isinstance(spec, str):  # Orbax placeholder: the array dir is named after the path
      self.subdir, self.meta = spec[len(_PLACEHOLDER):], None
    else:
      kv_path = spec.get('path') or (spec.get('kvstore') or {}).get('path', '')
      # T5X writes paths relative to the checkpoint dir; keep only the last
      # component of absolute ones so that copied checkpoints still resolve.
      self.subdir = kv_path.rstrip('/').rsplit('/', 1)[-1]
      self.meta = dict(spec.get('metadata') or {}, dtype=spec.get('dtype'))
    if metadata is not None:
      self.meta = dict(metadata)
    self._store = None

  @property
  def location(self) -> str:
    if storage.is_gs(self.directory):
      return f'{self.directory.rstrip("/")}/{self.subdir}'
    return os.path.join(self.directory, self.subdir)

  def kvstore_spec(self) -> Dict[str, Any]:
    """The tensorstore kvstore of this array: `file`, or `gcs` for gs:// checkpoints."""
    loc = self.location
    if storage.is_gs(loc):
      try:
        spec = storage.gcs_kvstore(loc)
      except ValueError as e:
        raise CheckpointError(str(e)) from e
      spec['path'] = spec['path'].rstrip('/') + '/'
      return spec
    return {'driver': 'file', 'path': loc + '/'}

  def _open(self):
    import tensorstore as ts
    if self._store is not None:
      return self._store
    loc = self.location
    if not storage.is_gs(loc) and not os.path.isdir(loc):
      raise CheckpointError(f'{self.directory}: the index names array {self.name}, expected in '
                            f'{loc}, which is missing')
    has_zarray = storage.is_gs(loc) or os.path.isfile(os.path.join(loc, '.zarray'))
    try:
      if has_zarray:
        self._store = ts.open({'driver': 'zarr', 'kvstore': self.kvstore_spec()},
                              read=True).result()
      else:
        self._store = self._open_without_zarray(loc)
    except CheckpointError:
      raise
    except Exception as e:  # tensorstore raises ValueError / RuntimeError variants
      raise CheckpointError(f'{loc}: cannot read zarr array {self.name}: {e}') from e
    return self._store

  def _open_without_zarray(self, loc: str):
    """Copies without `.zarray` (dotfiles lost): rebuild it from the index spec or metadata."""
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
  def shape(self) -> Tuple[int, ...]:
    return tuple(self._open().shape)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self._open().dtype.numpy_dtype)

  def read(self, index: Any = None) -> np.ndarray:
    """The whole array, or the slice `index` (a tuple of slices) read alone."""
    store = self._open()
    try:
      return np.asarray((store if index is None else store[index]).read().result())
    except Exception as e:
      raise CheckpointError(f'{self.location}: cannot read zarr array {self.name}: {e}') from e


# ---------------------------------------------------------------------------
# Public readers.


def _flatten(tree: Any, directory: str, metadata: Mapping[str, Mapping[str, Any]],
             prefix: str = '') -> Dict[str, Any]:
  """Flat {'a/b': leaf}; zarr specs and placeholders become `ZarrArray`s."""
  if isinstance(tree, dict) and tree.get('driver') == 'zarr':
    return {prefix: ZarrArray(directory, tree, prefix, metadata.get(prefix))}
  if isinstance(tree, str) and tree.startswith(_PLACEHOLDER):
    return {prefix: ZarrArray(directory, tree, prefix, metadata.get(prefix))}
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, directory, metadata, f'{prefix}/{k}' if prefix else str(k)))
    return out
  if tree is None or isinstance(tree, (str, bytes)):
    return {}  # e.g. flax_mutables: None; not arrays
  return {prefix: np.asarray(tree)}


def _flat_shardings(shardings: Any) -> Dict[str, Any]:
  if shardings is None:
    return {}
  if isinstance(shardings, Mapping) and all(
      isinstance(v, jax.sharding.Sharding) for v in shardings.values()):
    return dict(shardings)  # already flat {'a/b': sharding}
  return traverse_util.flatten_dict(shardings, sep='/')


def _reader(leaf: Any, dtype: Any) -> Callable[..., np.ndarray]:
  """`read(index=None)`: the leaf (a numpy array or a tensorstore array), or its slice."""

  def read(index: Any = None) -> np.ndarray:
    if isinstance(leaf, ZarrArray):
      value = leaf.read(index)
    else:
      value = leaf if index is None else leaf[index]
    return np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)

  return read


def _materialize(leaves: Dict[str, Any], shardings: Any, dtype: Any, source: str
                 ) -> Dict[str, Any]:
  """numpy arrays, or jax Arrays built slice by slice into `shardings`."""
  flat_shardings = _flat_shardings(shardings)
  unknown = sorted(set(flat_shardings) - set(leaves))
  if unknown:
    raise CheckpointError(f'{source}: shardings name arrays the checkpoint lacks: {unknown[:8]}')
  out = {}
  for name, leaf in leaves.items():
    read = _reader(leaf, dtype)
    if name in flat_shardings:
      out[name] = jax.make_array_from_callback(tuple(leaf.shape), flat_shardings[name], read)
    else:
      out[name] = read()
  return out


def read_t5x_arrays(path: str, prefix: Optional[str] = 'target', shardings: Any = None,
                    array_metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    lazy: bool = False) -> Dict[str, Any]:
  """Flat {'a/b/c': array} of every array under `prefix` of a T5X checkpoint.

  Args:
    path: a msgpack checkpoint file, a checkpoint_N directory (its `checkpoint`
      index + zarr arrays, legacy T5X or Orbax-written), or a gs:// URL of either.
    prefix: the subtree to read, relative to the optimizer root (`optimizer`,
      `_optimizer` or the file's root): 'target' (the parameters), 'state',
      'state/param_states', ... Names are relative to it. None reads the whole
      file, optimizer state included, with names from the file's root.
    shardings: {'a/b/c': Sharding} or a pytree of Shardings shaped like the
      subtree; the arrays it names become jax Arrays built with
      `jax.make_array_from_callback`, each device reading only its slice.
    array_metadata: {'a/b/c': {shape, dtype, chunks, compressor}} to read zarr
      arrays whose `.zarray` files were lost (Orbax indexes do not record it).
    lazy: return `ZarrArray` handles (`.shape`, `.read(index)`) for zarr arrays
      instead of reading them (msgpack arrays are numpy either way).

  Returns:
    The flat dict, arrays in their stored dtype.

  Raises:
    CheckpointError: missing / corrupt / truncated file, no `prefix` in it, or a
      missing zarr array, naming the file and what was expected.
  """
  path = os.fspath(path)
  tree, name, directory = _read_tree(path, prefix)
  leaves = _flatten(tree, directory, array_metadata or {})
  if lazy:
    return leaves
  return _materialize(leaves, shardings, None, name)


def read_t5x_checkpoint(path: str, shardings: Any = None, dtype: Any = np.float32
                        ) -> Dict[str, Any]:
  """The parameter tree (`target`) of a T5X checkpoint as a nested dict.

  Args:
    path: a msgpack checkpoint file, a checkpoint_N directory or gs:// URL.
    shardings: a pytree of jax Shardings shaped like the params (or flat
      {'a/b': Sharding}); the arrays are then jax Arrays placed straight into
      their sharding, each device reading only its slice from tensorstore.
    dtype: the dtype arrays are cast to (float32; None keeps the stored one).

  Returns:
    Nested {'encoder': {...}, ...} of numpy (or jax, with shardings) arrays.
  """
  path = os.fspath(path)
  leaves = read_t5x_arrays(path, 'target', lazy=True)
  if not leaves:
    raise CheckpointError(f'{path}: expected parameters under the checkpoint target, '
                          f'found an empty target')
  flat = _materialize(leaves, shardings, dtype, path)
  return traverse_util.unflatten_dict(flat, sep='/')


def t5x_sources(path: str, dtype: Any = np.float32
                ) -> Tuple[T5Config, Dict[str, Tuple[Tuple[int, ...], Any]]]:
  """(config, {param path: (shape, read)}) of a T5X checkpoint's target, reading no array.

  `read(index=None)` returns one parameter (cast to `dtype`), or only its slice
  `index`: tensorstore arrays read just the chunks that slice covers; arrays of a
  single msgpack file are decoded on the host once (the file has no random access)
  and sliced there.
  """
  path = os.fspath(path)
  leaves = read_t5x_arrays(path, 'target', lazy=True)
  if not leaves:
    raise CheckpointError(f'{path}: expected parameters under the checkpoint target, '
                          f'found an empty target')
  shapes = {name: jax.ShapeDtypeStruct(tuple(leaf.shape), np.float32)
            for name, leaf in leaves.items()}
  config = config_from_t5x_params(traverse_util.unflatten_dict(shapes, sep='/'), path)
  sources = {}
  for name, leaf in leaves.items():
    sources[name] = (tuple(leaf.shape), _reader(leaf, dtype))
  return config, sources


def config_from_t5x_params(params: Dict[str, Any], source: str = 'T5X checkpoint') -> T5Config:
  """Infers every size of a T5 from its T5X parameter tree (unscanned).

  Args:
    params: the nested `target` tree.
    source: named in errors (e.g. the checkpoint path).

  Returns:
    A T5Config: vocab and width from the embedding, heads and buckets from the
    relative position embedding, head_dim from the query kernel, mlp width,
    layer counts, gating (`wi_0`), tied logits (no `logits_dense`) and
    per-layer position biases (UMT5).
  """
  flat = traverse_util.flatten_dict(params, sep='/')

  def shape(path: str, ndim: int) -> Tuple[int, ...]:
    if path not in flat:
      raise CheckpointError(f'{source}: expected parameter {path}, not found; found '
                            f'{sorted(flat)[:8]}{"..." if len(flat) > 8 else ""}')
    s = tuple(np.shape(flat[path]))
    if len(s) != ndim:
      raise CheckpointError(f'{source}: expected {path} to be {ndim}-D, found shape {s}'
                            f'{" (scanned layers?)" if len(s) == ndim + 1 else ""}')
    return s

  vocab, emb = shape('token_embedder/embedding', 2)
  per_layer = ('encoder/relpos_bias/rel_embedding' not in flat
               and 'encoder/layers_0/relpos_bias/rel_embedding' in flat)
  heads, buckets = shape('encoder/layers_0/relpos_bias/rel_embedding' if per_layer
                         else 'encoder/relpos_bias/rel_embedding', 2)
  joined = shape('encoder/layers_0/attention/query/kernel', 2)[1]
  if joined % heads:
    raise CheckpointError(f'{source}: query kernel width {joined} is not a multiple of the '
                          f'{heads} heads of the relative position embedding')
  gated = 'encoder/layers_0/mlp/wi_0/kernel' in flat
  mlp = shape('encoder/layers_0/mlp/wi_0/kernel' if gated
              else 'encoder/layers_0/mlp/wi/kernel', 2)[1]

  def count(stack: str) -> int:
    return len({k.split('/')[1] for k in flat if k.startswith(f'{stack}/layers_')})

  return T5Config(vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined // heads,
                  mlp_dim=mlp, num_encoder_layers=count('encoder'),
                  num_decoder_layers=count('decoder'),
                  mlp_activations=('gelu', 'linear') if gated else ('relu',),
                  logits_via_embedding='decoder/logits_dense/kernel' not in flat,
                  relative_attention_num_buckets=buckets, per_layer_relpos_bias=per_layer)


def write_t5x_checkpoint(params: Dict[str, Any], path: str,
                         optimizer_state: Optional[Dict[str, Any]] = None, step: int = 0) -> None:
  """Writes a single-file T5X checkpoint: `{version: 3, optimizer: {target, state}}`.

  Readable by `flax.serialization.msgpack_restore` and T5X; arrays above flax's
  chunk size are written as `__msgpack_chunked_array__`.

  Args:
    params: the nested parameter tree (numpy or jax arrays; a scanned tree's
      stacked `layers` are written as `layers_0..n-1`).
    path: the file to write.
    optimizer_state: stored as `state/param_states` (e.g. Adafactor's).
    step: stored as `state/step` (int32).
  """
  from jaxpt.models.scan import unstack_layers
  params = unstack_layers(params)  # scanned models are written per layer, as T5X reads them
  state = {'step': np.asarray(step, np.int32),
           'param_states': jax.tree.map(np.asarray, optimizer_state or {})}
  tree = {'version': 3, 'optimizer': {'target': jax.tree.map(np.asarray, params),
                                      'state': state}}
  try:
    with open(os.fspath(path), 'wb') as f:
      f.write(serialization.msgpack_serialize(tree))
  except OSError as e:
    raise CheckpointError(f'{path}: cannot write the T5X checkpoint: {e}') from e


def _chunk_shape(shape: Sequence[int], itemsize: int, max_chunk_bytes: int) -> Tuple[int, ...]:
  """Halves the largest evenly halvable dimension until a chunk fits (as T5X chunks)."""
  chunk = list(shape)
  while int(np.prod(chunk)) * itemsize > max_chunk_bytes:
    halvable = [d for d in range(len(chunk)) if chunk[d] % 2 == 0]
    if not halvable:
      break
    d = max(halvable, key=lambda d: chunk[d])
    chunk[d] //= 2
  return tuple(max(c, 1) for c in chunk)


def write_t5x_tensorstore(params: Dict[str, Any], directory: str, step: int = 0,
                          max_chunk_bytes: int = 64 * 2**20) -> None:
  """Writes a legacy T5X tensorstore checkpoint directory (`checkpoint` index + zarr arrays).

  Each parameter becomes a gzip zarr array `target.<path with dots>` in chunks of at
  most `max_chunk_bytes` (T5X's own layout), so a reader slices it chunk by chunk;
  a scanned tree is written per layer. Arrays are fetched to the host one at a time.
  """
  import tensorstore as ts

  from jaxpt.models.scan import unstack_layers

  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  flat = traverse_util.flatten_dict(unstack_layers(params), sep='/')
  index: Dict[str, Any] = {}
  for name, value in flat.items():
    array = np.asarray(jax.device_get(value))
    subdir = 'target.' + name.replace('/', '.')
    dtype = np.dtype(array.dtype)
    zdtype = 'bfloat16' if dtype.name == 'bfloat16' else dtype.newbyteorder('<').str
    metadata = {'shape': list(array.shape),
                'chunks': list(_chunk_shape(array.shape, dtype.itemsize, max_chunk_bytes)),
                'dtype': zdtype, 'compressor': {'id': 'gzip'}}
    spec = {'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': subdir + '/'},
            'metadata': metadata}
    store = ts.open({'driver': 'zarr', 'kvstore': {'driver': 'file',
                                                   'path': os.path.join(directory, subdir) + '/'},
                     'metadata': metadata}, create=True, delete_existing=True).result()
    store.write(array).result()
    index[name] = spec
  tree = {'version': 3, 'optimizer': {'target': traverse_util.unflatten_dict(index, sep='/'),
                                      'state': {'step': np.asarray(step, np.int32)}}}
  with open(os.path.join(directory, _INDEX), 'wb') as f:
    f.write(serialization.msgpack_serialize(tree))
