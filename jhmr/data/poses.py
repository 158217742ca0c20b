"""Procedural poses needing no data (pure JAX, deterministic for a key): two sources.

* `demo_mix_poses`: a random blend of two recognisable demo poses (`DEMO_POSES`: T-pose, arms
  down, walking, squat) plus Gaussian joint noise. Structured, so a pose prior has something to
  learn; the main job's default.
* `procedural_pose`: joint angles drawn uniformly inside rough anatomical limits (below).

`procedural_pose`: each SMPL joint gets intrinsic X-Y-Z Euler angles (degrees, local rest
frame: x = body left, y = up, z = forward) drawn uniformly from `LIMITS`; right-side joints
mirror the left-side limits (y and z negated). The global orientation is a uniform yaw about
the world up axis with small pitch and roll. The poses are plausible rather than natural (no
inter-joint correlation); use CMU motion (`jhmr.data.mocap`) for natural poses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.geometry import rotations

# Left-side / central limits per SMPL joint: ((x lo, x hi), (y lo, y hi), (z lo, z hi)) degrees.
_LEFT_AND_CENTER = {
  1: ((-100, 20), (-30, 30), (-10, 40)),  # hip: flexion is -x, abduction +z (left)
  3: ((-10, 30), (-20, 20), (-15, 15)),  # spine1: forward bend +x
  4: ((0, 130), (-5, 5), (-5, 5)),  # knee bends the shank back: +x
  6: ((-10, 20), (-15, 15), (-10, 10)),
  7: ((-30, 30), (-10, 10), (-15, 15)),  # ankle
  9: ((-10, 20), (-15, 15), (-10, 10)),
  10: ((-10, 10), (-5, 5), (-5, 5)),  # toes
  12: ((-20, 30), (-30, 30), (-20, 20)),  # neck
  13: ((-10, 10), (-10, 10), (-10, 15)),  # collar
  15: ((-20, 30), (-40, 40), (-20, 20)),  # head
  16: ((-45, 45), (-90, 30), (-80, 60)),  # shoulder: arm down is -z, forward is -y (left)
  18: ((-10, 10), (-140, 0), (-10, 10)),  # elbow bends the forearm forward: -y (left)
  20: ((-40, 40), (-20, 20), (-40, 40)),  # wrist
  22: ((-15, 15), (-15, 15), (-15, 15)),  # hand
}
_RIGHT_OF = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 22: 23}


def _limits() -> np.ndarray:
  out = np.zeros((24, 3, 2))
  for j, lim in _LEFT_AND_CENTER.items():
    out[j] = lim
    if j in _RIGHT_OF:
      (xl, xh), (yl, yh), (zl, zh) = lim
      out[_RIGHT_OF[j]] = ((xl, xh), (-yh, -yl), (-zh, -zl))
  return out


LIMITS = _limits()
"""`[24, 3, 2]` (joint, Euler axis, lo/hi) limits in degrees; row 0 (the root) is unused."""


def euler_xyz_to_axis_angle(angles_deg: jnp.ndarray) -> jnp.ndarray:
  """Intrinsic X-Y-Z Euler angles `[..., 3]` in degrees -> axis-angle `[..., 3]`."""
  rad = jnp.radians(angles_deg)
  eye = jnp.eye(3, dtype=rad.dtype)
  rx, ry, rz = (rotations.axis_angle_to_matrix(rad[..., i : i + 1] * eye[i]) for i in range(3))
  return rotations.matrix_to_axis_angle(rx @ ry @ rz)


def procedural_pose(
  key: jax.Array, batch: tuple[int, ...] = (), tilt_deg: float = 10.0
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Random `(global_orient [*batch, 3], body_pose [*batch, 23, 3])` axis-angle poses.

  The root yaw (about +Y) is uniform; pitch and roll are uniform in +-`tilt_deg`.
  """
  k_pose, k_yaw, k_tilt = jax.random.split(key, 3)
  limits = jnp.asarray(LIMITS[1:], jnp.float32)
  u = jax.random.uniform(k_pose, batch + (23, 3))
  body_pose = euler_xyz_to_axis_angle(limits[..., 0] + u * (limits[..., 1] - limits[..., 0]))
  yaw = jax.random.uniform(k_yaw, batch, minval=-180.0, maxval=180.0)
  tilt = jax.random.uniform(k_tilt, batch + (2,), minval=-tilt_deg, maxval=tilt_deg)
  yaw_m = rotations.axis_angle_to_matrix(jnp.radians(yaw)[..., None] * jnp.array([0.0, 1, 0]))
  tilt_m = rotations.axis_angle_to_matrix(
    euler_xyz_to_axis_angle(jnp.stack([tilt[..., 0], jnp.zeros(batch), tilt[..., 1]], -1))
  )
  return rotations.matrix_to_axis_angle(yaw_m @ tilt_m), body_pose


