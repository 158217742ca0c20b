"""Tracker outputs as typed tracks: PHALP / 4D-Humans pickles and ScoreHMR's per-track JSON, and
the track handling of ScoreHMR's video demo (filtering, shot splitting, gap filling).

Facts are in /work/shared/research/io_formats.md §3 (file layouts) and scorehmr.md §6 (demo);
what those notes leave open is marked "assumed" below.

PHALP / 4D-Humans pickle (`read_phalp`), documented:
  * written by `joblib.dump(..., compress=3)` (a zlib stream); the top level is a dict
    frame path -> frame dict with the scalars `time` (frame index), `shot` (1 at a cut) and
    `frame_path`, and per-track lists aligned with `tid`; only the ids in `tracked_ids` were
    matched in that frame, the other `tid` entries are stale and are skipped.
  * per track: `bbox` [x, y, w, h] px; `smpl` dict with `global_orient` (1,3,3), `body_pose`
    (23,3,3) rotation matrices and `betas` (10,); `camera` (3,) full-frame translation for the
    focal 5000 * max(H, W) / 256 px (principal point at the image centre); `camera_bbox` (3,)
    crop camera (s, tx, ty); `size` [H, W]; `2d_joints` (90,) = 45 joints x (x, y) in [0, 1] of
    the max(H, W) square padded frame, the first 25 in OpenPose BODY_25 order; `extra_data` a
    (25, 3) ViTPose BODY_25 array in image px (x, y, conf) in the ScoreHMR / SLAHMR tracker,
    an int in plain PHALP.
  Assumed (not in the notes):
  * keypoints come from `extra_data` when it is a (25, 3) array (detections with confidences),
    else from the first 25 of `2d_joints` (projections of the body model, confidence 1); the
    padded square is taken as centred, i.e. px = u * S - ((S - W) / 2, (S - H) / 2) with
    S = max(H, W).
  * shot ids are the cumulative sum of the per-frame `shot` flags in `time` order.
  * frames are ordered by `time`; a frame dict without `time` is an error.

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

ScoreHMR per-track JSON (`read_scorehmr_tracks`), documented: `track_preds/<seq>/<tid:03d>/`
holds `<stem>_smpl.json` (keys `betas` (10), `body_pose` (23x3 axis-angle), `global_orient` (3),
`cam_trans` (translation for focal 5000 px), `box_center`, `box_scale`, `cam_bbox`) and
`<stem>_keypoints.json` (`{"people": [{"pose_keypoints_2d": 25x3 nested}]}`, BODY_25 px);
`shot_idcs/<seq>.json` maps frame name -> cumulative shot index. SLAHMR writes only the first
four smpl keys (focal (H+W)/2, which the JSON does not give). Assumed: `box_scale` is the box
size in px (a scalar: square box, or (w, h)); the frame index of a stem is its position in the
sorted set of all frame names (stems of every track and the shot file's keys); frames missing
from the shot file get shot 0; without `box_center` boxes are NaN and `focal_length` is None.

Track handling (scorehmr.md §6; thresholds are parameters): keypoints with confidence < 0.4 are
dropped; at most 5 tracks each longer than 40 frames; shots of <= 20 frames are skipped; gaps are
filled by SLERP (rotations) / linear interpolation. Assumed: the 5 kept tracks are the longest
(ties: lower id); a track's length is its number of frames; a dropped keypoint is (0, 0, 0)
(OpenPose's missing point).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io as _io
import json
import lzma
import os
import pathlib
import pickle
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jhmr.body import io as body_io
from jhmr.errors import InputError
from jhmr.geometry import rotations
from jhmr.io.files import atomic_path

UnsafePickleError = body_io.UnsafePickleError
PHALP_FOCAL = 5000.0
"""PHALP / HMR2 focal length for a 256-px render of the max(H, W) square frame."""
PHALP_RENDER_RES = 256
SCOREHMR_FOCAL = 5000.0
"""Focal length (px) of ScoreHMR's exported `cam_trans`."""


