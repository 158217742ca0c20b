"""Joint sets: the SMPL kinematic tree and keypoint regressors over posed joints and vertices.

A keypoint set (OpenPose BODY_25, COCO-17, H36M-17, LSP-14) is defined by the body-model asset,
never by code (vertex indices are topology-specific):

  keypoint_k = sum_j from_joints[k, j] * joint_j + sum_v from_vertices[k, v] * vertex_v

on the posed (translated) joints `[24, 3]` and vertices `[V, 3]`. The dense `from_vertices` [K, V]
is stored sparsely at load time: `vertex_ids` [K, M] and `vertex_weights` [K, M] (M = most
non-zeros in a row, padded with weight 0).

For `BodyModel.joints_only` a `JointSet` also carries the vertex regressor contracted with the
skinning weights and the shape/pose blend shapes (the `skin_*` fields). Since LBS is linear in
the rest vertices, for keypoint k

  sum_v r_kv LBS(v) = sum_j R_j (P_kj - c_kj J_j) + c_kj t_j,
    c_kj = sum_v r_kv W_vj,   P_kj = sum_v r_kv W_vj v_posed_rest(v),

with (R_j, t_j) the world transform of joint j and J_j its rest position; P_kj is affine in the
betas and the pose feature. This gives the exact keypoints without forming the mesh.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

SMPL_JOINT_NAMES = (
  "pelvis",
  "left_hip",
  "right_hip",
  "spine1",
  "left_knee",
  "right_knee",
  "spine2",
  "left_ankle",
  "right_ankle",
  "spine3",
  "left_foot",
  "right_foot",
  "neck",
  "left_collar",
  "right_collar",
  "head",
  "left_shoulder",
  "right_shoulder",
  "left_elbow",
  "right_elbow",
  "left_wrist",
  "right_wrist",
  "left_hand",
  "right_hand",
)
"""The 24 SMPL joints in kinematic order."""

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
"""Parent of each SMPL joint (-1 for the root)."""

NUM_JOINTS = 24
JOINT_SET_NAMES = ("smpl24", "openpose25", "coco17", "h36m17", "lsp14")
"""Joint sets a body model may define; 'smpl24' (the kinematic joints) always exists."""


@flax.struct.dataclass
class JointSet:
  """A keypoint regressor over posed joints and vertices (a pytree; names are static).

  Attributes:
    from_joints: [K, 24] weights on the posed joints.
    vertex_ids: [K, M] int32 vertex indices of the sparse vertex regressor.
    vertex_weights: [K, M] their weights (0 for padding).
    valid: [K] bool, False where the asset does not define keypoint k (its rows are zero).
    translation_weight: [K] total weight of each row (how much `transl` moves the keypoint).
    skin_template: [K, 24, 3] sum_v r_kv W_vj v_template(v).
    skin_shapedirs: [K, 24, 3, NB] the same for each shape direction.
    skin_posedirs: [207, K * 24 * 3] the same for each pose-blend direction, or None when the
      model has no pose correctives.
    skin_mass: [K, 24] sum_v r_kv W_vj.
    names: the K keypoint names (static).
  """

  from_joints: jnp.ndarray
  vertex_ids: jnp.ndarray
  vertex_weights: jnp.ndarray
  valid: jnp.ndarray
  translation_weight: jnp.ndarray
  skin_template: jnp.ndarray
  skin_shapedirs: jnp.ndarray
  skin_posedirs: jnp.ndarray | None
  skin_mass: jnp.ndarray
  names: tuple[str, ...] = flax.struct.field(pytree_node=False)

  @property
  def num_keypoints(self) -> int:
    return len(self.names)


def sparse_rows(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense [K, V] -> (ids [K, M] int32, weights [K, M]) holding each row's non-zeros.

  M is the largest number of non-zeros in a row (at least 1); shorter rows are padded with
  index 0 and weight 0, so `sum_m weights[k, m] * x[ids[k, m]] == dense[k] @ x` exactly.
  """
  dense = np.asarray(dense)
  if dense.ndim != 2:
    raise ValueError(f"a regressor must be 2-D [K, V], got shape {dense.shape}")
  nnz = [np.flatnonzero(row) for row in dense]
  m = max([len(ids) for ids in nnz] + [1])
  ids = np.zeros((dense.shape[0], m), np.int32)
  weights = np.zeros((dense.shape[0], m), dense.dtype)
  for k, row_ids in enumerate(nnz):
    ids[k, : len(row_ids)] = row_ids
    weights[k, : len(row_ids)] = dense[k, row_ids]
  return ids, weights


