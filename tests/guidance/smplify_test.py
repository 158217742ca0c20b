"""The SMPLify-style baseline: it fits the keypoints and its priors act as documented."""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.geometry import cameras, rotations
from jhmr.guidance import smplify
from jhmr.guidance.observation import Observation

CONFIG = smplify.SmplifyConfig(num_steps=60, learning_rate=2e-2, pose_weight=50.0)
VIDEO_W = 1000.0
SEQ_LEN = 8


@pytest.fixture(scope="module")
def problem(tiny_body):
  b = 4
  k = jax.random.split(jax.random.key(0), 3)
  true_aa = 0.3 * jax.random.normal(k[0], (b, 24, 3))
  betas = jnp.zeros((b, 4))
  cam_t = jnp.tile(jnp.array([[0.0, 0.1, 20.0]]), (b, 1))
  kp3d = tiny_body.joints_only(betas, true_aa[:, 1:], true_aa[:, 0], joint_set="openpose25")
  kp2d = cameras.perspective_projection(kp3d.keypoints, cam_t, 5000.0, jnp.array([500.0, 500.0]))
  init = true_aa + 0.15 * jax.random.normal(k[1], true_aa.shape)
  obs = Observation.create(
    init,
    betas,
    cam_t * 1.02,
    kp2d,
    jnp.ones((b, 25)),
    image_size=(1000, 1000),
    pose_format="axis_angle",
    body_model=tiny_body,
  )
  return obs, true_aa


def test_fit_reduces_the_objective_and_keypoint_error(problem, tiny_body):
  obs, _ = problem
  res = smplify.fit(obs, config=CONFIG)
  assert res.loss.shape == (60,) and float(res.loss[-1]) < 0.3 * float(res.loss[0])
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (4, 144))
  kp = lambda x6d, cam, betas: smplify.objective(
    {"pose": x6d, "betas": betas, "cam_t": cam},
    obs,
    tiny_body,
    x6d,
    smplify.SmplifyConfig(pose_weight=0.0, angle_weight=0.0, betas_weight=0.0),
  )[1]
  before = kp(init6d, obs.init_cam_t, obs.init_betas)
  after = kp(res.pose_6d, res.cam_t, res.betas)
  assert np.all(np.asarray(after) < 0.5 * np.asarray(before))


@pytest.mark.slow
def test_pose_prior_holds_the_initial_estimate(problem):
  obs, _ = problem
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (4, 144))
  weak = smplify.fit(obs, config=CONFIG)
  strong = smplify.fit(
    obs, config=smplify.SmplifyConfig(num_steps=60, learning_rate=2e-2, pose_weight=1e5)
  )
  moved = lambda r: float(jnp.abs(r.pose_6d - init6d).mean())
  assert moved(strong) < 0.5 * moved(weak)
  fixed = smplify.fit(obs, config=smplify.SmplifyConfig(num_steps=10, optimize_betas=False))
  np.testing.assert_array_equal(fixed.betas, obs.init_betas)


@flax.struct.dataclass
class _TowardsIdentity:
  """A pose prior of the `pose_prior` form: weight * ||R_j - I||^2 over joints 1..23."""

  weight: float

  def __call__(self, pose):
    return self.weight * jnp.sum(jnp.square(pose[:, 1:] - jnp.eye(3)), axis=(1, 2, 3))


