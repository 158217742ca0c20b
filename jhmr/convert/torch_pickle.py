"""Reading PyTorch checkpoints and plain pickles without running their code (and without torch).

`load_checkpoint(path, allowed_globals)` reads a `torch.save` file -- the zip format (torch >= 1.6)
or the legacy one -- with a restricted unpickler: tensors come back as numpy arrays, every other
global must be in `allowed_globals` ("module.name" -> what to build instead), and any global not
in it raises `UnsafePickleError` naming `module.name` before anything is constructed. Non-tensor
objects (Lightning hyper-parameters, yacs / omegaconf configs, callback classes) are built as
inert stand-ins (`StandIn`) that only record their constructor arguments and state; configs are
then flattened into plain dicts (`load_checkpoint(..., plain=True)`, the default).

`load_pickle(path, allowed_globals)` does the same for plain pickles (numpy arrays and builtins by
default), e.g. ScoreHMR's released `*.pkl` evaluation files.

Allow-lists per checkpoint kind (`CHECKPOINT_KINDS`) are derived from the code that writes these
files (Lightning's checkpoint connector, yacs/omegaconf pickling, mmcv's `save_checkpoint`,
ScoreHMR's trainer); the released files themselves could not be inspected here, so a file that
needs one more global is refused by name, and the global can be added to its kind after review:
  * "tensors": `torch.save` of tensors, OrderedDict state dicts and builtins (ScoreHMR's
    `model-100.pt`: step, model, opt, ema; Adam state is tensors and builtins).
  * "vitpose": mmcv `.pth` = {meta: builtins (+ numpy scalars in hook_msgs), state_dict, optimizer}.
  * "pare": Lightning 1.x `.ckpt` = state_dict, optimizer_states, lr_schedulers, callbacks keyed by
    callback *class* (ModelCheckpoint, EarlyStopping), hyper_parameters holding yacs `CfgNode`s.
  * "hmr2": Lightning 2.x `.ckpt` = ..., loops, hyper_parameters {'cfg': omegaconf DictConfig},
    datamodule_hyper_parameters with yacs `CfgNode`s.

Why here: reading PyTorch files is what `jhmr.convert` is about; `jhmr.io.estimates` (GVHMR's
`.pt`) and `jhmr.data` (ScoreHMR's pickles) import it laterally (floor 4 -> floor 4, as io -> data
already does). The pickle-safety primitives (`UnsafePickleError`, the numpy allow-list) stay one
floor down in `jhmr.body.io`.
"""

from __future__ import annotations

import io as _io
import os
import pathlib
import pickle
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jhmr.body import io as body_io
from jhmr.body.io import UnsafePickleError
from jhmr.errors import InputError


class CheckpointError(InputError):
  """A checkpoint that cannot be read (not a torch file, truncated, unsupported layout)."""


# -- inert stand-ins ----------------------------------------------------------------------------


class StandIn:
  """Inert record of a non-tensor object: `global_name`, constructor `args` and pickled `state`."""

  global_name = ""

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.args, obj.state = args, None
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"StandIn({self.global_name})"


class DictStandIn(dict):
  """Inert stand-in for a dict subclass (yacs `CfgNode`, Lightning `AttributeDict`)."""

  global_name = ""

  def __init__(self, *args, **kwargs):
    del args, kwargs  # items arrive through SETITEMS

  def __setstate__(self, state):
    self.state = state


_STAND_INS: dict[tuple[str, type], type] = {}


def stand_in(global_name: str, base: type = StandIn) -> type:
  """The (cached) inert class standing in for `global_name` ("module.name")."""
  key = (global_name, base)
  if key not in _STAND_INS:
    _STAND_INS[key] = type(global_name.rsplit(".", 1)[-1], (base,), {"global_name": global_name})
  return _STAND_INS[key]


# -- torch tensors --------------------------------------------------------------------------------


class _StorageType:
  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, np.dtype(dtype)


