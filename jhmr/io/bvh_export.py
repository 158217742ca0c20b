"""BVH export of one body track: a thin wrapper over `jhmr.data.mocap.motion_to_bvh`.

The skeleton is the body model's 24 joints (SMPL names and parents) at the rest joints of the
given `betas`; channel values are the track's local rotations as Euler angles (degrees, `order`,
intrinsic, as `jhmr.data.bvh` reads them) and the root position channels hold `transl`, so the
root's local translation `OFFSET + position = J_pelvis + transl` (jhmr's convention: rotate about
the rest pelvis, then add `transl`). Units are metres times `unit` (100 -> centimetres). The
frame is the one the track is given in (jhmr's world / body-model frame is Y up, as BVH viewers
expect; a track in the OpenCV camera frame is y down and shows upside down).
"""

from __future__ import annotations

import os

import numpy as np

from jhmr.data import bvh as bvh_lib
from jhmr.data import mocap
from jhmr.io.tracks import check_track_arrays


def track_to_bvh(
  body_model,
  betas,
  global_orient,
  body_pose,
  transl,
  fps: float,
  *,
  order: str = "ZXY",
  unit: float = 1.0,
) -> bvh_lib.Bvh:
  """The `Bvh` that `export_bvh` writes (same arguments)."""
  betas, global_orient, body_pose, transl = check_track_arrays(
    betas, global_orient, body_pose, transl
  )
  out = body_model.joints_only(
    betas.astype(np.float32), np.zeros((23, 3), np.float32), np.zeros(3, np.float32)
  )
  parents = np.array(body_model.parents, np.int64)
  parents[0] = -1
  skeleton = mocap.Skeleton(rest_joints=np.asarray(out.joints, np.float64), parents=parents)
  motion = mocap.Motion(
    global_orient=global_orient, body_pose=body_pose, transl=transl, fps=float(fps)
  )
  return mocap.motion_to_bvh(motion, skeleton, order=order, unit=unit)


def export_bvh(
  path: str | os.PathLike,
  body_model,
  betas,
  global_orient,
  body_pose,
  transl,
  fps: float = 30.0,
  *,
  order: str = "ZXY",
  unit: float = 1.0,
  precision: int = 6,
) -> None:
  """Writes one track as a BVH file (see the module docstring for the conventions).

  Args:
    path: output file (.bvh).
    body_model: a `jhmr.body` SMPL-format model.
    betas: `[B]` shape coefficients (the skeleton's rest joints).
    global_orient: `[T, 3]` axis-angle root rotation (about the rest pelvis).
    body_pose: `[T, 23, 3]` axis-angle local rotations of joints 1..23.
    transl: `[T, 3]` translation, metres.
    fps: frames per second (Frame Time = 1 / fps).
    order: Euler order of every joint's rotation channels.
    unit: file units per metre (1 -> metres, 100 -> centimetres).
    precision: decimals written per channel value.
  """
  bvh = track_to_bvh(
    body_model, betas, global_orient, body_pose, transl, fps, order=order, unit=unit
  )
  bvh_lib.write_bvh(path, bvh, precision=precision)