def test_pose_prior_enters_the_objective(problem, tiny_body):
  obs, _ = problem
  plain = smplify.fit(obs, config=CONFIG)
  np.testing.assert_array_equal(smplify.fit(obs, config=CONFIG, pose_prior=None).pose, plain.pose)
  held = smplify.fit(obs, config=CONFIG, pose_prior=_TowardsIdentity(1e4))
  term = lambda r: np.asarray(_TowardsIdentity(1.0)(r.pose))
  assert np.all(term(held) < 0.5 * term(plain))
  # the prior is a traced argument: its value is the objective's, and a new weight reuses the
  # compiled fit
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (4, 144))
  variables = {"pose": init6d, "betas": obs.init_betas, "cam_t": obs.init_cam_t}
  total = lambda prior: smplify.objective(variables, obs, tiny_body, init6d, CONFIG, prior)[0]
  np.testing.assert_allclose(
    total(_TowardsIdentity(3.0)) - total(None),
    np.sum(_TowardsIdentity(3.0)(obs.init_pose)),
    rtol=1e-4,
  )
  compiled = smplify._fit_jit._cache_size()
  smplify.fit(obs, config=CONFIG, pose_prior=_TowardsIdentity(2e4))
  assert smplify._fit_jit._cache_size() == compiled


def test_angle_prior_penalises_the_unnatural_bend():
  pose = jnp.tile(jnp.eye(3), (2, 24, 1, 1))
  bend = rotations.axis_angle_to_matrix(jnp.array([0.0, 1.0, 0.0]))  # left elbow about +y
  natural = smplify.angle_prior(pose.at[0, 18].set(bend.T))
  unnatural = smplify.angle_prior(pose.at[1, 18].set(bend))
  assert float(unnatural[1]) > float(natural[0])


# --- multi-view and video baselines -------------------------------------------------------------

FOCAL, CENTER = 5000.0, jnp.array([500.0, 500.0])


def _project(body, pose, betas, cam_t):
  """OpenPose-25 keypoints [B, 25, 2] of rotations [B, 24, 3, 3] seen from cam_t (R = I)."""
  kp = body.joints_only(
    betas, pose[:, 1:], pose[:, 0], pose_format="rotmat", joint_set="openpose25"
  )
  return np.asarray(cameras.perspective_projection(kp.keypoints, cam_t, FOCAL, CENTER))


def _noisy_scene(body, rng, true, group, *, pixel_noise, corruption, depth):
  """(Observation, true): rotations `true` [B, 24, 3, 3] seen 20 m away with `pixel_noise` px
  keypoint noise, initialised from `true` corrupted by `corruption` rad, depth scaled by `depth`."""
  b = len(group)
  betas = np.zeros((b, 4), np.float32)
  cam_t = np.tile(np.array([[0.0, 0.1, 20.0]], np.float32), (b, 1))
  kp2d = _project(body, true, betas, cam_t) + pixel_noise * rng.normal(size=(b, 25, 2))
  obs = Observation.create(
    _corrupt(rng, true, corruption),
    betas,
    cam_t * depth,
    kp2d,
    np.ones((b, 25)),
    image_size=(1000, 1000),
    group=group,
    body_model=body,
  )
  return obs, true


def _body_joints(body, pose, betas):
  """Joints [B, 24, 3] of the body pose alone (global orient removed, root at the origin)."""
  eye = jnp.broadcast_to(jnp.eye(3), pose[:, 0].shape)
  joints = body.joints_only(betas, pose[:, 1:], eye, pose_format="rotmat").joints
  return np.asarray(joints - joints[:, :1])


def _oriented_joints(body, pose, betas):
  """Joints [B, 24, 3] with the global orient, root at the origin (what the camera sees)."""
  joints = body.joints_only(betas, pose[:, 1:], pose[:, 0], pose_format="rotmat").joints
  return np.asarray(joints - joints[:, :1])


def _corrupt(rng, pose, scale):
  """Rotations [B, 24, 3, 3] each composed with an independent random rotation of ~scale rad."""
  noise = rotations.axis_angle_to_matrix(jnp.asarray(scale * rng.normal(size=(*pose.shape[:2], 3))))
  return np.asarray(jnp.einsum("bjik,bjkl->bjil", noise, pose), np.float32)


