"""Pinhole cameras: perspective projection and weak-perspective <-> perspective translation.

Conventions (OpenCV, as in ScoreHMR/SPIN): camera space is right-handed with x right, y down and
+z forward (points in front of the camera have z > 0). Image coordinates are pixels, u to the right
and v down, with intrinsics K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]:

  u = fx * X / Z + cx,   v = fy * Y / Z + cy,   where [X, Y, Z] = R @ p + t.

ScoreHMR uses R = I, f = 5000 px and the principal point at the image centre (W/2, H/2).

Weak perspective (HMR-style crop camera) `(s, tx, ty)` maps a crop of `image_size` pixels; the
equivalent perspective translation for focal length f is (ScoreHMR `utils.py`, HMR2
`cam_crop_to_full`):

  bs = image_size * s + eps,   t = (tx, ty, 2 f / bs)

and for a crop (bbox centre (cx, cy), bbox size b px) inside a full image W x H:

  bs = b * s + eps,   t = (tx + 2 (cx - W/2) / bs,  ty + 2 (cy - H/2) / bs,  2 f / bs).
"""

from __future__ import annotations

import jax.numpy as jnp

_EPS = 1e-9  # ScoreHMR's epsilon in `bs = b * s + 1e-9`.


def _focal_xy(focal_length) -> jnp.ndarray:
  """Focal length [...] or [..., 2] -> [..., 2] (fx, fy)."""
  f = jnp.asarray(focal_length, jnp.result_type(float))
  if f.ndim == 0 or f.shape[-1] != 2:
    f = jnp.stack([f, f], axis=-1)
  return f


def perspective_projection(
  points,
  translation,
  focal_length,
  camera_center,
  rotation=None,
):
  """Projects camera-frame points through a pinhole camera.

  Args:
    points: [..., N, 3] points (body frame; `rotation` and `translation` map them to the camera).
    translation: [..., 3] camera translation t (applied after the rotation).
    focal_length: scalar, [...] or [..., 2] focal length(s) in pixels. A trailing axis of size 2
      is read as (fx, fy); note that a batch of exactly two scalar focal lengths must therefore be
      given as [2, 2] (or [2, 1] broadcast) to be unambiguous.
    camera_center: [..., 2] principal point (cx, cy) in pixels.
    rotation: optional [..., 3, 3] camera rotation R (identity if None).

  Returns:
    [..., N, 2] pixel coordinates (u, v). Points at z = 0 give inf/nan; the caller masks them.
  """
  points = jnp.asarray(points)
  if points.shape[-1] != 3:
    raise ValueError(f"points must have a trailing axis of 3, got shape {points.shape}")
  translation = jnp.asarray(translation)
  if translation.shape[-1] != 3:
    raise ValueError(f"translation must be [..., 3], got shape {translation.shape}")
  camera_center = jnp.asarray(camera_center)
  if camera_center.shape[-1] != 2:
    raise ValueError(f"camera_center must be [..., 2], got shape {camera_center.shape}")
  if rotation is not None:
    rotation = jnp.asarray(rotation)
    if rotation.shape[-2:] != (3, 3):
      raise ValueError(f"rotation must be [..., 3, 3], got shape {rotation.shape}")
    points = jnp.einsum("...ij,...nj->...ni", rotation, points)
  cam = points + translation[..., None, :]
  xy = cam[..., :2] / cam[..., 2:3]
  f = _focal_xy(focal_length)
  return xy * f[..., None, :] + camera_center[..., None, :]


def weak_perspective_to_translation(cam, focal_length, image_size, eps: float = _EPS):
  """ScoreHMR's crop camera (s, tx, ty) -> perspective translation (tx, ty, 2 f / (size * s)).

  Args:
    cam: [..., 3] weak-perspective camera (s, tx, ty) on a square crop.
    focal_length: scalar or [...] focal length in pixels (ScoreHMR: 5000).
    image_size: scalar or [...] crop size in pixels (ScoreHMR: 224).
    eps: added to `image_size * s` (ScoreHMR: 1e-9).

  Returns:
    [..., 3] translation t (same units as the body, usually metres).
  """
  cam = jnp.asarray(cam)
  if cam.shape[-1] != 3:
    raise ValueError(f"cam must be [..., 3] (s, tx, ty), got shape {cam.shape}")
  s, tx, ty = cam[..., 0], cam[..., 1], cam[..., 2]
  bs = jnp.asarray(image_size, cam.dtype) * s + eps
  tz = 2.0 * jnp.asarray(focal_length, cam.dtype) / bs
  return jnp.stack([tx, ty, tz], axis=-1)


