"""Rotation representations: axis-angle, 3x3 matrices, 6D (ScoreHMR), unit quaternions (wxyz).

All functions take any leading batch shape and are exact and finite-gradient at the identity
and near a half turn: divisions by the angle use Taylor branches behind the "double where"
(`jnp.where` on both the input and the output of the unsafe expression), so no NaN reaches a
gradient through the branch that is not taken.

Conventions:
  * axis-angle `[..., 3]`: direction is the axis, norm the angle in radians (right-handed).
  * matrix `[..., 3, 3]` acts on column vectors: `x' = R @ x`.
  * 6D `[..., 6]`: the first two columns of R, column-major `[R00, R10, R20, R01, R11, R21]`,
    decoded by Gram-Schmidt (Zhou et al. 2019, as in ScoreHMR/ProHMR).
  * quaternion `[..., 4]`: `(w, x, y, z)`, scalar first.
"""

from __future__ import annotations

import jax.numpy as jnp

POSE_FORMATS = ("axis_angle", "rotmat", "rot6d")
"""Names accepted by `to_matrix`."""

# Below this squared angle the Taylor branches are used; their truncation error is far below
# float32 resolution there (next term ~ theta^6 / 5040 < 1e-16).
_SMALL_ANGLE_SQ = 1e-6
_NORMALIZE_EPS = 1e-12


def _skew(v: jnp.ndarray) -> jnp.ndarray:
  """Cross-product matrix `[v]_x` [..., 3, 3] of vectors [..., 3]."""
  x, y, z = v[..., 0], v[..., 1], v[..., 2]
  zero = jnp.zeros_like(x)
  rows = (
    jnp.stack([zero, -z, y], axis=-1),
    jnp.stack([z, zero, -x], axis=-1),
    jnp.stack([-y, x, zero], axis=-1),
  )
  return jnp.stack(rows, axis=-2)


