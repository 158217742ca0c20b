"""Reading the official raw files of the datasets safely, with errors that name the file.

Used by the TFDS builders in `jhmr.data.<name>`: required manual files are checked up front
(`require`), pickles go through the restricted unpickler of `jhmr.body.io` (numpy arrays and
plain containers only; any other global raises), `.npz` files are opened with
`allow_pickle=False`, and every array is checked against its documented shape (`check`).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jhmr.body import io as body_io
from jhmr.errors import InputError


class RawDataError(InputError):
  """A raw dataset file is malformed; the message names the file and the problem."""


def require(root: str | os.PathLike, relative: str, dataset: str) -> pathlib.Path:
  """`root/relative`, raising FileNotFoundError (naming both and the dataset) if it is absent."""
  if root is None:
    raise FileNotFoundError(
      f"{dataset}: no manual_dir given; pass download_config=tfds.download.DownloadConfig("
      "manual_dir=...) (see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS)"
    )
  root = pathlib.Path(root)
  path = root / relative
  if not path.exists():
    raise FileNotFoundError(
      f"{dataset}: expected {relative} in the manual_dir {root}, but {path} does not exist "
      "(see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS)"
    )
  return path


class DataUnpickler(body_io.SafeSmplUnpickler):
  """`jhmr.body.io.SafeSmplUnpickler` (numpy arrays, dtypes, scalars) plus the inert builtins
  that dataset pickles also hold (`bytes`, e.g. of empty arrays written by Python 3)."""

  _EXTRA = {("builtins", "bytes"): bytes, ("__builtin__", "bytes"): bytes}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._EXTRA:
      return self._EXTRA[(module, name)]
    return super().find_class(module, name)


def load_pickle(path: str | os.PathLike) -> Any:
  """Loads a (Python 2 / latin-1) pickle holding only numpy arrays, numbers, strings, lists and
  dicts; anything else (e.g. arbitrary classes) raises RawDataError naming the file."""
  try:
    with open(path, "rb") as f:
      return DataUnpickler(f, encoding="latin1").load()
  except body_io.UnsafePickleError as e:
    raise RawDataError(f"{path}: {e}") from None
  except Exception as e:  # truncated or not a pickle at all
    raise RawDataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def load_json(path: str | os.PathLike) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RawDataError(f"{path}: not valid JSON ({e})") from None


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All arrays of an `.npz` file (no pickled objects allowed)."""
  try:
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except ValueError as e:
    raise RawDataError(f"{path}: {e}") from None
  except Exception as e:
    raise RawDataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def field(data: Mapping[str, Any], key: str, source: str | os.PathLike) -> Any:
  """`data[key]`, raising RawDataError naming the file and the keys present if it is missing."""
  if not isinstance(data, Mapping):
    raise RawDataError(f"{source}: expected a dict, got {type(data).__name__}")
  if key not in data:
    raise RawDataError(f"{source}: missing key {key!r} (has: {', '.join(map(str, data))})")
  return data[key]


def check(
  value: Any, shape: Sequence[int | None], source: str | os.PathLike, name: str, dtype=np.float32
) -> np.ndarray:
  """`value` as an array of `dtype` with `shape` (None matches any size), else RawDataError."""
  try:
    array = np.asarray(value, dtype=dtype)
  except (TypeError, ValueError) as e:
    raise RawDataError(f"{source}: {name} is not a {np.dtype(dtype).name} array ({e})") from None
  if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
    want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    raise RawDataError(f"{source}: {name} has shape {array.shape}, expected {want}")
  if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
    raise RawDataError(f"{source}: {name} holds non-finite values")
  return array
