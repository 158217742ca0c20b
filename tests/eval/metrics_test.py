"""Metrics against straightforward numpy implementations (ScoreHMR / VIBE definitions)."""

import numpy as np
import pytest

from jhmr.eval import metrics


def _np_accel_error(pred, gt, vis=None):
  """VIBE/ScoreHMR compute_error_accel, written out in numpy."""
  accel_gt = gt[:-2] - 2 * gt[1:-1] + gt[2:]
  accel_pred = pred[:-2] - 2 * pred[1:-1] + pred[2:]
  normed = np.linalg.norm(accel_pred - accel_gt, axis=2)
  if vis is None:
    keep = np.ones(len(normed), bool)
  else:
    invis = ~vis
    keep = ~(invis | np.roll(invis, -1) | np.roll(invis, -2))[:-2]
  return np.mean(normed[keep], axis=1)


def test_mpjpe_and_root_centring():
  rng = np.random.default_rng(0)
  pred, gt = rng.normal(size=(2, 5, 14, 3)).astype(np.float32)
  want = np.linalg.norm(pred - gt, axis=-1).mean(-1)
  np.testing.assert_allclose(metrics.mpjpe(pred, gt), want, rtol=1e-6)
  # A global shift is removed by root centring but not otherwise.
  shifted = pred + np.array([1.0, 2.0, 3.0], np.float32)
  np.testing.assert_allclose(
    metrics.mpjpe(shifted, gt, root=0), metrics.mpjpe(pred, gt, root=0), rtol=1e-5
  )
  assert np.all(np.asarray(metrics.mpjpe(shifted, gt)) > np.asarray(metrics.mpjpe(pred, gt)))
  pc, gc = pred - pred[:, 3:4], gt - gt[:, 3:4]
  np.testing.assert_allclose(
    metrics.mpjpe(pred, gt, root=3), np.linalg.norm(pc - gc, axis=-1).mean(-1), rtol=1e-5
  )


def test_mpjpe_mask_ignores_invalid_joints():
  rng = np.random.default_rng(1)
  pred, gt = rng.normal(size=(2, 3, 10, 3)).astype(np.float32)
  mask = rng.uniform(size=(3, 10)) > 0.3
  corrupted = np.where(mask[..., None], pred, 1e3).astype(np.float32)
  want = [np.linalg.norm(pred[i][mask[i]] - gt[i][mask[i]], axis=-1).mean() for i in range(3)]
  np.testing.assert_allclose(metrics.mpjpe(corrupted, gt, mask), want, rtol=1e-5)
  np.testing.assert_allclose(metrics.pve(corrupted, gt, mask), want, rtol=1e-5)
  # PA-MPJPE with the mask is unaffected by the corrupted (masked) joints.
  np.testing.assert_allclose(
    metrics.pa_mpjpe(corrupted, gt, mask),
    metrics.pa_mpjpe(np.where(mask[..., None], pred, 0.0), gt, mask),
    rtol=1e-4,
  )


def test_pve_root_offsets():
  rng = np.random.default_rng(2)
  pred, gt = rng.normal(size=(2, 50, 3)).astype(np.float32)
  rp, rt = rng.normal(size=(2, 3)).astype(np.float32)
  want = np.linalg.norm((pred - rp) - (gt - rt), axis=-1).mean()
  np.testing.assert_allclose(metrics.pve(pred, gt, root_pred=rp, root_target=rt), want, rtol=1e-5)


def test_acceleration_error_matches_vibe_definition():
  rng = np.random.default_rng(3)
  t = np.linspace(0, 1, 20)[:, None, None]
  gt = (np.sin(3 * t) + rng.normal(size=(1, 14, 3))).astype(np.float32)
  pred = (gt + 0.01 * rng.normal(size=gt.shape)).astype(np.float32)
  got = metrics.acceleration_error(pred, gt)
  assert got.shape == (18,)
  np.testing.assert_allclose(got, _np_accel_error(pred, gt), rtol=1e-4, atol=1e-7)
  vis = np.ones(20, bool)
  vis[[5, 12]] = False
  got_m = metrics.acceleration_error(pred, gt, vis)
  keep = np.asarray(metrics.acceleration_mask(vis))
  assert keep.sum() == 18 - 6
  np.testing.assert_allclose(np.asarray(got_m)[keep], _np_accel_error(pred, gt, vis), rtol=1e-4)
  np.testing.assert_allclose(
    metrics.masked_mean(got_m, keep), _np_accel_error(pred, gt, vis).mean(), rtol=1e-4
  )
  # Constant-velocity errors have zero acceleration error.
  drift = gt + np.arange(20, dtype=np.float32)[:, None, None] * 0.1
  np.testing.assert_allclose(metrics.acceleration_error(drift, gt), 0.0, atol=1e-5)


def test_pck():
  target = np.zeros((2, 4, 2), np.float32)
  pred = np.array(
    [[[1, 0], [0, 3], [2, 2], [0, 0]], [[5, 5], [0, 0.5], [0, 0], [9, 0]]], np.float32
  )
  np.testing.assert_allclose(metrics.pck(pred, target, 2.0), [0.5, 0.5])
  np.testing.assert_allclose(metrics.pck(pred, target, np.array([3.0, 10.0])), [1.0, 1.0])
  mask = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], bool)
  np.testing.assert_allclose(metrics.pck(pred, target, 2.0, mask), [0.5, 2 / 3], rtol=1e-6)


def test_shape_errors_are_clear():
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.mpjpe(np.zeros((5, 3)), np.zeros((6, 3)))
  with pytest.raises(ValueError, match="T>=3"):
    metrics.acceleration_error(np.zeros((2, 5, 3)), np.zeros((2, 5, 3)))