_TORCH_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
  del requires_grad, hooks, rest
  if not isinstance(storage, np.ndarray):
    raise UnsafePickleError(f"tensor over a non-storage {type(storage).__name__}")
  size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
  if not size:
    return np.array(storage[offset])
  extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
  if min(size) > 0 and (extent > storage.size or min(stride) < 0 or offset < 0):
    raise CheckpointError(f"tensor of size {size} / stride {stride} beyond its storage")
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=size, strides=tuple(s * storage.dtype.itemsize for s in stride)
  )
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
  del requires_grad, hooks, rest
  return data


def _tensor_globals() -> dict[str, Any]:
  out = {f"torch.{name}": _StorageType(name, dt) for name, dt in _TORCH_DTYPES.items()}
  out["torch._utils._rebuild_tensor_v2"] = _rebuild_tensor_v2
  out["torch._utils._rebuild_parameter"] = _rebuild_parameter
  out["torch._utils._rebuild_parameter_with_state"] = _rebuild_parameter
  out["collections.OrderedDict"] = OrderedDict  # state dicts (their `_metadata` is an attribute)
  return out


def _numpy_globals() -> dict[str, Any]:
  allowed = body_io._allowed_globals()
  out = {f"{m}.{n}": v for (m, n), v in allowed.items() if m.split(".")[0] == "numpy"}
  out["_codecs.encode"] = allowed[("_codecs", "encode")]  # bytes in protocol-2 pickles
  return out


def _names(*names: str, base: type = StandIn) -> dict[str, Any]:
  return {n: stand_in(n, base) for n in names}


NUMPY: Mapping[str, Any] = _numpy_globals()
"""numpy arrays, dtypes and scalars (+ latin-1 `_codecs.encode`): plain pickles of arrays."""
TENSORS: Mapping[str, Any] = {**_tensor_globals(), **NUMPY}
"""torch tensors / parameters, OrderedDict state dicts, numpy arrays and scalars."""
_YACS = _names("yacs.config.CfgNode", base=DictStandIn)
_ATTRIBUTE_DICTS = _names(
  "pytorch_lightning.utilities.parsing.AttributeDict",
  "lightning_fabric.utilities.data.AttributeDict",
  "lightning.fabric.utilities.data.AttributeDict",
  base=DictStandIn,
)
_OMEGACONF = {
  **_names(
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "typing.Any",
  ),
  "builtins.dict": dict,  # ContainerMetadata.object_type / key_type
  "builtins.list": list,
}
LIGHTNING_PARE: Mapping[str, Any] = {
  **TENSORS,
  **_YACS,
  **_ATTRIBUTE_DICTS,
  **_names(
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
  ),
  "collections.Counter": Counter,  # MultiStepLR's `milestones` in lr_schedulers
}
"""PARE's `pare_checkpoint.ckpt` (Lightning 1.x)."""
LIGHTNING_HMR2: Mapping[str, Any] = {
  **TENSORS,
  **_YACS,
  **_ATTRIBUTE_DICTS,
  **_OMEGACONF,
  "collections.Counter": Counter,
}
"""HMR 2.0b's `epoch=35-step=1000000.ckpt` (Lightning 2.x, hydra / omegaconf training config)."""
MMPOSE_VITPOSE: Mapping[str, Any] = TENSORS
"""ViTPose's mmcv `.pth` (meta of builtins, state_dict, optional optimizer)."""
SCOREHMR: Mapping[str, Any] = TENSORS
"""ScoreHMR's `model-100.pt` (step, model, opt, ema)."""
LIGHTNING_VPOSER: Mapping[str, Any] = {**LIGHTNING_PARE, **LIGHTNING_HMR2}
"""human_body_prior's VPoser V02_05 `.ckpt` (Lightning 1.x: callback states, ReduceLROnPlateau,
omegaconf / AttributeDict hyper-parameters; the union of "pare" and "hmr2", not inspected)."""
CHECKPOINT_KINDS: Mapping[str, Mapping[str, Any]] = {
  "tensors": TENSORS,
  "scorehmr": SCOREHMR,
  "vitpose": MMPOSE_VITPOSE,
  "pare": LIGHTNING_PARE,
  "hmr2": LIGHTNING_HMR2,
  "vposer": LIGHTNING_VPOSER,
}

