"""SMPL-format body model: a pytree of arrays plus linear blend skinning (LBS) and kinematics.

`BodyModel` follows smplx's order of operations:
  1. shape blend  v_shaped = v_template + shapedirs . betas
  2. rest joints  J = J_regressor @ v_shaped (precomputed as J_template + J_shapedirs . betas,
     the same linear map contracted once at load time)
  3. pose blend   v_posed = v_shaped + posedirs . vec(R[1:] - I)   (skipped, exactly, when the
     asset's posedirs are all zero: decided at load time)
  4. forward kinematics over the static parents: G_i = G_parent(i) [R_i | J_i - J_parent(i)]
  5. skinning     v = sum_j W_vj (G_j [v_posed - J_j; 1]),  then + transl.

`global_orient` rotates about the root joint (not the origin), as in smplx. Everything takes any
leading batch shape (broadcast between the arguments) and is jit/vmap/grad-able.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.struct
import jax.numpy as jnp
import numpy as np

from jhmr.body import joints as joints_lib
from jhmr.geometry import rotations

NUM_BODY_JOINTS = 23


@flax.struct.dataclass
class BodyOutput:
  """Posed body.

  Attributes:
    vertices: [..., V, 3] or None (from `joints_only`).
    joints: [..., 24, 3] posed SMPL joints (translated).
    joint_transforms: [..., 24, 4, 4] world rigid transform of each joint frame (rotation = the
      global joint rotation, translation = the posed joint position).
    keypoints: [..., K, 3] for the requested joint set, or None when none was requested.
  """

  vertices: jnp.ndarray | None
  joints: jnp.ndarray
  joint_transforms: jnp.ndarray
  keypoints: jnp.ndarray | None


@flax.struct.dataclass
class BodyModel:
  """An SMPL-format body model (a pytree: arrays are leaves; tree and names are static).

  Attributes:
    v_template: [V, 3] rest-pose template vertices (metres, Y up).
    shapedirs: [V, 3, NB] shape blend shapes.
    posedirs: [207, V * 3] pose-corrective blend shapes (smplx's layout), or None when the
      asset's are all zero (the pose blend is then skipped).
    J_regressor: [24, V] rest-joint regressor.
    J_template: [24, 3] = J_regressor @ v_template.
    J_shapedirs: [24, 3, NB] = J_regressor @ shapedirs.
    weights: [V, 24] skinning weights.
    faces: [F, 3] int32 triangles.
    joint_sets: name -> `JointSet` for keypoint sets defined by the asset.
    parents: 24 parent indices (static, root -1).
    joint_names_smpl: 24 joint names (static).
  """

  v_template: jnp.ndarray
  shapedirs: jnp.ndarray
  posedirs: jnp.ndarray | None
  J_regressor: jnp.ndarray
  J_template: jnp.ndarray
  J_shapedirs: jnp.ndarray
  weights: jnp.ndarray
  faces: jnp.ndarray
  joint_sets: dict[str, joints_lib.JointSet]
  parents: tuple[int, ...] = flax.struct.field(pytree_node=False)
  joint_names_smpl: tuple[str, ...] = flax.struct.field(pytree_node=False)

  # -- description -----------------------------------------------------------------------------

  @property
  def num_betas(self) -> int:
    return self.shapedirs.shape[-1]

  @property
  def num_vertices(self) -> int:
    return self.v_template.shape[0]

  @property
  def has_posedirs(self) -> bool:
    return self.posedirs is not None

  @property
  def available_joint_sets(self) -> tuple[str, ...]:
    return ("smpl24", *sorted(self.joint_sets))

  def joint_names(self, joint_set: str = "smpl24") -> tuple[str, ...]:
    """Names of the keypoints of `joint_set` ('smpl24' -> the 24 kinematic joints)."""
    if joint_set == "smpl24":
      return self.joint_names_smpl
    return self._joint_set(joint_set).names

  def _joint_set(self, name: str) -> joints_lib.JointSet:
    if name not in self.joint_sets:
      raise ValueError(
        f"joint set {name!r} is not defined by this body model; available: "
        f"{self.available_joint_sets} (official SMPL files carry no keypoint regressors: pass "
        "joint_sets=<npz with joint_set.* keys> to load_body_model)"
      )
    return self.joint_sets[name]

  # -- forward ---------------------------------------------------------------------------------

  def __call__(
    self,
    betas,
    body_pose,
    global_orient,
    transl=None,
    *,
    pose_format: str = "axis_angle",
    joint_set: str | None = None,
  ) -> BodyOutput:
    """Posed mesh, joints and keypoints.

    Args:
      betas: [..., B] shape coefficients, B <= num_betas (zero-padded).
      body_pose: [..., 23, 3] axis-angle / [..., 23, 3, 3] rotmat / [..., 23, 6] rot6d.
      global_orient: [..., 3] / [..., 3, 3] / [..., 6] per `pose_format`.
      transl: [..., 3] or None.
      pose_format: 'axis_angle', 'rotmat' or 'rot6d'.
      joint_set: None, 'smpl24' or a set defined by the asset (see `available_joint_sets`).

    Returns:
      BodyOutput(vertices [..., V, 3], joints [..., 24, 3], joint_transforms [..., 24, 4, 4],
      keypoints [..., K, 3] or None). Leading shapes of the inputs broadcast together.
    """
    return self._forward(betas, body_pose, global_orient, transl, pose_format, joint_set, True)

  def joints_only(
    self,
    betas,
    body_pose,
    global_orient,
    transl=None,
    *,
    pose_format: str = "axis_angle",
    joint_set: str | None = None,
  ) -> BodyOutput:
    """Same as `__call__` (exact) but never forms the mesh: `vertices` is None.

    Vertex-based keypoints are regressed inside the skinning sum (see `jhmr.body.joints`), so
    the cost is independent of the vertex count.
    """
    return self._forward(betas, body_pose, global_orient, transl, pose_format, joint_set, False)

  def _forward(self, betas, body_pose, global_orient, transl, pose_format, joint_set, mesh):
    rot_shape = rotations.trailing_shape(pose_format)
    keypoint_set = None if joint_set in (None, "smpl24") else self._joint_set(joint_set)
    betas, body_pose, global_orient, transl, batch = self._prepare(
      betas, body_pose, global_orient, transl, pose_format, rot_shape
    )
    n = int(np.prod(batch, dtype=np.int64))
    flat = lambda x, tail: jnp.reshape(x, (n, *tail))
    betas = flat(betas, (self.num_betas,))
    rot_local = jnp.concatenate(
      [
        rotations.to_matrix(flat(global_orient, rot_shape), pose_format)[:, None],
        rotations.to_matrix(flat(body_pose, (NUM_BODY_JOINTS, *rot_shape)), pose_format),
      ],
      axis=1,
    )  # [N, 24, 3, 3]
    transl = flat(transl, (3,))
    rest_joints = self.J_template + jnp.einsum("jcl,nl->njc", self.J_shapedirs, betas)
    g_rot, g_pos = forward_kinematics(rot_local, rest_joints, self.parents)
    pose_feature = None
    if self.has_posedirs:
      eye = jnp.eye(3, dtype=rot_local.dtype)
      pose_feature = jnp.reshape(rot_local[:, 1:] - eye, (n, NUM_BODY_JOINTS * 9))
    # Skinning transform of joint j: x -> G_rot_j x + (G_pos_j - G_rot_j J_j).
    skin_t = g_pos - jnp.einsum("njab,njb->nja", g_rot, rest_joints)
    joints = g_pos + transl[:, None]

    vertices = keypoints = None
    if mesh:
      blend = betas @ jnp.reshape(self.shapedirs, (self.num_vertices * 3, self.num_betas)).T
      v_posed = self.v_template + jnp.reshape(blend, (n, self.num_vertices, 3))
      if pose_feature is not None:
        v_posed = v_posed + jnp.reshape(pose_feature @ self.posedirs, (n, self.num_vertices, 3))
      vertices = skin_vertices(self.weights, g_rot, skin_t, v_posed) + transl[:, None]
    if joint_set == "smpl24":
      keypoints = joints
    elif keypoint_set is not None and vertices is not None:
      keypoints = joints_lib.regress_keypoints(keypoint_set, joints, vertices)
    elif keypoint_set is not None:
      keypoints = self._keypoints_without_mesh(
        keypoint_set, betas, pose_feature, g_rot, skin_t, joints, transl
      )

    transforms = rigid_transforms(g_rot, joints)
    unflat = lambda x: None if x is None else jnp.reshape(x, (*batch, *x.shape[1:]))
    return BodyOutput(
      vertices=unflat(vertices),
      joints=unflat(joints),
      joint_transforms=unflat(transforms),
      keypoints=unflat(keypoints),
    )

  def _keypoints_without_mesh(self, js, betas, pose_feature, g_rot, skin_t, joints, transl):
    """Exact keypoints [N, K, 3] from the contracted regressor (no per-vertex work)."""
    n = betas.shape[0]
    p = js.skin_template + jnp.einsum("kjcl,nl->nkjc", js.skin_shapedirs, betas)
    if pose_feature is not None:
      p = p + jnp.reshape(pose_feature @ js.skin_posedirs, (n, *js.skin_template.shape))
    from_vertices = jnp.einsum("njab,nkjb->nka", g_rot, p) + jnp.einsum(
      "kj,nja->nka", js.skin_mass, skin_t
    )
    from_vertices = (
      from_vertices + (js.translation_weight - js.from_joints.sum(-1))[:, None] * transl[:, None]
    )
    return jnp.einsum("kj,nja->nka", js.from_joints, joints) + from_vertices

  def _prepare(self, betas, body_pose, global_orient, transl, pose_format, rot_shape):
    """Validates shapes, pads betas and broadcasts every argument to one batch shape."""
    body_pose = jnp.asarray(body_pose)
    global_orient = jnp.asarray(global_orient)
    betas = jnp.asarray(betas)
    pose_tail = (NUM_BODY_JOINTS, *rot_shape)
    for name, x, tail in (
      ("body_pose", body_pose, pose_tail),
      ("global_orient", global_orient, rot_shape),
    ):
      if x.shape[max(x.ndim - len(tail), 0) :] != tuple(tail):
        raise ValueError(
          f"{name} must have shape [..., {', '.join(map(str, tail))}] for "
          f"pose_format={pose_format!r}, got {x.shape}"
        )
    if betas.ndim < 1:
      raise ValueError(f"betas must have shape [..., B], got a scalar {betas.shape}")
    if betas.shape[-1] > self.num_betas:
      raise ValueError(
        f"betas has {betas.shape[-1]} coefficients but the model has only {self.num_betas} "
        "shape directions"
      )
    if betas.shape[-1] < self.num_betas:
      pad = [(0, 0)] * (betas.ndim - 1) + [(0, self.num_betas - betas.shape[-1])]
      betas = jnp.pad(betas, pad)
    if transl is None:
      transl = jnp.zeros((3,), self.v_template.dtype)
    transl = jnp.asarray(transl)
    if transl.ndim < 1 or transl.shape[-1] != 3:
      raise ValueError(f"transl must have shape [..., 3], got {transl.shape}")
    shapes = {
      "betas": betas.shape[:-1],
      "body_pose": body_pose.shape[: body_pose.ndim - len(pose_tail)],
      "global_orient": global_orient.shape[: global_orient.ndim - len(rot_shape)],
      "transl": transl.shape[:-1],
    }
    try:
      batch = tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
      raise ValueError(f"leading (batch) shapes do not broadcast: {shapes}") from None
    bcast = lambda x, tail: jnp.broadcast_to(x, (*batch, *tail))
    return (
      bcast(betas, (self.num_betas,)),
      bcast(body_pose, pose_tail),
      bcast(global_orient, rot_shape),
      bcast(transl, (3,)),
      batch,
    )


def _levels(parents: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
  """Joints grouped by tree depth: [(joints at depth d, index of each one's parent within
  depth d - 1)] (static, from the parent tuple)."""
  depth = [0] * len(parents)
  for i, p in enumerate(parents):
    if i > 0:
      if not 0 <= p < i:
        raise ValueError(f"parents must satisfy 0 <= parents[i] < i for i > 0, got {parents}")
      depth[i] = depth[p] + 1
  groups = [tuple(i for i in range(len(parents)) if depth[i] == d) for d in range(max(depth) + 1)]
  out = [(groups[0], ())]
  for d in range(1, len(groups)):
    out.append((groups[d], tuple(groups[d - 1].index(parents[i]) for i in groups[d])))
  return out


def forward_kinematics(
  rot_local: jnp.ndarray, rest_joints: jnp.ndarray, parents: tuple[int, ...]
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """World rotations [N, J, 3, 3] and positions [N, J, 3] of every joint frame.

  G_i = G_parent(i) [R_i | J_i - J_parent(i)], evaluated one tree level at a time (all joints
  of a depth in one batched product), which keeps the compiled graph small.

  Args:
    rot_local: [N, J, 3, 3] rotation of each joint relative to its parent.
    rest_joints: [N, J, 3] rest-pose joint positions.
    parents: static parent indices (root -1, parents[i] < i).
  """
  levels = _levels(tuple(parents))
  root = levels[0][0]
  rot, pos = rot_local[:, root], rest_joints[:, root]
  rots, poss, order = [rot], [pos], list(root)
  for joints, parent_slots in levels[1:]:
    idx, pidx = np.array(joints), np.array(parent_slots)
    parent_of = np.array([parents[i] for i in joints])
    offset = rest_joints[:, idx] - rest_joints[:, parent_of]
    p_rot, p_pos = rot[:, pidx], pos[:, pidx]
    rot = jnp.einsum("nkab,nkbc->nkac", p_rot, rot_local[:, idx])
    pos = jnp.einsum("nkab,nkb->nka", p_rot, offset) + p_pos
    rots.append(rot)
    poss.append(pos)
    order += joints
  inverse = np.argsort(np.array(order))
  return jnp.concatenate(rots, axis=1)[:, inverse], jnp.concatenate(poss, axis=1)[:, inverse]


def skin_vertices(
  weights: jnp.ndarray, g_rot: jnp.ndarray, skin_t: jnp.ndarray, v_posed: jnp.ndarray
) -> jnp.ndarray:
  """Linear blend skinning: [N, V, 3] from weights [V, J], rotations [N, J, 3, 3],
  skinning translations [N, J, 3] and rest-pose (blended) vertices [N, V, 3].

  The blended transform of each vertex is one matmul with the rotations stored column by
  column, so applying it is three fused multiply-adds (no [N, V, 3, 3] contraction).
  """
  n, j = g_rot.shape[:2]
  columns = jnp.reshape(jnp.swapaxes(g_rot, -1, -2), (n, j, 9))
  t = jnp.einsum("vj,njk->nvk", weights, jnp.concatenate([columns, skin_t], axis=-1))
  x, y, z = v_posed[..., 0:1], v_posed[..., 1:2], v_posed[..., 2:3]
  return t[..., 0:3] * x + t[..., 3:6] * y + t[..., 6:9] * z + t[..., 9:12]


def rigid_transforms(rot: jnp.ndarray, pos: jnp.ndarray) -> jnp.ndarray:
  """[..., 3, 3] rotations and [..., 3] translations -> [..., 4, 4] homogeneous transforms."""
  top = jnp.concatenate([rot, pos[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0, 0, 0, 1], rot.dtype), (*top.shape[:-2], 1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights")


def build_body_model(arrays: Mapping[str, np.ndarray], *, dtype=jnp.float32) -> BodyModel:
  """A `BodyModel` from numpy arrays in the asset schema (see `jhmr.body.io`).

  Required: v_template (V,3), f (F,3), shapedirs (V,3,NB), posedirs (V,3,207), J_regressor
  (24,V), weights (V,24); optional kintree_table (2,24) (must be SMPL's tree), joint_names (24,),
  and per joint set `joint_set.<name>.{names, from_joints, from_vertices[, valid]}`.
  Derived arrays are computed in float64 and stored as `dtype` (float64 needs x64 enabled).
  """
  missing = [k for k in REQUIRED_KEYS if k not in arrays]
  if missing:
    raise ValueError(f"body model is missing required arrays: {missing}")
  f64 = lambda k: np.asarray(arrays[k], np.float64)
  v_template, shapedirs, posedirs = f64("v_template"), f64("shapedirs"), f64("posedirs")
  j_regressor, weights = f64("J_regressor"), f64("weights")
  faces = np.asarray(arrays["f"])
  nv = v_template.shape[0]
  expect = {
    "v_template": (v_template, (nv, 3)),
    "shapedirs": (shapedirs, (nv, 3, shapedirs.shape[-1] if shapedirs.ndim == 3 else -1)),
    "posedirs": (posedirs, (nv, 3, NUM_BODY_JOINTS * 9)),
    "J_regressor": (j_regressor, (joints_lib.NUM_JOINTS, nv)),
    "weights": (weights, (nv, joints_lib.NUM_JOINTS)),
    "f": (faces, (faces.shape[0], 3)),
  }
  for key, (arr, shape) in expect.items():
    if arr.shape != shape:
      raise ValueError(f"body model array {key!r} must have shape {shape}, got {arr.shape}")
  if faces.size and (faces.min() < 0 or faces.max() >= nv):
    raise ValueError(f"faces index vertices outside [0, {nv})")
  parents = joints_lib.SMPL_PARENTS
  if "kintree_table" in arrays:
    table = np.asarray(arrays["kintree_table"]).astype(np.int64)
    got = tuple(int(p) if p < 2**31 else -1 for p in table[0])
    got = (-1, *got[1:])
    if got != parents:
      raise ValueError(f"kintree_table parents {got} differ from the SMPL tree {parents}")
  names = joints_lib.SMPL_JOINT_NAMES
  if "joint_names" in arrays:
    names = tuple(str(n) for n in np.asarray(arrays["joint_names"]))
    if len(names) != joints_lib.NUM_JOINTS:
      raise ValueError(f"joint_names must have 24 entries, got {len(names)}")
  has_posedirs = bool(np.any(posedirs))
  posedirs_model = posedirs if has_posedirs else None

  joint_sets = {}
  for set_name in joints_lib.JOINT_SET_NAMES[1:]:
    prefix = f"joint_set.{set_name}."
    keys = [k for k in arrays if k.startswith(prefix)]
    if not keys:
      continue
    for part in ("names", "from_joints", "from_vertices"):
      if prefix + part not in arrays:
        raise ValueError(f"joint set {set_name!r} is missing {prefix + part}")
    joint_sets[set_name] = joints_lib.make_joint_set(
      np.asarray(arrays[prefix + "names"]),
      arrays[prefix + "from_joints"],
      arrays[prefix + "from_vertices"],
      valid=arrays.get(prefix + "valid"),
      v_template=v_template,
      shapedirs=shapedirs,
      posedirs=posedirs_model,
      weights=weights,
      dtype=dtype,
    )
  cast = lambda x: jnp.asarray(x, dtype)
  return BodyModel(
    v_template=cast(v_template),
    shapedirs=cast(shapedirs),
    posedirs=None if not has_posedirs else cast(posedirs.reshape(nv * 3, -1).T),
    J_regressor=cast(j_regressor),
    J_template=cast(j_regressor @ v_template),
    J_shapedirs=cast(np.einsum("jv,vcl->jcl", j_regressor, shapedirs)),
    weights=cast(weights),
    faces=jnp.asarray(faces, jnp.int32),
    joint_sets=joint_sets,
    parents=parents,
    joint_names_smpl=names,
  )
