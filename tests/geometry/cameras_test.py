"""Cameras: projection against a numpy pinhole, ScoreHMR's weak-perspective conversions."""

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.geometry import cameras


def _np_project(points, t, f, c, rot):
  cam = points @ rot.T + t
  k = np.array([[f[0], 0, c[0]], [0, f[1], c[1]], [0, 0, 1.0]])
  hom = cam @ k.T
  return hom[:, :2] / hom[:, 2:]


def test_perspective_projection_matches_numpy_pinhole():
  rng = np.random.default_rng(0)
  b, n = 4, 17
  pts = rng.normal(size=(b, n, 3)).astype(np.float32) * 0.5
  t = np.concatenate([rng.normal(size=(b, 2)) * 0.2, rng.uniform(4, 8, (b, 1))], -1)
  f = rng.uniform(400, 5000, (b, 2))
  c = rng.uniform(50, 300, (b, 2))
  rot = Rotation.random(b, random_state=1).as_matrix()
  got = jax.jit(cameras.perspective_projection)(pts, t, f, c, rot)
  want = np.stack([_np_project(pts[i], t[i], f[i], c[i], rot[i]) for i in range(b)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  # Scalar focal length and no rotation == identity rotation with (f, f).
  got2 = cameras.perspective_projection(pts, t, f[:, 0], c)
  want2 = np.stack([_np_project(pts[i], t[i], f[i, [0, 0]], c[i], np.eye(3)) for i in range(b)])
  np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-3)


def test_perspective_projection_rejects_bad_shapes():
  with pytest.raises(ValueError, match="points"):
    cameras.perspective_projection(np.zeros((5, 2)), np.zeros(3), 1.0, np.zeros(2))
  with pytest.raises(ValueError, match="camera_center"):
    cameras.perspective_projection(np.zeros((5, 3)), np.zeros(3), 1.0, np.zeros(3))


def test_weak_perspective_translation_formula_and_inverse():
  cam = np.array([[0.9, 0.1, -0.2], [1.2, 0.0, 0.3]], np.float32)
  t = cameras.weak_perspective_to_translation(cam, 5000.0, 224.0)
  np.testing.assert_allclose(t[:, :2], cam[:, 1:])
  np.testing.assert_allclose(t[:, 2], 2 * 5000.0 / (224.0 * cam[:, 0]), rtol=1e-6)
  back = cameras.translation_to_weak_perspective(t, 5000.0, 224.0)
  np.testing.assert_allclose(back, cam, rtol=1e-5)


def test_weak_perspective_matches_projection_at_body_plane():
  """A body-frame point with Z = 0 projects to the crop's weak-perspective location exactly."""
  rng = np.random.default_rng(3)
  s, tx, ty = 0.8, 0.05, -0.1
  size, f = 256.0, 5000.0
  pts = np.concatenate([rng.uniform(-0.6, 0.6, (30, 2)), np.zeros((30, 1))], -1)
  t = cameras.weak_perspective_to_translation(np.array([s, tx, ty]), f, size)
  uv = cameras.perspective_projection(pts, t, f, np.array([size / 2, size / 2]))
  weak = size / 2 + s * (pts[:, :2] + [tx, ty]) * size / 2
  np.testing.assert_allclose(uv, weak, rtol=1e-5, atol=1e-2)


def test_crop_to_full_lands_on_bbox():
  """Full-image projection equals the crop's weak-perspective placed at the bbox (Z = 0 points)."""
  rng = np.random.default_rng(4)
  w, h = 640.0, 480.0
  bbox_center = np.array([400.0, 180.0])
  b = 200.0
  cam = np.array([0.7, -0.1, 0.2])
  pts = np.concatenate([rng.uniform(-0.8, 0.8, (25, 2)), np.zeros((25, 1))], -1)
  t = cameras.crop_to_full_translation(cam, bbox_center, b, np.array([w, h]), 5000.0)
  uv = cameras.perspective_projection(pts, t, 5000.0, np.array([w / 2, h / 2]))
  want = bbox_center + cam[0] * (pts[:, :2] + cam[1:]) * b / 2
  np.testing.assert_allclose(uv, want, rtol=1e-5, atol=1e-2)
  # At the image centre with bbox = crop size, it reduces to weak_perspective_to_translation.
  t_centre = cameras.crop_to_full_translation(cam, np.array([w / 2, h / 2]), b, [w, h], 5000.0)
  np.testing.assert_allclose(t_centre, cameras.weak_perspective_to_translation(cam, 5000.0, b))


def test_intrinsics_matrix():
  k = cameras.intrinsics_matrix(np.array([[100.0, 120.0]]), np.array([[32.0, 24.0]]))
  np.testing.assert_allclose(k[0], [[100, 0, 32], [0, 120, 24], [0, 0, 1]])
