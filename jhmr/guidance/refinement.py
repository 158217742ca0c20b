"""ScoreHMR refinement: DDIM inversion + guided DDIM sampling, repeated, as one compiled program.

For `num_iters` outer iterations (research/scorehmr.md section 3):
  1. DDIM inversion of x (the initial 6D pose first, later the x left at level 0 by the previous
     pass) from level 0 to t_start, without guidance.
  2. Guided DDIM sampling back to level 0. At each step the network gives eps (never
     differentiated); the guidance gradient is taken w.r.t. the one-step estimate
     x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), so grad_{x_t} L = grad_{x0} L / sqrt(a_t), and
     eps' = eps + sqrt(1 - a_t) * gradient_scale * grad_{x_t} L. The camera translation takes one
     Adam step on the unweighted keypoint loss, from the same VJP.
The output is the x0 of the last sampling step. With early stopping (keypoint fitting), a sample
whose keypoint loss changes by less than `early_stop_tol` (relative, denominator
max(prev, cur, 1)) between guided steps is converged: from then on it gets no keypoint guidance or
camera gradient, and the x0 and camera of that step are returned. The batch keeps running under
masks, so one program serves every batch of the same shape.

Per frame this costs 2 * num_iters * steps network evaluations (the condition's part of the
network is computed once) and num_iters * steps body-model passes (forward + one VJP).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jhmr.diffusion.ddim import ddim_step, predict_x0
from jhmr.diffusion.sampling import ddim_invert, sampling_pairs
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.geometry import rotations
from jhmr.guidance.losses import GuidanceLoss, rot6d_pose
from jhmr.guidance.observation import Observation, check_consecutive_groups
from jhmr.models.score_net import ScoreNet, denoise_cached, encode_condition

Task = Literal["keypoints", "multiview", "video"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefineConfig:
  """Refinement settings (static: a new value compiles a new program).

  Attributes:
    t_start: DDIM level reached by inversion (t*).
    step_size: DDIM step (Delta).
    num_iters: outer inversion + sampling iterations.
    gradient_scale: multiplies the guidance gradient.
    loss: the guidance objective (weights per task).
    early_stopping: per-sample early stopping on the keypoint loss.
    early_stop_tol: relative-change threshold.
    camera_lr: Adam learning rate of the camera translation (optimised iff the keypoint term is
      on and `optimize_camera`).
    optimize_camera: see camera_lr.
    average_betas: replace each group's betas by their mean (video and multi-view evals).
    net: the score network's architecture; None infers it from the parameters.
  """

  t_start: int = 50
  step_size: int = 2
  num_iters: int = 10
  gradient_scale: float = 1.0
  loss: GuidanceLoss = GuidanceLoss()
  early_stopping: bool = True
  early_stop_tol: float = 1e-5
  camera_lr: float = 1e-2
  optimize_camera: bool = True
  average_betas: bool = False
  net: ScoreNet | None = None

  @property
  def steps_per_iter(self) -> int:
    return len(sampling_pairs(self.t_start, self.step_size)[0])

  def replace(self, **changes) -> RefineConfig:
    return dataclasses.replace(self, **changes)


TASK_CONFIGS: dict[str, RefineConfig] = {
  # eval_keypoint_fitting.py: W_KP2D 0.003, t* 50, step 2, 10 iterations, early stopping.
  "keypoints": RefineConfig(),
  # eval_multiview.py: W_MULTIVIEW 0.005 (replacing the keypoint term), t* 100, step 10, 2 iters.
  "multiview": RefineConfig(
    t_start=100,
    step_size=10,
    num_iters=2,
    loss=GuidanceLoss(keypoint_weight=0.0, multiview_weight=0.005),
    early_stopping=False,
    average_betas=True,
  ),
  # eval_video.py: 0.003 L_kp + 30 L_temp, t* 50, step 2, 10 iterations, no early stopping.
  "video": RefineConfig(
    loss=GuidanceLoss(keypoint_weight=0.003, temporal_weight=30.0),
    early_stopping=False,
    average_betas=True,
  ),
}


def task_config(task: str) -> RefineConfig:
  """The official defaults of `task` ('keypoints', 'multiview' or 'video')."""
  if task not in TASK_CONFIGS:
    raise ValueError(f"unknown task {task!r}; valid: {sorted(TASK_CONFIGS)}")
  return TASK_CONFIGS[task]


@flax.struct.dataclass
class RefineResult:
  """Refined parameters and diagnostics.

  Attributes:
    pose: [B, 24, 3, 3] refined rotations (global orient first).
    pose_6d: [B, 144] the same in 6D.
    betas: [B, NB] the betas used (averaged per group where configured; not optimised).
    cam_t: [B, 3] refined camera translation.
    loss: [num_iters, B] per-sample guidance objective at the last guided step of each iteration.
    keypoint_loss: [num_iters * steps, B] raw keypoint loss at every guided step.
    steps_used: [B] guided steps until convergence (all steps when not converged).
    converged: [B] bool, early-stopped samples.
    pose_6d_per_iter: [num_iters, B, 144] the estimate after each iteration (the last equals
      `pose_6d`); with `cam_t_per_iter` [num_iters, B, 3] it shows how guidance moved it.
  """

  pose: jnp.ndarray
  pose_6d: jnp.ndarray
  betas: jnp.ndarray
  cam_t: jnp.ndarray
  loss: jnp.ndarray
  keypoint_loss: jnp.ndarray
  steps_used: jnp.ndarray
  converged: jnp.ndarray
  pose_6d_per_iter: jnp.ndarray
  cam_t_per_iter: jnp.ndarray


def net_from_params(params) -> ScoreNet:
  """The pose-only `ScoreNet` whose parameters these are (cond_dim, hidden, num_blocks)."""
  p = params.get("params", params)
  if "init_mlp_betas" in p:
    raise ValueError("refinement supports the pose-only network (the released ScoreHMR model)")
  num_blocks = sum(1 for k in p if k.startswith("blocks_"))
  kernel = p["blocks_0"]["block"]["linear_layer1"]["kernel"]
  pose_dim = p["init_mlp"]["kernel"].shape[0]
  return ScoreNet(
    pose_dim=pose_dim,
    cond_dim=kernel.shape[0] - pose_dim,
    hidden=kernel.shape[1],
    num_blocks=num_blocks,
  )


def _group_mean(x, group):
  n = x.shape[0]
  total = jax.ops.segment_sum(x, group, num_segments=n)
  count = jax.ops.segment_sum(jnp.ones((n,), x.dtype), group, num_segments=n)
  return (total / jnp.maximum(count, 1.0)[:, None])[group]


@flax.struct.dataclass
class _Carry:
  x: jnp.ndarray
  cam: jnp.ndarray
  opt_state: object
  prev_kp: jnp.ndarray
  done: jnp.ndarray
  done_x0: jnp.ndarray
  done_cam: jnp.ndarray
  steps_used: jnp.ndarray
  step: jnp.ndarray
  last_x0: jnp.ndarray


def refine_arrays(params, obs: Observation, body_model, config: RefineConfig, net: ScoreNet):
  """The traced core of `refine` (jit it with `config` and `net` static)."""
  b = obs.init_pose.shape[0]
  ab = jnp.asarray(make_alphas_cumprod("cosine", 1000))
  cache = encode_condition(params, obs.features, net)
  eps_fn = lambda x, t: denoise_cached(params, x, t, cache, net)
  betas = obs.init_betas
  if config.average_betas:
    betas = _group_mean(betas, obs.group)
  data = {
    "body_model": body_model,
    "betas": betas,
    "keypoints_2d": obs.keypoints_2d,
    "confidence": obs.confidence,
    "focal_length": obs.focal_length,
    "camera_center": obs.camera_center,
    "image_size": obs.image_size,
    "group": obs.group,
  }
  loss_fn = config.loss
  kp_weight = loss_fn.keypoint_weight
  move_camera = loss_fn.uses_keypoints and config.optimize_camera
  optimizer = optax.adam(config.camera_lr)
  x_init = jnp.reshape(rotations.matrix_to_rot6d(obs.init_pose), (b, -1))
  src, dst = sampling_pairs(config.t_start, config.step_size)

  def guided_step(c: _Carry, pair):
    t, t_next = pair
    a_t = ab[t]
    eps = eps_fn(c.x, t)
    x0_hat = predict_x0(c.x, eps, a_t)
    terms = lambda x0, cam: loss_fn(x0, cam, data)  # (weighted [B], raw keypoint [B])
    (weighted, raw_kp), pullback = jax.vjp(terms, x0_hat, c.cam)
    rel = jnp.abs(c.prev_kp - raw_kp) / jnp.maximum(jnp.maximum(c.prev_kp, raw_kp), 1.0)
    newly = jnp.zeros_like(c.done)
    if config.early_stopping and loss_fn.uses_keypoints:
      newly = ~c.done & (c.step > 0) & (rel < config.early_stop_tol)
    done = c.done | newly
    # d(sum weighted)/d(x0, cam), with converged samples' keypoint term switched off: the
    # weighted loss is linear in each sample's raw keypoint loss, so mask its cotangent.
    raw_cot = -kp_weight * done.astype(x0_hat.dtype) * raw_kp.dtype.type(loss_fn.uses_keypoints)
    g_x0, g_cam = pullback((jnp.ones_like(raw_kp), raw_cot))
    g_xt = config.gradient_scale * g_x0 / jnp.sqrt(a_t)
    eps_guided = eps + jnp.sqrt(1.0 - a_t) * g_xt
    x0 = predict_x0(c.x, eps_guided, a_t)
    x_next = ddim_step(x0, eps_guided, ab[t_next])
    cam, opt_state = c.cam, c.opt_state
    if move_camera:
      # grad of sum(active * raw_kp) w.r.t. the camera (only the keypoint term sees it).
      updates, opt_state = optimizer.update(g_cam / kp_weight, opt_state)
      cam = optax.apply_updates(cam, updates)
    weighted = weighted + raw_cot * raw_kp  # the objective actually differentiated, [B]
    carry = _Carry(
      x=x_next,
      cam=cam,
      opt_state=opt_state,
      prev_kp=raw_kp,
      done=done,
      done_x0=jnp.where(newly[:, None], x0, c.done_x0),
      done_cam=jnp.where(newly[:, None], c.cam, c.done_cam),
      steps_used=jnp.where(done, c.steps_used, c.step + 1),
      step=c.step + 1,
      last_x0=x0,
    )
    return carry, (raw_kp, weighted)

  def outer(c: _Carry, _):
    c = c.replace(
      x=ddim_invert(eps_fn, c.x, ab, t_start=config.t_start, step_size=config.step_size)
    )
    c, (raw, weighted) = jax.lax.scan(guided_step, c, (jnp.asarray(src), jnp.asarray(dst)))
    return c, (raw, weighted[-1], *_current(c))

  def _current(c: _Carry):
    """(pose 6D [B, 144], cam_t [B, 3]) as returned if refinement stopped now."""
    return (
      jnp.where(c.done[:, None], c.done_x0, c.last_x0),
      jnp.where(c.done[:, None], c.done_cam, c.cam),
    )

  carry = _Carry(
    x=x_init,
    cam=obs.init_cam_t,
    opt_state=optimizer.init(obs.init_cam_t),
    prev_kp=jnp.full((b,), jnp.inf, x_init.dtype),
    done=jnp.zeros((b,), bool),
    done_x0=x_init,
    done_cam=obs.init_cam_t,
    steps_used=jnp.zeros((b,), jnp.int32),
    step=jnp.zeros((), jnp.int32),
    last_x0=x_init,
  )
  carry, (raw, per_iter, pose_iters, cam_iters) = jax.lax.scan(
    outer, carry, None, length=config.num_iters
  )
  pose_6d, cam_t = _current(carry)
  return RefineResult(
    pose=rot6d_pose(pose_6d),
    pose_6d=pose_6d,
    betas=betas,
    cam_t=cam_t,
    loss=per_iter,
    keypoint_loss=jnp.reshape(raw, (-1, b)),
    steps_used=carry.steps_used,
    converged=carry.done,
    pose_6d_per_iter=pose_iters,
    cam_t_per_iter=cam_iters,
  )


_refine_jit = jax.jit(refine_arrays, static_argnames=("config", "net"))


def refine(
  params,
  obs: Observation,
  *,
  task: Task = "keypoints",
  config: RefineConfig | None = None,
  key: jax.Array | None = None,
) -> RefineResult:
  """Refines an initial human-mesh estimate with ScoreHMR's diffusion guidance.

  Args:
    params: parameters of a trained pose-only `ScoreNet` (`{'params': ...}`).
    obs: an `Observation` (from `Observation.create`, which validates it).
    task: 'keypoints' (2D keypoint fitting), 'multiview' (views of a person grouped by
      `obs.group`) or 'video' (frames of a sequence grouped by `obs.group`, in row order).
    config: overrides the task's official defaults (`task_config(task)`).
    key: unused: ScoreHMR's refinement is deterministic (the inversion starts from the clean
      estimate); accepted so call sites stay uniform with stochastic samplers.

  Returns:
    `RefineResult`. Compiles once per (shapes, config); later calls reuse the program.
  """
  del key
  if not isinstance(obs, Observation):
    raise TypeError(f"obs must be a jhmr.guidance.Observation, got {type(obs).__name__}")
  config = config or task_config(task)
  net = config.net or net_from_params(params)
  features = obs.features
  if net.cond_dim and (features is None or features.shape[-1] != net.cond_dim):
    got = None if features is None else features.shape
    raise ValueError(f"the score network expects features [B, {net.cond_dim}], got {got}")
  if not net.cond_dim and features is not None and features.shape[-1]:
    raise ValueError("features given to an unconditional score network")
  body_model = obs.body_model
  if body_model is None:
    from jhmr.body import load_body_model

    body_model = load_body_model()
  if config.loss.uses_keypoints:
    k = len(body_model.joint_names(config.loss.keypoint.joint_set))
    if obs.keypoints_2d.shape[1] != k:
      raise ValueError(
        f"keypoints_2d has {obs.keypoints_2d.shape[1]} keypoints but joint set "
        f"{config.loss.keypoint.joint_set!r} has {k}"
      )
    if not np.any(np.asarray(obs.confidence) > 0):
      raise ValueError("every confidence is 0: there are no keypoints to fit")
    if config.loss.keypoint.joint_set in getattr(body_model, "joint_sets", {}):
      valid = body_model.joint_sets[config.loss.keypoint.joint_set].valid
      obs = obs.replace(confidence=obs.confidence * valid)  # undefined keypoints: no effect
  group = np.asarray(obs.group)
  if config.loss.temporal_weight:
    check_consecutive_groups(group)
  if config.loss.multiview_weight and np.bincount(group).max() < 2:
    raise ValueError("multi-view refinement needs at least one person seen in >= 2 views")
  return _refine_jit(params, obs.replace(body_model=None), body_model, config=config, net=net)