def check_track_arrays(betas, global_orient, body_pose, transl):
  """One person's motion as float64 arrays: betas [B], global_orient [T, 3], body_pose
  [T, 23, 3], transl [T, 3] with T >= 1 (the exporters' input); ValueError naming the shapes."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1:
    raise ValueError(f"betas must be [B] (one person), got {betas.shape}")
  global_orient, body_pose, transl = (
    np.asarray(x, np.float64) for x in (global_orient, body_pose, transl)
  )
  t = global_orient.shape[0]
  if (
    global_orient.shape != (t, 3)
    or body_pose.shape != (t, 23, 3)
    or transl.shape != (t, 3)
    or t < 1
  ):
    raise ValueError(
      "need global_orient [T, 3], body_pose [T, 23, 3], transl [T, 3] with T >= 1; got "
      f"{global_orient.shape}, {body_pose.shape}, {transl.shape}"
    )
  return betas, global_orient, body_pose, transl


class TrackFileError(InputError):
  """A tracker file that cannot be read (corrupt, truncated, wrong layout, no frames)."""


# -- data ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Track:
  """One tracked person; all arrays share the leading frame axis T (numpy, float32 unless noted).

  Attributes:
    track_id: the tracker's id.
    frames: [T] int64 frame indices, strictly increasing.
    boxes: [T, 4] box (x1, y1, x2, y2) in image px; NaN where unknown.
    keypoints: [T, K, 3] (x, y, confidence) in image px in the joint set of the `Tracks`;
      a missing keypoint is (0, 0, 0).
    global_orient: [T, 3] axis-angle (pelvis, camera frame).
    body_pose: [T, 23, 3] axis-angle.
    betas: [T, 10].
    translation: [T, 3] camera-frame translation (PHALP `camera`, ScoreHMR `cam_trans`), for the
      `Tracks.focal_length`.
    crop_camera: [T, 3] crop camera (s, tx, ty); NaN where unknown.
    shots: [T] int64 shot ids.
    observed: [T] bool, False for frames filled by `fill_gaps`.
  """

  track_id: int
  frames: np.ndarray
  boxes: np.ndarray
  keypoints: np.ndarray
  global_orient: np.ndarray
  body_pose: np.ndarray
  betas: np.ndarray
  translation: np.ndarray
  crop_camera: np.ndarray
  shots: np.ndarray
  observed: np.ndarray

  def __len__(self) -> int:
    return int(self.frames.shape[0])

  def take(self, index) -> Track:
    """The frames selected by `index` (a boolean mask or integer indices)."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return Track(**{k: v if k == "track_id" else np.asarray(v)[index] for k, v in fields.items()})


@dataclasses.dataclass(frozen=True)
class Tracks:
  """Tracks of one video.

  Attributes:
    tracks: the tracks, ordered by id.
    joint_set: joint order of every track's keypoints (a `jhmr.io.joint_maps` name).
    frame_names: frame name of each frame index (the pickle's keys / the JSON stems).
    image_size: (H, W) px, or None where the file does not give it.
    focal_length: focal length (px) that `translation` is for, or None where unknown.
    source: "phalp" or "scorehmr".
  """

  tracks: tuple[Track, ...]
  joint_set: str = "openpose25"
  frame_names: tuple[str, ...] = ()
  image_size: tuple[int, int] | None = None
  focal_length: float | None = None
  source: str = ""

  @property
  def ids(self) -> tuple[int, ...]:
    return tuple(t.track_id for t in self.tracks)

  def __getitem__(self, track_id: int) -> Track:
    for t in self.tracks:
      if t.track_id == track_id:
        return t
    raise KeyError(f"no track with id {track_id} (ids: {list(self.ids)})")

  def __len__(self) -> int:
    return len(self.tracks)

  def __iter__(self):
    return iter(self.tracks)


