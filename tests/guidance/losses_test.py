"""Guidance losses against direct numpy computations of the official formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.geometry import rotations
from jhmr.guidance.losses import (
  GuidanceLoss,
  KeypointLoss,
  MultiviewLoss,
  TemporalLoss,
  gmof,
)


def _random_6d(key, b):
  aa = 0.4 * jax.random.normal(key, (b, 24, 3))
  return jnp.reshape(rotations.matrix_to_rot6d(rotations.axis_angle_to_matrix(aa)), (b, 144))


def test_gmof():
  r = np.array([0.0, 1.0, 100.0, 1e4])
  np.testing.assert_allclose(gmof(r, 100.0), 1e4 * r**2 / (1e4 + r**2), rtol=1e-6)


def test_keypoint_loss_matches_formula(tiny_body):
  b = 3
  x0 = _random_6d(jax.random.key(0), b)
  betas = 0.3 * jax.random.normal(jax.random.key(1), (b, 4))
  cam = jnp.array([[0.1, 0.2, 18.0], [0.0, 0.0, 25.0], [-0.2, 0.1, 15.0]])
  kp2d = 300 + 400 * jax.random.uniform(jax.random.key(2), (b, 25, 2))
  conf = jax.random.uniform(jax.random.key(3), (b, 25))
  focal = jnp.full((b, 2), 5000.0)
  center = jnp.array([[500.0, 400.0]] * b)
  size = jnp.array([[1000.0, 800.0]] * b)
  loss = KeypointLoss()
  got = jax.jit(loss)(tiny_body, x0, betas, cam, kp2d, conf, focal, center, size)
  pose = rotations.rot6d_to_matrix(jnp.reshape(x0, (b, 24, 6)))
  joints = tiny_body(betas, pose[:, 1:], pose[:, 0], pose_format="rotmat", joint_set="openpose25")
  p = np.asarray(joints.keypoints, np.float64) + np.asarray(cam)[:, None]
  uv = 5000.0 * p[..., :2] / p[..., 2:] + np.asarray(center)[:, None]
  r = uv - np.asarray(kp2d)
  rho = 1e4 * r**2 / (1e4 + r**2)
  want = ((1000.0 / 1000.0) ** 2 * np.asarray(conf)[..., None] ** 2 * rho).sum((1, 2))
  np.testing.assert_allclose(got, want, rtol=2e-4)


def test_multiview_loss_matches_formula():
  x0 = _random_6d(jax.random.key(4), 5)
  group = jnp.array([0, 1, 0, 0, 1])
  got = MultiviewLoss()(x0, group)
  body = np.asarray(x0).reshape(5, 24, 6)[:, 1:].reshape(5, -1)
  want = np.zeros(5)
  for g in (0, 1):
    rows = np.flatnonzero(np.asarray(group) == g)
    want[rows] = 300.0**2 * ((body[rows] - body[rows].mean(0)) ** 2).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # Global orientation does not enter.
  moved = x0.at[:, :6].add(0.3)
  np.testing.assert_allclose(MultiviewLoss()(moved, group), got, rtol=1e-6)


def test_temporal_loss_respects_sequences():
  x0 = jax.random.normal(jax.random.key(5), (5, 144))
  group = jnp.array([0, 0, 0, 1, 1])
  got = np.asarray(TemporalLoss()(x0, group))
  x = np.asarray(x0)
  want = [
    ((x[1] - x[0]) ** 2).sum(),
    ((x[2] - x[1]) ** 2).sum(),
    0.0,
    ((x[4] - x[3]) ** 2).sum(),
    0,
  ]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_combination_and_mask(tiny_body):
  b = 4
  x0 = _random_6d(jax.random.key(6), b)
  data = {
    "body_model": tiny_body,
    "betas": jnp.zeros((b, 4)),
    "keypoints_2d": jnp.full((b, 25, 2), 500.0),
    "confidence": jnp.ones((b, 25)),
    "focal_length": jnp.full((b, 2), 5000.0),
    "camera_center": jnp.full((b, 2), 500.0),
    "image_size": jnp.full((b, 2), 1000.0),
    "group": jnp.array([0, 0, 1, 1]),
  }
  cam = jnp.tile(jnp.array([[0.0, 0.0, 20.0]]), (b, 1))
  video = GuidanceLoss(keypoint_weight=0.003, temporal_weight=30.0)
  total, raw = jax.jit(video)(x0, cam, data)
  np.testing.assert_allclose(total, 0.003 * raw + 30.0 * TemporalLoss()(x0, data["group"]), 1e-5)
  active = jnp.array([1.0, 0.0, 1.0, 0.0])
  masked, _ = jax.jit(video)(x0, cam, data, active)
  np.testing.assert_allclose(masked, total - 0.003 * raw * (1 - active), rtol=1e-5)
  mv = GuidanceLoss(keypoint_weight=0.0, multiview_weight=0.005)
  total, raw = mv(x0, cam, data)
  assert not mv.uses_keypoints and float(jnp.abs(raw).sum()) == 0.0
  np.testing.assert_allclose(total, 0.005 * MultiviewLoss()(x0, data["group"]), rtol=1e-6)
