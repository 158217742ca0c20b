"""Typed readers of ScoreHMR's released evaluation files (research/scorehmr.md §5, §7).

`datasets.zip` -> `data/datasets/`:
  * `3dpw_test.npz` (one row per person crop): `imgname` (N,) str, `center` (N,2) px, `scale` (N,)
    bbox size in px (not SPIN's /200), `body_pose` (N,72) axis-angle with the global orient first,
    `has_body_pose` (N,), `betas` (N,10), `has_betas` (N,), `body_keypoints_2d` (N,25,3) OpenPose
    detections (x, y, conf) in image px, `extra_keypoints_2d` (N,19,3), `body_keypoints_3d`
    (N,25,4), `extra_keypoints_3d` (N,19,4) (x, y, z in metres, conf).
  * `3dpw_test_video.pkl`, `h36m_val_multiview.pkl`, `mannequin.pkl`: a pickle of a list of
    groups (a tracklet or one person's views), each a dict with the npz keys for its rows.
`cache.zip` -> `cache/hmr2b/`: HMR 2.0b predictions, an npz (or for grouped sets a pickle of a
  list of dicts) with `pred_betas` (N,10), `pred_pose` (N,24,3,3), `pred_cam` (N,3) weak
  perspective on the crop, `pred_cam_t` (N,3) full-image translation (f = 5000).
  The file names inside `cache.zip` are not in the notes (assumed in `configs/scorehmr_paper.py`).

Pickles are read with `jhmr.convert.torch_pickle.load_pickle` (numpy arrays and builtins only;
any other global raises `UnsafePickleError` naming it). A missing key raises
`ScoreHMRFileError` naming the file and the key (and the group); a missing file
FileNotFoundError.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jhmr.body import io as body_io
from jhmr.convert import torch_pickle
from jhmr.errors import InputError

SET_KEYS = (
  "imgname",
  "center",
  "scale",
  "body_keypoints_2d",
  "extra_keypoints_2d",
  "body_keypoints_3d",
  "extra_keypoints_3d",
)
"""Keys every evaluation set must hold (what the protocol reads)."""
OPTIONAL_SET_KEYS = ("body_pose", "has_body_pose", "betas", "has_betas")
HMR2_KEYS = ("pred_betas", "pred_pose", "pred_cam", "pred_cam_t")


class ScoreHMRFileError(InputError):
  """A released evaluation or cache file with a missing key or an unexpected shape."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation set, rows of all groups concatenated (group rows are consecutive).

  Attributes:
    imgname: [N] image paths relative to the dataset's image root.
    center: [N, 2] bbox centre px. scale: [N] bbox size px.
    keypoints_2d: [N, 44, 3] (body 25 then extra 19) x, y px, confidence.
    keypoints_3d: [N, 44, 4] x, y, z metres, confidence (the ground truth of the protocol).
    body_pose: [N, 72] or None. betas: [N, 10] or None.
    group: [N] int group index (npz sets: each row its own group).
  """

  imgname: np.ndarray
  center: np.ndarray
  scale: np.ndarray
  keypoints_2d: np.ndarray
  keypoints_3d: np.ndarray
  body_pose: np.ndarray | None
  betas: np.ndarray | None
  group: np.ndarray

  def __len__(self) -> int:
    return len(self.imgname)

  @property
  def boxes(self) -> np.ndarray:
    """[N, 4] square boxes (x1, y1, x2, y2) px of side `scale` around `center`."""
    half = self.scale[:, None] / 2
    return np.concatenate([self.center - half, self.center + half], axis=1)

  def groups(self) -> list[np.ndarray]:
    """Row indices of each group, in order."""
    _, starts = np.unique(self.group, return_index=True)
    return [np.flatnonzero(self.group == self.group[s]) for s in np.sort(starts)]


@dataclasses.dataclass(frozen=True)
class Hmr2Predictions:
  """HMR 2.0b's cached predictions: rotmat [N, 24, 3, 3], betas [N, 10], cam [N, 3] (crop weak
  perspective), cam_t [N, 3] (full-image translation, f = 5000)."""

  rotmat: np.ndarray
  betas: np.ndarray
  cam: np.ndarray
  cam_t: np.ndarray

  def __len__(self) -> int:
    return len(self.rotmat)


def _exists(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"ScoreHMR file not found: {path}")
  return path


def _get(path, data: Any, key: str, where: str = "") -> np.ndarray:
  if not isinstance(data, Mapping) or key not in data:
    raise ScoreHMRFileError(f"{path}: missing key {key!r}{where}")
  return np.asarray(data[key])


def _shaped(path, array, shape, key, where=""):
  n = array.shape[0] if array.ndim else -1
  want = (n, *shape)
  if array.shape != want:
    raise ScoreHMRFileError(f"{path}: {key!r}{where} has shape {array.shape}, expected {want}")
  return array


def _set_from(path, d: Mapping, where: str = "") -> dict[str, np.ndarray]:
  arrays = {k: _get(path, d, k, where) for k in SET_KEYS}
  n = len(arrays["imgname"])
  shapes = {
    "center": (2,),
    "body_keypoints_2d": (25, 3),
    "extra_keypoints_2d": (19, 3),
    "body_keypoints_3d": (25, 4),
    "extra_keypoints_3d": (19, 4),
  }
  for key, shape in shapes.items():
    _shaped(path, arrays[key], shape, key, where)
  scale = arrays["scale"].reshape(n, -1).max(axis=1)  # "max over entries" (§5)
  out = {
    "imgname": arrays["imgname"].astype(str).reshape(n),
    "center": arrays["center"].astype(np.float32),
    "scale": scale.astype(np.float32),
    "keypoints_2d": np.concatenate(
      [arrays["body_keypoints_2d"], arrays["extra_keypoints_2d"]], 1
    ).astype(np.float32),
    "keypoints_3d": np.concatenate(
      [arrays["body_keypoints_3d"], arrays["extra_keypoints_3d"]], 1
    ).astype(np.float32),
  }
  for key in out:
    if len(out[key]) != n:
      raise ScoreHMRFileError(f"{path}: {key!r}{where} has {len(out[key])} rows, imgname {n}")
  for key, width in (("body_pose", 72), ("betas", 10)):
    if key in d:
      out[key] = _shaped(path, np.asarray(d[key], np.float32).reshape(n, -1), (width,), key, where)
  return out


def _eval_set(parts: list[dict], groups: list[int]) -> EvalSet:
  def cat(key):
    if not all(key in p for p in parts):
      return None
    return np.concatenate([p[key] for p in parts])

  group = np.concatenate([np.full(len(p["imgname"]), g, np.int64) for p, g in zip(parts, groups)])
  return EvalSet(
    cat("imgname"),
    cat("center"),
    cat("scale"),
    cat("keypoints_2d"),
    cat("keypoints_3d"),
    cat("body_pose"),
    cat("betas"),
    group,
  )


def read_eval_npz(path: str | os.PathLike) -> EvalSet:
  """A released `*.npz` evaluation set (e.g. `3dpw_test.npz`); each row its own group."""
  path = _exists(path)
  part = _set_from(path, body_io.read_npz(path))
  n = len(part["imgname"])
  return dataclasses.replace(_eval_set([part], [0]), group=np.arange(n, dtype=np.int64))


def _group_list(path) -> list:
  data = torch_pickle.load_pickle(_exists(path))
  if not isinstance(data, list | tuple) or not data:
    raise ScoreHMRFileError(f"{path}: expected a non-empty list of group dicts")
  return list(data)


def read_eval_groups(path: str | os.PathLike) -> EvalSet:
  """A released grouped set (`3dpw_test_video.pkl`, `h36m_val_multiview.pkl`, `mannequin.pkl`)."""
  groups = _group_list(path)
  parts = [_set_from(path, g, f" in group {i}") for i, g in enumerate(groups)]
  return _eval_set(parts, list(range(len(parts))))


def _predictions(path, d: Mapping, where: str = "") -> Hmr2Predictions:
  arrays = {k: np.asarray(_get(path, d, k, where), np.float32) for k in HMR2_KEYS}
  n = len(arrays["pred_pose"])
  for key, shape in (("pred_betas", (10,)), ("pred_pose", (24, 3, 3)), ("pred_cam", (3,))):
    _shaped(path, arrays[key], shape, key, where)
  _shaped(path, arrays["pred_cam_t"], (3,), "pred_cam_t", where)
  if any(len(a) != n for a in arrays.values()):
    raise ScoreHMRFileError(f"{path}: the pred_* arrays{where} differ in length")
  return Hmr2Predictions(
    *(arrays[k] for k in ("pred_pose", "pred_betas", "pred_cam", "pred_cam_t"))
  )


def read_hmr2_cache(path: str | os.PathLike) -> Hmr2Predictions:
  """HMR 2.0b predictions: an npz, or a pickle of a list of per-group dicts (concatenated)."""
  path = _exists(path)
  if path.suffix == ".npz":
    return _predictions(path, body_io.read_npz(path))
  parts = [_predictions(path, g, f" in group {i}") for i, g in enumerate(_group_list(path))]
  return Hmr2Predictions(
    *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(parts[0]))
  )


def read_j19_regressor(path: str | os.PathLike, num_vertices: int | None = None) -> np.ndarray:
  """`SMPL_to_J19.pkl`: a pickled [19, V] regressor -> float32 (read with the SMPL allow-list:
  numpy arrays, or a chumpy / scipy-sparse one as inert stand-ins)."""
  path = _exists(path)
  allowed = {f"{m}.{n}": v for (m, n), v in body_io._allowed_globals().items()}
  data = torch_pickle.load_pickle(path, allowed)
  regressor = np.asarray(data, np.float32)
  if regressor.ndim != 2 or regressor.shape[0] != 19:
    raise ScoreHMRFileError(f"{path}: expected a [19, V] regressor, got shape {regressor.shape}")
  if num_vertices is not None and regressor.shape[1] != num_vertices:
    raise ScoreHMRFileError(
      f"{path}: regressor has {regressor.shape[1]} vertices, the body model {num_vertices}"
    )
  return regressor


def check_aligned(path, eval_set: EvalSet, preds: Hmr2Predictions) -> None:
  """Raises `ScoreHMRFileError` unless the cache has one prediction per evaluation row."""
  if len(preds) != len(eval_set):
    raise ScoreHMRFileError(
      f"{path}: {len(preds)} HMR 2.0b predictions for {len(eval_set)} evaluation rows"
    )


__all__: Sequence[str] = (
  "EvalSet",
  "Hmr2Predictions",
  "HMR2_KEYS",
  "SET_KEYS",
  "ScoreHMRFileError",
  "check_aligned",
  "read_eval_groups",
  "read_eval_npz",
  "read_hmr2_cache",
  "read_j19_regressor",
)
