"""Baselines: SMPLify-style optimisation of the same keypoint loss with conventional priors.

One entry point, `fit(obs, task=...)`, for the three ScoreHMR settings (the optimisation rows of
the paper's comparison tables). Starting from the same initial estimate as ScoreHMR, one jitted
optax Adam loop minimises

  sum_b [ L_kp(b)                                             (jhmr.guidance.KeypointLoss)
          + pose_weight  * || pose6d_b - init6d_b ||^2        (stay near the regressor)
          + angle_weight * sum exp(s_i * theta_i)^2           (SMPLify's elbow/knee prior)
          + betas_weight * || betas_b - init_betas_b ||^2 ]   (shape prior)
  + smooth_weight * sum_n || pose6d_{n+1} - pose6d_n ||^2     (task 'video' only)

over the 6D pose (global orient + body), the betas and the camera translation of every row:

* 'keypoints': each row is fitted on its own (SMPLify, single stage, as in SPIN).
* 'multiview': the rows of one `obs.group` are views of one person (uncalibrated cameras). Each
  view keeps its own global orientation and camera translation, while the 23 body-joint rotations
  and the betas are ONE set of variables per person, shared by its views (the hard-constraint form
  of ScoreHMR's consistency loss L_mv, like ProHMR-fitting's multi-view baseline). They start from
  the mean of the views' initial estimates (the 6D mean, re-orthonormalised through the 6D ->
  matrix map; the betas' mean). The per-row terms above are unchanged, so the pose prior pulls the
  shared pose towards every view's initial estimate. Every person needs >= 2 views.
* 'video': the rows of one `obs.group` are the frames of a sequence, consecutive and in time
  order. Every frame is fitted as in 'keypoints', plus ScoreHMR's temporal term L_temp (the
  squared difference of consecutive frames' full 144-D 6D pose, global orient included; not the
  camera or the betas) weighted by `smooth_weight`.

The joint-angle prior penalises the SMPL-convention bend directions SMPLify uses (elbows about y,
knees about x, signs +, -, -, -); for a body model with other joint axes it only acts as a mild
regulariser.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jhmr.geometry import rotations
from jhmr.guidance.losses import NUM_JOINTS, KeypointLoss, TemporalLoss, rot6d_pose
from jhmr.guidance.observation import Observation, check_consecutive_groups

Task = Literal["keypoints", "multiview", "video"]
TASKS = ("keypoints", "multiview", "video")

# (SMPL joint, axis, sign) of SMPLify's angle prior: left/right elbow about y, left/right knee
# about x.
ANGLE_PRIOR = ((18, 1, 1.0), (19, 1, -1.0), (4, 0, -1.0), (5, 0, -1.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmplifyConfig:
  """Optimisation settings (static).

  `pose_weight` 1500 is the best of {5, 20, 50, 200, 500, 1500, 5000} on an earlier CMU
  keypoint-fitting benchmark (tuned on its test scenes: an optimistic baseline; see
  benchmarks/README.md, "ScoreHMR refinement").

  `smooth_weight` (task 'video' only) 1e4 is ScoreHMR's own ratio of the temporal to the keypoint
  term (30 L_temp against 0.003 L_kp) and the best trade-off of a sweep over {0, 1e2, 1e3, 3e3,
  1e4, 3e4, 1e5} with the other defaults on synthetic video (`test_default_smooth_weight_sweep`,
  slow): the 'anny-tiny' body, 2 sequences x 24 frames of smooth motion at 20 m with f = 5000 px
  (a ~370 px tall person), initial estimates with 0.1 rad of independent per-frame noise per joint,
  keypoints with 3 px of noise. MPJPE / acceleration error (mm), 3 scenes: 0 -> 26-32 / 67-74,
  1e3 -> 19-24 / 36-40, 3e3 -> 17-21 / 25-28, 1e4 -> 19-23 / 18-20, 3e4 -> 28-30 / 14-16,
  1e5 -> 45-50 / 12-15. 3e3 is 1-2 mm better in MPJPE there but has ~40% more acceleration error
  (the video tables' smoothness metric); with 6 px / 0.15 rad noise 1e4 is best in both (26 / 35
  against 28 / 45 at 3e3). Above 1e4 the fit over-smooths the motion.
  """

  num_steps: int = 250
  learning_rate: float = 1e-2
  pose_weight: float = 1500.0
  angle_weight: float = 1.0
  betas_weight: float = 10.0
  smooth_weight: float = 1e4
  optimize_betas: bool = True
  keypoint: KeypointLoss = KeypointLoss()


@flax.struct.dataclass
class SmplifyResult:
  """pose [B, 24, 3, 3], pose_6d [B, 144], betas [B, NB], cam_t [B, 3], loss [num_steps].

  For 'multiview' the body pose (joints 1..23) and the betas are identical across the views of a
  person; `loss` is the total objective (all rows together) before each step.
  """

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


def objective(
  variables, obs: Observation, body_model, init6d, config: SmplifyConfig, pose_prior=None
):
  """(total scalar, per-sample keypoint loss [B]) of the per-row variables (no temporal term);
  `pose_prior` (a pytree callable, rotations [B, 24, 3, 3] -> [B]) adds its per-sample term."""
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
  if pose_prior is not None:
    prior += pose_prior(rot6d_pose(x0))
  return jnp.sum(kp + prior), kp


def _group_mean(x, group, fill):
  """Per-group mean [B, D] of rows [B, D] (slot g = group g; empty slots hold `fill` [D])."""
  n = x.shape[0]
  total = jax.ops.segment_sum(x, group, num_segments=n)
  count = jax.ops.segment_sum(jnp.ones((n,), x.dtype), group, num_segments=n)
  mean = total / jnp.maximum(count, 1.0)[:, None]
  return jnp.where(count[:, None] > 0, mean, fill)


def shared_body_init(init6d, group):
  """Per-person body pose [B, 138] (slot g = person g): the mean of its views' 6D body poses,
  re-orthonormalised through the 6D -> matrix map (empty slots hold the identity)."""
  body = init6d[:, 6:]
  identity = jnp.tile(rotations.matrix_to_rot6d(jnp.eye(3)), NUM_JOINTS - 1)
  mean = _group_mean(body, group, identity)
  mean = jnp.reshape(mean, (mean.shape[0], NUM_JOINTS - 1, 6))
  mean = rotations.matrix_to_rot6d(rotations.rot6d_to_matrix(mean))
  return jnp.reshape(mean, (mean.shape[0], -1))


def _initial_variables(obs: Observation, init6d, task: str):
  if task == "multiview":
    return {
      "orient": init6d[:, :6],
      "body": shared_body_init(init6d, obs.group),
      "betas": _group_mean(obs.init_betas, obs.group, jnp.zeros_like(obs.init_betas[0])),
      "cam_t": obs.init_cam_t,
    }
  return {"pose": init6d, "betas": obs.init_betas, "cam_t": obs.init_cam_t}


def _per_row(variables, group, task: str):
  """The optimised variables -> per-row {'pose' [B, 144], 'betas' [B, NB], 'cam_t' [B, 3]}."""
  if task == "multiview":
    return {
      "pose": jnp.concatenate([variables["orient"], variables["body"][group]], axis=-1),
      "betas": variables["betas"][group],
      "cam_t": variables["cam_t"],
    }
  return variables


def task_objective(
  variables, obs: Observation, body_model, init6d, config: SmplifyConfig, task, pose_prior=None
):
  """(total scalar, per-row keypoint loss [B]) of `task`'s optimised variables."""
  rows = _per_row(variables, obs.group, task)
  total, kp = objective(rows, obs, body_model, init6d, config, pose_prior)
  if task == "video" and config.smooth_weight:
    total += config.smooth_weight * jnp.sum(TemporalLoss()(rows["pose"], obs.group))
  return total, kp


