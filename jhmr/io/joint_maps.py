"""Joint-map registry: named 2-D/3-D keypoint orders and conversion between them.

`JOINT_SETS[name]` is the joint order of a set, in the set's own (native) joint names; every
native name has one canonical anatomical name (`CANONICAL_NAMES`, e.g. "RShoulder" and
"right_shoulder" are both `right_shoulder`). Two sets share a joint when their canonical names
agree, and `convert` relabels keypoints `[..., K, C]` from one order to another: shared joints
are copied, the others are zero-filled (so their confidence is 0).

Orders (the facts are in /work/shared/research/io_formats.md):
  coco17               COCO-17, left before right (§2; mmpose configs/_base_/datasets/coco.py).
  coco18               OpenPose COCO-18, right before left, with Neck (§1 table; openpose
                       src/openpose/pose/poseParameters.cpp).
  openpose25           OpenPose BODY_25 (§1 table).
  coco_wholebody_body  the first 23 points of COCO-WholeBody: COCO-17 then L big toe, L small toe,
                       L heel, R big toe, R small toe, R heel (§2 table).
  smpl24, h36m17, lsp14  as the repo already defines them (`jhmr.body.joints.SMPL_JOINT_NAMES`,
                       `jhmr.body.anny_regressors`, which the body-model asset's joint sets follow).

Matching is by name only: a relabelling, not a correction. Sets place a same-named joint at
slightly different anatomical points (SMPL hip joint centres vs COCO hip keypoints); as in the
repo's asset (`anny_regressors.JOINT_SET_DEFINITIONS`, after ScoreHMR/SPIN) OpenPose Neck is SMPL
`neck` and OpenPose MidHip is SMPL `pelvis`. H36M Pelvis (the hips' midpoint) is `pelvis` as well;
H36M Thorax, Spine, NeckNose and Head have canonical names of their own and match nothing else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.body.anny_regressors import COCO17, H36M17, LSP14, OPENPOSE25
from jhmr.body.joints import SMPL_JOINT_NAMES

# OpenPose COCO-18 (io_formats.md §1 table, right column).
COCO18 = (
  "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
  "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
)  # fmt: skip

# COCO-WholeBody indices 17-22 (io_formats.md §2 table).
WHOLEBODY_FEET = (
  "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip

JOINT_SETS: dict[str, tuple[str, ...]] = {
  "coco17": tuple(COCO17),
  "coco18": COCO18,
  "openpose25": tuple(OPENPOSE25),
  "h36m17": tuple(H36M17),
  "smpl24": tuple(SMPL_JOINT_NAMES),
  "lsp14": tuple(LSP14),
  "coco_wholebody_body": tuple(COCO17) + WHOLEBODY_FEET,
}
"""Joint order of each set, in the set's native joint names."""

# Native name -> canonical name, for every native name that is not already canonical (snake case
# names of COCO-17, SMPL-24 and the WholeBody feet are their own canonical names).
CANONICAL_NAMES: dict[str, str] = {
  # OpenPose BODY_25 / COCO-18, LSP-14, H36M-17 (shared abbreviations).
  "Nose": "nose",
  "Neck": "neck",
  "RShoulder": "right_shoulder",
  "RElbow": "right_elbow",
  "RWrist": "right_wrist",
  "LShoulder": "left_shoulder",
  "LElbow": "left_elbow",
  "LWrist": "left_wrist",
  "MidHip": "pelvis",
  "RHip": "right_hip",
  "RKnee": "right_knee",
  "RAnkle": "right_ankle",
  "LHip": "left_hip",
  "LKnee": "left_knee",
  "LAnkle": "left_ankle",
  "REye": "right_eye",
  "LEye": "left_eye",
  "REar": "right_ear",
  "LEar": "left_ear",
  "LBigToe": "left_big_toe",
  "LSmallToe": "left_small_toe",
  "LHeel": "left_heel",
  "RBigToe": "right_big_toe",
  "RSmallToe": "right_small_toe",
  "RHeel": "right_heel",
  # H36M-17 only.
  "Pelvis": "pelvis",
  "Spine": "h36m_spine",
  "Thorax": "h36m_thorax",
  "NeckNose": "h36m_neck_nose",
  "Head": "h36m_head",
  # LSP-14 only.
  "HeadTop": "head_top",
}
"""Canonical anatomical name of each native joint name that differs from it."""


def _check_set(name: str) -> tuple[str, ...]:
  if name not in JOINT_SETS:
    raise ValueError(f"unknown joint set {name!r}; valid joint sets: {', '.join(JOINT_SETS)}")
  return JOINT_SETS[name]


def joint_names(joint_set: str) -> tuple[str, ...]:
  """The native joint names of `joint_set`, in order."""
  return _check_set(joint_set)


def canonical_names(joint_set: str) -> tuple[str, ...]:
  """The canonical joint names of `joint_set`, in order."""
  return tuple(CANONICAL_NAMES.get(n, n) for n in _check_set(joint_set))


def num_joints(joint_set: str) -> int:
  """The number of joints of `joint_set`."""
  return len(_check_set(joint_set))


def mapping(src: str, dst: str) -> tuple[np.ndarray, np.ndarray]:
  """`(src_idx, dst_idx)` int32 `[M]`: joint `src_idx[m]` of `src` is joint `dst_idx[m]` of
  `dst`, for the M joints both sets share, in `dst` order."""
  src_index = {c: i for i, c in enumerate(canonical_names(src))}
  pairs = [(src_index[c], j) for j, c in enumerate(canonical_names(dst)) if c in src_index]
  src_idx = np.asarray([p[0] for p in pairs], np.int32)
  dst_idx = np.asarray([p[1] for p in pairs], np.int32)
  return src_idx, dst_idx


def convert(keypoints, src: str, dst: str):
  """Relabels `keypoints` `[..., K, C]` from joint set `src` to `dst`: `[..., K', C]`.

  Joints `dst` shares with `src` are copied; the others are zeros (confidence 0). Numpy in, numpy
  out; a jax array in, a jax array out (jit-safe: the indices are static).
  """
  k = num_joints(src)
  if keypoints.ndim < 2 or keypoints.shape[-2] != k:
    raise ValueError(
      f"keypoints of shape {tuple(keypoints.shape)} do not have {k} joints of set {src!r} on "
      "axis -2"
    )
  src_idx, dst_idx = mapping(src, dst)
  shape = (*keypoints.shape[:-2], num_joints(dst), keypoints.shape[-1])
  if isinstance(keypoints, jax.Array):
    out = jnp.zeros(shape, keypoints.dtype)
    return out.at[..., dst_idx, :].set(keypoints[..., src_idx, :])
  keypoints = np.asarray(keypoints)
  out = np.zeros(shape, keypoints.dtype)
  out[..., dst_idx, :] = keypoints[..., src_idx, :]
  return out


def slots(src: str, dst: str) -> np.ndarray:
  """`[K_src]` int32: the `dst` index each `src` joint goes to, -1 where `dst` lacks it."""
  src_idx, dst_idx = mapping(src, dst)
  out = np.full(num_joints(src), -1, np.int32)
  out[src_idx] = dst_idx
  return out
