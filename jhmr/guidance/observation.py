"""`Observation`: what ScoreHMR refines (an initial estimate) and what it fits (2D evidence).

Build it with `Observation.create(...)`, which validates everything eagerly (numpy, before any
jit) and raises `ValueError` naming the problem. Conventions follow ScoreHMR: rotations of the 24
SMPL joints with the global orientation first; a perspective camera with R = I, focal length 5000
px and the principal point at the image centre unless given; keypoints in full-image pixels.

Documented handling of imperfect inputs:
* a keypoint with confidence 0 may hold NaN/inf (detectors write NaN for missing joints); it is
  replaced by 0 and has no effect. A non-finite keypoint with confidence > 0 is an error.
* a sample whose confidences are all 0 is allowed (it gets no keypoint guidance: in video or
  multi-view the other terms and frames still act on it); a keypoint-fitting batch in which every
  sample has all-zero confidences is an error (there is nothing to fit).
* `group` ids are arbitrary integers; they are renumbered to 0..G-1. For video the frames of a
  sequence must be consecutive rows (time order is the row order).
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

from jhmr.geometry import rotations

DEFAULT_FOCAL_LENGTH = 5000.0


@flax.struct.dataclass
class Observation:
  """Inputs of `jhmr.guidance.refine` (a pytree; build with `Observation.create`).

  Attributes:
    init_pose: [B, 24, 3, 3] initial rotations (global orient first), e.g. a regressor's.
    init_betas: [B, NB] initial shape.
    init_cam_t: [B, 3] initial camera translation (R = I; the body is at z > 0).
    keypoints_2d: [B, K, 2] detected keypoints in pixels (zeros where missing).
    confidence: [B, K] detection confidences in [0, inf); 0 = missing.
    image_size: [B, 2] (W, H) pixels.
    focal_length: [B, 2] (fx, fy) pixels.
    camera_center: [B, 2] principal point pixels.
    features: [B, C] standardised image features for a conditional model, or None.
    group: [B] int32 in [0, B): the person (multi-view) or sequence (video) of each row.
    body_model: the `jhmr.body.BodyModel` to fit with, or None (the default model).
  """

  init_pose: jnp.ndarray
  init_betas: jnp.ndarray
  init_cam_t: jnp.ndarray
  keypoints_2d: jnp.ndarray
  confidence: jnp.ndarray
  image_size: jnp.ndarray
  focal_length: jnp.ndarray
  camera_center: jnp.ndarray
  features: jnp.ndarray | None
  group: jnp.ndarray
  body_model: object = None

  @property
  def batch_size(self) -> int:
    return self.init_pose.shape[0]

  @classmethod
  def create(
    cls,
    init_pose,
    init_betas,
    init_cam_t,
    keypoints_2d=None,
    confidence=None,
    *,
    image_size,
    focal_length=DEFAULT_FOCAL_LENGTH,
    camera_center=None,
    features=None,
    group=None,
    body_model=None,
    pose_format: str = "rotmat",
  ) -> Observation:
    """Validates and normalises the inputs (see the module docstring for the rules).

    Args:
      init_pose: [B, 24, 3, 3] ('rotmat'), [B, 24, 3] ('axis_angle') or [B, 24, 6] ('rot6d').
      init_betas: [B, NB]. init_cam_t: [B, 3].
      keypoints_2d: [B, K, 2] or [B, K, 3] (x, y, confidence); None for a task without
        keypoints (multi-view), giving K = 0.
      confidence: [B, K]; required with [B, K, 2] keypoints.
      image_size: (W, H) or [B, 2].
      focal_length: scalar, [B] or [B, 2] (fx, fy) pixels.
      camera_center: [2] or [B, 2]; default the image centre.
      features: [B, C] or None. group: [B] ints or None (all rows one group).
      body_model: a `BodyModel` or None.
    """
    shape = rotations.trailing_shape(pose_format)
    pose = _finite(init_pose, "init_pose")
    if pose.ndim != 2 + len(shape) or pose.shape[1:] != (24, *shape):
      raise ValueError(
        f"init_pose must be [B, 24, {', '.join(map(str, shape))}] for pose_format="
        f"{pose_format!r}, got {pose.shape}"
      )
    b = pose.shape[0]
    if b == 0:
      raise ValueError("empty batch: init_pose has 0 rows")
    pose = np.asarray(rotations.to_matrix(pose, pose_format), np.float32)
    betas = _finite(init_betas, "init_betas")
    if betas.ndim != 2 or betas.shape[0] != b:
      raise ValueError(f"init_betas must be [{b}, NB], got {betas.shape}")
    cam_t = _finite(init_cam_t, "init_cam_t")
    if cam_t.shape != (b, 3):
      raise ValueError(f"init_cam_t must be [{b}, 3], got {cam_t.shape}")
    if np.any(cam_t[:, 2] <= 0):
      raise ValueError("init_cam_t must put the body in front of the camera (z > 0)")

    kp, conf = _keypoints(keypoints_2d, confidence, b)
    size = np.broadcast_to(_finite(image_size, "image_size"), (b, 2)).astype(np.float32)
    if np.any(size <= 0):
      raise ValueError(f"image_size (W, H) must be positive, got {image_size}")
    focal = _finite(focal_length, "focal_length")
    if focal.ndim == 0:
      focal = np.full((b, 2), focal, np.float32)
    elif focal.shape == (b,):
      focal = np.repeat(focal[:, None], 2, axis=1)
    elif focal.shape != (b, 2):
      raise ValueError(f"focal_length must be a scalar, [{b}] or [{b}, 2], got {focal.shape}")
    if np.any(focal <= 0):
      raise ValueError("focal_length must be positive")
    center = size / 2 if camera_center is None else _finite(camera_center, "camera_center")
    try:
      center = np.broadcast_to(center, (b, 2)).astype(np.float32)
    except ValueError:
      raise ValueError(f"camera_center must be [2] or [B, 2], got {np.shape(center)}") from None
    feats = None
    if features is not None:
      feats = _finite(features, "features")
      if feats.ndim != 2 or feats.shape[0] != b:
        raise ValueError(f"features must be [{b}, C], got {feats.shape}")
    return cls(
      init_pose=jnp.asarray(pose),
      init_betas=jnp.asarray(betas),
      init_cam_t=jnp.asarray(cam_t),
      keypoints_2d=jnp.asarray(kp),
      confidence=jnp.asarray(conf),
      image_size=jnp.asarray(size),
      focal_length=jnp.asarray(focal),
      camera_center=jnp.asarray(center),
      features=None if feats is None else jnp.asarray(feats),
      group=jnp.asarray(_groups(group, b)),
      body_model=body_model,
    )


def _finite(x, name: str) -> np.ndarray:
  arr = np.asarray(x, np.float32)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return arr


def _keypoints(keypoints_2d, confidence, b: int):
  if keypoints_2d is None:
    if confidence is not None:
      raise ValueError("confidence given without keypoints_2d")
    return np.zeros((b, 0, 2), np.float32), np.zeros((b, 0), np.float32)
  kp = np.asarray(keypoints_2d, np.float32)
  if kp.ndim != 3 or kp.shape[0] != b or kp.shape[2] not in (2, 3):
    raise ValueError(f"keypoints_2d must be [{b}, K, 2] or [{b}, K, 3], got {kp.shape}")
  if kp.shape[2] == 3:
    if confidence is not None:
      raise ValueError("give the confidence either as keypoints_2d[..., 2] or separately")
    kp, conf = kp[..., :2], kp[..., 2]
  else:
    if confidence is None:
      raise ValueError("keypoints_2d [B, K, 2] needs confidence [B, K]")
    conf = np.asarray(confidence, np.float32)
  if conf.shape != kp.shape[:2]:
    raise ValueError(f"confidence must be {kp.shape[:2]}, got {conf.shape}")
  if not np.all(np.isfinite(conf)) or np.any(conf < 0):
    raise ValueError("confidence must be finite and >= 0")
  bad = ~np.all(np.isfinite(kp), axis=-1)
  if np.any(bad & (conf > 0)):
    rows, cols = np.nonzero(bad & (conf > 0))
    raise ValueError(
      f"keypoints_2d has NaN/inf at {len(rows)} keypoints with confidence > 0 "
      f"(first: sample {rows[0]}, keypoint {cols[0]}); set their confidence to 0"
    )
  kp = np.where(bad[..., None], 0.0, kp).astype(np.float32)
  return kp, conf.astype(np.float32)


def _groups(group, b: int) -> np.ndarray:
  if group is None:
    return np.zeros((b,), np.int32)
  g = np.asarray(group)
  if g.shape != (b,) or not np.issubdtype(g.dtype, np.integer):
    raise ValueError(f"group must be [{b}] integers, got {g.shape} {g.dtype}")
  _, ids = np.unique(g, return_inverse=True)
  return ids.astype(np.int32).reshape(b)


def check_consecutive_groups(group: np.ndarray) -> None:
  """Raises unless the rows of each group are consecutive (needed for video sequences)."""
  g = np.asarray(group)
  starts = np.flatnonzero(np.diff(g) != 0) + 1
  seen = [g[0], *g[starts]]
  if len(set(seen)) != len(seen):
    raise ValueError("video frames of one sequence must be consecutive rows (group ids repeat)")
