"""Diffusion-HPC's PCK and Ski-Pose errors on hand-built cases."""

import numpy as np
import pytest

from jhmr.eval import hpc_protocol as hpc


def _gt(n=2, conf=1.0):
  gt = np.zeros((n, 24, 3), np.float32)
  gt[..., :2] = np.arange(24, dtype=np.float32)[:, None] * 5
  gt[..., 2] = conf
  return gt


def test_pck_threshold_is_strict():
  gt = _gt(1)
  pred = gt[..., :2].copy()
  pred[0, :12, 0] += 22.4  # exactly on the threshold: wrong
  pred[0, 12:18, 1] -= 22.3  # inside: right
  pred[0, 18:, 0] += 22.5  # outside
  assert hpc.PCK_THRESHOLD == pytest.approx(22.4)
  np.testing.assert_allclose(hpc.pck_per_image(pred, gt), [6 / 24], rtol=1e-6)
  np.testing.assert_allclose(hpc.pck(pred, gt), 25.0, rtol=1e-6)


def test_pck_counts_only_confidence_one():
  gt = _gt(2)
  pred = gt[..., :2].copy()
  pred[:, :8, 0] += 100  # 8 wrong joints ...
  gt[0, :8, 2] = 0.5  # ... which image 0 does not annotate (conf != 1), ...
  gt[0, 8:12, 2] = 2.0  # ... nor these correct ones
  assert hpc.pck_per_image(pred, gt).tolist() == pytest.approx([1.0, 16 / 24])
  gt[1, :, 2] = 0  # no annotated joint: 0, still counted
  assert hpc.pck_per_image(pred, gt).tolist() == pytest.approx([1.0, 0.0])
  assert float(hpc.pck(pred, gt)) == pytest.approx(50.0)


def test_pck_per_action():
  gt = _gt(3)
  pred = gt[..., :2].copy()
  pred[2, :6, 0] += 50
  out = hpc.pck_per_action(pred, gt, [b"vault", "polevault", "vault"])
  assert out == pytest.approx({"polevault": 100.0, "vault": 100 * (1 + 18 / 24) / 2})
  with pytest.raises(ValueError, match="action labels"):
    hpc.pck_per_action(pred, gt, ["vault"])


def test_projection_to_crop():
  cam_t = hpc.crop_translation(np.array([[1.0, 0.1, -0.2]]))
  np.testing.assert_allclose(cam_t, [[0.1, -0.2, 2 * 5000 / 224]], rtol=1e-5)
  uv = hpc.project_to_crop(np.zeros((1, 1, 3)), cam_t)
  np.testing.assert_allclose(uv, [[[112 + 0.1 * 224 / 2, 112 - 0.2 * 224 / 2]]], rtol=1e-5)


def _regressor_identity(gt17):
  """17 'vertices' = the joints, regressor = identity."""
  return np.eye(17, dtype=np.float32), gt17


def test_ski_errors_drop_head_and_centre():
  rng = np.random.default_rng(0)
  gt = rng.normal(size=(2, 17, 3)).astype(np.float32)
  gt -= gt[:, :1]
  reg, verts = _regressor_identity(gt)
  pred = verts + np.array([1.0, 2.0, 3.0], np.float32)  # a translation: centring removes it
  pred[:, 9] += 5.0  # the dropped head joint: ignored
  gt_s = np.concatenate([gt, np.ones((2, 17, 1), np.float32)], -1)  # S with a column of ones
  out = hpc.ski_errors(pred, gt_s, reg)
  np.testing.assert_allclose(out["mpjpe"], 0.0, atol=1e-3)
  np.testing.assert_allclose(out["pa_mpjpe"], 0.0, atol=1e-3)
  pred[:, 10, 0] += 0.016  # one of the 16 joints off by 16 mm -> MPJPE 1 mm
  out = hpc.ski_errors(pred, gt, reg)
  np.testing.assert_allclose(out["mpjpe"], 1.0, rtol=1e-3)
  assert (np.asarray(out["pa_mpjpe"]) > 0.1).all()  # the least-squares fit spreads the 16 mm


def test_ski_errors_pa_is_similarity_invariant():
  rng = np.random.default_rng(1)
  gt = rng.normal(size=(1, 17, 3))
  c, s = np.cos(0.7), np.sin(0.7)
  rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
  pred = 1.5 * gt @ rot.T + 0.3
  pred[:, 9] = 100.0
  out = hpc.ski_errors(pred, gt, np.eye(17))
  assert float(out["pa_mpjpe"][0]) == pytest.approx(0.0, abs=1e-2)
  assert float(out["mpjpe"][0]) > 100
  assert hpc.SKI_JOINTS == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16)
  assert hpc.REFERENCE == {"smart_polevault_pck": 77.7, "ski_mpjpe": 111.67,
                           "ski_pa_mpjpe": 81.76}  # fmt: skip
