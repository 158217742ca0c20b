"""Posing many bodies at once: camera-frame mesh vertices of N parameter rows, in fixed-size
jitted chunks (one compilation for any N)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _posed_chunk(body_model, betas, body_pose, global_orient, cam_t):
  out = body_model(betas, body_pose, global_orient)
  return out.vertices + cam_t[:, None]


def posed_vertices(body_model, global_orient, body_pose, betas, cam_t, *, chunk: int = 64):
  """Camera-frame mesh vertices of N bodies (`body_model(...).vertices + cam_t`).

  Args:
    body_model: a `jhmr.body.BodyModel`.
    global_orient: [N, 3] axis-angle (rad), camera frame.
    body_pose: [N, 23, 3] axis-angle (rad).
    betas: [N, B] shape coefficients.
    cam_t: [N, 3] metres, camera frame.
    chunk: rows per jitted call (the last chunk is padded, so one compilation serves all N).

  Returns:
    [N, V, 3] float32 numpy, metres, camera frame.
  """
  arrays = [np.asarray(a, np.float32) for a in (betas, body_pose, global_orient, cam_t)]
  n = arrays[0].shape[0]
  if n == 0:
    return np.zeros((0, body_model.num_vertices, 3), np.float32)
  chunk = max(1, min(chunk, n))
  out = []
  for start in range(0, n, chunk):
    part = [a[start : start + chunk] for a in arrays]
    size = part[0].shape[0]
    if size < chunk:  # pad with zeros (a valid rest pose) to keep one compiled shape
      part = [np.concatenate([p, np.zeros((chunk - size, *p.shape[1:]), p.dtype)]) for p in part]
    verts = _posed_chunk(body_model, *(jnp.asarray(p) for p in part))
    out.append(np.asarray(verts[:size]))
  return np.concatenate(out)