@pytest.fixture(scope="module")
def multiview_scene(tiny_body):
  """4 people x 4 views (rows interleaved): one true body pose per person, each view a known
  camera yaw around the person; noisy keypoints and independently corrupted initial estimates.
  16 rows, like `video_scene`, so that the per-row fits of both share one compiled program."""
  rng = np.random.default_rng(1)
  people, views = 4, 4
  group = np.tile(np.arange(people), views)  # rows: view-major, people interleaved
  body_aa = 0.4 * rng.normal(size=(people, 23, 3))
  base = np.array([np.pi, 0.0, 0.0])  # upright in the camera frame (y down)
  yaw = np.deg2rad([0.0, 80.0, 170.0, 260.0])
  aa = np.zeros((people * views, 24, 3))
  aa[:, 0] = base
  aa[:, 1:] = body_aa[group]
  true = np.array(rotations.axis_angle_to_matrix(jnp.asarray(aa, jnp.float32)))
  cam_yaw = rotations.axis_angle_to_matrix(
    jnp.asarray(np.stack([np.zeros_like(yaw), yaw, np.zeros_like(yaw)], -1), jnp.float32)
  )  # [V, 3, 3]: camera v sees the person turned by yaw_v
  view = np.repeat(np.arange(views), people)
  true[:, 0] = np.asarray(jnp.einsum("bij,bjk->bik", cam_yaw[view], true[:, 0]))
  return _noisy_scene(tiny_body, rng, true, group, pixel_noise=4.0, corruption=0.2, depth=1.03)


def test_multiview_shares_the_body_pose_and_beats_per_view_fits(multiview_scene, tiny_body):
  obs, true = multiview_scene
  group = np.asarray(obs.group)
  per_view = smplify.fit(obs, config=CONFIG)
  shared = smplify.fit(obs, task="multiview", config=CONFIG)
  body6d, betas = np.asarray(shared.pose_6d[:, 6:]), np.asarray(shared.betas)
  for g in np.unique(group):
    rows = np.flatnonzero(group == g)
    np.testing.assert_array_equal(
      body6d[rows], np.broadcast_to(body6d[rows[0]], body6d[rows].shape)
    )
    np.testing.assert_array_equal(betas[rows], np.broadcast_to(betas[rows[0]], betas[rows].shape))
  # Each view keeps its own global orientation and camera.
  assert np.std(np.asarray(shared.pose_6d[:, :6])[group == 0], axis=0).max() > 0.1
  true_joints = _body_joints(tiny_body, true, obs.init_betas)

  def err(pose, betas):  # body-pose joint error (global orient removed), mm
    return 1000 * np.mean(
      np.linalg.norm(_body_joints(tiny_body, pose, betas) - true_joints, axis=-1)
    )

  e_init = err(obs.init_pose, obs.init_betas)
  e_view, e_shared = err(per_view.pose, per_view.betas), err(shared.pose, shared.betas)
  print(
    f"body-pose joint error (mm): init {e_init:.1f}, per-view {e_view:.1f}, shared {e_shared:.1f}"
  )
  assert e_shared < 0.8 * e_view < e_init
  assert float(shared.loss[-1]) < 0.3 * float(shared.loss[0])


def test_multiview_initialises_from_the_mean_of_the_views(multiview_scene):
  obs, _ = multiview_scene
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (obs.batch_size, 144))
  body = np.asarray(smplify.shared_body_init(init6d, obs.group))  # [B, 138], slot g = person g
  views = np.reshape(init6d[:, 6:], (4, 4, 23, 6))  # rows are view-major: [view, person]
  expected = rotations.matrix_to_rot6d(rotations.rot6d_to_matrix(jnp.asarray(views.mean(0))))
  np.testing.assert_allclose(body[:4], np.reshape(expected, (4, 138)), atol=1e-6)
  # Re-orthonormalised: each 6D block is the first two columns of a rotation matrix.
  again = rotations.matrix_to_rot6d(rotations.rot6d_to_matrix(jnp.reshape(body, (-1, 23, 6))))
  np.testing.assert_allclose(np.reshape(again, body.shape), body, atol=1e-6)
  # Slots of no person hold the identity.
  identity = np.tile(rotations.matrix_to_rot6d(jnp.eye(3)), 23)
  np.testing.assert_array_equal(body[4:], np.broadcast_to(identity, body[4:].shape))


