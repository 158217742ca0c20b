"""Reading joblib pickles (PHALP / 4D-Humans tracks, WHAM outputs) without joblib and without
running anything they name.

Unpickling is restricted: only numpy dtypes / arrays / scalars and joblib's array wrapper
(`joblib.numpy_pickle.NumpyArrayWrapper`, replaced by an inert stand-in whose raw array bytes
are read here) are resolved; any other global raises `UnsafePickleError` naming it before
anything is called. joblib itself is never imported. The joblib array layout (joblib 1.6):
the wrapper is pickled (state: subclass, shape, order, dtype, allow_mmap,
numpy_array_alignment_bytes), and right after its BUILD opcode come, for a non-object dtype,
one byte holding a padding length, that many padding bytes (absent for joblib <= 1.1 files,
which lack the alignment attribute), then the array's bytes in `order`; an object-dtype array is
instead a nested protocol-2 pickle (read with the same restrictions). Compressed containers are
recognised by their magic bytes: zlib, gzip, bz2, xz, lzma (lz4 only if the `lz4` package is
installed). Pre-0.10 joblib files (`ZF` prefix / companion files) are refused.
"""

from __future__ import annotations

import bz2
import gzip
import io as _io
import lzma
import os
import pathlib
import pickle
import zlib
from typing import Any

import numpy as np

from jhmr.body import io as body_io
from jhmr.errors import InputError

UnsafePickleError = body_io.UnsafePickleError


class JoblibFileError(InputError):
  """A joblib file that cannot be read (corrupt, truncated, an unsupported container)."""


class _JoblibArrayWrapper:
  """Inert stand-in for `joblib.numpy_pickle.NumpyArrayWrapper`: it only stores its state."""

  _KEYS = {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}

  def __setstate__(self, state):
    if not isinstance(state, dict) or not {"shape", "order", "dtype"} <= set(state):
      raise UnsafePickleError("joblib NumpyArrayWrapper without shape / order / dtype")
    unknown = set(state) - self._KEYS
    if unknown:
      raise UnsafePickleError(f"joblib NumpyArrayWrapper with unknown state {sorted(unknown)}")
    self.__dict__.update(state)


def _allowed_globals() -> dict[tuple[str, str], Any]:
  # The numpy part of the SMPL allow-list (arrays, dtypes, scalars) plus joblib's array wrapper.
  allowed = {k: v for k, v in body_io._allowed_globals().items() if k[0].split(".")[0] == "numpy"}
  allowed[("_codecs", "encode")] = body_io._allowed_globals()[("_codecs", "encode")]
  allowed[("joblib.numpy_pickle", "NumpyArrayWrapper")] = _JoblibArrayWrapper
  return allowed


_ALLOWED = _allowed_globals()
_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class SafeJoblibUnpickler(pickle._Unpickler):
  """Restricted unpickler for joblib files: numpy arrays / dtypes / scalars and joblib's array
  wrapper (whose raw bytes it reads itself); any other global raises `UnsafePickleError`.

  The pure-Python unpickler is used because the wrapper is resolved at its BUILD opcode.
  """

  dispatch = pickle._Unpickler.dispatch.copy()

  def __init__(self, stream, depth: int = 0):
    super().__init__(stream, encoding="latin1")
    self._stream = stream
    self._depth = depth

  def find_class(self, module: str, name: str) -> Any:
    module = _PY2_MODULES.get(module, module)
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f"refusing to load global {module}.{name} from a tracker pickle (only numpy arrays, "
        "dtypes, scalars and joblib's NumpyArrayWrapper are allowed)"
      ) from None

  def load_build(self):
    pickle._Unpickler.load_build(self)
    if isinstance(self.stack[-1], _JoblibArrayWrapper):
      self.stack[-1] = self._read_array(self.stack[-1])

  dispatch[pickle.BUILD[0]] = load_build

  def _read_exact(self, n: int) -> bytes:
    data = self._stream.read(n)
    if len(data) != n:
      raise EOFError(f"array data truncated: wanted {n} bytes, got {len(data)}")
    return data

  def _read_array(self, w: _JoblibArrayWrapper) -> np.ndarray:
    dtype = w.dtype
    if not isinstance(dtype, np.dtype):
      raise UnsafePickleError(f"joblib array wrapper with dtype {type(dtype).__name__}")
    if getattr(w, "subclass", np.ndarray) not in (np.ndarray, np.memmap):
      raise UnsafePickleError(f"joblib array of subclass {w.subclass!r} is not allowed")
    shape = tuple(int(s) for s in w.shape)
    if any(s < 0 for s in shape) or w.order not in ("C", "F"):
      raise UnsafePickleError(f"joblib array wrapper with shape {shape} / order {w.order!r}")
    if dtype.hasobject:
      if self._depth > 8:
        raise UnsafePickleError("joblib object arrays nested too deeply")
      array = SafeJoblibUnpickler(self._stream, depth=self._depth + 1).load()
      if not isinstance(array, np.ndarray):
        raise UnsafePickleError("joblib object-array payload is not an array")
      return array
    if getattr(w, "numpy_array_alignment_bytes", None) is not None:
      padding = self._read_exact(1)[0]
      self._read_exact(padding)
    count = int(np.prod(shape, dtype=np.int64))
    array = np.frombuffer(self._read_exact(count * dtype.itemsize), dtype=dtype, count=count)
    if w.order == "F":
      array = array.reshape(shape[::-1]).transpose()
    else:
      array = array.reshape(shape)
    if not array.dtype.isnative:
      array = array.astype(array.dtype.newbyteorder("="))
    return np.array(array)  # writable copy


_MAGIC = (
  (b"\x78", "zlib"),
  (b"\x1f\x8b", "gzip"),
  (b"BZ", "bz2"),
  (b"\xfd\x37\x7a\x58\x5a", "xz"),
  (b"\x5d\x00", "lzma"),
  (b"\x04\x22\x4d\x18", "lz4"),
)


def _decompress(raw: bytes) -> bytes:
  if raw.startswith(b"ZF"):
    raise JoblibFileError("a pre-0.10 joblib file (ZF container) is not supported")
  kinds = [kind for magic, kind in _MAGIC if raw.startswith(magic)]
  if not kinds:
    return raw
  kind = kinds[0]
  if kind == "zlib":
    d = zlib.decompressobj()
    out = d.decompress(raw)
    if not d.eof:
      raise JoblibFileError("zlib stream truncated")
    return out
  if kind == "gzip":
    return gzip.decompress(raw)
  if kind == "bz2":
    return bz2.decompress(raw)
  if kind in ("xz", "lzma"):
    return lzma.decompress(raw, format=lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
  try:
    import lz4.frame  # noqa: PLC0415
  except ImportError:
    raise JoblibFileError("an lz4-compressed joblib file needs the `lz4` package") from None
  return lz4.frame.decompress(raw)


def load_joblib(path: str | os.PathLike) -> Any:
  """Loads a joblib (or plain) pickle of numpy arrays and builtins without running its code.

  Raises `UnsafePickleError` (naming the file and the global) for any other global, and
  `JoblibFileError` naming the file for a corrupt or truncated one.
  """
  try:
    raw = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise JoblibFileError(f"{path}: cannot read ({e})") from None
  try:
    data = _decompress(raw)
    stream = _io.BytesIO(data)
    obj = SafeJoblibUnpickler(stream).load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except JoblibFileError as e:
    raise JoblibFileError(f"{path}: {e}") from None
  except Exception as e:  # truncated, corrupt or not a pickle at all
    raise JoblibFileError(
      f"{path}: not a readable joblib pickle ({type(e).__name__}: {e})"
    ) from None
  return obj