def translation_to_weak_perspective(translation, focal_length, image_size, eps: float = _EPS):
  """Inverse of `weak_perspective_to_translation`: (tx, ty, tz) -> (s, tx, ty).

  Args:
    translation: [..., 3] perspective translation with tz > 0.
    focal_length: scalar or [...] focal length in pixels.
    image_size: scalar or [...] crop size in pixels.
    eps: the epsilon used by the forward conversion (subtracted back out).

  Returns:
    [..., 3] weak-perspective camera (s, tx, ty).
  """
  t = jnp.asarray(translation)
  if t.shape[-1] != 3:
    raise ValueError(f"translation must be [..., 3], got shape {t.shape}")
  bs = 2.0 * jnp.asarray(focal_length, t.dtype) / t[..., 2]
  s = (bs - eps) / jnp.asarray(image_size, t.dtype)
  return jnp.stack([s, t[..., 0], t[..., 1]], axis=-1)


def crop_to_full_translation(
  cam, bbox_center, bbox_size, image_size, focal_length, eps: float = _EPS
):
  """ScoreHMR/HMR2 `cam_crop_to_full`: crop camera (s, tx, ty) -> full-image translation.

  Args:
    cam: [..., 3] weak-perspective camera (s, tx, ty) predicted on the bbox crop.
    bbox_center: [..., 2] bbox centre (cx, cy) in full-image pixels.
    bbox_size: scalar or [...] bbox side length b in pixels.
    image_size: [..., 2] full image size as (W, H) (ScoreHMR's `img_size` order).
    focal_length: scalar or [...] focal length in pixels, principal point at (W/2, H/2).
    eps: added to `b * s` (ScoreHMR: 1e-9; its PHALP export uses 1e-6).

  Returns:
    [..., 3] translation t such that projecting with `perspective_projection(points, t, f,
    image_size / 2)` lands the body on the bbox.
  """
  cam = jnp.asarray(cam)
  if cam.shape[-1] != 3:
    raise ValueError(f"cam must be [..., 3] (s, tx, ty), got shape {cam.shape}")
  bbox_center = jnp.asarray(bbox_center, cam.dtype)
  image_size = jnp.asarray(image_size, cam.dtype)
  if bbox_center.shape[-1] != 2 or image_size.shape[-1] != 2:
    raise ValueError(
      f"bbox_center and image_size must be [..., 2], got {bbox_center.shape}, {image_size.shape}"
    )
  s, tx, ty = cam[..., 0], cam[..., 1], cam[..., 2]
  bs = jnp.asarray(bbox_size, cam.dtype) * s + eps
  offset = 2.0 * (bbox_center - image_size / 2.0) / bs[..., None]
  tz = 2.0 * jnp.asarray(focal_length, cam.dtype) / bs
  return jnp.stack([tx + offset[..., 0], ty + offset[..., 1], tz], axis=-1)


def intrinsics_matrix(focal_length, camera_center):
  """K [..., 3, 3] from focal length(s) (scalar, [...] or [..., 2]) and principal point [..., 2]."""
  f = _focal_xy(focal_length)
  c = jnp.asarray(camera_center, f.dtype)
  f, c = jnp.broadcast_arrays(f, c)
  zero = jnp.zeros_like(f[..., 0])
  one = jnp.ones_like(f[..., 0])
  rows = [
    jnp.stack([f[..., 0], zero, c[..., 0]], -1),
    jnp.stack([zero, f[..., 1], c[..., 1]], -1),
    jnp.stack([zero, zero, one], -1),
  ]
  return jnp.stack(rows, axis=-2)
