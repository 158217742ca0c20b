"""Shape space and regressors for the Anny-derived SMPL-format model (numpy + scipy, float64).

Used only by `jhmr.body.derive_anny`: PCA of T-posed bodies into `shapedirs`, a non-negative
`J_regressor` fitted by NNLS, surface-keypoint regressors, and the four joint sets of the asset
schema (`openpose25`, `coco17`, `h36m17`, `lsp14`). Nothing here imports torch or anny.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize

from jhmr.body.anny_rig import SMPL_JOINT_NAMES, SMPL_PARENTS

# ------------------------------------------------------------------------------------------------
# Shape space


@dataclasses.dataclass(frozen=True)
class ShapeSpace:
  """PCA shape space: `vertices = mean + shapedirs . betas`, betas ~ N(0, 1) on the training set.

  Attributes:
    mean: [V, 3] mean T-posed body.
    shapedirs: [V, 3, K] principal directions scaled by their standard deviation.
    explained: [K] cumulative fraction of variance explained by the first k+1 components.
  """

  mean: np.ndarray
  shapedirs: np.ndarray
  explained: np.ndarray

  def project(self, vertices: np.ndarray) -> np.ndarray:
    """Least-squares betas [N, K] of bodies [N, V, 3]."""
    n, v = vertices.shape[:2]
    dirs = self.shapedirs.reshape(v * 3, -1)
    centred = (vertices - self.mean).reshape(n, v * 3)
    return np.linalg.lstsq(dirs, centred.T, rcond=None)[0].T

  def reconstruct(self, betas: np.ndarray) -> np.ndarray:
    """Bodies [N, V, 3] of betas [N, K]."""
    return self.mean + np.einsum("vck,nk->nvc", self.shapedirs, betas)


def fit_shape_space(vertices: np.ndarray, num_betas: int, up_axis: int = 1) -> ShapeSpace:
  """PCA of bodies [N, V, 3] into `num_betas` unit-variance directions.

  Signs are fixed so that each direction does not shorten the body: positive betas move the
  highest template vertex up relative to the lowest (along `up_axis`), deterministic output.
  """
  n, v = vertices.shape[:2]
  if n <= num_betas:
    raise ValueError(f"need more than {num_betas} bodies for {num_betas} betas, got {n}")
  mean = vertices.mean(axis=0)
  centred = (vertices - mean).reshape(n, v * 3)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  std = s / np.sqrt(n - 1)
  dirs = (vt[:num_betas] * std[:num_betas, None]).T.reshape(v, 3, num_betas)
  top, bottom = np.argmax(mean[:, up_axis]), np.argmin(mean[:, up_axis])
  stretch = dirs[top, up_axis] - dirs[bottom, up_axis]
  dirs = dirs * np.where(stretch < 0, -1.0, 1.0)
  explained = np.cumsum(s**2)[:num_betas] / np.sum(s**2)
  return ShapeSpace(mean=mean, shapedirs=dirs, explained=explained)


def per_vertex_errors(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
  """Mean / 99th percentile / max Euclidean error in the input units."""
  err = np.linalg.norm(pred - target, axis=-1).ravel()
  return {"mean": float(err.mean()), "p99": float(np.percentile(err, 99)), "max": float(err.max())}


# ------------------------------------------------------------------------------------------------
# Regressors


def fit_convex_regressor(
  vertices: np.ndarray, targets: np.ndarray, candidates: np.ndarray, sum_weight: float = 10.0
) -> np.ndarray:
  """Non-negative weights over `candidates` reproducing `targets` across bodies.

  Solves `min ||sum_c w_c v_c - t||^2 + sum_weight^2 (sum_c w_c - 1)^2, w >= 0` (NNLS with a soft
  sum-to-one row), then renormalises the weights to sum to exactly 1.

  Args:
    vertices: [N, V, 3] bodies.
    targets: [N, 3] the point to reproduce on each body.
    candidates: [C] vertex indices allowed to carry weight.

  Returns:
    [V] weights, non-negative, summing to 1, zero outside `candidates`.
  """
  n = vertices.shape[0]
  a = vertices[:, candidates].transpose(0, 2, 1).reshape(n * 3, len(candidates))
  b = targets.reshape(n * 3)
  a = np.concatenate([a, np.full((1, len(candidates)), sum_weight)], axis=0)
  b = np.concatenate([b, [sum_weight]])
  w, _ = scipy.optimize.nnls(a, b, maxiter=50 * len(candidates))
  if w.sum() <= 0:
    raise ValueError("NNLS returned all-zero weights")
  row = np.zeros(vertices.shape[1])
  row[candidates] = w / w.sum()
  return row


# Joints whose candidate radius is 0.25 m rather than 0.12 m (research/body_model.md 2.2 step 5).
_WIDE = {"pelvis", "spine1", "spine2", "spine3", "neck", "left_collar", "right_collar"}
_WIDE |= {"left_hip", "right_hip", "left_shoulder", "right_shoulder", "left_knee", "right_knee"}


def fit_joint_regressor(
  vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray
) -> np.ndarray:
  """NNLS J_regressor [24, V] from T-posed bodies [N, V, 3] and their joints [N, 24, 3].

  Candidates per joint: vertices with skinning weight > 0.05 on the joint's part or its parent's
  part, within 0.12 m (0.25 m for the trunk, hips, knees and shoulders) of the mean joint.
  """
  mean_v, mean_j = vertices.mean(axis=0), joints.mean(axis=0)
  rows = []
  for j, name in enumerate(SMPL_JOINT_NAMES):
    part = weights[:, j] > 0.05
    if SMPL_PARENTS[j] >= 0:
      part |= weights[:, SMPL_PARENTS[j]] > 0.05
    radius = 0.25 if name in _WIDE else 0.12
    near = np.linalg.norm(mean_v - mean_j[j], axis=-1) < radius
    candidates = np.flatnonzero(part & near)
    if len(candidates) < 4:
      raise ValueError(f"joint {name}: only {len(candidates)} candidate vertices")
    rows.append(fit_convex_regressor(vertices, joints[:, j], candidates))
  return np.stack(rows)


def nearest_vertices(template: np.ndarray, point: np.ndarray, count: int) -> np.ndarray:
  """Indices of the `count` vertices of `template` [V, 3] nearest to `point` [3]."""
  return np.argsort(np.linalg.norm(template - point, axis=-1))[:count]


def fit_surface_regressors(
  vertices: np.ndarray, keypoints: np.ndarray, min_candidates: int = 48, radius: float = 0.1
) -> np.ndarray:
  """NNLS regressors [K, V] reproducing keypoints [N, K, 3] from bodies [N, V, 3].

  Candidates per keypoint (on the mean body): the `min_candidates` nearest vertices and every
  vertex within max(`radius`, 2 x the nearest-vertex distance), so that keypoints inside the body
  (e.g. COCO hips) are surrounded by candidates on all sides.
  """
  mean_v, mean_k = vertices.mean(axis=0), keypoints.mean(axis=0)
  rows = []
  for k in range(keypoints.shape[1]):
    dist = np.linalg.norm(mean_v - mean_k[k], axis=-1)
    near = np.flatnonzero(dist < max(radius, 2.0 * dist.min()))
    candidates = np.union1d(np.argsort(dist)[:min_candidates], near)
    rows.append(fit_convex_regressor(vertices, keypoints[:, k], candidates))
  return np.stack(rows)


# ------------------------------------------------------------------------------------------------
# Joint sets

OPENPOSE25 = (
  "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
  "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
  "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)  # fmt: skip
COCO17 = (
  "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
  "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
H36M17 = (
  "Pelvis", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "Spine", "Thorax",
  "NeckNose", "Head", "LShoulder", "LElbow", "LWrist", "RShoulder", "RElbow", "RWrist",
)  # fmt: skip
LSP14 = (
  "RAnkle", "RKnee", "RHip", "LHip", "LKnee", "LAnkle", "RWrist", "RElbow", "RShoulder",
  "LShoulder", "LElbow", "LWrist", "Neck", "HeadTop",
)  # fmt: skip

# A definition is a tuple of terms: ("j", weight, SMPL joint name) on posed joints, or
# ("reg", weight, landmark) on posed vertices, where a landmark is a key of the surface
# `regressors` (NNLS rows fitted to Anny's COCO-WholeBody keypoints and the head top) given to
# `build_joint_set`.
_J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}


def _j(name: str, w: float = 1.0) -> tuple:
  return ("j", w, name)


def _reg(name: str, w: float = 1.0) -> tuple:
  return ("reg", w, name)


JOINT_SET_DEFINITIONS: dict[str, tuple[tuple[str, tuple], ...]] = {
  # As ScoreHMR/SPIN: SMPL joints for the limbs, neck and mid-hip; surface points for the face and
  # feet (Anny's COCO-WholeBody face and foot keypoints, whose foot points follow OpenPose's).
  "openpose25": (
    ("Nose", (_reg("nose"),)),
    ("Neck", (_j("neck"),)),
    ("RShoulder", (_j("right_shoulder"),)),
    ("RElbow", (_j("right_elbow"),)),
    ("RWrist", (_j("right_wrist"),)),
    ("LShoulder", (_j("left_shoulder"),)),
    ("LElbow", (_j("left_elbow"),)),
    ("LWrist", (_j("left_wrist"),)),
    ("MidHip", (_j("pelvis"),)),
    ("RHip", (_j("right_hip"),)),
    ("RKnee", (_j("right_knee"),)),
    ("RAnkle", (_j("right_ankle"),)),
    ("LHip", (_j("left_hip"),)),
    ("LKnee", (_j("left_knee"),)),
    ("LAnkle", (_j("left_ankle"),)),
    ("REye", (_reg("right_eye"),)),
    ("LEye", (_reg("left_eye"),)),
    ("REar", (_reg("right_ear"),)),
    ("LEar", (_reg("left_ear"),)),
    ("LBigToe", (_reg("left_big_toe"),)),
    ("LSmallToe", (_reg("left_small_toe"),)),
    ("LHeel", (_reg("left_heel"),)),
    ("RBigToe", (_reg("right_big_toe"),)),
    ("RSmallToe", (_reg("right_small_toe"),)),
    ("RHeel", (_reg("right_heel"),)),
  ),
  # Anny's own COCO keypoints (surface regressors fitted to data/keypoints/coco.pth).
  "coco17": tuple((name, (_reg(name),)) for name in COCO17),
  "h36m17": (
    ("Pelvis", (_j("left_hip", 0.5), _j("right_hip", 0.5))),
    ("RHip", (_j("right_hip"),)),
    ("RKnee", (_j("right_knee"),)),
    ("RAnkle", (_j("right_ankle"),)),
    ("LHip", (_j("left_hip"),)),
    ("LKnee", (_j("left_knee"),)),
    ("LAnkle", (_j("left_ankle"),)),
    (
      "Spine",
      (
        _j("left_hip", 0.25),
        _j("right_hip", 0.25),
        _j("left_shoulder", 0.25),
        _j("right_shoulder", 0.25),
      ),
    ),
    ("Thorax", (_j("left_shoulder", 0.5), _j("right_shoulder", 0.5))),
    ("NeckNose", (_reg("nose"),)),
    ("Head", (_j("head", 0.5), _reg("head_top", 0.5))),
    ("LShoulder", (_j("left_shoulder"),)),
    ("LElbow", (_j("left_elbow"),)),
    ("LWrist", (_j("left_wrist"),)),
    ("RShoulder", (_j("right_shoulder"),)),
    ("RElbow", (_j("right_elbow"),)),
    ("RWrist", (_j("right_wrist"),)),
  ),
  "lsp14": tuple(
    (name, (_j(smpl),))
    for name, smpl in (
      ("RAnkle", "right_ankle"),
      ("RKnee", "right_knee"),
      ("RHip", "right_hip"),
      ("LHip", "left_hip"),
      ("LKnee", "left_knee"),
      ("LAnkle", "left_ankle"),
      ("RWrist", "right_wrist"),
      ("RElbow", "right_elbow"),
      ("RShoulder", "right_shoulder"),
      ("LShoulder", "left_shoulder"),
      ("LElbow", "left_elbow"),
      ("LWrist", "left_wrist"),
      ("Neck", "neck"),
    )
  )
  + (("HeadTop", (_reg("head_top"),)),),
}


@dataclasses.dataclass(frozen=True)
class JointSet:
  """One joint set of the asset: keypoint_k = from_joints[k] . joints + from_vertices[k] . verts."""

  names: np.ndarray  # [K] str
  from_joints: np.ndarray  # [K, 24]
  from_vertices: np.ndarray  # [K, V]
  valid: np.ndarray  # [K] bool


def build_joint_set(name: str, num_vertices: int, regressors: dict[str, np.ndarray]) -> JointSet:
  """Assemble joint set `name` from SMPL joints and surface regressors (label -> [V])."""
  definition = JOINT_SET_DEFINITIONS[name]
  k = len(definition)
  from_joints = np.zeros((k, len(SMPL_JOINT_NAMES)))
  from_vertices = np.zeros((k, num_vertices))
  for row, (_, terms) in enumerate(definition):
    for kind, weight, key in terms:
      if kind == "j":
        from_joints[row, _J[key]] += weight
      else:
        from_vertices[row] += weight * regressors[key]
  names = np.array([n for n, _ in definition])
  return JointSet(names, from_joints, from_vertices, valid=np.ones(k, dtype=bool))


def apply_joint_set(joint_set: JointSet, joints: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Keypoints [N, K, 3] of joints [N, 24, 3] and vertices [N, V, 3]."""
  return np.einsum("kj,njc->nkc", joint_set.from_joints, joints) + np.einsum(
    "kv,nvc->nkc", joint_set.from_vertices, vertices
  )
