"""The emdb TFDS builder on dummy official files."""

import pickle
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.data import builder_testing as bt
from jhmr.data import raw
from jhmr.data.emdb import dummy_data_generator as dummy
from jhmr.data.emdb import emdb_dataset_builder as emdb

# EMDB 1: one sequence, 2 good frames of 3; all: + 2 frames of the other sequence.
Emdb1Test = bt.builder_test_case(emdb.Builder, "emdb1", {"test": 2}, dummy.DUMMY_DIR)
EmdbVideoTest = bt.builder_test_case(emdb.Builder, "emdb1_video", {"test": 1}, dummy.DUMMY_DIR)
EmdbAllTest = bt.builder_test_case(emdb.Builder, "all", {"test": 4}, dummy.DUMMY_DIR)


def test_emdb1_frames_and_video_hold_the_file_values(tmp_path):
  frames = bt.build(emdb.Builder, "emdb1", tmp_path, dummy.DUMMY_DIR).as_data_source()["test"]
  data = dummy.sequence("P0", "09_outdoor_walk")
  rows = sorted((frames[i] for i in range(len(frames))), key=lambda r: r["frame_index"])
  assert [r["frame_index"] for r in rows] == [0, 2]  # frame 1 is not a good frame
  for row in rows:
    t = row["frame_index"]
    np.testing.assert_allclose(row["body_pose"].ravel(), data["smpl"]["poses_body"][t], rtol=1e-6)
    np.testing.assert_allclose(row["transl"], data["smpl"]["trans"][t], rtol=1e-6)
    np.testing.assert_allclose(row["keypoints2d"], data["kp2d"][t], rtol=1e-6)
    expected = Rotation.from_matrix(data["camera"]["extrinsics"][t, :3, :3]) * Rotation.from_rotvec(
      data["smpl"]["poses_root"][t]
    )
    np.testing.assert_allclose(row["global_orient_cam"], expected.as_rotvec(), atol=1e-5)
    box = data["bboxes"]["bboxes"][t]
    assert row["scale"] == pytest.approx(1.2 * max(box[2:] - box[:2]), rel=1e-5)
    assert bt.text(row["subject"]) == "P0" and row["image"].shape == (224, 224, 3)
  video = bt.build(emdb.Builder, "emdb1_video", tmp_path, dummy.DUMMY_DIR).as_data_source()["test"][
    0
  ]
  np.testing.assert_array_equal(video["good"], [True, False, True])
  assert video["body_pose"].shape == (3, 23, 3)


def test_missing_and_malformed_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no P<k>/<sequence>/\\*_data.pkl"):
    bt.build(emdb.Builder, "emdb1", tmp_path / "out", tmp_path)
  shutil.copytree(dummy.DUMMY_DIR, tmp_path / "raw")
  path = tmp_path / "raw" / "P0" / "09_outdoor_walk" / "P0_09_outdoor_walk_data.pkl"
  data = dummy.sequence("P0", "09_outdoor_walk")
  data["smpl"]["poses_body"] = np.zeros((3, 63))
  path.write_bytes(pickle.dumps(data, protocol=2))
  with pytest.raises(raw.RawDataError, match=r"_data.pkl: smpl.poses_body has shape \(3, 63\)"):
    bt.build(emdb.Builder, "emdb1", tmp_path / "out", tmp_path / "raw")
  (tmp_path / "raw" / "P0" / "09_outdoor_walk" / "images" / "00002.jpg").unlink()
  path.write_bytes(pickle.dumps(dummy.sequence("P0", "09_outdoor_walk"), protocol=2))
  with pytest.raises(raw.RawDataError, match="images: 2 .jpg files for the 3 frames"):
    bt.build(emdb.Builder, "emdb1", tmp_path / "out2", tmp_path / "raw")