def _safe_norm_sq(v: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(|v|^2, is_small, |v| with a dummy 1 where small) for [..., 3] vectors."""
  theta_sq = jnp.sum(v * v, axis=-1)
  small = theta_sq < _SMALL_ANGLE_SQ
  theta = jnp.sqrt(jnp.where(small, 1.0, theta_sq))
  return theta_sq, small, theta


def axis_angle_to_matrix(axis_angle: jnp.ndarray) -> jnp.ndarray:
  """Rodrigues' formula: axis-angle [..., 3] -> rotation matrix [..., 3, 3].

  `R = I + a [v]_x + b [v]_x^2` with `a = sin(t)/t`, `b = (1 - cos t)/t^2`, t = |v|.
  """
  theta_sq, small, theta = _safe_norm_sq(axis_angle)
  a = jnp.where(small, 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0, jnp.sin(theta) / theta)
  b = jnp.where(
    small, 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0, (1.0 - jnp.cos(theta)) / (theta * theta)
  )
  k = _skew(axis_angle)
  eye = jnp.eye(3, dtype=axis_angle.dtype)
  return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def axis_angle_to_quaternion(axis_angle: jnp.ndarray) -> jnp.ndarray:
  """Axis-angle [..., 3] -> unit quaternion [..., 4] (w, x, y, z) with w >= 0 for |v| <= pi."""
  theta_sq, small, theta = _safe_norm_sq(axis_angle)
  half = 0.5 * theta
  # sin(t/2)/t, Taylor: 1/2 - t^2/48 + t^4/3840.
  s = jnp.where(small, 0.5 - theta_sq / 48.0 + theta_sq**2 / 3840.0, jnp.sin(half) / theta)
  w = jnp.where(small, 1.0 - theta_sq / 8.0 + theta_sq**2 / 384.0, jnp.cos(half))
  return jnp.concatenate([w[..., None], s[..., None] * axis_angle], axis=-1)


def quaternion_to_axis_angle(quaternion: jnp.ndarray) -> jnp.ndarray:
  """Quaternion [..., 4] (w, x, y, z; any norm > 0) -> axis-angle [..., 3] with angle in [0, pi].

  The sign is canonicalised (w >= 0), so q and -q give the same rotation vector.
  """
  q = quaternion / jnp.linalg.norm(quaternion, axis=-1, keepdims=True)
  q = jnp.where(q[..., :1] < 0, -q, q)
  w, xyz = q[..., 0], q[..., 1:]
  n_sq = jnp.sum(xyz * xyz, axis=-1)
  small = n_sq < _SMALL_ANGLE_SQ
  n = jnp.sqrt(jnp.where(small, 1.0, n_sq))
  # angle / n = 2 atan2(n, w) / n; for small n (w ~ 1): 2/w (1 - n^2 / (3 w^2) + n^4 / (5 w^4)).
  w_safe = jnp.where(small, w, 1.0)
  r = n_sq / (w_safe * w_safe)
  taylor = 2.0 / w_safe * (1.0 - r / 3.0 + r * r / 5.0)
  factor = jnp.where(small, taylor, 2.0 * jnp.arctan2(n, w) / n)
  return factor[..., None] * xyz


def quaternion_to_matrix(quaternion: jnp.ndarray) -> jnp.ndarray:
  """Quaternion [..., 4] (w, x, y, z; normalised internally) -> rotation matrix [..., 3, 3]."""
  w, x, y, z = (quaternion[..., i] for i in range(4))
  two_s = 2.0 / jnp.sum(quaternion * quaternion, axis=-1)
  rows = (
    jnp.stack([1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w)], -1),
    jnp.stack([two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w)], -1),
    jnp.stack([two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y)], -1),
  )
  return jnp.stack(rows, axis=-2)


def _safe_sqrt_positive(x: jnp.ndarray) -> jnp.ndarray:
  """sqrt(max(x, 0)) with a zero (not infinite) gradient at and below 0."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def matrix_to_quaternion(matrix: jnp.ndarray) -> jnp.ndarray:
  """Rotation matrix [..., 3, 3] -> unit quaternion [..., 4] (w, x, y, z), w >= 0.

  Shepperd's method: the four candidate quaternions are computed from the four
  trace-like sums and the best-conditioned one (largest |component|) is selected, so the
  result is accurate for every angle including a half turn.
  """
  m = matrix
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  # 4 |q_i|^2 for i = w, x, y, z.
  q_abs = _safe_sqrt_positive(
    jnp.stack(
      [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
  )  # = 2 |q_i|
  # Candidate i (rows) is 2 |q_i| * q (up to sign); divide by 2 * 2|q_i|.
  cand = jnp.stack(
    [
      jnp.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
      jnp.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
      jnp.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
      jnp.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1),
    ],
    axis=-2,
  )
  denom = 2.0 * jnp.maximum(q_abs, 0.1)
  cand = cand / denom[..., None]
  best = jnp.argmax(q_abs, axis=-1)
  onehot = (best[..., None] == jnp.arange(4)).astype(m.dtype)
  q = jnp.sum(onehot[..., None] * cand, axis=-2)
  return jnp.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: jnp.ndarray) -> jnp.ndarray:
  """Rotation matrix [..., 3, 3] -> axis-angle [..., 3] with angle in [0, pi]."""
  return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def _normalize(v: jnp.ndarray) -> jnp.ndarray:
  """v / max(|v|, 1e-12) over the last axis (torch F.normalize semantics, safe gradient)."""
  n_sq = jnp.sum(v * v, axis=-1, keepdims=True)
  big = n_sq > _NORMALIZE_EPS**2
  n = jnp.where(big, jnp.sqrt(jnp.where(big, n_sq, 1.0)), _NORMALIZE_EPS)
  return v / n


def rot6d_to_matrix(rot6d: jnp.ndarray) -> jnp.ndarray:
  """6D [..., 6] (first two columns, column-major) -> rotation matrix [..., 3, 3].

  Gram-Schmidt: b1 = a1/|a1|, b2 = normalize(a2 - (b1.a2) b1), b3 = b1 x b2; columns b1, b2, b3.
  """
  a1, a2 = rot6d[..., 0:3], rot6d[..., 3:6]
  b1 = _normalize(a1)
  b2 = _normalize(a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1)
  b3 = jnp.cross(b1, b2)
  return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_rot6d(matrix: jnp.ndarray) -> jnp.ndarray:
  """Rotation matrix [..., 3, 3] -> 6D [..., 6]: `[R00, R10, R20, R01, R11, R21]`."""
  return jnp.concatenate([matrix[..., :, 0], matrix[..., :, 1]], axis=-1)


_TRAILING_SHAPE = {"axis_angle": (3,), "rotmat": (3, 3), "rot6d": (6,)}


def trailing_shape(pose_format: str) -> tuple[int, ...]:
  """The per-rotation trailing shape of `pose_format`: (3,), (3, 3) or (6,)."""
  if pose_format not in _TRAILING_SHAPE:
    raise ValueError(f"pose_format must be one of {POSE_FORMATS}, got {pose_format!r}")
  return _TRAILING_SHAPE[pose_format]


def to_matrix(x: jnp.ndarray, pose_format: str) -> jnp.ndarray:
  """Rotations in `pose_format` ('axis_angle' [...,3], 'rotmat' [...,3,3], 'rot6d' [...,6])
  -> matrices [..., 3, 3]."""
  shape = trailing_shape(pose_format)
  x = jnp.asarray(x)
  if tuple(x.shape[x.ndim - len(shape) :]) != shape:
    raise ValueError(
      f"{pose_format} rotations must have trailing shape {shape}, got array of shape {x.shape}"
    )
  if pose_format == "axis_angle":
    return axis_angle_to_matrix(x)
  if pose_format == "rot6d":
    return rot6d_to_matrix(x)
  return x