# Demo poses: SMPL joint name -> axis-angle (radians) in the body frame (Y up, facing +Z, the
# body's left towards +X). Not model constants: just recognisable shapes for a picture.
DEMO_POSES = {
  "t_pose": {},
  "arms_down": {"left_shoulder": (0.0, 0.0, -1.2), "right_shoulder": (0.0, 0.0, 1.2)},
  "walking": {
    "left_hip": (-0.5, 0.0, 0.0),
    "right_hip": (0.35, 0.0, 0.0),
    "left_knee": (0.15, 0.0, 0.0),
    "right_knee": (0.7, 0.0, 0.0),
    "left_shoulder": (0.35, 0.0, -1.2),
    "right_shoulder": (-0.45, 0.0, 1.2),
    "left_elbow": (0.0, -0.3, 0.0),
    "right_elbow": (0.0, 0.5, 0.0),
  },
  "squat": {
    "left_hip": (-1.6, 0.0, -0.2),
    "right_hip": (-1.6, 0.0, 0.2),
    "left_knee": (2.1, 0.0, 0.0),
    "right_knee": (2.1, 0.0, 0.0),
    "left_ankle": (-0.4, 0.0, 0.0),
    "right_ankle": (-0.4, 0.0, 0.0),
    "spine1": (0.4, 0.0, 0.0),
    "left_shoulder": (0.0, -1.4, 0.0),  # arms stretched forward
    "right_shoulder": (0.0, 1.4, 0.0),
  },
}


def pose_parameters(names: tuple[str, ...], joint_names: tuple[str, ...], yaw: float = 0.0):
  """Demo pose names -> (global_orient [P, 3], body_pose [P, 23, 3]) axis-angle arrays.

  `yaw` (radians) turns the body about its vertical axis (0: facing the camera).
  """
  body_pose = np.zeros((len(names), len(joint_names) - 1, 3), np.float32)
  for p, name in enumerate(names):
    if name not in DEMO_POSES:
      raise ValueError(f"unknown demo pose {name!r}; valid: {sorted(DEMO_POSES)}")
    for joint, aa in DEMO_POSES[name].items():
      body_pose[p, joint_names.index(joint) - 1] = aa
  global_orient = np.tile(np.array([0.0, yaw, 0.0], np.float32), (len(names), 1))
  return global_orient, body_pose


def demo_mix_poses(
  key: jax.Array, n: int, joint_names: tuple[str, ...], joint_std: float = 0.25
) -> jnp.ndarray:
  """`[n, 23, 3]` body poses: w * A + (1 - w) * B of two random `DEMO_POSES`, w ~ U(0, 1), plus
  N(0, joint_std^2) radians on every axis-angle component. `joint_names`: the model's 'smpl24'."""
  names = tuple(sorted(DEMO_POSES))
  _, bank = pose_parameters(names, joint_names)
  k_pick, k_mix, k_noise = jax.random.split(key, 3)
  pick = jax.random.randint(k_pick, (n, 2), 0, len(names))
  mix = jax.random.uniform(k_mix, (n, 1, 1))
  pose = mix * bank[pick[:, 0]] + (1 - mix) * bank[pick[:, 1]]
  return pose + joint_std * jax.random.normal(k_noise, pose.shape)