def _fit(
  obs: Observation, body_model, config: SmplifyConfig, task: str, pose_prior=None
) -> SmplifyResult:
  b = obs.init_pose.shape[0]
  init6d = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (b, -1))
  variables = _initial_variables(obs, init6d, task)
  optimizer = optax.adam(config.learning_rate)
  if not config.optimize_betas:
    optimizer = optax.multi_transform(
      {"on": optimizer, "off": optax.set_to_zero()},
      {name: "off" if name == "betas" else "on" for name in variables},
    )
  grad_fn = jax.value_and_grad(task_objective, has_aux=True)

  def step(state, _):
    variables, opt_state = state
    (loss, _), grads = grad_fn(variables, obs, body_model, init6d, config, task, pose_prior)
    updates, opt_state = optimizer.update(grads, opt_state, variables)
    return (optax.apply_updates(variables, updates), opt_state), loss

  (variables, _), losses = jax.lax.scan(
    step, (variables, optimizer.init(variables)), None, length=config.num_steps
  )
  rows = _per_row(variables, obs.group, task)
  return SmplifyResult(
    pose=rot6d_pose(rows["pose"]),
    pose_6d=rows["pose"],
    betas=rows["betas"],
    cam_t=rows["cam_t"],
    loss=losses,
  )


_fit_jit = jax.jit(_fit, static_argnames=("config", "task"))


