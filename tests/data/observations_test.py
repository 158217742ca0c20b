"""Tests for jhmr.data.observations: cameras, keypoint noise model, pose corruption."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.data import observations as obs
from jhmr.geometry import rotations

TARGET = jnp.array([0.1, 0.9, -0.2])
STILL = obs.CameraSpec(roll_std=0.0, aim_std=0.0)

# Everything runs jitted: eager JAX dispatch is very slow on the shared 2-core machine.
camera = jax.jit(obs.random_camera)
rig_of = jax.jit(obs.multiview_rig, static_argnames="num_views")
keypoints = jax.jit(obs.synthesize_keypoints, static_argnames=("swap_pairs", "temporal"))
corrupt = jax.jit(obs.corrupt_pose)
project = jax.jit(lambda cam, points: cam.project(points))


def _many(noise, points, cam, keys, pairs=None):
  """`synthesize_keypoints` for each key, jitted (eager vmap is slow on this machine)."""
  return _vmapped(pairs)(keys, points, cam, noise)


@functools.cache
def _vmapped(pairs):
  fn = lambda k, p, c, n: obs.synthesize_keypoints(k, p, c, n, pairs)
  return jax.jit(jax.vmap(fn, in_axes=(0, None, None, None)))


def _body_points(key, n=17):
  return TARGET + 0.3 * jax.random.normal(key, (n, 3))


def test_look_at_puts_the_target_at_the_principal_point_and_up_up():
  rotation, translation = obs.look_at(jnp.array([1.0, 2.0, 5.0]), TARGET)
  cam = obs.Camera(rotation, translation, jnp.array([500.0, 500.0]), jnp.array([128.0, 96.0]))
  np.testing.assert_allclose(project(cam, TARGET[None])[0], [128, 96], atol=1e-3)
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
  assert jnp.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(cam.position, [1, 2, 5], atol=1e-5)
  above = project(cam, jnp.stack([TARGET, TARGET + jnp.array([0, 0.5, 0])]))
  assert above[1, 1] < above[0, 1]  # world up is image up (smaller v)


def test_random_camera_follows_its_spec_and_key():
  spec = obs.CameraSpec(distance_range=(3.0, 4.0), image_size=(200, 300), roll_std=0, aim_std=0)
  make = jax.jit(functools.partial(obs.random_camera, spec=spec))
  cams = jax.vmap(make, in_axes=(0, None))(jax.random.split(jax.random.key(0), 64), TARGET)
  distance = jnp.linalg.norm(cams.position - TARGET, axis=-1)
  assert jnp.all((distance >= 3.0) & (distance <= 4.0))
  np.testing.assert_allclose(
    project(cams, TARGET[None])[:, 0], np.tile([150, 100], (64, 1)), atol=0.05
  )
  focal = cams.focal_length[:, 0]
  assert jnp.all((focal >= 300) & (focal <= 600)) and cams.image_size == (200, 300)
  again = make(jax.random.key(3), TARGET)
  np.testing.assert_array_equal(again.rotation, make(jax.random.key(3), TARGET).rotation)
  assert not np.allclose(again.rotation, make(jax.random.key(4), TARGET).rotation)


def test_multiview_rig_surrounds_the_person():
  rig = rig_of(jax.random.key(1), TARGET, num_views=4, spec=STILL)
  assert rig.rotation.shape == (4, 3, 3) and rig.translation.shape == (4, 3)
  offsets = np.asarray(rig.position - TARGET)[:, [0, 2]]
  azimuth = np.sort(np.degrees(np.arctan2(offsets[:, 0], offsets[:, 1])) % 360)
  gaps = np.diff(np.concatenate([azimuth, azimuth[:1] + 360]))
  assert gaps.min() >= 45 - 1e-3 and gaps.max() <= 135 + 1e-3
  np.testing.assert_allclose(
    project(rig, TARGET[None])[:, 0], np.tile([128, 128], (4, 1)), atol=0.05
  )


def test_no_noise_gives_exact_projections():
  cam = camera(jax.random.key(2), TARGET, spec=STILL)
  points = _body_points(jax.random.key(3))
  kp, conf = keypoints(jax.random.key(4), points, cam, noise=obs.KeypointNoise.none())
  np.testing.assert_allclose(kp, project(cam, points), atol=1e-4)
  np.testing.assert_array_equal(conf, np.ones(17))


def test_gaussian_noise_scales_with_person_size():
  noise = obs.KeypointNoise(sigma=0.02, outlier_prob=0.0, missing_prob=0.0, drop_outside=False)
  points = _body_points(jax.random.key(5))
  for distance in (2.5, 7.0):
    spec = obs.CameraSpec(distance_range=(distance, distance), roll_std=0, aim_std=0)
    cam = camera(jax.random.key(6), TARGET, spec=spec)
    keys = jax.random.split(jax.random.key(7), 300)
    kp, conf = _many(noise, points, cam, keys)
    exact = project(cam, points)
    size = obs.person_size(exact)
    std = float(jnp.std(kp - exact))
    assert std == pytest.approx(0.02 * float(size), rel=0.08)
    assert jnp.all(conf >= 0.05) and jnp.all(conf <= 1.0)


def test_missing_outliers_swaps_and_outside():
  cam = camera(jax.random.key(8), TARGET, spec=STILL)
  points = _body_points(jax.random.key(9))
  keys = jax.random.split(jax.random.key(10), 300)
  noise = obs.KeypointNoise(missing_prob=0.2, outlier_prob=0.0, drop_outside=False)
  _, conf = _many(noise, points, cam, keys)
  assert float(jnp.mean(conf == 0)) == pytest.approx(0.2, abs=0.02)
  # Outliers: errors far beyond the Gaussian part, with lower confidence.
  noise = obs.KeypointNoise(sigma=0.0, outlier_prob=0.5, missing_prob=0.0, drop_outside=False)
  kp, conf = _many(noise, points, cam, keys)
  moved = jnp.linalg.norm(kp - project(cam, points), axis=-1) > 1e-3
  assert float(jnp.mean(moved)) == pytest.approx(0.5, abs=0.03)
  assert float(jnp.mean(conf[moved])) < float(jnp.mean(conf[~moved])) - 0.3
  # Swaps: with probability 1 every listed pair trades places.
  pairs = ((0, 1), (4, 7))
  noise = obs.KeypointNoise(sigma=0.0, outlier_prob=0.0, swap_prob=1.0, missing_prob=0.0).replace(
    drop_outside=False
  )
  kp, _ = keypoints(keys[0], points, cam, noise=noise, swap_pairs=pairs)
  exact = project(cam, points)
  np.testing.assert_allclose(kp[jnp.array([1, 0, 7, 4])], exact[jnp.array([0, 1, 4, 7])], atol=1e-4)
  np.testing.assert_allclose(kp[2:4], exact[2:4], atol=1e-4)
  # Joints outside the image or behind the camera get confidence 0.
  far = points.at[0].set(TARGET + 50 * (TARGET - cam.position))  # behind the person, off-frame
  behind = far.at[1].set(cam.position + (cam.position - TARGET))
  _, conf = keypoints(keys[0], behind, cam, noise=obs.KeypointNoise.none())
  assert conf[1] == 0 and conf[2] == 1


def test_temporal_noise_is_correlated_in_time():
  cam = camera(jax.random.key(11), TARGET, spec=STILL)
  clip = jnp.broadcast_to(_body_points(jax.random.key(12)), (300, 17, 3))
  noise = obs.KeypointNoise(outlier_prob=0.0, missing_prob=0.0, temporal_rho=0.8)
  kp, _ = keypoints(jax.random.key(13), clip, cam, noise=noise, temporal=True)
  err = np.asarray(kp - project(cam, clip))[..., 0]
  rho = np.corrcoef(err[1:].ravel(), err[:-1].ravel())[0, 1]
  assert rho == pytest.approx(0.8, abs=0.05)
  kp_iid, _ = keypoints(jax.random.key(13), clip, cam, noise=noise)
  err = np.asarray(kp_iid - project(cam, clip))[..., 0]
  assert abs(np.corrcoef(err[1:].ravel(), err[:-1].ravel())[0, 1]) < 0.05


def test_left_right_pairs_from_names():
  names = ["pelvis", "left_hip", "right_hip", "lThigh", "rThigh", "Nose", "LEye", "REye", "neck"]
  np.testing.assert_array_equal(obs.left_right_pairs(names), [[1, 2], [3, 4], [6, 7]])


N = 2000  # one batch size for every corrupt_pose call: one compilation


def _params(batch=()):
  return {
    "global_orient": jnp.zeros(batch + (3,)),
    "body_pose": jnp.zeros(batch + (23, 3)),
    "betas": jnp.zeros(batch + (10,)),
    "transl": jnp.broadcast_to(jnp.array([0.1, 0.2, 5.0]), batch + (3,)),
    "other": jnp.ones(batch + (2,)),
  }


def test_corrupt_pose_level_zero_is_identity_and_key_deterministic():
  params = _params((N,))
  same = corrupt(jax.random.key(0), params, jnp.zeros(N))
  for name in params:
    np.testing.assert_allclose(same[name], params[name], atol=1e-6)
  a = corrupt(jax.random.key(1), params, jnp.ones(N))
  b = corrupt(jax.random.key(1), params, jnp.ones(N))
  for name in params:
    np.testing.assert_array_equal(a[name], b[name])


def test_corrupt_pose_errors_grow_along_the_chain_and_with_level():
  params = _params((N,))
  out = corrupt(jax.random.key(2), params, jnp.ones(N))
  angle = np.degrees(np.linalg.norm(out["body_pose"], axis=-1)).mean(0)  # [23]
  hips, wrists = angle[[0, 1]].mean(), angle[[19, 20]].mean()  # joints 1,2 and 20,21
  spec = obs.PoseCorruption()
  mean_norm = np.sqrt(8 / np.pi)  # E|N(0, I_3)| per unit std
  assert hips == pytest.approx(spec.joint_deg * mean_norm, rel=0.1)
  assert wrists == pytest.approx(spec.joint_deg * (1 + 5 * spec.chain_growth) * mean_norm, rel=0.1)
  orient = np.degrees(np.linalg.norm(out["global_orient"], axis=-1)).mean()
  assert orient == pytest.approx(spec.global_orient_deg * mean_norm, rel=0.1)
  assert float(jnp.std(out["betas"])) == pytest.approx(spec.betas_std, rel=0.1)
  # Depth error scales the translation along its ray: the direction only moves by transl_std.
  log_depth = np.log(np.asarray(out["transl"][:, 2]) / 5.0)
  assert log_depth.std() == pytest.approx(spec.depth_log_std, rel=0.1)
  np.testing.assert_array_equal(out["other"], params["other"])
  # Per-sample levels: level 2 doubles the errors of level 1.
  levels = jnp.concatenate([jnp.ones(N // 2), 2 * jnp.ones(N // 2)])
  out = corrupt(jax.random.key(3), params, levels)
  angle = np.degrees(np.linalg.norm(out["body_pose"][:, 0], axis=-1))
  assert angle[N // 2 :].mean() / angle[: N // 2].mean() == pytest.approx(2.0, rel=0.1)


def test_to_camera_frame_moves_the_body_rigidly():
  key = jax.random.key(4)
  cam = camera(key, TARGET)
  orient = 0.7 * jax.random.normal(jax.random.key(5), (3,))
  transl = jnp.array([0.3, -0.1, 0.4])
  pelvis_rest = jnp.array([0.0, 0.9, 0.02])
  x = jax.random.normal(jax.random.key(6), (5, 3))  # rest points on the body

  def place(orient, transl, x):
    return (rotations.axis_angle_to_matrix(orient) @ (x - pelvis_rest).T).T + pelvis_rest + transl

  @jax.jit
  def both(cam, orient, transl, x):
    orient_c, transl_c = obs.to_camera_frame(cam, orient, transl, pelvis_rest)
    return place(orient_c, transl_c, x), cam.to_camera(place(orient, transl, x))

  got, expected = both(cam, orient, transl, x)
  np.testing.assert_allclose(got, expected, atol=1e-5)