_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


# -- unpicklers -----------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, stream, allowed: Mapping[str, Any], what: str):
    super().__init__(stream, encoding="latin1")
    self._allowed, self._what = allowed, what

  def find_class(self, module: str, name: str) -> Any:
    full = f"{_PY2_MODULES.get(module, module)}.{name}"
    if full in self._allowed:
      return self._allowed[full]
    raise UnsafePickleError(f"refusing to load global {full} from {self._what}")

  def persistent_load(self, pid):
    raise UnsafePickleError(f"unsupported persistent id {pid!r} in {self._what}")


class _TorchUnpickler(_RestrictedUnpickler):
  def __init__(self, stream, allowed, read_storage):
    super().__init__(stream, allowed, "a torch checkpoint")
    self._read_storage, self._cache = read_storage, {}

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      raise UnsafePickleError(f"unsupported torch persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(storage_type, _StorageType):
      raise UnsafePickleError(f"unsupported torch storage type {storage_type!r}")
    if key not in self._cache:
      self._cache[key] = self._read_storage(key, storage_type.dtype, numel)
    storage = self._cache[key]
    if len(pid) == 6 and pid[5] is not None:  # legacy storage view (view_key, offset, size)
      _, offset, size = pid[5]
      storage = storage[int(offset) : int(offset) + int(size)]
    return storage


def _storage_array(data: bytes, dtype: np.dtype, numel: int, key: str) -> np.ndarray:
  if len(data) < numel * dtype.itemsize:
    raise CheckpointError(f"storage {key} truncated")
  array = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=numel)
  return array if array.dtype.isnative else array.astype(dtype)


def _load_zip(archive: zipfile.ZipFile, allowed) -> Any:
  names = archive.namelist()
  pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(pkls) != 1:
    raise CheckpointError("no single <archive>/data.pkl in the torch zip")
  prefix = pkls[0][: -len("data.pkl")]
  if f"{prefix}byteorder" in names:
    order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    if order != "little":
      raise CheckpointError(f"byteorder {order!r} is not supported")

  def read(key, dtype, numel):
    try:
      data = archive.read(f"{prefix}data/{key}")
    except KeyError:
      raise CheckpointError(f"storage {key} missing from the archive") from None
    return _storage_array(data, dtype, numel, key)

  return _TorchUnpickler(_io.BytesIO(archive.read(pkls[0])), allowed, read).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_HEADER_GLOBALS: Mapping[str, Any] = {}


def _load_legacy(raw: bytes, allowed) -> Any:
  stream = _io.BytesIO(raw)
  header = [_RestrictedUnpickler(stream, _HEADER_GLOBALS, "a torch header").load() for _ in "mps"]
  if header[0] != _LEGACY_MAGIC:
    raise CheckpointError("neither a torch zip file nor a legacy torch pickle")
  if not (isinstance(header[2], dict) and header[2].get("little_endian", True)):
    raise CheckpointError("big-endian legacy torch pickles are not supported")
  start = stream.tell()
  # Pass 1 records the storages (their bytes follow the object pickle); pass 2 builds the tensors.
  seen: dict[str, tuple[np.dtype, int]] = {}

  def record(key, dtype, numel):
    seen[key] = (dtype, numel)
    return np.zeros(numel, dtype)

  _TorchUnpickler(stream, allowed, record).load()
  keys = _RestrictedUnpickler(stream, _HEADER_GLOBALS, "a torch header").load()
  storages = {}
  for key in keys:
    key = str(key)
    if key not in seen:
      raise CheckpointError(f"storage {key} listed but never used")
    dtype, _ = seen[key]
    size = int(np.frombuffer(stream.read(8), "<i8")[0])
    storages[key] = _storage_array(stream.read(size * dtype.itemsize), dtype, size, key)

  def read(key, dtype, numel):
    if key not in storages or storages[key].size < numel:
      raise CheckpointError(f"storage {key} missing or truncated")
    return storages[key]

  stream.seek(start)
  return _TorchUnpickler(stream, allowed, read).load()