@pytest.fixture(scope="module")
def video_scene(tiny_body):
  """2 sequences x 8 frames of smooth motion; per-frame noisy inits and noisy keypoints."""
  rng = np.random.default_rng(2)
  seqs, frames = 2, SEQ_LEN
  t = np.arange(frames)[None, :, None, None]
  freq = rng.uniform(0.2, 0.5, size=(seqs, 1, 24, 3))  # cycles per sequence
  phase = rng.uniform(0.0, 2 * np.pi, size=(seqs, 1, 24, 3))
  aa = 0.3 * rng.normal(size=(seqs, 1, 24, 3)) + 0.3 * np.sin(2 * np.pi * freq * t / frames + phase)
  aa[:, :, 0] = [np.pi, 0.0, 0.0]
  aa[:, :, 0, 1] = np.linspace(0.0, 0.3, frames)  # turning slowly
  b = seqs * frames
  true = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(aa.reshape(b, 24, 3), jnp.float32)))
  group = np.repeat([7, 3], frames)  # arbitrary ids, consecutive rows
  return _noisy_scene(tiny_body, rng, true, group, pixel_noise=3.0, corruption=0.1, depth=1.02)


def test_video_is_smoother_than_per_frame_fits(video_scene, tiny_body):
  obs, true = video_scene
  per_frame = smplify.fit(obs, config=CONFIG)
  video = smplify.fit(obs, task="video", config=dataclasses.replace(CONFIG, smooth_weight=VIDEO_W))

  true_joints = np.reshape(_oriented_joints(tiny_body, true, obs.init_betas), (2, SEQ_LEN, 24, 3))

  def metrics(pose, betas, cam_t):  # (accel mm/frame^2, 3D error mm, reprojection px)
    j = np.reshape(_oriented_joints(tiny_body, pose, betas), (2, SEQ_LEN, 24, 3))
    accel = 1000 * np.mean(np.linalg.norm(j[:, 2:] - 2 * j[:, 1:-1] + j[:, :-2], axis=-1))
    err = 1000 * np.mean(np.linalg.norm(j - true_joints, axis=-1))
    kp = _project(tiny_body, pose, betas, cam_t)
    return accel, err, np.mean(np.linalg.norm(kp - obs.keypoints_2d, axis=-1))

  truth = metrics(true, obs.init_betas, obs.init_cam_t / 1.02)
  frame = metrics(per_frame.pose, per_frame.betas, per_frame.cam_t)
  video = metrics(video.pose, video.betas, video.cam_t)
  for name, m in (("truth", truth), ("per-frame", frame), ("video", video)):
    print(
      f"{name}: accel {m[0]:.1f} mm/frame^2, 3D error {m[1]:.1f} mm, reprojection {m[2]:.2f} px"
    )
  assert video[0] < 0.7 * frame[0]  # smoother
  assert video[1] < frame[1]  # closer to the (smooth) truth
  assert video[2] < 1.3 * frame[2]  # comparable keypoint error


def test_fit_defaults_to_keypoints_and_rejects_bad_groups(problem, multiview_scene):
  obs, _ = problem
  np.testing.assert_array_equal(
    smplify.fit(obs, config=CONFIG).pose_6d,
    smplify.fit(obs, task="keypoints", config=CONFIG).pose_6d,
  )
  with pytest.raises(ValueError, match="unknown task"):
    smplify.fit(obs, task="multi-view", config=CONFIG)
  with pytest.raises(ValueError, match="consecutive"):
    smplify.fit(obs.replace(group=jnp.array([0, 1, 0, 1], jnp.int32)), task="video", config=CONFIG)
  with pytest.raises(ValueError, match=r">= 2 views; rows \[3\]"):
    smplify.fit(
      obs.replace(group=jnp.array([0, 0, 0, 1], jnp.int32)), task="multiview", config=CONFIG
    )
  with pytest.raises(ValueError, match=">= 2 views"):
    smplify.fit(obs.replace(group=jnp.arange(4, dtype=jnp.int32)), task="multiview", config=CONFIG)
  mv, _ = multiview_scene
  no_kp = mv.replace(keypoints_2d=mv.keypoints_2d[:, :0], confidence=mv.confidence[:, :0])
  with pytest.raises(ValueError, match="fits 2D keypoints"):
    smplify.fit(no_kp, task="multiview", config=CONFIG)