def fit(
  obs: Observation,
  *,
  task: Task = "keypoints",
  config: SmplifyConfig | None = None,
  pose_prior=None,
) -> SmplifyResult:
  """Fits `obs.keypoints_2d` from `obs`'s initial estimate (same inputs as `refine`).

  Args:
    obs: an `Observation` with 2D keypoints (every task fits them, per row).
    task: 'keypoints' (every row on its own), 'multiview' (the views of a person, `obs.group`,
      share the body pose and betas; every person needs >= 2 views) or 'video' (the frames of a
      sequence, `obs.group`, consecutive rows in time order, are smoothed with `smooth_weight`).
    config: `SmplifyConfig()` by default.
    pose_prior: an optional learned pose prior added to every row's objective: a pytree
      callable, rotations [B, 24, 3, 3] -> per-row penalty [B] (e.g.
      `jhmr.models.vposer.VPoserPrior`, SMPLify-X's VPoser latent-norm prior). Its arrays are
      traced, so a new weight or new variables do not recompile.

  Returns:
    `SmplifyResult`. Compiles once per (shapes, config, task).
  """
  if not isinstance(obs, Observation):
    raise TypeError(f"obs must be a jhmr.guidance.Observation, got {type(obs).__name__}")
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
  config = config or SmplifyConfig()
  body_model = obs.body_model
  if body_model is None:
    from jhmr.body import load_body_model

    body_model = load_body_model()
  k = len(body_model.joint_names(config.keypoint.joint_set))
  if obs.keypoints_2d.shape[1] != k:
    raise ValueError(
      f"keypoints_2d has {obs.keypoints_2d.shape[1]} keypoints but joint set "
      f"{config.keypoint.joint_set!r} has {k} (every baseline, multi-view included, fits 2D "
      "keypoints)"
    )
  group = np.asarray(obs.group)
  if task == "video":
    check_consecutive_groups(group)
  if task == "multiview":
    single = np.flatnonzero(np.bincount(group, minlength=len(group))[group] < 2)
    if single.size:
      raise ValueError(
        f"multi-view fitting needs every person (obs.group) seen in >= 2 views; rows "
        f"{single.tolist()} are the only view of their person (fit them with task='keypoints')"
      )
  if config.keypoint.joint_set in body_model.joint_sets:
    valid = body_model.joint_sets[config.keypoint.joint_set].valid
    obs = obs.replace(confidence=obs.confidence * valid)
  return _fit_jit(
    obs.replace(body_model=None), body_model, config=config, task=task, pose_prior=pose_prior
  )
