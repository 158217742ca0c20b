"""Pose and mesh error metrics: MPJPE, PA-MPJPE, PVE, acceleration error, PCK.

All metrics are pure `jnp` functions, batched over any leading axes, and return per-sample values
in the units of their inputs (no implicit x1000: give millimetres to get millimetres; ScoreHMR
multiplies metre-valued errors by 1000 to report mm). Reduce over samples with `masked_mean`.

Protocol details from ScoreHMR's evaluation (`score_hmr/utils/pose_utils.py`):
- MPJPE: mean Euclidean joint error after centring prediction and target on a root joint
  (ScoreHMR: joint 39 of its 44-joint list, the pelvis; pass `root=` for that index).
- PA-MPJPE ("reconstruction error"): MPJPE after a similarity Procrustes fit of the prediction to
  the target (scale, rotation with reflection fix, translation).
- Acceleration error: per frame, the mean over joints of
  ||(p[t-1] - 2 p[t] + p[t+1]) - (g[t-1] - 2 g[t] + g[t+1])||, on root-centred joints; the unit is
  (input unit) / frame^2 (ScoreHMR reports mm/frame^2 - there is no fps factor), and the benchmark
  number is the mean over all frames of all sequences.
"""

from __future__ import annotations

import jax.numpy as jnp

from jhmr.geometry.procrustes import similarity_procrustes

_EPS = 1e-12


def _check_pair(pred, target, dim: int | None = None):
  pred = jnp.asarray(pred)
  target = jnp.asarray(target, pred.dtype)
  if pred.shape != target.shape:
    raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
  if dim is not None and pred.shape[-1] != dim:
    raise ValueError(f"expected a trailing axis of {dim}, got shape {pred.shape}")
  if pred.ndim < 2:
    raise ValueError(f"expected [..., N, {dim or 'D'}] points, got shape {pred.shape}")
  return pred, target


def masked_mean(values, mask=None, axis=-1):
  """Mean of `values` over `axis`, counting only entries where `mask` is true (0 if none are)."""
  values = jnp.asarray(values)
  if mask is None:
    return jnp.mean(values, axis=axis)
  m = jnp.broadcast_to(jnp.asarray(mask, values.dtype), values.shape)
  return jnp.sum(values * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def center_on_root(points, root: int):
  """[..., N, D] -> points minus point `root` (e.g. the pelvis)."""
  points = jnp.asarray(points)
  return points - points[..., root : root + 1, :]


def point_errors(pred, target):
  """[..., N, D] x2 -> [..., N] Euclidean distances."""
  pred, target = _check_pair(pred, target)
  return jnp.linalg.norm(pred - target, axis=-1)


def mpjpe(pred, target, mask=None, root: int | None = None):
  """Mean per-joint position error.

  Args:
    pred: [..., J, 3] predicted joints.
    target: [..., J, 3] ground-truth joints.
    mask: optional [..., J] validity (invalid joints are ignored).
    root: if given, both sets are first centred on joint `root`.

  Returns:
    [...] mean error per sample, in the input units.
  """
  pred, target = _check_pair(pred, target, 3)
  if root is not None:
    pred, target = center_on_root(pred, root), center_on_root(target, root)
  return masked_mean(point_errors(pred, target), mask)


def pa_mpjpe(pred, target, mask=None):
  """Procrustes-aligned MPJPE: MPJPE after the best similarity transform of `pred` to `target`.

  Args:
    pred: [..., J, 3] predicted joints.
    target: [..., J, 3] ground-truth joints.
    mask: optional [..., J] validity; invalid joints neither drive the fit nor count.

  Returns:
    [...] mean error per sample, in the input units. Invariant to any similarity transform of pred.
  """
  pred, target = _check_pair(pred, target, 3)
  aligned = similarity_procrustes(pred, target, weights=mask)
  return masked_mean(point_errors(aligned, target), mask)


def pve(pred, target, mask=None, root_pred=None, root_target=None):
  """Per-vertex error: mean Euclidean distance between corresponding mesh vertices.

  Args:
    pred: [..., V, 3] predicted vertices.
    target: [..., V, 3] ground-truth vertices.
    mask: optional [..., V] validity.
    root_pred, root_target: optional [..., 3] points (usually the pelvis joint) subtracted from
      pred and target first, as in the 3DPW PVE protocol.

  Returns:
    [...] mean error per sample, in the input units.
  """
  pred, target = _check_pair(pred, target, 3)
  if root_pred is not None:
    pred = pred - jnp.asarray(root_pred)[..., None, :]
  if root_target is not None:
    target = target - jnp.asarray(root_target)[..., None, :]
  return masked_mean(point_errors(pred, target), mask)


def acceleration_error(pred, target, mask=None):
  """ScoreHMR's acceleration error per frame (second finite difference, no fps factor).

  Args:
    pred: [..., T, J, 3] predicted joint trajectories (root-centred, as in ScoreHMR).
    target: [..., T, J, 3] ground-truth trajectories.
    mask: optional [..., T] frame validity. A difference at frame t is valid only when frames
      t-1, t and t+1 are all valid (invalid ones are returned as 0 and should be excluded with
      `acceleration_mask`).

  Returns:
    [..., T-2] per-frame error: mean over joints of the norm of the acceleration difference, in
    (input unit) / frame^2. The benchmark number is `masked_mean` over frames (and sequences).
  """
  pred, target = _check_pair(pred, target, 3)
  if pred.ndim < 3 or pred.shape[-3] < 3:
    raise ValueError(f"acceleration_error needs [..., T>=3, J, 3], got shape {pred.shape}")

  def accel(x):
    return x[..., :-2, :, :] - 2.0 * x[..., 1:-1, :, :] + x[..., 2:, :, :]

  err = jnp.mean(jnp.linalg.norm(accel(pred) - accel(target), axis=-1), axis=-1)
  if mask is not None:
    err = jnp.where(acceleration_mask(mask), err, 0.0)
  return err


def acceleration_mask(mask):
  """Frame validity [..., T] -> validity of the second differences [..., T-2]."""
  m = jnp.asarray(mask, bool)
  return m[..., :-2] & m[..., 1:-1] & m[..., 2:]


def pck(pred2d, target2d, threshold, mask=None):
  """Percentage of correct keypoints: fraction of joints within `threshold` of the target.

  Args:
    pred2d: [..., K, D] predicted keypoints (usually D = 2, pixels).
    target2d: [..., K, D] ground-truth keypoints.
    threshold: scalar or [...] distance threshold, in the input units (e.g. 0.05 * bbox size).
    mask: optional [..., K] validity (e.g. target confidence > 0); invalid keypoints do not count.

  Returns:
    [...] fraction in [0, 1] per sample (0 when no keypoint is valid).
  """
  pred2d, target2d = _check_pair(pred2d, target2d)
  dist = point_errors(pred2d, target2d)
  correct = (dist <= jnp.asarray(threshold, dist.dtype)[..., None]).astype(dist.dtype)
  return masked_mean(correct, mask)
