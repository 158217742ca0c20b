"""The refinement loop: official step algebra, early stopping, one compile per shape, tasks,
and eager input validation. Random tiny score networks + the tiny body of conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.diffusion.ddim import ddim_step, predict_x0
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.geometry import cameras, rotations
from jhmr.guidance import refinement
from jhmr.guidance.losses import GuidanceLoss, KeypointLoss
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import RefineConfig, refine, task_config
from jhmr.models.score_net import ScoreNet

AB = make_alphas_cumprod("cosine")
SMALL = RefineConfig(t_start=6, step_size=2, num_iters=3, early_stop_tol=0.0)


@pytest.fixture(scope="module")
def net_params():
  net = ScoreNet(cond_dim=8, hidden=32, num_blocks=2)
  params = jax.jit(net.init)(
    jax.random.key(0), jnp.zeros((1, 144)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 8))
  )
  return net, params


def _scene(body, b=6, seed=1, noise=0.15):
  k = jax.random.split(jax.random.key(seed), 5)
  true_aa = 0.3 * jax.random.normal(k[0], (b, 24, 3))
  betas = 0.5 * jax.random.normal(k[1], (b, 4))
  cam_t = jnp.tile(jnp.array([[0.0, 0.2, 20.0]]), (b, 1))
  kp3d = body.joints_only(betas, true_aa[:, 1:], true_aa[:, 0], joint_set="openpose25").keypoints
  kp2d = cameras.perspective_projection(kp3d, cam_t, 5000.0, jnp.array([500.0, 500.0]))
  init_aa = true_aa + noise * jax.random.normal(k[2], true_aa.shape)
  conf = jax.random.uniform(k[3], (b, 25), minval=0.5, maxval=1.0)
  feats = jax.random.normal(k[4], (b, 8))
  return dict(
    init_pose=init_aa,
    init_betas=betas,
    init_cam_t=cam_t * 1.03,
    keypoints_2d=kp2d,
    confidence=conf,
    image_size=(1000, 1000),
    features=feats,
    pose_format="axis_angle",
    body_model=body,
  ), true_aa


def _official_loop(net, params, obs, body, config):
  """A plain Python transcription of the official guided sampler (early stopping off)."""
  b = obs.init_pose.shape[0]
  eps_fn = jax.jit(lambda x, t: net.apply(params, x, jnp.full((b,), t), obs.features))
  kp = lambda x0, cam: jnp.sum(
    KeypointLoss()(
      body,
      x0,
      obs.init_betas,
      cam,
      obs.keypoints_2d,
      obs.confidence,
      obs.focal_length,
      obs.camera_center,
      obs.image_size,
    )
  )
  grads = jax.jit(jax.grad(kp, argnums=(0, 1)))  # unweighted; W_KP2D applied to the pose part
  x = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (b, 144))
  cam = obs.init_cam_t
  m = v = jnp.zeros_like(cam)
  adam_step = 0
  grid = list(range(0, config.t_start + 1, config.step_size))
  for _ in range(config.num_iters):
    for t, s in zip(grid[:-1], grid[1:]):  # inversion from the current x, no guidance
      eps = eps_fn(x, t)
      x = ddim_step(predict_x0(x, eps, AB[t]), eps, AB[s])
    for t, s in zip(grid[::-1][:-1], grid[::-1][1:]):
      eps = eps_fn(x, t)
      x0_hat = predict_x0(x, eps, AB[t])
      g_x0, g_cam = grads(x0_hat, cam)
      g_xt = 0.003 * g_x0 / jnp.sqrt(AB[t])
      eps = eps + jnp.sqrt(1 - AB[t]) * g_xt
      x0 = predict_x0(x, eps, AB[t])
      x = ddim_step(x0, eps, AB[s])
      adam_step += 1  # torch.optim.Adam(lr=1e-2), defaults betas (0.9, 0.999), eps 1e-8
      m = 0.9 * m + 0.1 * g_cam
      v = 0.999 * v + 0.001 * g_cam**2
      m_hat, v_hat = m / (1 - 0.9**adam_step), v / (1 - 0.999**adam_step)
      cam = cam - 1e-2 * m_hat / (jnp.sqrt(v_hat) + 1e-8)
  return x0, cam


def test_refine_equals_a_python_loop_of_the_official_sampler(tiny_body, net_params):
  net, params = net_params
  kwargs, _ = _scene(tiny_body)
  obs = Observation.create(**kwargs)
  got = refine(params, obs, config=SMALL)
  want_x0, want_cam = _official_loop(net, params, obs, tiny_body, SMALL)
  np.testing.assert_allclose(got.pose_6d, want_x0, atol=5e-5, rtol=1e-4)
  np.testing.assert_allclose(got.cam_t, want_cam, atol=1e-4, rtol=1e-5)
  assert not np.any(got.converged)
  # The per-iteration record: after iteration k it is the official loop stopped after k.
  assert got.pose_6d_per_iter.shape == (SMALL.num_iters, 6, 144)
  np.testing.assert_array_equal(got.pose_6d_per_iter[-1], got.pose_6d)
  np.testing.assert_array_equal(got.cam_t_per_iter[-1], got.cam_t)
  want_x0, want_cam = _official_loop(net, params, obs, tiny_body, SMALL.replace(num_iters=1))
  np.testing.assert_allclose(got.pose_6d_per_iter[0], want_x0, atol=5e-5, rtol=1e-4)
  np.testing.assert_allclose(got.cam_t_per_iter[0], want_cam, atol=1e-4, rtol=1e-5)


def test_keypoint_refinement_improves_fit_and_compiles_once(tiny_body, net_params):
  _, params = net_params
  kwargs, true_aa = _scene(tiny_body)
  obs = Observation.create(**kwargs)
  res = refine(params, obs, config=SMALL)
  compiled = refinement._refine_jit._cache_size()
  kp = np.asarray(res.keypoint_loss)
  assert kp.shape == (SMALL.num_iters * SMALL.steps_per_iter, 6)
  assert np.all(kp[-1] < 0.8 * kp[0]) and np.mean(kp[-1] / kp[0]) < 0.6
  assert res.loss.shape == (3, 6) and res.pose.shape == (6, 24, 3, 3)
  # A second batch of the same shape reuses the compiled program.
  kwargs2, _ = _scene(tiny_body, seed=9)
  res2 = refine(params, Observation.create(**kwargs2), config=SMALL)
  assert refinement._refine_jit._cache_size() == compiled
  assert not np.allclose(res.pose, res2.pose)


def test_early_stopping_freezes_converged_samples(tiny_body, net_params):
  _, params = net_params
  kwargs, _ = _scene(tiny_body)
  obs = Observation.create(**kwargs)
  loose = refine(params, obs, config=SMALL.replace(early_stop_tol=0.2))
  total = SMALL.num_iters * SMALL.steps_per_iter
  used = np.asarray(loose.steps_used)
  assert np.all(loose.converged) and np.all(used < total) and np.all(used >= 1)
  never = refine(params, obs, config=SMALL)
  assert not np.any(never.converged) and np.all(np.asarray(never.steps_used) == total)
  # Converged samples stop improving their fit: the full run ends with a lower loss.
  assert np.all(never.keypoint_loss[-1] <= loose.keypoint_loss[used - 1, np.arange(6)] + 1e-3)


@pytest.mark.slow
def test_multiview_pulls_views_together(tiny_body, net_params):
  _, params = net_params
  kwargs, _ = _scene(tiny_body, b=4, noise=0.2)
  # One person seen in 4 views: the same body pose, independent regressor errors.
  k = jax.random.key(3)
  base = 0.3 * jax.random.normal(k, (1, 24, 3))
  init = base + 0.2 * jax.random.normal(jax.random.key(4), (4, 24, 3))
  kwargs.update(init_pose=init, keypoints_2d=None, confidence=None, group=[7, 7, 7, 7])
  obs = Observation.create(**kwargs)
  res = refine(params, obs, task="multiview")
  spread = lambda x6d: float(jnp.var(jnp.reshape(x6d, (4, 24, 6))[:, 1:], axis=0).sum())
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (4, 144))
  assert spread(res.pose_6d) < 0.5 * spread(init6d)
  np.testing.assert_allclose(res.betas, jnp.tile(obs.init_betas.mean(0), (4, 1)), rtol=1e-5)


@pytest.mark.slow
def test_video_smooths_the_sequence(tiny_body, net_params):
  _, params = net_params
  kwargs, _ = _scene(tiny_body, b=8, noise=0.0)
  smooth = 0.3 * jnp.sin(jnp.linspace(0, 1, 8))[:, None, None] * jnp.ones((8, 24, 3))
  jitter = 0.1 * jax.random.normal(jax.random.key(5), (8, 24, 3))
  kwargs.update(init_pose=smooth + jitter, group=[0] * 8)
  kwargs["confidence"] = jnp.zeros((8, 25)).at[0].set(1.0)  # nearly no 2D evidence
  obs = Observation.create(**kwargs)
  config = task_config("video").replace(num_iters=2)
  res = refine(params, obs, config=config)
  accel = lambda x: float(jnp.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean())
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (8, 144))
  assert accel(res.pose_6d) < 0.5 * accel(init6d)


def test_bad_inputs_raise(tiny_body, net_params):
  _, params = net_params
  kwargs, _ = _scene(tiny_body, b=4)

  def create(**changes):
    return Observation.create(**{**kwargs, **changes})

  nan_kp = np.array(kwargs["keypoints_2d"])
  nan_kp[1, 3] = np.nan
  with pytest.raises(ValueError, match="NaN/inf at 1 keypoints"):
    create(keypoints_2d=nan_kp)
  conf = np.array(kwargs["confidence"])
  conf[1, 3] = 0.0
  obs = create(keypoints_2d=nan_kp, confidence=conf)  # missing detection: documented handling
  assert np.isfinite(np.asarray(obs.keypoints_2d)).all()
  with pytest.raises(ValueError, match="init_pose contains NaN"):
    create(init_pose=np.full((4, 24, 3), np.inf))
  with pytest.raises(ValueError, match="empty batch"):
    create(
      init_pose=np.zeros((0, 24, 3)),
      init_betas=np.zeros((0, 4)),
      init_cam_t=np.zeros((0, 3)),
      keypoints_2d=np.zeros((0, 25, 2)),
      confidence=np.zeros((0, 25)),
      features=None,
    )
  with pytest.raises(ValueError, match=r"init_pose must be \[B, 24, 3\]"):
    create(init_pose=np.zeros((4, 23, 3)))
  with pytest.raises(ValueError, match="confidence must be"):
    create(confidence=np.ones((4, 24)))
  with pytest.raises(ValueError, match="group must be"):
    create(group=[0, 1])
  with pytest.raises(ValueError, match="z > 0"):
    create(init_cam_t=np.zeros((4, 3)))
  with pytest.raises(ValueError, match="every confidence is 0"):
    refine(params, create(confidence=np.zeros((4, 25))), config=SMALL)
  with pytest.raises(ValueError, match="features"):
    refine(params, create(features=np.zeros((4, 5))), config=SMALL)
  with pytest.raises(ValueError, match="joint set 'openpose25' has 25"):
    refine(params, create(keypoints_2d=np.zeros((4, 17, 2)), confidence=np.ones((4, 17))))
  with pytest.raises(ValueError, match="consecutive"):
    refine(params, create(group=[0, 1, 0, 1]), task="video")
  with pytest.raises(ValueError, match=">= 2 views"):
    refine(params, create(group=[0, 1, 2, 3]), task="multiview")
  with pytest.raises(ValueError, match="unknown task"):
    refine(params, create(), task="dance")
  with pytest.raises(TypeError, match="Observation"):
    refine(params, kwargs)


def test_zero_confidence_sample_gets_no_keypoint_guidance(tiny_body, net_params):
  _, params = net_params
  kwargs, _ = _scene(tiny_body)
  conf = np.array(kwargs["confidence"])
  conf[2] = 0.0
  obs = Observation.create(**{**kwargs, "confidence": conf})
  res = refine(params, obs, config=SMALL)
  assert np.all(np.asarray(res.keypoint_loss)[:, 2] == 0.0)
  np.testing.assert_allclose(res.cam_t[2], obs.init_cam_t[2], atol=1e-6)


def test_config_defaults_follow_the_official_evals():
  kp, mv, video = (task_config(t) for t in ("keypoints", "multiview", "video"))
  assert (kp.t_start, kp.step_size, kp.num_iters, kp.early_stopping) == (50, 2, 10, True)
  assert kp.loss == GuidanceLoss(keypoint_weight=0.003)
  assert (mv.t_start, mv.step_size, mv.num_iters, mv.early_stopping) == (100, 10, 2, False)
  assert mv.loss.keypoint_weight == 0.0 and mv.loss.multiview_weight == 0.005
  assert (video.loss.keypoint_weight, video.loss.temporal_weight) == (0.003, 30.0)
  assert kp.steps_per_iter == 25 and mv.steps_per_iter == 10
