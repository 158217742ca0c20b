"""Similarity Procrustes alignment (scale, rotation, translation) of point sets, batched.

Finds s, R (a proper rotation, det R = +1), t minimising sum_n w_n ||s R x_n + t - y_n||^2
(Umeyama 1991). This is the alignment behind PA-MPJPE in ScoreHMR/SPIN: the reflection fix flips
the sign of the smallest singular direction when det(U V^T) < 0.
"""

from __future__ import annotations

import jax.numpy as jnp

_EPS = 1e-12


def _weights(points, weights):
  """[..., N] normalised weights (uniform if None)."""
  n = points.shape[-2]
  if weights is None:
    return jnp.full(points.shape[:-1], 1.0 / n, points.dtype)
  w = jnp.broadcast_to(jnp.asarray(weights, points.dtype), points.shape[:-1])
  return w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), _EPS)


def similarity_transform(source, target, weights=None):
  """The similarity (s, R, t) that best maps `source` onto `target`.

  Args:
    source: [..., N, 3] points to align.
    target: [..., N, 3] reference points.
    weights: optional [..., N] non-negative per-point weights (e.g. a joint-validity mask).

  Returns:
    scale [...], rotation [..., 3, 3], translation [..., 3] with
    `scale * source @ rotation^T + translation ~= target`.
  """
  source = jnp.asarray(source)
  target = jnp.asarray(target, source.dtype)
  if source.shape[-1] != 3 or source.shape != target.shape:
    raise ValueError(
      f"source and target must both be [..., N, 3] of equal shape, got {source.shape} and "
      f"{target.shape}"
    )
  w = _weights(source, weights)
  mu_x = jnp.einsum("...n,...nd->...d", w, source)
  mu_y = jnp.einsum("...n,...nd->...d", w, target)
  x = source - mu_x[..., None, :]
  y = target - mu_y[..., None, :]
  var_x = jnp.einsum("...n,...nd,...nd->...", w, x, x)
  cov = jnp.einsum("...n,...ni,...nj->...ij", w, y, x)  # [..., 3, 3] = sum w y x^T
  u, sing, vt = jnp.linalg.svd(cov)
  sign = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
  sign = jnp.where(sign == 0, 1.0, sign).astype(source.dtype)
  d = jnp.stack([jnp.ones_like(sign), jnp.ones_like(sign), sign], axis=-1)
  rotation = jnp.einsum("...ij,...j,...jk->...ik", u, d, vt)
  scale = jnp.sum(sing * d, axis=-1) / jnp.maximum(var_x, _EPS)
  translation = mu_y - scale[..., None] * jnp.einsum("...ij,...j->...i", rotation, mu_x)
  return scale, rotation, translation


def similarity_procrustes(pred, target, weights=None):
  """Aligns `pred` to `target` with the best similarity transform.

  Args:
    pred: [..., N, 3] predicted points (e.g. joints).
    target: [..., N, 3] ground-truth points.
    weights: optional [..., N] per-point weights; zero-weight points do not influence the fit
      (they are still transformed).

  Returns:
    [..., N, 3] aligned prediction `s R pred + t`.
  """
  scale, rotation, translation = similarity_transform(pred, target, weights)
  rotated = jnp.einsum("...ij,...nj->...ni", rotation, jnp.asarray(pred))
  return scale[..., None, None] * rotated + translation[..., None, :]
