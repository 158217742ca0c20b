"""Tests for jhmr.data.poses (procedural poses) and jhmr.data.crops."""

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.data import crops, poses


def test_procedural_poses_respect_the_joint_limits():
  global_orient, body_pose = jax.tree.map(
    np.asarray, jax.jit(poses.procedural_pose, static_argnums=1)(jax.random.key(0), (256,))
  )
  assert body_pose.shape == (256, 23, 3) and global_orient.shape == (256, 3)
  limits = poses.LIMITS[1:]
  for j in range(23):
    (lo_y, hi_y) = limits[j, 1]
    if lo_y <= -90 or hi_y >= 90:
      continue  # scipy's XYZ decomposition is unique only for |y| < 90 (shoulders, elbows)
    angles = Rotation.from_rotvec(body_pose[:, j]).as_euler("XYZ", degrees=True)
    assert np.all(angles >= limits[j, :, 0] - 1e-2) and np.all(angles <= limits[j, :, 1] + 1e-2), j
  # Knees only bend backwards (+x), by up to 130 degrees, and cover most of that range.
  knee = Rotation.from_rotvec(body_pose[:, 3]).as_euler("XYZ", degrees=True)[:, 0]
  assert knee.min() >= -1e-2 and knee.max() <= 130.01 and knee.max() - knee.min() > 100
  # The root is upright up to the tilt: its up axis stays within ~15 degrees of +Y.
  up = Rotation.from_rotvec(global_orient).apply([0.0, 1.0, 0.0])
  assert np.degrees(np.arccos(np.clip(up[:, 1], -1, 1))).max() < 15
  again = jax.jit(poses.procedural_pose, static_argnums=1)(jax.random.key(0), (256,))[1]
  np.testing.assert_array_equal(np.asarray(again), body_pose)


def test_crop_maps_image_points_and_pixels_alike():
  image = np.zeros((60, 80, 3), np.uint8)
  image[20:23, 50:53] = 255  # a dot centred at (51.5, 21.5)
  kp = np.array([[10.0, 10.0], [70.0, 40.0], [51.5, 21.5]])
  center, scale = crops.bbox_from_keypoints(kp, np.array([1.0, 1.0, 0.0]), expand=1.2)
  np.testing.assert_allclose(center, [40, 25])
  assert scale == pytest.approx(72.0)
  for rotation in (0.0, 30.0):
    crop = crops.crop_image(image, center, scale, 64, rotation)
    y, x = np.unravel_index(np.argmax(crop[..., 0]), crop.shape[:2])
    expected = crops.crop_points(kp[2], center, scale, 64, rotation)
    np.testing.assert_allclose([x + 0.5, y + 0.5], expected, atol=1.0)
  with pytest.raises(ValueError, match="no confident keypoint"):
    crops.bbox_from_keypoints(kp, np.zeros(3))
  jpeg = crops.encode_image(image, "jpeg")
  assert jpeg[:2] == b"\xff\xd8" and crops.encode_image(image, "png")[:4] == b"\x89PNG"