@pytest.mark.slow
def test_default_smooth_weight_sweep():
  """The sweep behind `SmplifyConfig.smooth_weight` (defaults otherwise, the 'anny-tiny' body):
  2 sequences x 24 frames of smooth motion at 20 m (a ~370 px person), initial estimates with
  0.1 rad of per-frame noise per joint, keypoints with 3 px of noise."""
  from jhmr.body import load_body_model

  body = load_body_model("anny-tiny")
  rng = np.random.default_rng(0)
  seqs, frames = 2, 24
  t = np.arange(frames)[None, :, None, None]
  base = 0.3 * rng.normal(size=(seqs, 1, 24, 3))
  amp = 0.3 * rng.normal(size=(seqs, 1, 24, 3))
  phase = rng.uniform(0, 2 * np.pi, size=(seqs, 1, 24, 3))
  freq = rng.uniform(0.5, 1.5, size=(seqs, 1, 24, 3))  # cycles per sequence
  aa = base + amp * np.sin(2 * np.pi * freq * t / frames + phase)
  aa[:, :, 0] = [np.pi, 0.0, 0.0]  # upright, turning about the vertical
  aa[:, :, 0, 1] = np.linspace(0, 1.0, frames)[None] + rng.uniform(0, 6, size=(seqs, 1))
  b = seqs * frames
  true = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(aa.reshape(b, 24, 3), jnp.float32)))
  betas = np.zeros((b, body.num_betas), np.float32)
  cam_t = np.tile(np.array([[0.0, 0.1, 20.0]], np.float32), (b, 1))
  cam_t[:, 0] += np.tile(np.linspace(-0.3, 0.3, frames), seqs)
  kp2d = _project(body, true, betas, cam_t) + 3.0 * rng.normal(size=(b, 25, 2))
  obs = Observation.create(
    _corrupt(rng, true, 0.1),
    betas,
    cam_t * 1.02,
    kp2d,
    np.ones((b, 25)),
    image_size=(1000, 1000),
    group=np.repeat(np.arange(seqs), frames),
    body_model=body,
  )
  true_joints = np.reshape(_oriented_joints(body, true, betas), (seqs, frames, 24, 3))
  accel = lambda j: j[:, 2:] - 2 * j[:, 1:-1] + j[:, :-2]
  results = {}
  for weight in (0.0, 1e3, 1e4, 1e5):
    res = smplify.fit(obs, task="video", config=smplify.SmplifyConfig(smooth_weight=weight))
    j = np.reshape(_oriented_joints(body, res.pose, res.betas), (seqs, frames, 24, 3))
    mpjpe = 1000 * np.mean(np.linalg.norm(j - true_joints, axis=-1))
    accel_err = 1000 * np.mean(np.linalg.norm(accel(j) - accel(true_joints), axis=-1))
    results[weight] = (mpjpe, accel_err)
    print(f"smooth_weight {weight:g}: MPJPE {mpjpe:.1f} mm, accel error {accel_err:.1f} mm")
  default = results[smplify.SmplifyConfig().smooth_weight]
  assert default[0] < min(results[0.0][0], results[1e3][0], results[1e5][0])
  assert default[1] < 0.6 * results[1e3][1] and default[1] < 0.3 * results[0.0][1]
