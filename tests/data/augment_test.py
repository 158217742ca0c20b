"""Tests for jhmr.data.augment."""

import numpy as np
from scipy.spatial.transform import Rotation

from jhmr.data import augment, mocap
from jhmr.data.cmu_mocap import dummy_data_generator as dummy


def _dot_image(points, size=64):
  image = np.zeros((size, size, 3), np.uint8)
  for x, y in points:
    image[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 255
  return image


def _brightest(image):
  y, x = np.unravel_index(np.argmax(image[..., 0].astype(np.float32)), image.shape[:2])
  return np.array([x + 0.5, y + 0.5])


def test_keypoint_noise_statistics():
  kp = np.zeros((2000, 3), np.float32)
  kp[:, 0], kp[:, 1], kp[:, 2] = np.tile([0, 100], 1000), np.tile([0, 50], 1000), 1
  out = augment.keypoint_noise(sigma=0.02, outlier_prob=0, missing_prob=0.1)(
    {"keypoints2d": kp}, np.random.default_rng(0)
  )["keypoints2d"]
  kept = out[:, 2] > 0
  assert abs(kept.mean() - 0.9) < 0.03
  np.testing.assert_allclose(np.std(out[kept, :2] - kp[kept, :2]), 0.02 * 100, rtol=0.1)
  same = augment.keypoint_noise(0, 0, 0, 0)({"keypoints2d": kp}, np.random.default_rng(0))
  np.testing.assert_array_equal(same["keypoints2d"], kp)


def test_occluders_paste_one_bounded_rectangle():
  image = np.zeros((100, 100, 3), np.uint8)
  rng = np.random.default_rng(1)
  for _ in range(20):
    out = augment.occluders(prob=1.0)({"image": image}, rng)["image"]
    changed = np.argwhere(out.any(-1))
    if len(changed):
      (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
      assert (y1 - y0 + 1) * (x1 - x0 + 1) <= 0.3 * 100 * 100 + 1
  assert augment.occluders(prob=0.0)({"image": image}, rng)["image"] is image


def test_crop_jitter_keeps_keypoints_on_the_image_content():
  points = np.array([[20.5, 30.5], [44.5, 12.5]])
  example = {
    "image": _dot_image(points[:1]),
    "keypoints2d": np.array([[*points[0], 1.0], [*points[1], 1.0]], np.float32),
    "global_orient": np.array([0.1, 0.2, 0.3], np.float32),
  }
  jitter = augment.crop_jitter(rotation_prob=1.0)
  for seed in range(5):
    out = jitter(example, np.random.default_rng(seed))
    np.testing.assert_allclose(_brightest(out["image"]), out["keypoints2d"][0, :2], atol=1.5)
  identity = augment.crop_jitter(scale_factor=0.0, rotation_prob=0.0)(
    example, np.random.default_rng(0)
  )
  np.testing.assert_allclose(identity["keypoints2d"], example["keypoints2d"], atol=1e-4)
  np.testing.assert_array_equal(identity["global_orient"], example["global_orient"])


def test_crop_jitter_rotates_the_orientation_like_the_image():
  # The camera-frame x axis of the body, seen on screen, turns like a keypoint pair does.
  kp = np.array([[32.0, 32.0, 1.0], [42.0, 32.0, 1.0]], np.float32)
  example = {"image": np.zeros((64, 64, 3), np.uint8), "keypoints2d": kp}
  example["global_orient"] = np.zeros(3, np.float32)
  for seed in range(3):
    out = augment.crop_jitter(rotation_prob=1.0)(example, np.random.default_rng(seed))
    arm = Rotation.from_rotvec(out["global_orient"]).apply([1.0, 0.0, 0.0])
    moved = out["keypoints2d"][1, :2] - out["keypoints2d"][0, :2]
    assert abs(arm[2]) < 1e-6
    np.testing.assert_allclose(
      np.arctan2(arm[1], arm[0]), np.arctan2(moved[1], moved[0]), atol=1e-4
    )


def _fk(global_orient, body_pose):
  aa = np.concatenate([global_orient[None], body_pose])
  local = Rotation.from_rotvec(aa).as_matrix()
  joints = dummy.SKELETON.rest_joints
  world, pos = [local[0]], [joints[0]]
  for j in range(1, 24):
    p = mocap.SMPL_PARENTS[j]
    world.append(world[p] @ local[j])
    pos.append(pos[p] + world[p] @ (joints[j] - joints[p]))
  return np.array(pos)


def test_flip_mirrors_the_body_and_is_an_involution():
  rng = np.random.default_rng(3)
  example = {
    "image": rng.integers(0, 255, (8, 10, 3)).astype(np.uint8),
    "keypoints2d": np.array([[1, 2, 1], [3, 4, 1], [5, 6, 0]], np.float32),
    "global_orient": rng.normal(size=3).astype(np.float32),
    "body_pose": (0.5 * rng.normal(size=(23, 3))).astype(np.float32),
  }
  flipper = augment.flip(prob=1.0, keypoint_pairs=[(0, 1)])
  out = flipper(example, rng)
  np.testing.assert_array_equal(out["image"], example["image"][:, ::-1])
  np.testing.assert_allclose(out["keypoints2d"], [[7, 4, 1], [9, 2, 1], [0, 0, 0]])
  # The dummy skeleton is left/right symmetric: FK of the flipped pose is the mirrored FK.
  mirror = _fk(example["global_orient"], example["body_pose"]) - dummy.SKELETON.rest_joints[0]
  mirror[:, 0] *= -1
  perm = np.arange(24)
  for a, b in augment.SMPL_FLIP_PAIRS:
    perm[[a, b]] = [b, a]
  flipped = _fk(out["global_orient"], out["body_pose"]) - dummy.SKELETON.rest_joints[0]
  np.testing.assert_allclose(flipped, mirror[perm], atol=1e-5)
  back = flipper(out, rng)
  for k in ("image", "global_orient", "body_pose"):
    np.testing.assert_allclose(back[k], example[k], atol=1e-6)


def test_joint_heatmaps_peak_at_the_keypoints():
  kp = np.array([[100.0, 60.0, 1.0], [30.0, 200.0, 1.0], [5.0, 5.0, 0.0]])
  maps = augment.joint_heatmaps(kp, size=64, sigma=1.5, image_size=256)
  assert maps.shape == (64, 64, 3) and maps.dtype == np.float32
  for k in range(2):
    y, x = np.unravel_index(np.argmax(maps[..., k]), (64, 64))
    np.testing.assert_allclose([x + 0.5, y + 0.5], kp[k, :2] / 4, atol=0.5)
    assert maps[..., k].max() > 0.8  # a keypoint on a pixel corner: exp(-2 * 0.5**2 / (2 * 1.5**2))
  assert maps[..., 2].max() == 0
  out = augment.add_heatmaps(size=32)({"image": np.zeros((256, 256, 3)), "keypoints2d": kp}, None)
  assert out["heatmaps"].shape == (32, 32, 3)


def test_color_jitter_scales_channels():
  image = np.full((4, 4, 3), 100, np.uint8)
  out = augment.color_jitter()({"image": image}, np.random.default_rng(4))["image"]
  gains = out[0, 0] / 100
  assert np.all((gains >= 0.79) & (gains <= 1.21)) and len(set(out.reshape(-1, 3)[0])) > 1
