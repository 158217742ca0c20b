"""ScoreHMR guidance losses: frozen dataclasses with a pure `__call__`, differentiated by jax.grad.

All losses act on the one-step clean estimate x0 of the 6D pose, [B, 144] (24 joints x 6D,
global orient first), and return per-sample values [B] whose batch sum is what ScoreHMR
differentiates (research/scorehmr.md section 4):

* `KeypointLoss`: sum_k sum_{x,y} w^2 c_k^2 GMoF_sigma(pi(J_k + t) - j2d_k), sigma = 100 px,
  w = 1000 / max(W, H), on the body model's keypoints (`joints_only`, default OpenPose BODY_25).
* `MultiviewLoss`: 300^2 sum_j || p6d_vj - mean_{views of the person} p6d_j ||^2 over the 23
  body joints (global orient excluded; it differs per view).
* `TemporalLoss`: || x0_{n+1} - x0_n ||^2 over the full 144-D pose for consecutive frames of one
  sequence (summed, no 1/N); assigned to frame n.

Grouping: `group` [B] int32 in [0, B) names the person (multi-view) or sequence (video) of each
row; frames of a sequence are consecutive rows in time order (checked by `Observation`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jhmr.geometry import cameras, rotations

NUM_JOINTS = 24


def gmof(residual, sigma: float):
  """Geman-McClure robustifier, elementwise: sigma^2 r^2 / (sigma^2 + r^2)."""
  sq = jnp.square(residual)
  return sigma**2 * sq / (sigma**2 + sq)


def split_pose(x0):
  """[B, 144] 6D pose -> (global_orient [B, 6], body_pose [B, 23, 6])."""
  pose = jnp.reshape(x0, (*x0.shape[:-1], NUM_JOINTS, 6))
  return pose[..., 0, :], pose[..., 1:, :]


def rot6d_pose(x0):
  """[B, 144] 6D pose -> rotation matrices [B, 24, 3, 3] (Gram-Schmidt)."""
  return rotations.rot6d_to_matrix(jnp.reshape(x0, (*x0.shape[:-1], NUM_JOINTS, 6)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeypointLoss:
  """Confidence-weighted, image-size normalised GMoF reprojection error of 2D keypoints.

  Attributes:
    joint_set: the body model's keypoint set the 2D keypoints follow.
    sigma: GMoF scale in pixels.
  """

  joint_set: str = "openpose25"
  sigma: float = 100.0

  def keypoints(self, body_model, x0, betas):
    """Model keypoints [B, K, 3] (without camera translation) for a 6D pose [B, 144]."""
    orient, body = split_pose(x0)
    out = body_model.joints_only(betas, body, orient, pose_format="rot6d", joint_set=self.joint_set)
    return out.keypoints

  def __call__(
    self,
    body_model,
    x0,
    betas,
    cam_t,
    keypoints_2d,
    confidence,
    focal_length,
    camera_center,
    image_size,
  ):
    """Per-sample loss [B].

    Args:
      body_model: a `jhmr.body.BodyModel`.
      x0: [B, 144] 6D pose; betas: [B, NB]; cam_t: [B, 3] camera translation (R = I).
      keypoints_2d: [B, K, 2] full-image pixels; confidence: [B, K] (0 = missing).
      focal_length: [B] or [B, 2] pixels; camera_center: [B, 2]; image_size: [B, 2] (W, H).
    """
    points = self.keypoints(body_model, x0, betas)
    projected = cameras.perspective_projection(points, cam_t, focal_length, camera_center)
    weight = 1000.0 / jnp.max(image_size, axis=-1)  # [B]
    per_coord = gmof(projected - keypoints_2d, self.sigma)  # [B, K, 2]
    w = jnp.square(weight)[:, None, None] * jnp.square(confidence)[..., None]
    return jnp.sum(w * per_coord, axis=(-2, -1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiviewLoss:
  """Body-pose 6D rotations of the views of one person pulled to their mean."""

  scale: float = 300.0

  def __call__(self, x0, group):
    """Per-sample loss [B] (sum over the group's views = the official per-person loss).

    Args:
      x0: [B, 144]; group: [B] int32 person index in [0, B).
    """
    _, body = split_pose(x0)
    body = jnp.reshape(body, (body.shape[0], -1))  # [B, 138]
    n = x0.shape[0]
    count = jax.ops.segment_sum(jnp.ones((n,), body.dtype), group, num_segments=n)
    mean = jax.ops.segment_sum(body, group, num_segments=n) / jnp.maximum(count, 1.0)[:, None]
    return self.scale**2 * jnp.sum(jnp.square(body - mean[group]), axis=-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TemporalLoss:
  """Squared difference of consecutive frames' full 6D poses within each sequence."""

  def __call__(self, x0, group):
    """Per-sample loss [B]: row n carries ||x0_{n+1} - x0_n||^2 when n+1 is in its sequence.

    Args:
      x0: [B, 144]; group: [B] int32 sequence index (frames consecutive and in time order).
    """
    diff = jnp.sum(jnp.square(x0[1:] - x0[:-1]), axis=-1)
    same = (group[1:] == group[:-1]).astype(x0.dtype)
    return jnp.concatenate([diff * same, jnp.zeros((1,), x0.dtype)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class GuidanceLoss:
  """The official combination of the terms (weights 0 switch a term off).

  ScoreHMR: keypoints 0.003 L_kp; multi-view 0.005 L_mv (which replaces L_kp in the official
  code: use `keypoint_weight=0` there); video 0.003 L_kp + 30 L_temp.
  """

  keypoint_weight: float = 0.003
  multiview_weight: float = 0.0
  temporal_weight: float = 0.0
  keypoint: KeypointLoss = KeypointLoss()
  multiview: MultiviewLoss = MultiviewLoss()
  temporal: TemporalLoss = TemporalLoss()

  @property
  def uses_keypoints(self) -> bool:
    return self.keypoint_weight != 0.0

  def __call__(self, x0, cam_t, data, active=None):
    """(weighted per-sample loss [B], raw keypoint loss [B]).

    Args:
      x0: [B, 144]; cam_t: [B, 3].
      data: a mapping with `body_model`, `betas`, `keypoints_2d`, `confidence`, `focal_length`,
        `camera_center`, `image_size`, `group` (see `jhmr.guidance.Observation`).
      active: optional [B] 0/1 mask; inactive samples get no keypoint term (early stopping).
    """
    zeros = jnp.zeros(x0.shape[:1], x0.dtype)
    raw_kp = zeros
    total = zeros
    if self.uses_keypoints:
      raw_kp = self.keypoint(
        data["body_model"],
        x0,
        data["betas"],
        cam_t,
        data["keypoints_2d"],
        data["confidence"],
        data["focal_length"],
        data["camera_center"],
        data["image_size"],
      )
      kp = raw_kp if active is None else raw_kp * active
      total = total + self.keypoint_weight * kp
    if self.multiview_weight:
      total = total + self.multiview_weight * self.multiview(x0, data["group"])
    if self.temporal_weight:
      total = total + self.temporal_weight * self.temporal(x0, data["group"])
    return total, raw_kp
