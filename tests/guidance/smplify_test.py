"""The SMPLify-style baseline: it fits the keypoints and its priors act as documented."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.geometry import cameras, rotations
from jhmr.guidance import smplify
from jhmr.guidance.observation import Observation

CONFIG = smplify.SmplifyConfig(num_steps=60, learning_rate=2e-2, pose_weight=50.0)


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


def test_angle_prior_penalises_the_unnatural_bend():
  pose = jnp.tile(jnp.eye(3), (2, 24, 1, 1))
  bend = rotations.axis_angle_to_matrix(jnp.array([0.0, 1.0, 0.0]))  # left elbow about +y
  natural = smplify.angle_prior(pose.at[0, 18].set(bend.T))
  unnatural = smplify.angle_prior(pose.at[1, 18].set(bend))
  assert float(unnatural[1]) > float(natural[0])