# -- plain results --------------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
  """Config stand-ins -> plain dicts / lists; stand-in classes -> their "module.name"; OrderedDict
  -> dict; arrays, builtins and other stand-ins (kept as records) unchanged."""
  if isinstance(obj, type) and issubclass(obj, StandIn | DictStandIn):
    return obj.global_name
  if isinstance(obj, StandIn):
    state = obj.state if isinstance(obj.state, dict) else {}
    if "_content" in state:  # omegaconf DictConfig / ListConfig
      return to_plain(state["_content"])
    if "_val" in state:  # omegaconf value node
      return to_plain(state["_val"])
    return obj
  if isinstance(obj, Mapping):
    return {to_plain(k): to_plain(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(to_plain(v) for v in obj)
  return obj


def load_checkpoint(
  path: str | os.PathLike,
  allowed_globals: Mapping[str, Any] | str = TENSORS,
  *,
  plain: bool = True,
) -> Any:
  """Loads a `torch.save` file (zip or legacy) as numpy arrays, builtins and inert stand-ins.

  Args:
    path: the `.pt` / `.pth` / `.ckpt` / `.bin` file.
    allowed_globals: "module.name" -> object to build instead, or a `CHECKPOINT_KINDS` name.
    plain: flatten configs with `to_plain` (else the raw stand-ins are returned).

  Raises:
    FileNotFoundError: no such file.
    UnsafePickleError: a global outside `allowed_globals` (named, with the file); nothing ran.
    CheckpointError: not a torch file, truncated, big-endian.
  """
  if isinstance(allowed_globals, str):
    if allowed_globals not in CHECKPOINT_KINDS:
      raise ValueError(f"unknown checkpoint kind {allowed_globals!r}; one of {[*CHECKPOINT_KINDS]}")
    allowed_globals = CHECKPOINT_KINDS[allowed_globals]
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        obj = _load_zip(archive, allowed_globals)
    else:
      obj = _load_legacy(path.read_bytes(), allowed_globals)
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except CheckpointError as e:
    raise CheckpointError(f"{path}: {e}") from None
  except (MemoryError, RecursionError):
    raise
  except Exception as e:  # corrupt bytes fail inside any opcode
    raise CheckpointError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
  return to_plain(obj) if plain else obj


def load_pickle(
  path: str | os.PathLike, allowed_globals: Mapping[str, Any] = NUMPY, *, plain: bool = True
) -> Any:
  """Loads a plain pickle (numpy arrays and builtins by default) with the restricted unpickler.

  Raises FileNotFoundError, `UnsafePickleError` (naming the file and the global) or
  `CheckpointError` (naming the file) for a corrupt one.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"pickle not found: {path}")
  try:
    with open(path, "rb") as f:
      obj = _RestrictedUnpickler(f, allowed_globals, "a pickle").load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except (MemoryError, RecursionError):
    raise
  except Exception as e:
    raise CheckpointError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
  return to_plain(obj) if plain else obj


__all__ = [
  "CHECKPOINT_KINDS",
  "CheckpointError",
  "DictStandIn",
  "LIGHTNING_HMR2",
  "LIGHTNING_PARE",
  "MMPOSE_VITPOSE",
  "NUMPY",
  "SCOREHMR",
  "StandIn",
  "TENSORS",
  "UnsafePickleError",
  "load_checkpoint",
  "load_pickle",
  "stand_in",
  "to_plain",
]
