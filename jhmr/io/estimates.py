"""Initial estimates from WHAM and GVHMR output files, as `jhmr.io.tracks.Tracks`.

Facts are in /work/shared/research/io_formats.md §4 (lines 147-165) and §5 (lines 183-184);
what those notes leave open is marked "assumed" below.

WHAM `wham_output.pkl` (`read_wham`), documented (io_formats.md:147-157):
  * an uncompressed joblib dump of `collections.defaultdict(dict)` keyed by track id;
  * per track: `pose` (T,72) axis-angle with the root in the camera frame, `trans` (T,3) the
    camera-frame SMPL `transl`, `pose_world` (T,72), `trans_world` (T,3) the world hip centre
    (NOT a smplx `transl`), `betas` (T,10), `verts` (T,6890,3), `frame_ids` (T,).
  * default intrinsics f = sqrt(W^2 + H^2), principal point at the centre.
  Returned: the camera-frame estimate (`pose`, `trans`, `betas`, `frame_ids`); the world-frame
  keys are not read (`trans_world` is not a translation). Not documented: the image size, so
  `focal_length` and `image_size` are None (pass `image_size` to get f = sqrt(W^2 + H^2)).
  `slam_results.pth` is not read here.

GVHMR `hmr4d_results.pt` (`read_gvhmr`), documented (io_formats.md:159-165):
  * a `torch.save` zip dict; `smpl_params_incam` (OpenCV camera frame) and `smpl_params_global`
    (gravity-aligned y-up) hold `body_pose` (F,63), `betas` (F,10), `global_orient` (F,3),
    `transl` (F,3), axis-angle; `K_fullimg` (F,3,3), f = sqrt(W^2 + H^2), centred.
  * the model is SMPL-X: the 63 values are 21 body joints, the betas are SMPL-X betas.
  * the demo re-encodes the input at 30 fps.
  Returned: the `smpl_params_incam` estimate (camera frame) as one track. torch is never
  imported: the file is read by `jhmr.convert.torch_pickle.load_checkpoint` with its "tensors"
  allow-list (tensors as numpy arrays, OrderedDict, numpy scalars; any other global raises
  `UnsafePickleError` naming it). The torch file layout itself is not in the notes (assumed from
  torch's serialization format).
  Assumed (not in the notes): one person, track id 0; frame index = row index of the 30 fps
  video; the SMPL-X body pose (21 joints) is padded with zero rotations for SMPL's two hand
  joints (22, 23) to fill `Track.body_pose` [T,23,3] -- the betas stay SMPL-X betas (not
  converted; `Tracks.source` is "gvhmr_smplx" to flag it); `focal_length` is K_fullimg[0,0,0]
  and `image_size` is (2*cy, 2*cx) of the first K (K is documented as centred).

Both: boxes, crop cameras are NaN and keypoints are missing ((0, 0, 0), BODY_25) since the files
hold none; shots are 0; every frame is `observed`. A missing key raises `EstimateFileError`
naming the file and the key.
"""

from __future__ import annotations

import io as _io
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jhmr.convert import torch_pickle
from jhmr.io import joblib_pickle
from jhmr.io.tracks import Track, TrackFileError, Tracks, UnsafePickleError


class EstimateFileError(TrackFileError):
  """An estimate file that cannot be read (missing key, wrong layout, unsupported format)."""


# -- restricted loading ---------------------------------------------------------------------------


def _defaultdict(factory=None, *args):
  # `collections.defaultdict(dict)` pickles as defaultdict(dict) + SETITEMS; a plain dict is built.
  if factory not in (None, dict) or args:
    raise UnsafePickleError(f"defaultdict with factory {factory!r} is not allowed")
  return {}


class _WhamUnpickler(joblib_pickle.SafeJoblibUnpickler):
  dispatch = joblib_pickle.SafeJoblibUnpickler.dispatch

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "defaultdict"):
      return _defaultdict
    if (module, name) in (("builtins", "dict"), ("__builtin__", "dict")):
      return dict
    return super().find_class(module, name)


def _load_wham(path: str | os.PathLike) -> Any:
  try:
    raw = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise EstimateFileError(f"{path}: cannot read ({e})") from None
  try:
    return _WhamUnpickler(_io.BytesIO(joblib_pickle._decompress(raw))).load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except Exception as e:
    raise EstimateFileError(
      f"{path}: not a readable joblib pickle ({type(e).__name__}: {e})"
    ) from None


