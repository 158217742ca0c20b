"""Mask dilation and hole filling for compositing a rendered body over a photograph.

The render generator of Diffusion-HPC keeps a guide image outside the human region and redraws
the inside, as the released pipeline keeps the guide's latents outside the person and re-noises
the inside (`jhmr.pipelines.diffusion_hpc_generate`). The hole is filled from its surroundings
(a diffusion fill: each pass sets the unknown pixels next to known ones to the mean of their
known 3x3 neighbours), then the new body is drawn over it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _box_sum(x):
  """3x3 sum over the two spatial axes of `[B, H, W, C]`, zero padded."""
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")


def dilate(mask, radius: int = 1):
  """`[B, H, W]` bool -> the mask grown by `radius` pixels (3x3 square steps)."""
  x = mask[..., None].astype(jnp.float32)
  for _ in range(radius):
    x = (_box_sum(x) > 0).astype(jnp.float32)
  return x[..., 0] > 0


@functools.partial(jax.jit, static_argnames=("passes",))
def fill_holes(image, hole, passes: int | None = None):
  """Fills the `hole` pixels of `image` from the pixels around them.

  Args:
    image: `[B, H, W, C]` float.
    hole: `[B, H, W]` bool, True where the pixel is to be replaced.
    passes: fill passes (each grows the known region by one pixel); None = max(H, W), enough
      for any hole that leaves at least one known pixel.

  Returns:
    `[B, H, W, C]`: `image` outside the hole; inside, the fill. An image whose every pixel is a
    hole stays as it was.
  """
  image = jnp.asarray(image, jnp.float32)
  known = ~hole
  passes = max(image.shape[1:3]) if passes is None else passes

  def one_pass(carry, _):
    values, known = carry
    weight = known[..., None].astype(jnp.float32)
    total, count = _box_sum(values * weight), _box_sum(weight)
    reached = count > 0
    mean = total / jnp.maximum(count, 1.0)
    values = jnp.where(known[..., None] | ~reached, values, mean)
    return (values, known | reached[..., 0]), None

  (values, _), _ = jax.lax.scan(one_pass, (image, known), None, length=passes)
  return values