def make_joint_set(
  names,
  from_joints: np.ndarray,
  from_vertices: np.ndarray,
  *,
  v_template: np.ndarray,
  shapedirs: np.ndarray,
  posedirs: np.ndarray | None,
  weights: np.ndarray,
  valid: np.ndarray | None = None,
  dtype=jnp.float32,
) -> JointSet:
  """Builds a `JointSet` from dense regressors and the model arrays (numpy, at load time).

  Args:
    names: K keypoint names.
    from_joints: [K, 24]; from_vertices: [K, V].
    v_template: [V, 3]; shapedirs: [V, 3, NB]; posedirs: [V, 3, 207] or None; weights: [V, 24].
    valid: [K] bool (default: all True).
    dtype: float dtype of the stored arrays (float64 needs x64 enabled).
  """
  names = tuple(str(n) for n in names)
  k = len(names)
  num_verts = v_template.shape[0]
  from_joints = np.asarray(from_joints, np.float64)
  from_vertices = np.asarray(from_vertices, np.float64)
  if from_joints.shape != (k, NUM_JOINTS):
    raise ValueError(f"from_joints must have shape ({k}, {NUM_JOINTS}), got {from_joints.shape}")
  if from_vertices.shape != (k, num_verts):
    raise ValueError(f"from_vertices must have shape ({k}, {num_verts}), got {from_vertices.shape}")
  valid = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
  if valid.shape != (k,):
    raise ValueError(f"valid must have shape ({k},), got {valid.shape}")
  ids, vweights = sparse_rows(from_vertices)
  # r_kv W_vj restricted to the touched vertices: [K, M, 24].
  rw = vweights[:, :, None] * np.asarray(weights, np.float64)[ids]
  skin_template = np.einsum("kmj,kmc->kjc", rw, np.asarray(v_template, np.float64)[ids])
  skin_shapedirs = np.einsum("kmj,kmcl->kjcl", rw, np.asarray(shapedirs, np.float64)[ids])
  skin_posedirs = None
  if posedirs is not None:
    pd = np.einsum("kmj,kmcp->pkjc", rw, np.asarray(posedirs, np.float64)[ids])
    skin_posedirs = jnp.asarray(pd.reshape(pd.shape[0], -1), dtype)
  cast = lambda x: jnp.asarray(x, dtype)
  return JointSet(
    from_joints=cast(from_joints),
    vertex_ids=jnp.asarray(ids),
    vertex_weights=cast(vweights),
    valid=jnp.asarray(valid),
    translation_weight=cast(from_joints.sum(-1) + from_vertices.sum(-1)),
    skin_template=cast(skin_template),
    skin_shapedirs=cast(skin_shapedirs),
    skin_posedirs=skin_posedirs,
    skin_mass=cast(rw.sum(1)),
    names=names,
  )


def regress_keypoints(
  joint_set: JointSet, joints: jnp.ndarray, vertices: jnp.ndarray
) -> jnp.ndarray:
  """Keypoints [..., K, 3] from posed joints [..., 24, 3] and posed vertices [..., V, 3]."""
  from_joints = jnp.einsum("kj,...jc->...kc", joint_set.from_joints, joints)
  gathered = jnp.take(vertices, joint_set.vertex_ids, axis=-2)  # [..., K, M, 3]
  from_vertices = jnp.einsum("km,...kmc->...kc", joint_set.vertex_weights, gathered)
  return from_joints + from_vertices
