"""Baseline: SMPLify-style optimisation of the same keypoint loss with conventional priors.

Starting from the same initial estimate as ScoreHMR, Adam minimises

  sum_b [ L_kp(b)                                             (jhmr.guidance.KeypointLoss)
          + pose_weight  * || pose6d_b - init6d_b ||^2        (stay near the regressor)
          + angle_weight * sum exp(s_i * theta_i)^2           (SMPLify's elbow/knee prior)
          + betas_weight * || betas_b - init_betas_b ||^2 ]   (shape prior)

over the 6D pose (global orient + body), the betas and the camera translation. The joint-angle
prior penalises the SMPL-convention bend directions SMPLify uses (elbows about y, knees about x,
signs +, -, -, -); for a body model with other joint axes it only acts as a mild regulariser.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jhmr.geometry import rotations
from jhmr.guidance.losses import KeypointLoss, rot6d_pose
from jhmr.guidance.observation import Observation

# (SMPL joint, axis, sign) of SMPLify's angle prior: left/right elbow about y, left/right knee
# about x.
ANGLE_PRIOR = ((18, 1, 1.0), (19, 1, -1.0), (4, 0, -1.0), (5, 0, -1.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmplifyConfig:
  """Optimisation settings (static).

  `pose_weight` 1500 is the best of {5, 20, 50, 200, 500, 1500, 5000} on the CMU keypoint-fitting
  benchmark (`benchmarks/scorehmr.py`, tuned on its test scenes: an optimistic baseline).
  """

  num_steps: int = 250
  learning_rate: float = 1e-2
  pose_weight: float = 1500.0
  angle_weight: float = 1.0
  betas_weight: float = 10.0
  optimize_betas: bool = True
  keypoint: KeypointLoss = KeypointLoss()


@flax.struct.dataclass
class SmplifyResult:
  """pose [B, 24, 3, 3], pose_6d [B, 144], betas [B, NB], cam_t [B, 3], loss [num_steps]."""

  pose: jnp.ndarray
  pose_6d: jnp.ndarray
  betas: jnp.ndarray
  cam_t: jnp.ndarray
  loss: jnp.ndarray


def angle_prior(pose):
  """SMPLify's exp bend prior per sample [B] from rotations [B, 24, 3, 3]."""
  aa = rotations.matrix_to_axis_angle(pose)
  terms = [jnp.exp(sign * aa[:, j, axis]) ** 2 for j, axis, sign in ANGLE_PRIOR]
  return sum(terms)


def objective(variables, obs: Observation, body_model, init6d, config: SmplifyConfig):
  """(total scalar, per-sample keypoint loss [B])."""
  x0, betas, cam = variables["pose"], variables["betas"], variables["cam_t"]
  kp = config.keypoint(
    body_model,
    x0,
    betas,
    cam,
    obs.keypoints_2d,
    obs.confidence,
    obs.focal_length,
    obs.camera_center,
    obs.image_size,
  )
  prior = config.pose_weight * jnp.sum(jnp.square(x0 - init6d), axis=-1)
  prior += config.angle_weight * angle_prior(rot6d_pose(x0))
  prior += config.betas_weight * jnp.sum(jnp.square(betas - obs.init_betas), axis=-1)
  return jnp.sum(kp + prior), kp


def _fit(obs: Observation, body_model, config: SmplifyConfig) -> SmplifyResult:
  b = obs.init_pose.shape[0]
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (b, -1))
  variables = {"pose": init6d, "betas": obs.init_betas, "cam_t": obs.init_cam_t}
  optimizer = optax.adam(config.learning_rate)
  if not config.optimize_betas:
    optimizer = optax.multi_transform(
      {"on": optimizer, "off": optax.set_to_zero()},
      {"pose": "on", "betas": "off", "cam_t": "on"},
    )
  grad_fn = jax.value_and_grad(objective, has_aux=True)

  def step(state, _):
    variables, opt_state = state
    (loss, _), grads = grad_fn(variables, obs, body_model, init6d, config)
    updates, opt_state = optimizer.update(grads, opt_state, variables)
    return (optax.apply_updates(variables, updates), opt_state), loss

  (variables, _), losses = jax.lax.scan(
    step, (variables, optimizer.init(variables)), None, length=config.num_steps
  )
  return SmplifyResult(
    pose=rot6d_pose(variables["pose"]),
    pose_6d=variables["pose"],
    betas=variables["betas"],
    cam_t=variables["cam_t"],
    loss=losses,
  )


_fit_jit = jax.jit(_fit, static_argnames=("config",))


def fit(obs: Observation, *, config: SmplifyConfig | None = None) -> SmplifyResult:
  """Fits `obs.keypoints_2d` from `obs`'s initial estimate (same inputs as `refine`)."""
  if not isinstance(obs, Observation):
    raise TypeError(f"obs must be a jhmr.guidance.Observation, got {type(obs).__name__}")
  config = config or SmplifyConfig()
  body_model = obs.body_model
  if body_model is None:
    from jhmr.body import load_body_model

    body_model = load_body_model()
  k = len(body_model.joint_names(config.keypoint.joint_set))
  if obs.keypoints_2d.shape[1] != k:
    raise ValueError(
      f"keypoints_2d has {obs.keypoints_2d.shape[1]} keypoints but joint set "
      f"{config.keypoint.joint_set!r} has {k}"
    )
  if config.keypoint.joint_set in body_model.joint_sets:
    valid = body_model.joint_sets[config.keypoint.joint_set].valid
    obs = obs.replace(confidence=obs.confidence * valid)
  return _fit_jit(obs.replace(body_model=None), body_model, config=config)
