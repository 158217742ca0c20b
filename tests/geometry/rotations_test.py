"""Rotation conversions: against scipy (float64), round trips, and gradients at 0 and near pi."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.transform import Rotation

from jhmr.geometry import rotations as rot

_FUNCS = {
  "axis_angle_to_matrix": (rot.axis_angle_to_matrix, 3),
  "axis_angle_to_quaternion": (rot.axis_angle_to_quaternion, 3),
  "matrix_to_axis_angle": (lambda v: rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(v)), 3),
  "matrix_to_quaternion": (lambda v: rot.matrix_to_quaternion(rot.axis_angle_to_matrix(v)), 3),
  "quaternion_to_axis_angle": (
    lambda v: rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(v)),
    3,
  ),
  "rot6d_to_matrix": (
    lambda v: rot.rot6d_to_matrix(rot.matrix_to_rot6d(rot.axis_angle_to_matrix(v))),
    3,
  ),
}

_vec3 = hnp.arrays(
  np.float64, (3,), elements=st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False)
)


class _JittedRotations:
  """`rot` with every function jitted (eager dispatch is slow on a loaded machine)."""

  def __getattr__(self, name):
    return jax.jit(getattr(rot, name))


def _random_axis_angle(rng, n, max_angle=np.pi - 1e-3):
  axis = rng.normal(size=(n, 3))
  axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
  return axis * rng.uniform(0, max_angle, size=(n, 1))


def _special_axis_angles():
  """Identity, tiny angles, and angles right below a half turn."""
  axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
  return np.stack(
    [
      np.zeros(3),
      1e-9 * axis,
      1e-4 * axis,
      1e-2 * axis,
      (np.pi - 1e-6) * axis,
      np.pi * np.eye(3)[0],
    ]
  )


def test_axis_angle_to_matrix_matches_scipy():
  with jax.enable_x64(True):
    aa = np.concatenate([_random_axis_angle(np.random.default_rng(0), 64), _special_axis_angles()])
    got = np.asarray(rot.axis_angle_to_matrix(jnp.asarray(aa)))
    np.testing.assert_allclose(got, Rotation.from_rotvec(aa).as_matrix(), atol=1e-13)


def test_quaternion_conversions_match_scipy():
  with jax.enable_x64(True):
    aa = np.concatenate([_random_axis_angle(np.random.default_rng(1), 64), _special_axis_angles()])
    want = Rotation.from_rotvec(aa).as_quat()[:, [3, 0, 1, 2]]  # scipy is xyzw
    want *= np.where(want[:, :1] < 0, -1.0, 1.0)
    got = np.asarray(rot.axis_angle_to_quaternion(jnp.asarray(aa)))
    np.testing.assert_allclose(got, want, atol=1e-13)
    mats = Rotation.from_rotvec(aa).as_matrix()
    got_q = np.asarray(rot.matrix_to_quaternion(jnp.asarray(mats)))
    # At exactly pi the sign of a quaternion with w=0 is arbitrary: compare up to sign.
    sign = np.sign(np.sum(got_q * want, axis=-1, keepdims=True))
    np.testing.assert_allclose(got_q * sign, want, atol=1e-12)
    np.testing.assert_allclose(
      np.asarray(rot.quaternion_to_matrix(jnp.asarray(want))), mats, atol=1e-13
    )


def test_matrix_to_axis_angle_matches_scipy_including_half_turns():
  with jax.enable_x64(True):
    aa = np.concatenate([_random_axis_angle(np.random.default_rng(2), 64), _special_axis_angles()])
    got = np.asarray(rot.matrix_to_axis_angle(jnp.asarray(Rotation.from_rotvec(aa).as_matrix())))
    np.testing.assert_allclose(got[:-1], aa[:-1], atol=1e-9)
    # A half turn about x is +pi or -pi about x.
    np.testing.assert_allclose(np.abs(got[-1]), [np.pi, 0, 0], atol=1e-9)


def test_identity_is_exact_in_float32():
  rot = _JittedRotations()
  zero = jnp.zeros((2, 3), jnp.float32)
  np.testing.assert_array_equal(
    rot.axis_angle_to_matrix(zero), np.broadcast_to(np.eye(3), (2, 3, 3))
  )
  np.testing.assert_array_equal(rot.matrix_to_axis_angle(jnp.eye(3)), np.zeros(3))
  np.testing.assert_array_equal(rot.axis_angle_to_quaternion(zero), [[1, 0, 0, 0]] * 2)
  np.testing.assert_array_equal(
    rot.quaternion_to_axis_angle(jnp.array([1.0, 0, 0, 0])), np.zeros(3)
  )
  np.testing.assert_array_equal(rot.rot6d_to_matrix(jnp.array([1.0, 0, 0, 0, 1, 0])), np.eye(3))


def _jacobians(points):
  """{name: [P, ...out, 3] reverse-mode Jacobian} of every function in `_FUNCS` (one compile)."""
  return jax.jit(lambda x: {n: jax.vmap(jax.jacrev(f))(x) for n, (f, _) in _FUNCS.items()})(points)


def test_gradients_finite_at_identity_and_near_pi():
  points = jnp.asarray(_special_axis_angles()[:-1], jnp.float32)
  for name, jac in _jacobians(points).items():
    assert np.all(np.isfinite(np.asarray(jac))), name


def test_gradients_match_finite_differences_x64():
  """Reverse-mode Jacobians vs central differences (x64), away from and close to 0 and pi."""
  with jax.enable_x64(True):
    points = np.stack(
      [
        [0.2, -0.4, 0.7],
        1e-5 * np.array([0.3, 0.1, -0.2]),
        (np.pi - 1e-2) * np.array([0.6, 0.0, 0.8]),
      ]
    )
    jacs = _jacobians(jnp.asarray(points))
    eps = 1e-6
    steps = eps * np.eye(3)
    shifted = jnp.asarray(np.concatenate([points[:, None] + steps, points[:, None] - steps]))
    outs = jax.jit(lambda x: {n: jax.vmap(jax.vmap(f))(x) for n, (f, _) in _FUNCS.items()})(shifted)
    for name, jac in jacs.items():
      out = np.asarray(outs[name])
      fd = (out[: len(points)] - out[len(points) :]) / (2 * eps)  # [P, 3(input), ...]
      np.testing.assert_allclose(np.moveaxis(fd, 1, -1), np.asarray(jac), atol=1e-7, err_msg=name)


def test_round_trip_jacobian_is_identity_at_zero_and_near_pi():
  """d/dv matrix_to_axis_angle(axis_angle_to_matrix(v)) = I, including v = 0 and |v| = pi - 1e-6."""
  with jax.enable_x64(True):
    f = lambda v: rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(v))
    points = _special_axis_angles()[:-1]
    jacs = np.asarray(jax.jit(jax.vmap(jax.jacrev(f)))(jnp.asarray(points)))
    for v, jac in zip(points, jacs, strict=True):
      np.testing.assert_allclose(jac, np.eye(3), atol=1e-4 if np.linalg.norm(v) > 3 else 1e-9)


def test_axis_angle_to_matrix_jacobian_at_zero_is_the_generators():
  jac = np.asarray(jax.jit(jax.jacrev(rot.axis_angle_to_matrix))(jnp.zeros(3)))  # [3, 3, 3(in)]
  for i in range(3):
    x, y, z = np.eye(3)[i]
    skew = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    np.testing.assert_allclose(jac[..., i], skew, atol=1e-7)


@jax.jit
def _all_round_trips(aa):
  mat = rot.axis_angle_to_matrix(aa)
  return (
    mat,
    rot.matrix_to_axis_angle(mat),
    rot.quaternion_to_axis_angle(rot.axis_angle_to_quaternion(aa)),
    rot.quaternion_to_matrix(rot.matrix_to_quaternion(mat)),
    rot.rot6d_to_matrix(rot.matrix_to_rot6d(mat)),
  )


@settings(max_examples=50, deadline=None)
@given(_vec3)
def test_round_trips_hypothesis(v):
  with jax.enable_x64(True):
    angle = np.linalg.norm(v)
    if angle > np.pi - 1e-6:
      v = v / angle * (np.pi - 1e-6)
    mat, aa_back, aa_q, mat_q, mat_6d = (np.asarray(x) for x in _all_round_trips(jnp.asarray(v)))
    np.testing.assert_allclose(mat @ mat.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(mat), 1.0, atol=1e-12)
    np.testing.assert_allclose(aa_back, v, atol=5e-8)
    np.testing.assert_allclose(aa_q, v, atol=1e-10)
    np.testing.assert_allclose(mat_q, mat, atol=1e-12)
    np.testing.assert_allclose(mat_6d, mat, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, (6,), elements=st.floats(-2.0, 2.0, allow_nan=False)))
def test_rot6d_gram_schmidt_matches_reference(x6):
  a1, a2 = x6[:3], x6[3:]
  if np.linalg.norm(a1) < 1e-2 or np.linalg.norm(np.cross(a1, a2)) < 1e-2:
    return  # degenerate input: Gram-Schmidt is ill-conditioned there by definition
  b1 = a1 / np.linalg.norm(a1)
  b2 = a2 - b1.dot(a2) * b1
  b2 /= np.linalg.norm(b2)
  want = np.stack([b1, b2, np.cross(b1, b2)], axis=-1)
  with jax.enable_x64(True):
    got = np.asarray(rot.rot6d_to_matrix(jnp.asarray(x6)))
    np.testing.assert_allclose(got, want, atol=1e-12)
    # Column-major layout: the first two columns, column after column.
    six = np.asarray(rot.matrix_to_rot6d(jnp.asarray(want)))
    np.testing.assert_allclose(six, want[:, :2].T.ravel(), atol=1e-15)


def test_batch_shapes_and_to_matrix():
  rng = np.random.default_rng(3)
  aa = jnp.asarray(_random_axis_angle(rng, 20).reshape(4, 5, 3), jnp.float32)
  mat = rot.axis_angle_to_matrix(aa)
  assert mat.shape == (4, 5, 3, 3)
  np.testing.assert_allclose(rot.to_matrix(aa, "axis_angle"), mat, atol=1e-6)
  np.testing.assert_allclose(rot.to_matrix(mat, "rotmat"), mat)
  np.testing.assert_allclose(rot.to_matrix(rot.matrix_to_rot6d(mat), "rot6d"), mat, atol=1e-6)
  with pytest.raises(ValueError, match="rot6d rotations must have trailing shape"):
    rot.to_matrix(aa, "rot6d")
  with pytest.raises(ValueError, match="pose_format must be one of"):
    rot.to_matrix(aa, "euler")
