"""Per-method training tasks for the shared trainer: the HMR regressor and the ScoreHMR score model.

Each `make_*_task` returns a `jhmr.train.task.Task`; the trainer knows nothing else about them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.data.example import crop_rotation
from jhmr.diffusion.training import diffusion_loss
from jhmr.geometry import rotations
from jhmr.train.task import Task


@dataclasses.dataclass(frozen=True, kw_only=True)
class HMRLossWeights:
  """SPIN-style weights: rotation matrices, shape, 3D joints (m), 2D keypoints ([-1, 1] crop)."""

  pose: float = 1.0
  betas: float = 0.01
  joints3d: float = 5.0
  keypoints2d: float = 5.0


def weak_perspective(points, cam):
  """points [..., N, 3], cam [..., 3] (s, tx, ty) -> [..., N, 2] in [-1, 1] crop coordinates."""
  return cam[..., None, :1] * (points[..., :2] + cam[..., None, 1:])


def normalise_images(images):
  """uint8 `[..., S, S, 3]` -> float32 network input, roughly zero mean / unit variance."""
  return (jnp.asarray(images, jnp.float32) / 255.0 - 0.5) / 0.25


def hmr_targets(batch, body_model, keypoint_set: str = "openpose25") -> dict:
  """What the HMR regressor is trained to predict for a `PersonExample` batch `[B]`.

  rotmat [B, 24, 3, 3] (the root as seen in the crop: `crop_rotation @ R(global_orient)`), betas
  [B, NB], joints3d [B, 24, 3] root-centred and rotated like the root (m), keypoints2d [B, K, 2]
  in [-1, 1] crop coordinates, keypoint_conf [B, K].
  """
  spin = crop_rotation(batch.crop_from_image, jnp)
  pose = jnp.concatenate([batch.global_orient[:, None], batch.body_pose], axis=1)
  rotmat = rotations.axis_angle_to_matrix(pose)
  rotmat = rotmat.at[:, 0].set(spin @ rotmat[:, 0])
  joints = batch.joints_3d - batch.joints_3d[:, :1]
  half = batch.image.shape[-2] / 2
  keypoints = batch.keypoints_2d[keypoint_set]
  return {
    "rotmat": rotmat,
    "betas": batch.betas,
    "joints3d": jnp.einsum("bij,bnj->bni", spin, joints),
    "keypoints2d": (keypoints[..., :2] - half) / half,
    "keypoint_conf": keypoints[..., 2],
  }


def predicted_body(out, body_model, keypoint_set: str = "openpose25"):
  """The body of an HMR output (`jhmr.models.hmr.HMR`: rotmat [B, 24, 3, 3] crop-frame root
  first, betas [B, NB], cam [B, 3]) -> (joints [B, 24, 3] root-centred (m), keypoints2d [B, K, 2]
  of `keypoint_set` in [-1, 1] crop coordinates through `weak_perspective`)."""
  body = body_model.joints_only(
    out["betas"],
    out["rotmat"][:, 1:],
    out["rotmat"][:, 0],
    pose_format="rotmat",
    joint_set=keypoint_set,
  )
  return body.joints - body.joints[:, :1], weak_perspective(body.keypoints, out["cam"])


def make_hmr_task(
  model, body_model, source, *, weights=HMRLossWeights(), transforms=(), evaluate=None
) -> Task:
  """HMR regressor (`jhmr.models.hmr.HMR`) on `PersonExample` crops with full body-model ground
  truth (`hmr_targets`); `transforms` are the training augmentations (`jhmr.data.augment`)."""

  def init(key, batch):
    return model.init(key, normalise_images(batch.image), train=False)

  def loss(params, state, batch, key):
    out, new_state = model.apply(
      {"params": params, **state},
      normalise_images(batch.image),
      train=True,
      rngs={"dropout": key},
      mutable=["batch_stats"],
    )
    target = hmr_targets(batch, body_model)
    nb = out["betas"].shape[-1]
    joints, kp2d = predicted_body(out, body_model)
    conf = target["keypoint_conf"][..., None]
    has_smpl = batch.has_smpl[:, None]
    terms = {
      "pose": jnp.mean(has_smpl[..., None, None] * jnp.square(out["rotmat"] - target["rotmat"])),
      "betas": jnp.mean(has_smpl * jnp.square(out["betas"] - target["betas"][:, :nb])),
      "joints3d": jnp.mean(batch.has_3d[:, None, None] * jnp.square(joints - target["joints3d"])),
      "keypoints2d": jnp.sum(conf * jnp.square(kp2d - target["keypoints2d"]))
      / jnp.maximum(jnp.sum(conf) * 2, 1.0),
    }
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, (terms, new_state)

  return Task(
    name="hmr", init=init, loss=loss, source=source, transforms=transforms, evaluate=evaluate
  )


def make_score_task(net, source, alphas_cumprod, *, evaluate=None) -> Task:
  """ScoreHMR score network (`jhmr.models.score_net.ScoreNet`): eps-prediction L2 loss.

  Examples: pose6d [144] (24 joints x 6D, global orient first) and, for a conditional network,
  features [C] (the regressor's image features).
  """
  alphas_cumprod = jnp.asarray(alphas_cumprod)

  def init(key, batch):
    cond = batch.get("features") if net.cond_dim else None
    t = jnp.zeros(batch["pose6d"].shape[:1], jnp.int32)
    return net.init(key, jnp.asarray(batch["pose6d"]), t, cond)

  def loss(params, state, batch, key):
    eps_fn = lambda x, t, cond: net.apply({"params": params}, x, t, cond)
    cond = batch.get("features") if net.cond_dim else None
    value = diffusion_loss(eps_fn, key, batch["pose6d"], alphas_cumprod, cond=cond)
    return value, ({}, state)

  return Task(name="score_model", init=init, loss=loss, source=source, evaluate=evaluate)


@functools.partial(jax.jit, static_argnums=0)
def _apply_eval(model, variables, images):
  return model.apply(variables, normalise_images(images), train=False)


def predict(model, variables, images, batch_size: int = 256):
  """Runs a trained HMR in inference mode over uint8 [N, S, S, 3] crops in chunks -> dict of
  [N, ...] (images are normalised with `normalise_images` inside).

  Every chunk is padded to `batch_size` (capped at N), so one compiled program serves all calls.
  """
  images = np.asarray(images)
  n = len(images)
  batch_size = min(batch_size, n)
  chunks = []
  for i in range(0, n, batch_size):
    x = images[i : i + batch_size]
    pad = batch_size - len(x)
    x = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
    keep = batch_size - pad
    out = _apply_eval(model, variables, x)
    chunks.append({k: np.asarray(v[:keep]) for k, v in out.items()})
  return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
