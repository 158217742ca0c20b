"""Several people over one image: the body meshes of a frame composited by depth, one colour per
person (the overlays of `refine`, the viewer's image panel).

Meshes are in the camera frame of `jhmr.render.rasterizer` (x right, y down, z forward, metres);
a person's slot that is empty in a frame is marked by `present` False and is not drawn.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.render import rasterizer, shading
from jhmr.render.overlay import palette


def person_colors(num: int) -> np.ndarray:
  """[num, 3] float RGB in [0, 1]: light, distinct colours (track k gets colour k % num)."""
  return 0.55 + 0.45 * palette(num).astype(np.float32) / 255.0


@functools.partial(jax.jit, static_argnames=("image_size",))
def render_people(
  vertices, present, faces, focal_length, camera_center, backgrounds, colors, *, image_size
):
  """Composites P meshes per image over backgrounds.

  Args:
    vertices: [B, P, V, 3] camera-frame vertices (metres).
    present: [B, P] bool; False slots are not drawn.
    faces: [F, 3] int faces shared by every mesh.
    focal_length: [B, 2] (fx, fy) px. camera_center: [B, 2] (cx, cy) px.
    backgrounds: [B, H, W, 3] uint8 or float in [0, 1].
    colors: [P, 3] RGB in [0, 1], one per slot.
    image_size: static (H, W).

  Returns:
    [B, H, W, 3] images of the backgrounds' dtype.
  """
  b, p, v, _ = vertices.shape
  hidden = jnp.asarray([0.0, 0.0, -1.0], vertices.dtype)  # behind the near plane: never drawn
  verts = jnp.where(present[..., None, None], vertices, hidden).reshape(b, p * v, 3)
  all_faces = (jnp.asarray(faces)[None] + v * jnp.arange(p)[:, None, None]).reshape(-1, 3)
  frags = rasterizer.rasterize(
    verts, all_faces, focal_length, camera_center, image_size, smooth_normals=True
  )
  vertex_colors = jnp.broadcast_to(jnp.repeat(jnp.asarray(colors), v, axis=0), (b, p * v, 3))
  color = rasterizer.interpolate(frags, all_faces, vertex_colors)
  return shading.overlay_mesh(backgrounds, frags, color=color)