# -- restricted joblib unpickling -----------------------------------------------------------------


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
    raise TrackFileError("a pre-0.10 joblib file (ZF container) is not supported")
  kinds = [kind for magic, kind in _MAGIC if raw.startswith(magic)]
  if not kinds:
    return raw
  kind = kinds[0]
  if kind == "zlib":
    d = zlib.decompressobj()
    out = d.decompress(raw)
    if not d.eof:
      raise TrackFileError("zlib stream truncated")
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
    raise TrackFileError("an lz4-compressed joblib file needs the `lz4` package") from None
  return lz4.frame.decompress(raw)


def load_joblib(path: str | os.PathLike) -> Any:
  """Loads a joblib (or plain) pickle of numpy arrays and builtins without running its code.

  Raises `UnsafePickleError` (naming the file and the global) for any other global, and
  `TrackFileError` naming the file for a corrupt or truncated one.
  """
  try:
    raw = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise TrackFileError(f"{path}: cannot read ({e})") from None
  try:
    data = _decompress(raw)
    stream = _io.BytesIO(data)
    obj = SafeJoblibUnpickler(stream).load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except TrackFileError as e:
    raise TrackFileError(f"{path}: {e}") from None
  except Exception as e:  # truncated, corrupt or not a pickle at all
    raise TrackFileError(
      f"{path}: not a readable joblib pickle ({type(e).__name__}: {e})"
    ) from None
  return obj


# -- readers ------------------------------------------------------------------------------------


def _aa_from_matrix(matrices: np.ndarray) -> np.ndarray:
  return np.asarray(rotations.matrix_to_axis_angle(jnp.asarray(matrices, jnp.float32)))


def _convert_keypoints(keypoints: np.ndarray, src: str, dst: str) -> np.ndarray:
  if src == dst:
    return keypoints
  from jhmr.io import joint_maps  # noqa: PLC0415

  return np.asarray(joint_maps.convert(keypoints, src, dst), np.float32)


def _stack(track_id: int, rows: list[dict[str, Any]], keypoints_set: str, joint_set: str) -> Track:
  def col(key):
    return np.stack([np.asarray(r[key], np.float32) for r in rows]).astype(np.float32)

  frames = np.asarray([r["frame"] for r in rows], np.int64)
  order = np.argsort(frames, kind="stable")
  if np.any(np.diff(frames[order]) == 0):
    raise TrackFileError(f"track {track_id} has two entries for one frame")
  kp = _convert_keypoints(col("keypoints"), keypoints_set, joint_set)
  track = Track(
    track_id=int(track_id),
    frames=frames,
    boxes=col("box"),
    keypoints=kp,
    global_orient=col("global_orient").reshape(-1, 3),
    body_pose=col("body_pose").reshape(-1, 23, 3),
    betas=col("betas"),
    translation=col("translation").reshape(-1, 3),
    crop_camera=col("crop_camera").reshape(-1, 3),
    shots=np.asarray([r["shot"] for r in rows], np.int64),
    observed=np.ones(len(rows), bool),
  )
  return track.take(order)


def _phalp_keypoints(entry_extra: Any, joints2d: Any, size: tuple[int, int]) -> np.ndarray:
  extra = np.asarray(entry_extra) if isinstance(entry_extra, np.ndarray) else None
  if extra is not None and extra.shape == (25, 3):
    return extra.astype(np.float32)
  if joints2d is None:
    return np.zeros((25, 3), np.float32)
  uv = np.asarray(joints2d, np.float32).reshape(-1, 2)[:25]
  h, w = size
  s = max(h, w)
  xy = uv * s - np.asarray([(s - w) / 2.0, (s - h) / 2.0], np.float32)
  return np.concatenate([xy, np.ones((25, 1), np.float32)], axis=1)


