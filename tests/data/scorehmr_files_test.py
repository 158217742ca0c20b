"""Tests of jhmr.data.scorehmr_files on dummy files written from the documented layouts
(research/scorehmr.md §5; key names spelled out here, not taken from the reader)."""

import pickle

import numpy as np
import pytest

from jhmr.data import scorehmr_files as files_lib


def dummy_rows(rng, n, image_names, size=(64, 48)):
  """The §5 npz keys for n rows (images named from `image_names`)."""
  w, h = size
  kp2d = np.concatenate([rng.uniform(5, 40, (n, 25, 2)), rng.uniform(0.5, 1, (n, 25, 1))], -1)
  return {
    "imgname": np.array([image_names[i % len(image_names)] for i in range(n)]),
    "center": np.tile([w / 2, h / 2], (n, 1)).astype(np.float32),
    "scale": np.full(n, 40.0, np.float32),
    "body_pose": rng.normal(size=(n, 72)).astype(np.float32) * 0.1,
    "has_body_pose": np.ones(n, np.float32),
    "betas": rng.normal(size=(n, 10)).astype(np.float32),
    "has_betas": np.ones(n, np.float32),
    "body_keypoints_2d": kp2d.astype(np.float32),
    "extra_keypoints_2d": np.zeros((n, 19, 3), np.float32),
    "body_keypoints_3d": rng.normal(size=(n, 25, 4)).astype(np.float32) * 0.3,
    "extra_keypoints_3d": rng.normal(size=(n, 19, 4)).astype(np.float32) * 0.3,
  }


def dummy_hmr2(rng, n):
  from jhmr.geometry import rotations

  aa = (rng.normal(size=(n, 24, 3)) * 0.2).astype(np.float32)
  return {
    "pred_betas": rng.normal(size=(n, 10)).astype(np.float32) * 0.5,
    "pred_pose": np.asarray(rotations.axis_angle_to_matrix(aa), np.float32),
    "pred_cam": np.tile([0.9, 0.0, 0.1], (n, 1)).astype(np.float32),
    "pred_cam_t": np.tile([0.0, 0.2, 30.0], (n, 1)).astype(np.float32),
  }


def test_npz_set_and_cache(tmp_path):
  rng = np.random.default_rng(0)
  rows = dummy_rows(rng, 5, ["a.png", "b.png"])
  np.savez(tmp_path / "3dpw_test.npz", **rows)
  np.savez(tmp_path / "cache.npz", **dummy_hmr2(rng, 5))
  s = files_lib.read_eval_npz(tmp_path / "3dpw_test.npz")
  assert len(s) == 5 and s.keypoints_2d.shape == (5, 44, 3) and s.keypoints_3d.shape == (5, 44, 4)
  np.testing.assert_allclose(s.keypoints_3d[:, 25:], rows["extra_keypoints_3d"])
  np.testing.assert_array_equal(s.group, np.arange(5))
  np.testing.assert_allclose(s.boxes[0], [12.0, 4.0, 52.0, 44.0])
  preds = files_lib.read_hmr2_cache(tmp_path / "cache.npz")
  assert preds.rotmat.shape == (5, 24, 3, 3) and preds.cam_t[0, 2] == 30.0
  files_lib.check_aligned(tmp_path / "cache.npz", s, preds)


def test_group_pickles(tmp_path):
  rng = np.random.default_rng(1)
  groups = [dummy_rows(rng, n, [f"f{n}.png"]) for n in (3, 2)]
  (tmp_path / "mannequin.pkl").write_bytes(pickle.dumps(groups))
  (tmp_path / "hmr2.pkl").write_bytes(pickle.dumps([dummy_hmr2(rng, 3), dummy_hmr2(rng, 2)]))
  s = files_lib.read_eval_groups(tmp_path / "mannequin.pkl")
  np.testing.assert_array_equal(s.group, [0, 0, 0, 1, 1])
  assert [list(g) for g in s.groups()] == [[0, 1, 2], [3, 4]]
  assert len(files_lib.read_hmr2_cache(tmp_path / "hmr2.pkl")) == 5


def test_errors_name_file_and_key(tmp_path):
  rng = np.random.default_rng(2)
  rows = dummy_rows(rng, 2, ["a.png"])
  del rows["extra_keypoints_3d"]
  np.savez(tmp_path / "bad.npz", **rows)
  with pytest.raises(files_lib.ScoreHMRFileError, match=r"bad\.npz.*'extra_keypoints_3d'"):
    files_lib.read_eval_npz(tmp_path / "bad.npz")
  groups = [dummy_rows(rng, 2, ["a.png"]), dummy_rows(rng, 2, ["a.png"])]
  del groups[1]["center"]
  (tmp_path / "g.pkl").write_bytes(pickle.dumps(groups))
  with pytest.raises(files_lib.ScoreHMRFileError, match=r"g\.pkl.*'center' in group 1"):
    files_lib.read_eval_groups(tmp_path / "g.pkl")
  (tmp_path / "evil.pkl").write_bytes(pickle.dumps([{"imgname": print}]))
  with pytest.raises(files_lib.torch_pickle.UnsafePickleError, match=r"builtins\.print"):
    files_lib.read_eval_groups(tmp_path / "evil.pkl")
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    files_lib.read_eval_npz(tmp_path / "nope.npz")


def test_j19_regressor(tmp_path):
  reg = np.random.default_rng(3).random((19, 30))
  (tmp_path / "SMPL_to_J19.pkl").write_bytes(pickle.dumps(reg, protocol=2))
  got = files_lib.read_j19_regressor(tmp_path / "SMPL_to_J19.pkl", 30)
  np.testing.assert_allclose(got, reg, rtol=1e-6)
  with pytest.raises(files_lib.ScoreHMRFileError, match="30 vertices"):
    files_lib.read_j19_regressor(tmp_path / "SMPL_to_J19.pkl", 31)
