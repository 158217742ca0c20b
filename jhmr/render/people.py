"""Several people over one image: the body meshes of a frame composited by depth, one colour per
person (the overlays of `refine`, the viewer's image panel).

Meshes are in the camera frame of `jhmr.render.rasterizer` (x right, y down, z forward, metres);
a person's slot that is empty in a frame is marked by `present` False and is not drawn.
"""

from __future__ import annotations

import colorsys
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.render import rasterizer, shading


def person_colors(num: int) -> np.ndarray:
  """[num, 3] float RGB in [0, 1]: light, distinct colours; person k always gets the same one
  (golden-ratio hue steps), whatever `num` is."""
  hues = (0.58 + 0.618034 * np.arange(num)) % 1.0
  return np.asarray([colorsys.hsv_to_rgb(h, 0.45, 0.95) for h in hues], np.float32).reshape(-1, 3)


@functools.partial(jax.jit, static_argnames=("image_size", "alpha"))
def render_people(
  vertices, present, faces, focal_length, camera_center, backgrounds, colors, alpha=1.0, *,
  image_size,
):  # fmt: skip
  """Composites P meshes per image over backgrounds (one depth test across people).

  Args:
    vertices: [B, P, V, 3] camera-frame vertices (metres).
    present: [B, P] bool; False slots are not drawn.
    faces: [F, 3] int faces shared by every mesh.
    focal_length: [B, 2] (fx, fy) px. camera_center: [B, 2] (cx, cy) px.
    backgrounds: [B, H, W, 3] uint8 or float in [0, 1].
    colors: [P, 3] RGB in [0, 1], one per slot.
    alpha: static mesh opacity in [0, 1].
    image_size: static (H, W).

  Returns:
    [B, H, W, 3] images of the backgrounds' dtype.
  """
  b, p, v, _ = vertices.shape
  hidden = jnp.asarray([0.0, 0.0, -1.0], vertices.dtype)  # behind the near plane: never drawn
  verts = jnp.where(present[..., None, None], vertices, hidden).reshape(b, p * v, 3)
  faces = jnp.asarray(faces)
  all_faces = (faces[None] + v * jnp.arange(p, dtype=faces.dtype)[:, None, None]).reshape(-1, 3)
  frags = rasterizer.rasterize(
    verts, all_faces, focal_length, camera_center, image_size, smooth_normals=True
  )
  person = jnp.clip(frags.face_ids // faces.shape[0], 0, p - 1)  # [B, H, W] who is seen
  color = jnp.asarray(colors, jnp.float32)[person]
  return shading.overlay_mesh(backgrounds, frags, color=color, alpha=alpha)
