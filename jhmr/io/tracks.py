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

Unpickling is restricted (`jhmr.io.joblib_pickle`): numpy arrays and plain containers only; any
other global raises `UnsafePickleError` naming it before anything is called.

ScoreHMR per-track JSON (`read_scorehmr_tracks`), documented: `track_preds/<seq>/<tid:03d>/`
holds `<stem>_smpl.json` (keys `betas` (10), `body_pose` (23x3 axis-angle), `global_orient` (3),
`cam_trans` (translation for focal 5000 px), `box_center`, `box_scale`, `cam_bbox`) and
`<stem>_keypoints.json` (`{"people": [{"pose_keypoints_2d": 25x3 nested}]}`, BODY_25 px);
`shot_idcs/<seq>.json` maps frame name -> cumulative shot index. SLAHMR writes only the first
four smpl keys (focal (H+W)/2, which the JSON does not give). Assumed: `box_scale` is the box
size in px (a scalar: square box, or (w, h)); the frame index of a stem is its position in the
sorted set of all frame names (stems of every track and the shot file's keys); frames missing
from the shot file get shot 0; without `box_center` boxes are NaN and `focal_length` is None.

ScoreHMR's track handling (filters, shots, gap filling) is `jhmr.io.track_handling`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jhmr.body import io as body_io
from jhmr.errors import InputError
from jhmr.geometry import rotations
from jhmr.io.files import atomic_path
from jhmr.io.joblib_pickle import JoblibFileError, load_joblib

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
  try:
    data = load_joblib(path)
  except JoblibFileError as e:
    raise TrackFileError(str(e)) from None
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


__all__: Sequence[str] = (
  "Track",
  "Tracks",
  "TrackFileError",
  "UnsafePickleError",
  "read_phalp",
  "write_phalp",
  "read_scorehmr_tracks",
)
