"""Tests for jhmr.data.observations: cameras, keypoint noise model, pose corruption.

All JAX calls are jitted and all test-side maths is numpy: eager JAX ops each compile a kernel,
which is slow on the shared 2-core machine. Projections are checked against a numpy pinhole.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.data import observations as obs

TARGET = np.array([0.1, 0.9, -0.2], np.float32)
STILL = obs.CameraSpec(roll_std=0.0, aim_std=0.0)

cameras = jax.jit(jax.vmap(obs.random_camera, in_axes=(0, None, None)))
rig_of = jax.jit(obs.multiview_rig, static_argnames="num_views")
keypoints = jax.jit(obs.synthesize_keypoints, static_argnames=("swap_pairs", "temporal"))
corrupt = jax.jit(obs.corrupt_pose)
to_camera_frame = jax.jit(obs.to_camera_frame)


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _project(cam, points):
  """numpy pinhole: `[..., N, 3]` world points -> pixels (the oracle for `Camera.project`)."""
  cam = _np(cam)
  x = np.einsum("...ij,...nj->...ni", cam.rotation, points) + cam.translation[..., None, :]
  return (
    x[..., :2] / x[..., 2:] * cam.focal_length[..., None, :] + cam.principal_point[..., None, :]
  )


def _position(cam):
  cam = _np(cam)
  return -np.einsum("...ji,...j->...i", cam.rotation, cam.translation)


@functools.cache
def _vmapped(pairs):
  fn = lambda k, p, c, n: obs.synthesize_keypoints(k, p, c, n, pairs)
  return jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))


def _many(noise, points, cam, keys, pairs=None):
  """`synthesize_keypoints` once per key (one compilation for every noise setting)."""
  return _np(_vmapped(pairs)(keys, points, cam, noise))


def _body_points(seed, n=17):
  return (TARGET + 0.3 * np.random.default_rng(seed).normal(size=(n, 3))).astype(np.float32)


KEYS = jax.random.split(jax.random.key(7), 300)


DEFAULT_SPEC = obs.CameraSpec()


def camera(seed: int, spec=DEFAULT_SPEC):
  """One random camera (the first of a vmapped batch of 64: one compilation for all tests)."""
  cams = cameras(jax.random.split(jax.random.key(seed), 64), TARGET, spec)
  return jax.tree.map(lambda x: np.asarray(x[0]), cams)


def test_look_at_puts_the_target_at_the_principal_point_and_up_up():
  rotation, translation = _np(jax.jit(obs.look_at)(np.array([1.0, 2.0, 5.0]), TARGET))
  cam = obs.Camera(rotation, translation, np.array([500.0, 500.0]), np.array([128.0, 96.0]))
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
  assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(_position(cam), [1, 2, 5], atol=1e-5)
  projected = _np(jax.jit(lambda c, p: c.project(p))(cam, np.stack([TARGET, TARGET + [0, 0.5, 0]])))
  np.testing.assert_allclose(projected[0], [128, 96], atol=1e-3)
  np.testing.assert_allclose(
    projected, _project(cam, np.stack([TARGET, TARGET + [0, 0.5, 0]])), atol=1e-3
  )
  assert projected[1, 1] < projected[0, 1]  # world up is image up (smaller v)


def test_random_cameras_follow_their_spec_and_key():
  spec = obs.CameraSpec(distance_range=(3.0, 4.0), image_size=(200, 300), roll_std=0.0, aim_std=0.0)
  cams = _np(cameras(jax.random.split(jax.random.key(0), 64), TARGET, spec))
  distance = np.linalg.norm(_position(cams) - TARGET, axis=-1)
  assert np.all((distance >= 3.0) & (distance <= 4.0))
  np.testing.assert_allclose(
    _project(cams, TARGET[None])[:, 0], np.tile([150, 100], (64, 1)), atol=0.05
  )
  focal = cams.focal_length[:, 0]
  assert np.all((focal >= 300) & (focal <= 600)) and cams.image_size == (200, 300)
  assert (
    np.ptp(np.degrees(np.arctan2(*(_position(cams) - TARGET)[:, [0, 2]].T))) > 300
  )  # all around
  same = _np(cameras(jax.random.split(jax.random.key(0), 64), TARGET, spec))
  np.testing.assert_array_equal(cams.rotation, same.rotation)
  assert not np.allclose(cams.rotation[0], camera(1, spec).rotation)


def test_multiview_rig_surrounds_the_person():
  rig = _np(rig_of(jax.random.key(1), TARGET, num_views=4, spec=STILL))
  assert rig.rotation.shape == (4, 3, 3) and rig.translation.shape == (4, 3)
  offsets = (_position(rig) - TARGET)[:, [0, 2]]
  azimuth = np.sort(np.degrees(np.arctan2(offsets[:, 0], offsets[:, 1])) % 360)
  gaps = np.diff(np.concatenate([azimuth, azimuth[:1] + 360]))
  assert gaps.min() >= 45 - 1e-3 and gaps.max() <= 135 + 1e-3
  np.testing.assert_allclose(
    _project(rig, TARGET[None])[:, 0], np.tile([128, 128], (4, 1)), atol=0.05
  )


def test_no_noise_gives_exact_projections():
  cam = camera(2, STILL)
  points = _body_points(3)
  kp, conf = _many(obs.KeypointNoise.none(), points, cam, KEYS)
  np.testing.assert_allclose(kp[0], _project(cam, points), atol=1e-3)
  np.testing.assert_array_equal(conf, np.ones((300, 17)))


def test_gaussian_noise_scales_with_person_size():
  noise = obs.KeypointNoise(sigma=0.02, outlier_prob=0.0, missing_prob=0.0, drop_outside=False)
  points = _body_points(5)
  for distance in (2.5, 7.0):
    spec = obs.CameraSpec(distance_range=(distance, distance), roll_std=0.0, aim_std=0.0)
    cam = camera(6, spec)
    kp, conf = _many(noise, points, cam, KEYS)
    exact = _project(cam, points)
    size = np.max(exact.max(0) - exact.min(0))
    assert np.std(kp - exact) == pytest.approx(0.02 * size, rel=0.08)
    assert np.all(conf >= 0.05) and np.all(conf <= 1.0)


def test_missing_outliers_swaps_and_outside():
  cam = camera(8, STILL)
  points = _body_points(9)
  noise = obs.KeypointNoise(missing_prob=0.2, outlier_prob=0.0, drop_outside=False)
  _, conf = _many(noise, points, cam, KEYS)
  assert np.mean(conf == 0) == pytest.approx(0.2, abs=0.02)
  # Outliers: errors far beyond the Gaussian part, with lower confidence.
  noise = obs.KeypointNoise(sigma=0.0, outlier_prob=0.5, missing_prob=0.0, drop_outside=False)
  kp, conf = _many(noise, points, cam, KEYS)
  moved = np.linalg.norm(kp - _project(cam, points), axis=-1) > 1e-3
  assert np.mean(moved) == pytest.approx(0.5, abs=0.03)
  assert np.mean(conf[moved]) < np.mean(conf[~moved]) - 0.3
  # Swaps: with probability 1 every listed pair trades places.
  noise = dataclasses.replace(obs.KeypointNoise.none(), swap_prob=1.0)
  kp, _ = _many(noise, points, cam, KEYS, ((0, 1), (4, 7)))
  exact = _project(cam, points)
  np.testing.assert_allclose(kp[0, [1, 0, 7, 4]], exact[[0, 1, 4, 7]], atol=1e-3)
  np.testing.assert_allclose(kp[0, 2:4], exact[2:4], atol=1e-3)
  # Joints outside the image or behind the camera get confidence 0.
  position = _position(cam)
  off = points.copy()
  off[0] = TARGET + 5 * np.cross(TARGET - position, [0, 1, 0])  # far to the side
  off[1] = position + (position - TARGET)  # behind the camera
  _, conf = _many(obs.KeypointNoise.none(), off, cam, KEYS)
  assert conf[0, 0] == 0 and conf[0, 1] == 0 and conf[0, 2] == 1


def test_temporal_noise_is_correlated_in_time():
  cam = camera(11, STILL)
  clip = np.broadcast_to(_body_points(12), (300, 17, 3))
  exact = _project(cam, clip)
  noise = obs.KeypointNoise(outlier_prob=0.0, missing_prob=0.0, temporal_rho=0.8)
  kp, _ = _np(keypoints(jax.random.key(13), clip, cam, noise, temporal=True))
  err = (kp - exact)[..., 0]
  assert np.corrcoef(err[1:].ravel(), err[:-1].ravel())[0, 1] == pytest.approx(0.8, abs=0.05)
  assert np.std(err) == pytest.approx(0.01 * np.max(np.ptp(exact[0], axis=0)), rel=0.15)
  # Without `temporal` the frames are independent (the per-key tests above: one frame per key).


def test_left_right_pairs_from_names():
  names = ["pelvis", "left_hip", "right_hip", "lThigh", "rThigh", "Nose", "LEye", "REye", "neck"]
  np.testing.assert_array_equal(obs.left_right_pairs(names), [[1, 2], [3, 4], [6, 7]])


N = 2000  # one batch size for every corrupt_pose call: one compilation


def _params():
  return {
    "global_orient": np.zeros((N, 3), np.float32),
    "body_pose": np.zeros((N, 23, 3), np.float32),
    "betas": np.zeros((N, 10), np.float32),
    "transl": np.tile(np.array([0.1, 0.2, 5.0], np.float32), (N, 1)),
    "other": np.ones((N, 2), np.float32),
  }


def _angles_deg(aa):
  return np.degrees(np.linalg.norm(aa, axis=-1))


def test_corrupt_pose_level_zero_is_identity_and_key_deterministic():
  params = _params()
  same = _np(corrupt(jax.random.key(0), params, np.zeros(N, np.float32)))
  for name in params:
    np.testing.assert_allclose(same[name], params[name], atol=1e-6)
  a = _np(corrupt(jax.random.key(1), params, np.ones(N, np.float32)))
  b = _np(corrupt(jax.random.key(1), params, np.ones(N, np.float32)))
  for name in params:
    np.testing.assert_array_equal(a[name], b[name])


def test_corrupt_pose_errors_grow_along_the_chain_and_with_level():
  params = _params()
  out = _np(corrupt(jax.random.key(2), params, np.ones(N, np.float32)))
  angle = _angles_deg(out["body_pose"]).mean(0)  # [23]
  hips, wrists = angle[[0, 1]].mean(), angle[[19, 20]].mean()  # joints 1,2 and 20,21
  spec = obs.PoseCorruption()
  mean_norm = np.sqrt(8 / np.pi)  # E|N(0, I_3)| per unit std
  assert hips == pytest.approx(spec.joint_deg * mean_norm, rel=0.1)
  assert wrists == pytest.approx(spec.joint_deg * (1 + 5 * spec.chain_growth) * mean_norm, rel=0.1)
  orient = _angles_deg(out["global_orient"]).mean()
  assert orient == pytest.approx(spec.global_orient_deg * mean_norm, rel=0.1)
  assert np.std(out["betas"]) == pytest.approx(spec.betas_std, rel=0.1)
  # Depth error scales the translation along its ray.
  log_depth = np.log(out["transl"][:, 2] / 5.0)
  assert log_depth.std() == pytest.approx(spec.depth_log_std, rel=0.1)
  np.testing.assert_array_equal(out["other"], params["other"])
  # Per-sample levels: level 2 doubles the errors of level 1.
  levels = np.concatenate([np.ones(N // 2), 2 * np.ones(N // 2)]).astype(np.float32)
  angle = _angles_deg(_np(corrupt(jax.random.key(3), params, levels))["body_pose"][:, 0])
  assert angle[N // 2 :].mean() / angle[: N // 2].mean() == pytest.approx(2.0, rel=0.1)


def test_to_camera_frame_moves_the_body_rigidly():
  cam = camera(4)
  rng = np.random.default_rng(5)
  orient = rng.normal(0, 0.7, 3).astype(np.float32)
  transl = np.array([0.3, -0.1, 0.4], np.float32)
  pelvis_rest = np.array([0.0, 0.9, 0.02], np.float32)
  x = rng.normal(size=(5, 3))  # rest points on the body

  def place(orient, transl):
    return Rotation.from_rotvec(orient).apply(x - pelvis_rest) + pelvis_rest + transl

  orient_c, transl_c = _np(to_camera_frame(cam, orient, transl, pelvis_rest))
  expected = (cam.rotation @ place(orient, transl).T).T + cam.translation
  np.testing.assert_allclose(place(orient_c, transl_c), expected, atol=1e-5)
