"""One results file: per-frame, per-track body-model fits in the camera frame.

Every program that produces people (refinement, the video demo, evaluation exports) writes the
same file with `save_results(path, results)` and reads it back with `load_results(path)`.

Files
  `<name>.npz`   the data: a plain (compressed) NumPy archive holding only numeric and string
                 arrays, readable with `np.load(path, allow_pickle=False)`; authoritative.
  `<name>.json`  sidecar for people and other tools: schema name and version, the field docs
                 below (units, frames), every array's shape and dtype, and the metadata.
Both are written atomically (a temporary file in the same directory, then `os.replace`), so a
reader never sees a half-written file and a failed write leaves an older file intact.

Schema `jhmr.results`, version 1. One row = one track at one frame; N rows; (track_id, frame)
pairs are unique. Coordinates are in the camera frame of OpenCV: x right, y down, z forward
(metres); image coordinates are full-image pixels, origin at the top-left pixel corner.

| key                  | shape      | dtype   | unit / frame                                       |
|----------------------|------------|---------|----------------------------------------------------|
| `track_id`           | [N]        | int32   | track identity                                     |
| `frame`              | [N]        | int32   | frame index in the video / sequence (>= 0)         |
| `global_orient`      | [N, 3]     | float32 | axis-angle (rad), root rotation, camera frame      |
| `body_pose`          | [N, 23, 3] | float32 | axis-angle (rad), SMPL joints 1..23 w.r.t. parent  |
| `betas`              | [N, B]     | float32 | body-model shape coefficients                      |
| `cam_t`              | [N, 3]     | float32 | metres, camera frame; added to body-model output   |
| `intrinsics`         | [N, 3, 3]  | float32 | px, full image: [[fx,0,cx],[0,fy,cy],[0,0,1]]      |
| `image_size`         | [N, 2]     | int32   | px, (width, height)                                |
| `joints/<set>`       | [N, K, 3]  | float32 | metres, camera frame (includes `cam_t`)            |
| `keypoints_2d/<set>` | [N, K, 3]  | float32 | optional; (x, y) px full image, confidence [0, 1]  |
| `refinement_pose`    | [N,I,24,3] | float32 | optional; axis-angle (rad) per guidance iteration  |
| `refinement_cam_t`   | [N, I, 3]  | float32 | optional; metres, camera frame, per iteration      |
| `schema`             | []         | str     | "jhmr.results"                                     |
| `schema_version`     | []         | int64   | 1                                                  |
| `metadata`           | []         | str     | JSON object (see below)                            |

`<set>` names a joint set and order, e.g. `smpl24`, `openpose25`, `coco17` (see
`jhmr.io.joint_maps`); a set name is non-empty and holds no `/`. All float arrays are finite
(no NaN / inf): a missing keypoint has confidence 0 (and coordinates 0). The mesh is
`body_model(global_orient, body_pose, betas).vertices + cam_t`, so a camera-frame point projects
with `intrinsics` directly.

The optional `refinement_*` pair (both or neither) records a ScoreHMR refinement run: entry 0 is the
initial estimate, entry i the estimate after guidance iteration i (inversion + guided sampling),
entry I-1 equals the row's final `global_orient` / `body_pose` / `cam_t`. In `refinement_pose`
index 0 of the 24 is the global orientation (camera frame), 1..23 the body pose.

`metadata` is a JSON object; `make_metadata` fills the conventional keys: `program`, `config`,
`body_model` (name of the body model the parameters belong to), `jhmr_version`, `created`
(UTC, ISO 8601) and `note` (free text).

Loading validates everything: a newer schema version is refused with a message naming the file,
its version and the supported one; a truncated or corrupt archive, a missing key, a wrong shape
or dtype, an inconsistent N, duplicate rows or a NaN raise `ResultsFileError` (a `ValueError`)
naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jhmr.errors import InputError
from jhmr.io.files import atomic_path

SCHEMA_NAME = "jhmr.results"
SCHEMA_VERSION = 1

# Field -> (trailing shape after N with None for a free size, kind, unit / frame doc).
_FIELDS: dict[str, tuple[tuple[int | None, ...], str, str]] = {
  "track_id": ((), "int", "track identity"),
  "frame": ((), "int", "frame index in the video / image sequence (>= 0)"),
  "global_orient": (
    (3,),
    "float",
    "axis-angle (rad), root orientation in the camera frame (OpenCV: x right, y down, z forward)",
  ),
  "body_pose": ((23, 3), "float", "axis-angle (rad), SMPL joints 1..23 relative to their parent"),
  "betas": ((None,), "float", "body-model shape coefficients"),
  "cam_t": (
    (3,),
    "float",
    "metres, camera frame; translation added to the body-model output (vertices and joints)",
  ),
  "intrinsics": ((3, 3), "float", "pixels, full image: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]"),
  "image_size": ((2,), "int", "pixels, (width, height)"),
}
_JOINTS_DOC = "metres, camera frame (OpenCV: x right, y down, z forward); includes cam_t"
_KEYPOINTS_DOC = (
  "(x, y) pixels of the full image (origin top-left), confidence in [0, 1] (0 = missing)"
)
_DICT_FIELDS = ("joints", "keypoints_2d")
# Optional fields (both or neither): trailing shape after N (None: free size) and doc.
_REFINEMENT_FIELDS: dict[str, tuple[tuple[int | None, ...], str]] = {
  "refinement_pose": (
    (None, 24, 3),
    "axis-angle (rad) after each guidance iteration [N, I, 24, 3]; entry 0 = initial estimate, "
    "joint 0 = global orientation (camera frame)",
  ),
  "refinement_cam_t": (
    (None, 3),
    "metres, camera frame; camera translation after each guidance iteration [N, I, 3]",
  ),
}
_RESERVED = ("schema", "schema_version", "metadata")


class ResultsFileError(InputError):
  """A results file or a `Results` value that does not follow the schema."""


def _fail(where: str, message: str) -> ResultsFileError:
  return ResultsFileError(f"{where}: {message}")


def _as_array(where: str, name: str, value: Any, kind: str) -> np.ndarray:
  try:
    array = np.array(value, copy=True)
  except Exception as e:  # noqa: BLE001 - anything not array-like
    raise _fail(where, f"field '{name}' is not an array ({e})") from None
  if array.dtype.kind == "b" or array.dtype.kind not in "iuf":
    raise _fail(where, f"field '{name}' has dtype {array.dtype}, expected a {kind} array")
  if kind == "int":
    if array.dtype.kind == "f":
      if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise _fail(where, f"field '{name}' must hold integers")
    if array.size and (
      array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max
    ):
      raise _fail(where, f"field '{name}' does not fit in int32")
    array = array.astype(np.int32)
  else:
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if np.any(bad):
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise _fail(where, f"field '{name}' holds NaN or inf (first at index {first})")
  array.setflags(write=False)
  return array


def _check_shape(
  where: str, name: str, array: np.ndarray, n: int, trailing: tuple[int | None, ...]
) -> None:
  ok = array.ndim == 1 + len(trailing) and array.shape[0] == n
  ok = ok and all(t is None or t == s for t, s in zip(trailing, array.shape[1:]))
  if not ok:
    want = ", ".join([f"N={n}"] + ["*" if t is None else str(t) for t in trailing])
    raise _fail(where, f"field '{name}' has shape {array.shape}, expected ({want})")


def _check_set_name(where: str, field: str, key: Any) -> str:
  if not isinstance(key, str) or not key or "/" in key:
    raise _fail(where, f"field '{field}' has an invalid set name {key!r} (non-empty, no '/')")
  return key


def _normalise_metadata(where: str, metadata: Any) -> dict[str, Any]:
  if metadata is None:
    return {}
  if not isinstance(metadata, Mapping):
    raise _fail(where, f"field 'metadata' must be a JSON object, got {type(metadata).__name__}")
  try:
    text = json.dumps(dict(metadata), allow_nan=False, sort_keys=True)
  except (TypeError, ValueError) as e:
    raise _fail(where, f"field 'metadata' is not JSON-serialisable ({e})") from None
  return json.loads(text)


def _validate(where: str, values: Mapping[str, Any]) -> dict[str, Any]:
  """Canonical (typed, read-only, checked) fields from raw ones; raises naming `where`."""
  out: dict[str, Any] = {}
  for name, (_, kind, _) in _FIELDS.items():
    if name not in values or values[name] is None:
      raise _fail(where, f"missing field '{name}'")
    out[name] = _as_array(where, name, values[name], kind)
  n = out["track_id"].shape[0] if out["track_id"].ndim == 1 else -1
  if n < 0:
    raise _fail(where, f"field 'track_id' has shape {out['track_id'].shape}, expected (N,)")
  for name, (trailing, _, _) in _FIELDS.items():
    _check_shape(where, name, out[name], n, trailing)
  if np.any(out["frame"] < 0):
    raise _fail(where, "field 'frame' holds negative frame indices")
  if np.any(out["image_size"] <= 0):
    raise _fail(where, "field 'image_size' holds non-positive sizes")
  if n:
    pairs = np.stack([out["track_id"], out["frame"]], axis=1)
    unique = np.unique(pairs, axis=0)
    if unique.shape[0] != n:
      raise _fail(where, "fields 'track_id', 'frame' hold duplicate (track_id, frame) rows")
  for field in _DICT_FIELDS:
    sets = values.get(field)
    if sets is None:
      if field == "joints":
        raise _fail(where, "missing field 'joints'")
      sets = {}
    if not isinstance(sets, Mapping):
      raise _fail(where, f"field '{field}' must be a dict set name -> [N, K, 3] array")
    canon = {}
    for key in sorted(sets, key=str):
      key = _check_set_name(where, field, key)
      label = f"{field}/{key}"
      canon[key] = _as_array(where, label, sets[key], "float")
      _check_shape(where, label, canon[key], n, (None, 3))
    if field == "joints" and not canon:
      raise _fail(where, "field 'joints' holds no joint set (at least one is required)")
    out[field] = canon
  given = [name for name in _REFINEMENT_FIELDS if values.get(name) is not None]
  if given and len(given) != len(_REFINEMENT_FIELDS):
    raise _fail(where, f"fields {', '.join(_REFINEMENT_FIELDS)} come together (got only {given})")
  for name, (trailing, _) in _REFINEMENT_FIELDS.items():
    out[name] = None
    if given:
      out[name] = _as_array(where, name, values[name], "float")
      _check_shape(where, name, out[name], n, trailing)
  if given and out["refinement_pose"].shape[1] != out["refinement_cam_t"].shape[1]:
    raise _fail(where, "fields 'refinement_pose' and 'refinement_cam_t' differ in iterations I")
  out["metadata"] = _normalise_metadata(where, values.get("metadata"))
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class Results:
  """Per-row (one track at one frame) body-model fits; see the module docstring for the schema.

  The constructor validates and canonicalises: arrays are copied to the schema dtypes (int32 /
  float32) and made read-only, dict fields are sorted by set name, metadata is normalised
  through JSON. Equality (`==`) is exact: same fields, shapes, dtypes, values and metadata.
  """

  track_id: np.ndarray  # [N] int32
  frame: np.ndarray  # [N] int32
  global_orient: np.ndarray  # [N, 3] axis-angle, camera frame
  body_pose: np.ndarray  # [N, 23, 3] axis-angle
  betas: np.ndarray  # [N, B]
  cam_t: np.ndarray  # [N, 3] metres, camera frame
  intrinsics: np.ndarray  # [N, 3, 3] full-image pixels
  image_size: np.ndarray  # [N, 2] (width, height) pixels
  joints: Mapping[str, np.ndarray]  # name -> [N, K, 3] metres, camera frame
  keypoints_2d: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [N, K, 3]
  refinement_pose: np.ndarray | None = None  # [N, I, 24, 3] axis-angle per guidance iteration
  refinement_cam_t: np.ndarray | None = None  # [N, I, 3] metres per guidance iteration
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    for name, value in _validate("Results", values).items():
      object.__setattr__(self, name, value)

  @classmethod
  def create(cls, *, where: str = "Results", **fields: Any) -> Results:
    """Validated construction whose errors name `where` (e.g. a source file) instead."""
    return cls(**_validate(where, fields))

  @property
  def num_rows(self) -> int:
    return int(self.track_id.shape[0])

  @property
  def has_refinement(self) -> bool:
    """True when the guidance iterations of a refinement run are recorded."""
    return self.refinement_pose is not None

  @property
  def track_ids(self) -> np.ndarray:
    """Sorted distinct track ids."""
    return np.unique(self.track_id)

  def arrays(self) -> dict[str, np.ndarray]:
    """The flat `.npz` arrays of the data fields (dict fields as `joints/<set>` etc.)."""
    flat = {name: getattr(self, name) for name in _FIELDS}
    for field in _DICT_FIELDS:
      for key, value in getattr(self, field).items():
        flat[f"{field}/{key}"] = value
    for name in _REFINEMENT_FIELDS:
      if getattr(self, name) is not None:
        flat[name] = getattr(self, name)
    return flat

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Results):
      return NotImplemented
    return results_equal(self, other)

  __hash__ = None  # type: ignore[assignment]


def results_equal(a: Results, b: Results) -> bool:
  """Exact equality: same keys, shapes, dtypes, values (bitwise for floats) and metadata."""
  fa, fb = a.arrays(), b.arrays()
  if fa.keys() != fb.keys():
    return False
  for key, x in fa.items():
    y = fb[key]
    if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
      return False
  return a.metadata == b.metadata


def make_metadata(
  program: str,
  *,
  config: Any = None,
  body_model: str | None = None,
  note: str = "",
  **extra: Any,
) -> dict[str, Any]:
  """Conventional metadata: program, config (JSON-able), body model, jhmr version, UTC time."""
  import jhmr  # the package itself; imported here so this module stays importable standalone

  metadata = {
    "program": program,
    "config": config,
    "body_model": body_model,
    "jhmr_version": getattr(jhmr, "__version__", "unknown"),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "note": note,
  }
  metadata.update(extra)
  return metadata


def sidecar_path(path: str | os.PathLike) -> pathlib.Path:
  """`<path minus .npz>.json`."""
  return pathlib.Path(path).with_suffix(".json")


def _npz_path(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    raise ValueError(f"{path}: a results file name must end in .npz")
  return path


def sidecar(results: Results, data_file: str = "") -> dict[str, Any]:
  """The JSON sidecar content for `results` (schema, field docs, shapes, metadata)."""
  fields: dict[str, Any] = {}
  for key, array in results.arrays().items():
    field = key.split("/", 1)[0]
    if field in _FIELDS:
      doc = _FIELDS[field][2]
    elif field in _REFINEMENT_FIELDS:
      doc = _REFINEMENT_FIELDS[field][1]
    else:
      doc = _JOINTS_DOC if field == "joints" else _KEYPOINTS_DOC
    fields[key] = {"shape": list(array.shape), "dtype": str(array.dtype), "doc": doc}
  return {
    "schema": SCHEMA_NAME,
    "schema_version": SCHEMA_VERSION,
    "data_file": data_file,
    "num_rows": results.num_rows,
    "num_tracks": int(results.track_ids.shape[0]),
    "camera_frame": "OpenCV: x right, y down, z forward; metres",
    "image_frame": "full-image pixels, origin at the top-left corner; image_size is (w, h)",
    "fields": fields,
    "metadata": dict(results.metadata),
  }


def save_results(path: str | os.PathLike, results: Results) -> pathlib.Path:
  """Writes `path` (.npz) and its JSON sidecar atomically; returns `path`.

  `results` is re-validated first (nothing is written if it fails); both files are written to
  temporary files in the target directory and moved into place with `os.replace`.
  """
  path = _npz_path(path)
  if not isinstance(results, Results):
    raise TypeError(f"save_results expects a Results, got {type(results).__name__}")
  values = {f.name: getattr(results, f.name) for f in dataclasses.fields(results)}
  results = Results.create(where=str(path), **values)  # arrays may have been mutated in place
  arrays = dict(results.arrays())
  arrays["schema"] = np.array(SCHEMA_NAME)
  arrays["schema_version"] = np.array(SCHEMA_VERSION, dtype=np.int64)
  arrays["metadata"] = np.array(json.dumps(results.metadata, allow_nan=False, sort_keys=True))
  side = json.dumps(sidecar(results, path.name), indent=2, allow_nan=False) + "\n"
  with atomic_path(path) as data_tmp, atomic_path(sidecar_path(path)) as json_tmp:
    with open(data_tmp, "wb") as f:
      np.savez_compressed(f, **arrays)
    pathlib.Path(json_tmp).write_text(side)
  return path


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  if not path.exists():
    raise FileNotFoundError(f"{path}: results file not found")
  try:
    with np.load(path, allow_pickle=False) as archive:
      if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(str(path), "not an .npz archive")
      return {key: archive[key] for key in archive.files}
  except ResultsFileError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
    raise _fail(
      str(path), f"cannot read the .npz archive (truncated or corrupt?): {type(e).__name__}: {e}"
    ) from None


def _scalar_str(where: str, arrays: Mapping[str, np.ndarray], key: str) -> str:
  if key not in arrays:
    raise _fail(where, f"missing field '{key}'")
  value = arrays[key]
  if value.shape != () or value.dtype.kind != "U":
    raise _fail(where, f"field '{key}' must be a string scalar")
  return str(value)


def load_results(path: str | os.PathLike) -> Results:
  """Reads and validates a results `.npz` (the sidecar is not needed); see the module doc."""
  path = pathlib.Path(path)
  where = str(path)
  arrays = _read_npz(path)
  schema = _scalar_str(where, arrays, "schema")
  if schema != SCHEMA_NAME:
    raise _fail(where, f"schema is {schema!r}, expected {SCHEMA_NAME!r}")
  if "schema_version" not in arrays:
    raise _fail(where, "missing field 'schema_version'")
  version_array = arrays["schema_version"]
  if version_array.shape != () or version_array.dtype.kind not in "iu":
    raise _fail(where, "field 'schema_version' must be an integer scalar")
  version = int(version_array)
  if version > SCHEMA_VERSION:
    raise _fail(
      where,
      f"results schema version {version} is newer than the supported version "
      f"{SCHEMA_VERSION}; upgrade jhmr to read it",
    )
  if version < 1:
    raise _fail(where, f"invalid results schema version {version}")
  try:
    metadata = json.loads(_scalar_str(where, arrays, "metadata"))
  except json.JSONDecodeError as e:
    raise _fail(where, f"field 'metadata' is not valid JSON ({e})") from None
  values: dict[str, Any] = {"metadata": metadata, "joints": {}, "keypoints_2d": {}}
  for key, array in arrays.items():
    if key in _RESERVED:
      continue
    field, sep, name = key.partition("/")
    if field in _DICT_FIELDS and sep:
      values[field][name] = array
    elif (field in _FIELDS or field in _REFINEMENT_FIELDS) and not sep:
      values[field] = array
    else:
      raise _fail(where, f"unknown field '{key}'")
  if not values["joints"]:
    raise _fail(where, "missing field 'joints' (no 'joints/<set>' arrays)")
  return Results.create(where=where, **values)