def read_phalp(path: str | os.PathLike, joint_set: str = "openpose25") -> Tracks:
  """Reads a PHALP / 4D-Humans tracking pickle (see the module docstring for the layout).

  Args:
    path: the `.pkl` written by PHALP (`joblib.dump(..., compress=3)`).
    joint_set: joint order of the returned keypoints (converted from BODY_25 with
      `jhmr.io.joint_maps.convert`).

  Raises:
    UnsafePickleError: the pickle references a global outside the allow-list (nothing runs).
    TrackFileError: corrupt / truncated file, unexpected layout, or no tracked frames.
  """
  data = load_joblib(path)
  if not isinstance(data, Mapping) or not data:
    raise TrackFileError(f"{path}: a PHALP pickle is a non-empty dict frame -> frame dict")
  frames = []
  for name, frame in data.items():
    if not isinstance(frame, Mapping) or "time" not in frame:
      raise TrackFileError(f"{path}: frame {name!r} is not a PHALP frame dict with 'time'")
    frames.append((int(frame["time"]), str(name), frame))
  frames.sort(key=lambda f: f[0])
  shots = np.cumsum([int(f[2].get("shot", 0)) for f in frames])
  frame_names = tuple(f[1] for f in frames)
  rows: dict[int, list[dict[str, Any]]] = {}
  image_size = None
  try:
    for (t, _, frame), shot in zip(frames, shots):
      tracked = {int(i) for i in frame.get("tracked_ids", [])}
      for i, tid in enumerate(frame.get("tid", [])):
        tid = int(tid)
        if tid not in tracked:
          continue
        size = tuple(int(s) for s in frame["size"][i])
        image_size = image_size or size
        smpl = frame["smpl"][i]
        x, y, bw, bh = (float(v) for v in np.asarray(frame["bbox"][i]).reshape(4))
        joints2d = frame["2d_joints"][i] if "2d_joints" in frame else None
        extra = frame["extra_data"][i] if "extra_data" in frame else None
        crop = frame["camera_bbox"][i] if "camera_bbox" in frame else np.full(3, np.nan)
        rows.setdefault(tid, []).append(
          {
            "frame": t,
            "box": [x, y, x + bw, y + bh],
            "keypoints": _phalp_keypoints(extra, joints2d, size),
            "global_orient": _aa_from_matrix(np.asarray(smpl["global_orient"]).reshape(1, 3, 3)),
            "body_pose": _aa_from_matrix(np.asarray(smpl["body_pose"]).reshape(23, 3, 3)),
            "betas": np.asarray(smpl["betas"]).reshape(-1),
            "translation": np.asarray(frame["camera"][i]).reshape(3),
            "crop_camera": np.asarray(crop).reshape(3),
            "shot": int(shot),
          }
        )
  except (KeyError, IndexError, TypeError, ValueError) as e:
    raise TrackFileError(f"{path}: unexpected PHALP layout ({type(e).__name__}: {e})") from None
  if not rows:
    raise TrackFileError(f"{path}: no tracked person in any of its {len(frames)} frames")
  tracks = tuple(_stack(tid, rows[tid], "openpose25", joint_set) for tid in sorted(rows))
  focal = None if image_size is None else PHALP_FOCAL * max(image_size) / PHALP_RENDER_RES
  return Tracks(tracks, joint_set, frame_names, image_size, focal, "phalp")