def load_torch_zip(path: str | os.PathLike) -> Any:
  """Loads a `torch.save` file of tensors (as numpy arrays) and builtins without torch.

  The reader is `jhmr.convert.torch_pickle.load_checkpoint` with its "tensors" allow-list; a file
  it cannot read raises `EstimateFileError` naming the file.
  """
  try:
    return torch_pickle.load_checkpoint(path, torch_pickle.TENSORS)
  except FileNotFoundError as e:
    raise EstimateFileError(f"{path}: cannot read ({e})") from None
  except torch_pickle.CheckpointError as e:
    raise EstimateFileError(str(e)) from None


# -- readers ------------------------------------------------------------------------------------


def _get(path, mapping: Any, key: str, where: str = "") -> Any:
  if not isinstance(mapping, Mapping) or key not in mapping:
    raise EstimateFileError(f"{path}: missing key {key!r}{where}")
  return mapping[key]


def _track(track_id, frames, global_orient, body_pose, betas, transl) -> Track:
  t = frames.shape[0]
  return Track(
    track_id=int(track_id),
    frames=frames.astype(np.int64),
    boxes=np.full((t, 4), np.nan, np.float32),
    keypoints=np.zeros((t, 25, 3), np.float32),
    global_orient=np.asarray(global_orient, np.float32).reshape(t, 3),
    body_pose=np.asarray(body_pose, np.float32).reshape(t, 23, 3),
    betas=np.asarray(betas, np.float32).reshape(t, -1),
    translation=np.asarray(transl, np.float32).reshape(t, 3),
    crop_camera=np.full((t, 3), np.nan, np.float32),
    shots=np.zeros(t, np.int64),
    observed=np.ones(t, bool),
  )


def read_wham(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> Tracks:
  """Reads WHAM's `wham_output.pkl`: per track the camera-frame SMPL estimate.

  Args:
    path: the pickle.
    image_size: (H, W) px of the video (not in the file); gives f = sqrt(W^2 + H^2).
  """
  data = _load_wham(path)
  if not isinstance(data, Mapping) or not data:
    raise EstimateFileError(f"{path}: a WHAM output is a non-empty dict track id -> track dict")
  tracks = []
  for tid in sorted(data, key=int):
    d = data[tid]
    where = f" in track {tid}"
    pose = np.asarray(_get(path, d, "pose", where), np.float32)
    frames = np.asarray(_get(path, d, "frame_ids", where)).reshape(-1)
    try:
      pose = pose.reshape(frames.shape[0], 24, 3)
      track = _track(
        tid,
        frames,
        pose[:, 0],
        pose[:, 1:],
        _get(path, d, "betas", where),
        _get(path, d, "trans", where),
      )
    except ValueError as e:
      raise EstimateFileError(f"{path}: unexpected WHAM shapes{where} ({e})") from None
    order = np.argsort(track.frames, kind="stable")
    tracks.append(track.take(order))
  focal = None if image_size is None else math.hypot(*image_size)
  size = None if image_size is None else tuple(int(s) for s in image_size)
  return Tracks(tuple(tracks), "openpose25", (), size, focal, "wham")


def read_gvhmr(path: str | os.PathLike) -> Tracks:
  """Reads GVHMR's `hmr4d_results.pt` (`smpl_params_incam`, camera frame) as one track (id 0).

  The body model is SMPL-X (see the module docstring for the padding of the hand joints).
  """
  data = load_torch_zip(path)
  params = _get(path, data, "smpl_params_incam")
  where = " in 'smpl_params_incam'"
  body = np.asarray(_get(path, params, "body_pose", where), np.float32)
  orient = np.asarray(_get(path, params, "global_orient", where), np.float32)
  betas = _get(path, params, "betas", where)
  transl = _get(path, params, "transl", where)
  k = np.asarray(_get(path, data, "K_fullimg"), np.float64)
  t = orient.reshape(-1, 3).shape[0]
  try:
    body = np.concatenate([body.reshape(t, 21, 3), np.zeros((t, 2, 3), np.float32)], axis=1)
    track = _track(0, np.arange(t), orient, body, betas, transl)
    k0 = k.reshape(-1, 3, 3)[0]
  except ValueError as e:
    raise EstimateFileError(f"{path}: unexpected GVHMR shapes ({e})") from None
  size = (int(round(2 * k0[1, 2])), int(round(2 * k0[0, 2])))
  return Tracks((track,), "openpose25", (), size, float(k0[0, 0]), "gvhmr_smplx")


__all__: Sequence[str] = ("EstimateFileError", "load_torch_zip", "read_wham", "read_gvhmr")
