"""Shading of rasterised fragments: Lambertian light and mesh-over-image compositing (pure jnp).

Light directions are camera-space unit vectors pointing from the surface *towards* the light
(x right, y down, +z forward, so (0, 0, -1) is a headlight at the camera).
"""

from __future__ import annotations

import jax.numpy as jnp

from jhmr.render.rasterizer import Fragments

DEFAULT_COLOR = (0.65, 0.74, 0.86)  # light blue, as in the ScoreHMR/HMR2 renders
DEFAULT_LIGHT = (0.3, -0.5, -1.0)  # from the upper left of the camera


def _unit(v):
  v = jnp.asarray(v, jnp.float32)
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def shade(
  fragments: Fragments,
  color=DEFAULT_COLOR,
  light_direction=DEFAULT_LIGHT,
  ambient: float = 0.35,
  two_sided: bool = True,
):
  """Lambertian shading: `color * (ambient + (1 - ambient) * max(0, n . l))`.

  Args:
    fragments: rasteriser output with [B, H, W, 3] normals and [B, H, W] mask.
    color: [3] RGB in [0, 1], or per-pixel [B, H, W, 3] (e.g. `interpolate`d vertex colours).
    light_direction: [3] or [B, 3] direction towards the light in camera space.
    ambient: ambient fraction in [0, 1].
    two_sided: light back faces as front faces (|n . l|), so open meshes do not render black.

  Returns:
    [B, H, W, 3] float32 RGB in [0, 1]; 0 on background.
  """
  if not 0.0 <= ambient <= 1.0:
    raise ValueError(f"ambient must be in [0, 1], got {ambient}")
  light = _unit(light_direction)
  if light.ndim == 1:
    light = light[None]
  cos = jnp.einsum("bhwc,bc->bhw", fragments.normals.astype(jnp.float32), light)
  cos = jnp.abs(cos) if two_sided else jnp.maximum(cos, 0.0)
  intensity = ambient + (1.0 - ambient) * cos
  rgb = jnp.asarray(color, jnp.float32) * intensity[..., None]
  return jnp.where(fragments.mask[..., None], jnp.clip(rgb, 0.0, 1.0), 0.0)


def to_float_image(image):
  """uint8 [0, 255] or float [0, 1] image -> float32 [0, 1]."""
  image = jnp.asarray(image)
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def overlay_mesh(
  image,
  fragments: Fragments,
  color=DEFAULT_COLOR,
  alpha: float = 1.0,
  light_direction=DEFAULT_LIGHT,
  ambient: float = 0.35,
):
  """Composites the shaded mesh over an image.

  Args:
    image: [H, W, 3] or [B, H, W, 3], uint8 or float in [0, 1].
    fragments: rasteriser output for the same (H, W) (batch 1 for an unbatched image).
    color: mesh colour (see `shade`).
    alpha: mesh opacity in [0, 1].

  Returns:
    The composited image, same shape and dtype as `image`.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  img = jnp.asarray(image)
  unbatched = img.ndim == 3
  x = to_float_image(img[None] if unbatched else img)
  if x.shape[:3] != fragments.mask.shape or x.shape[-1] != 3:
    raise ValueError(
      f"image {img.shape} does not match fragments {fragments.mask.shape} (need [B, H, W, 3])"
    )
  rgb = shade(fragments, color, light_direction, ambient)
  m = fragments.mask[..., None]
  out = jnp.where(m, alpha * rgb + (1.0 - alpha) * x, x)
  if unbatched:
    out = out[0]
  if img.dtype == jnp.uint8:
    return jnp.round(out * 255.0).astype(jnp.uint8)
  return out.astype(img.dtype)


def depth_to_image(depth, mask=None):
  """Depth [..., H, W] -> grey image [..., H, W] in [0, 1]: near = bright, background = 0.

  Each image is normalised by its own min/max depth over the mask (Diffusion-HPC style depth
  conditioning uses such normalised inverse-depth-like maps).
  """
  depth = jnp.asarray(depth, jnp.float32)
  mask = depth > 0 if mask is None else jnp.asarray(mask, bool)
  big = jnp.finfo(jnp.float32).max
  lo = jnp.min(jnp.where(mask, depth, big), axis=(-2, -1), keepdims=True)
  hi = jnp.max(jnp.where(mask, depth, -big), axis=(-2, -1), keepdims=True)
  scaled = 1.0 - 0.8 * (depth - lo) / jnp.maximum(hi - lo, 1e-6)
  return jnp.where(mask, scaled, 0.0)