def _phalp_square_uv(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Image px [..., 2] -> [0, 1] of the centred max(H, W) square (the inverse of the reader's
  `_phalp_keypoints` mapping)."""
  h, w = size
  s = max(h, w)
  return (xy + np.asarray([(s - w) / 2.0, (s - h) / 2.0])) / s


def write_phalp(
  path: str | os.PathLike,
  tracks: Tracks,
  image_size: tuple[int, int] | None = None,
  frame_names: Sequence[str] | None = None,
  *,
  joints_2d: Mapping[int, np.ndarray] | None = None,
) -> pathlib.Path:
  """Writes tracks as a PHALP / 4D-Humans tracking pickle (`joblib.dump(..., compress=3)`).

  joblib is needed to write (it is imported here) but never to read: `read_phalp` parses the
  file without it. The layout is the one `read_phalp` documents (io_formats.md §3): one frame
  dict per frame index from 0 to the last tracked frame (or over all `frame_names`), keyed by
  its frame name, with `time`, `shot` (the step of the shot id at this frame, so the reader's
  cumulative sum gives the tracks' `shots` back), `frame_path`, and per-track lists aligned
  with `tid` (every track in the frame is in `tracked_ids`): `bbox` / `tracked_bbox` [x, y, w, h],
  `smpl` (rotation matrices `global_orient` (1, 3, 3), `body_pose` (23, 3, 3), `betas`),
  `camera` (translation for the PHALP focal 5000 * max(H, W) / 256), `camera_bbox`, `center` /
  `scale` (box centre and size), `size` [H, W], `2d_joints` (90,), `extra_data` (25, 3) BODY_25
  keypoints px (as ScoreHMR's tracker), `img_path`, `img_name`, `class_name`, `conf`,
  `tracked_time` and `annotations`. Not written: `mask`, `3d_joints` and the render-only keys.

  Args:
    path: the `.pkl` to write (atomically: a temporary file in the same directory, renamed).
    tracks: the tracks; keypoints are converted from `tracks.joint_set` to BODY_25. If
      `tracks.focal_length` is set and differs from the PHALP focal, translations are converted
      by scaling their depth by PHALP focal / focal (same projection of the origin, same scale).
      `observed` is not stored (every written frame reads back as observed).
    image_size: (H, W) px; default `tracks.image_size` (one of them is required).
    frame_names: name of each frame index; default `tracks.frame_names` if it covers every
      tracked frame, else `<6-digit index>.jpg`.
    joints_2d: track id -> [T, 25, 2] BODY_25 projections (image px) of the estimated body for
      `2d_joints`; default: the track's keypoint positions. The first 25 of the 45 joints are
      stored in [0, 1] of the padded max(H, W) square, the other 20 are 0.

  Returns:
    The path written.

  Raises:
    ValueError: no image size, a frame name list shorter than the tracked frames, tracks that
      disagree on the shot of a frame, or malformed `joints_2d`.
  """
  import joblib  # noqa: PLC0415 (writing only)

  from jhmr.io import joint_maps  # noqa: PLC0415

  path = pathlib.Path(path)
  size = image_size if image_size is not None else tracks.image_size
  if size is None:
    raise ValueError("write_phalp needs image_size (H, W): the tracks do not carry one")
  h, w = (int(v) for v in size)
  focal = PHALP_FOCAL * max(h, w) / PHALP_RENDER_RES
  depth_scale = 1.0 if tracks.focal_length is None else focal / float(tracks.focal_length)
  last = max((int(t.frames[-1]) for t in tracks if len(t)), default=-1)
  names = tuple(frame_names if frame_names is not None else tracks.frame_names)
  if frame_names is None and len(names) <= last:
    names = ()
  if not names:
    names = tuple(f"{i:06d}.jpg" for i in range(last + 1))
  if len(names) <= last:
    raise ValueError(f"{len(names)} frame names for tracked frames up to index {last}")
  if len(set(names)) != len(names):
    raise ValueError("frame names must be unique")
  num_frames = len(names)
  data = {
    name: {"time": t, "shot": 0, "frame_path": name, **{k: [] for k in _PHALP_LIST_KEYS}}
    for t, name in enumerate(names)
  }
  shot_of = np.full(num_frames, -1, np.int64)
  for track in tracks:
    kp = np.asarray(track.keypoints, np.float32)
    if tracks.joint_set != "openpose25":
      kp = np.asarray(joint_maps.convert(kp, tracks.joint_set, "openpose25"), np.float32)
    proj = kp[..., :2] if joints_2d is None else np.asarray(joints_2d[track.track_id], np.float32)
    if proj.shape != (len(track), 25, 2):
      raise ValueError(
        f"joints_2d of track {track.track_id} must be [{len(track)}, 25, 2], got {proj.shape}"
      )
    go = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(track.global_orient, jnp.float32)))
    bp = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(track.body_pose, jnp.float32)))
    uv = np.zeros((len(track), 45, 2), np.float32)
    uv[:, :25] = _phalp_square_uv(proj, (h, w))
    for i, t in enumerate(np.asarray(track.frames, np.int64)):
      shot = int(track.shots[i])
      if shot_of[t] >= 0 and shot_of[t] != shot:
        raise ValueError(f"frame {t}: tracks disagree on its shot ({shot_of[t]} vs {shot})")
      shot_of[t] = shot
      x1, y1, x2, y2 = (float(v) for v in track.boxes[i])
      box = np.asarray([x1, y1, x2 - x1, y2 - y1], np.float32)
      translation = np.asarray(track.translation[i], np.float32).copy()
      translation[2] *= depth_scale
      frame = data[names[t]]
      frame["tid"].append(int(track.track_id))
      frame["tracked_ids"].append(int(track.track_id))
      entry = {
        "bbox": box,
        "tracked_bbox": box.copy(),
        "tracked_time": 0,
        "center": np.asarray([(x1 + x2) / 2, (y1 + y2) / 2], np.float32),
        "scale": np.asarray([x2 - x1, y2 - y1], np.float32),
        "size": [h, w],
        "img_path": names[t],
        "img_name": pathlib.PurePath(names[t]).name,
        "class_name": np.int64(0),
        "conf": np.float32(1.0),
        "annotations": [],
        "smpl": {
          "global_orient": go[i].reshape(1, 3, 3).astype(np.float32),
          "body_pose": bp[i].astype(np.float32),
          "betas": np.asarray(track.betas[i], np.float32),
        },
        "camera": translation,
        "camera_bbox": np.asarray(track.crop_camera[i], np.float32),
        "2d_joints": uv[i].reshape(90),
        "extra_data": kp[i],
      }
      for key, value in entry.items():
        frame[key].append(value)
  # Shot flags: the step of the shot id, carried over frames without tracks.
  previous = 0
  for t, name in enumerate(names):
    shot = int(shot_of[t]) if shot_of[t] >= 0 else previous
    data[name]["shot"] = shot - previous
    previous = shot
  with atomic_path(path) as tmp:
    joblib.dump(data, tmp, compress=3)
  return path


_PHALP_LIST_KEYS = (
  "tid",
  "tracked_ids",
  "bbox",
  "tracked_bbox",
  "tracked_time",
  "center",
  "scale",
  "size",
  "img_path",
  "img_name",
  "class_name",
  "conf",
  "annotations",
  "smpl",
  "camera",
  "camera_bbox",
  "2d_joints",
  "extra_data",
)


def _load_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise TrackFileError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None


def read_scorehmr_tracks(
  path: str | os.PathLike,
  shot_file: str | os.PathLike | None = None,
  joint_set: str = "openpose25",
) -> Tracks:
  """Reads ScoreHMR's exported tracks `track_preds/<seq>/` (see the module docstring).

  Args:
    path: the `track_preds/<seq>` directory holding one `<tid:03d>` folder per track.
    shot_file: `shot_idcs/<seq>.json`; default: `<path>/../../shot_idcs/<seq>.json` if present.
    joint_set: joint order of the returned keypoints.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise TrackFileError(f"{root}: not a directory of ScoreHMR track folders")
  if shot_file is None:
    candidate = root.parent.parent / "shot_idcs" / f"{root.name}.json"
    shot_file = candidate if candidate.exists() else None
  shot_map = {}
  if shot_file is not None:
    shot_map = {str(k): int(v) for k, v in _load_json(pathlib.Path(shot_file)).items()}
  raw: dict[int, dict[str, pathlib.Path]] = {}
  for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
    stems = {p.name[: -len("_smpl.json")]: p for p in folder.glob("*_smpl.json")}
    if stems:
      raw[int(folder.name)] = stems
  if not raw:
    raise TrackFileError(f"{root}: no <tid>/<stem>_smpl.json files (no tracked frames)")
  names = sorted(set(shot_map) | {s for stems in raw.values() for s in stems})
  index = {n: i for i, n in enumerate(names)}
  has_box = True
  tracks = []
  for tid, stems in raw.items():
    rows = []
    for stem, smpl_path in stems.items():
      d = _load_json(smpl_path)
      try:
        kp_path = smpl_path.with_name(f"{stem}_keypoints.json")
        kp = np.zeros((25, 3), np.float32)
        if kp_path.exists():
          people = _load_json(kp_path)["people"]
          if people:
            kp = np.asarray(people[0]["pose_keypoints_2d"], np.float32).reshape(25, 3)
        box = np.full(4, np.nan, np.float32)
        if "box_center" in d:
          c = np.asarray(d["box_center"], np.float32).reshape(2)
          s = np.broadcast_to(np.asarray(d["box_scale"], np.float32).reshape(-1), (2,))
          box = np.concatenate([c - s / 2, c + s / 2])
        else:
          has_box = False
        rows.append(
          {
            "frame": index[stem],
            "box": box,
            "keypoints": kp,
            "global_orient": np.asarray(d["global_orient"]).reshape(3),
            "body_pose": np.asarray(d["body_pose"]).reshape(23, 3),
            "betas": np.asarray(d["betas"]).reshape(-1),
            "translation": np.asarray(d["cam_trans"]).reshape(3),
            "crop_camera": np.asarray(d.get("cam_bbox", [np.nan] * 3)).reshape(3),
            "shot": shot_map.get(stem, 0),
          }
        )
      except (KeyError, IndexError, TypeError, ValueError) as e:
        raise TrackFileError(
          f"{smpl_path}: unexpected ScoreHMR layout ({type(e).__name__}: {e})"
        ) from None
    tracks.append(_stack(tid, rows, "openpose25", joint_set))
  focal = SCOREHMR_FOCAL if has_box else None
  return Tracks(tuple(tracks), joint_set, tuple(names), None, focal, "scorehmr")


# -- track handling (ScoreHMR video demo) --------------------------------------------------------


def drop_low_confidence(keypoints: np.ndarray, min_confidence: float = 0.4) -> np.ndarray:
  """Keypoints [..., K, 3] with confidence < `min_confidence` set to (0, 0, 0)."""
  keypoints = np.asarray(keypoints)
  keep = keypoints[..., 2:3] >= min_confidence
  return np.where(keep, keypoints, 0).astype(keypoints.dtype)


def filter_tracks(
  tracks: Tracks, min_length: int = 40, max_tracks: int = 5, min_confidence: float = 0.4
) -> Tracks:
  """ScoreHMR's demo filter: keeps tracks of strictly more than `min_length` frames, at most
  `max_tracks` of them (the longest; ties: lower id), with keypoints of confidence below
  `min_confidence` zeroed. Returns the kept tracks in id order."""
  long = [t for t in tracks if len(t) > min_length]
  long = sorted(long, key=lambda t: (-len(t), t.track_id))[:max_tracks]
  kept = sorted(long, key=lambda t: t.track_id)
  kept = [
    dataclasses.replace(t, keypoints=drop_low_confidence(t.keypoints, min_confidence)) for t in kept
  ]
  return dataclasses.replace(tracks, tracks=tuple(kept))


def split_shots(track: Track, min_shot_length: int = 20) -> list[Track]:
  """Splits a track at shot changes; pieces of <= `min_shot_length` frames are dropped."""
  pieces = []
  for shot in np.unique(track.shots):
    piece = track.take(track.shots == shot)
    if len(piece) > min_shot_length:
      pieces.append(piece)
  return pieces


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical linear interpolation of unit quaternions [..., 4] (w, x, y, z) along the shorter
  arc; `t` broadcasts against the leading shape."""
  q0 = np.asarray(q0, np.float64)
  q1 = np.asarray(q1, np.float64)
  t = np.asarray(t, np.float64)[..., None]
  dot = np.sum(q0 * q1, axis=-1, keepdims=True)
  q1 = np.where(dot < 0, -q1, q1)
  dot = np.clip(np.abs(dot), -1.0, 1.0)
  theta = np.arccos(dot)
  sin = np.sin(theta)
  small = sin < 1e-6
  safe = np.where(small, 1.0, sin)
  w0 = np.where(small, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
  w1 = np.where(small, t, np.sin(t * theta) / safe)
  q = w0 * q0 + w1 * q1
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def fill_gaps(track: Track) -> Track:
  """Fills the frames missing between a track's first and last frame.

  Rotations (global_orient, body_pose) are SLERPed between the nearest observed frames (via
  quaternions from `jhmr.geometry.rotations`); betas, translation, crop camera and boxes are
  interpolated linearly; keypoints of filled frames stay missing (0, 0, 0); filled frames have
  `observed` False. The track must lie in one shot (use `split_shots` first).
  """
  if len(track) == 0:
    raise ValueError(f"track {track.track_id} has no frames")
  if np.unique(track.shots).size > 1:
    raise ValueError(
      f"track {track.track_id} spans shots {np.unique(track.shots).tolist()}; call split_shots "
      "first (gaps are not interpolated across a cut)"
    )
  frames = track.frames
  full = np.arange(frames[0], frames[-1] + 1, dtype=np.int64)
  if full.size == frames.size:
    return track
  right = np.clip(np.searchsorted(frames, full, side="left"), 0, len(frames) - 1)
  left = np.where(frames[right] == full, right, right - 1)
  span = np.maximum(frames[right] - frames[left], 1)
  t = ((full - frames[left]) / span).astype(np.float64)

  observed_at = np.searchsorted(frames, full)
  is_obs = np.isin(full, frames)

  def lerp(x):
    x = np.asarray(x, np.float64)
    tt = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return ((1 - tt) * x[left] + tt * x[right]).astype(np.float32)

  def rot(aa):
    q = np.asarray(rotations.axis_angle_to_quaternion(jnp.asarray(aa, jnp.float32)), np.float64)
    tt = t.reshape((-1,) + (1,) * (aa.ndim - 2))
    qi = slerp(q[left], q[right], tt)
    out = np.array(rotations.quaternion_to_axis_angle(jnp.asarray(qi, jnp.float32)), np.float32)
    out[is_obs] = aa[observed_at[is_obs]]  # observed frames stay exactly as read
    return out

  keypoints = np.zeros((full.size,) + track.keypoints.shape[1:], np.float32)
  keypoints[is_obs] = track.keypoints[observed_at[is_obs]]
  observed = np.zeros(full.size, bool)
  observed[is_obs] = track.observed[observed_at[is_obs]]
  return Track(
    track_id=track.track_id,
    frames=full,
    boxes=lerp(track.boxes),
    keypoints=keypoints,
    global_orient=rot(track.global_orient),
    body_pose=rot(track.body_pose),
    betas=lerp(track.betas),
    translation=lerp(track.translation),
    crop_camera=lerp(track.crop_camera),
    shots=np.full(full.size, track.shots[0], np.int64),
    observed=observed,
  )


def prepare_tracks(
  tracks: Tracks,
  min_length: int = 40,
  max_tracks: int = 5,
  min_confidence: float = 0.4,
  min_shot_length: int = 20,
) -> list[Track]:
  """ScoreHMR's video-demo track handling: `filter_tracks`, then per track `split_shots` and
  `fill_gaps`. Returns the tracklets (one per track and shot), by track id then shot."""
  out: list[Track] = []
  for track in filter_tracks(tracks, min_length, max_tracks, min_confidence):
    out.extend(fill_gaps(piece) for piece in split_shots(track, min_shot_length))
  return out


__all__: Sequence[str] = (
  "Track",
  "Tracks",
  "TrackFileError",
  "UnsafePickleError",
  "SafeJoblibUnpickler",
  "load_joblib",
  "read_phalp",
  "write_phalp",
  "read_scorehmr_tracks",
  "drop_low_confidence",
  "filter_tracks",
  "split_shots",
  "slerp",
  "fill_gaps",
  "prepare_tracks",
)
