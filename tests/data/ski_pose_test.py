"""The ski_pose TFDS builder on dummy Ski-Pose labels (legs swapped back in 3D only)."""

import shutil

import h5py
import numpy as np
import pytest

from jhmr.data import builder_testing as bt
from jhmr.data import raw
from jhmr.data.ski_pose import dummy_data_generator as dummy
from jhmr.data.ski_pose import ski_pose_dataset_builder as ski

SPLITS = {"train": 3, "test": 2}
SkiPoseFramesTest = bt.builder_test_case(ski.Builder, "frames", SPLITS, dummy.DUMMY_DIR)


def _rows(split_source):
  return sorted((split_source[i] for i in range(len(split_source))), key=lambda r: r["index"])


def test_values(tmp_path):
  source = bt.build(ski.Builder, "frames", tmp_path, dummy.DUMMY_DIR).as_data_source()
  assert {k: len(v) for k, v in source.items()} == SPLITS
  for split in SPLITS:
    labels = dummy.labels(split)
    for i, row in enumerate(_rows(source[split])):
      s3d = labels["3D"][i] - labels["3D"][i][0]
      # the file's rows 4-6 become 1-3 (right leg) and vice versa; the rest is root-centred.
      np.testing.assert_allclose(row["joints3d"][1:4], s3d[4:7], atol=1e-6)
      np.testing.assert_allclose(row["joints3d"][4:7], s3d[1:4], atol=1e-6)
      np.testing.assert_allclose(row["joints3d"][[0, *range(7, 17)]], s3d[[0, *range(7, 17)]],
                                 atol=1e-6)  # fmt: skip
      assert not row["joints3d"][0].any()
      # 2D: x 256 px, not swapped.
      np.testing.assert_allclose(row["keypoints2d"][:, :2], labels["2D"][i] * 256, rtol=1e-6)
      assert (row["keypoints2d"][:, 2] == 1).all()
      seq, cam, frame = labels["seq"][i], labels["cam"][i], labels["frame"][i]
      assert bt.text(row["image_path"]) == f"seq_{seq:03d}/cam_{cam:02d}/image_{frame:06d}.png"
      assert (row["seq"], row["cam"], row["frame"], row["subj"]) == (seq, cam, frame, 3)
      # SPIN part: R ankle = H36M 3, L hip = H36M 4 (2D order), neck / head rows empty.
      np.testing.assert_allclose(row["part"][0, :2], labels["2D"][i][3] * 256, rtol=1e-6)
      np.testing.assert_allclose(row["part"][3, :2], labels["2D"][i][4] * 256, rtol=1e-6)
      assert not row["part"][12:].any()
      # DAPA's box includes the zero rows, i.e. the image origin.
      hi = labels["2D"][i][[1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]].max(0) * 256
      np.testing.assert_allclose(row["center"], hi / 2, rtol=1e-5)
      assert row["scale"] >= hi.max() * 1.2 - 1e-3
      assert row["image"].shape == (224, 224, 3)


def test_swap_legs():
  joints = np.arange(17 * 3).reshape(17, 3)
  out = ski.swap_legs(joints)
  assert out[[1, 2, 3, 4, 5, 6], 0].tolist() == [12, 15, 18, 3, 6, 9]
  np.testing.assert_array_equal(ski.swap_legs(out), joints)


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="train/labels.h5"):
    bt.build(ski.Builder, "frames", tmp_path / "out", tmp_path)
  shutil.copytree(dummy.DUMMY_DIR, tmp_path / "raw")
  path = tmp_path / "raw" / "test" / "labels.h5"
  with h5py.File(path, "a") as f:
    del f["2D"]
    f["2D"] = np.zeros((2, 17, 3), np.float32)
  with pytest.raises(raw.RawDataError, match=r"test/labels.h5: 2D has shape \(2, 17, 3\)"):
    bt.build(ski.Builder, "frames", tmp_path / "out", tmp_path / "raw")
  with h5py.File(path, "a") as f:
    del f["2D"]
  with pytest.raises(raw.RawDataError, match=r"missing key\(s\) \['2D'\]"):
    bt.build(ski.Builder, "frames", tmp_path / "out2", tmp_path / "raw")


def test_registered_and_converted_to_2d_only_examples(tmp_path):
  from jhmr.data import builders, sources
  from jhmr.data import example as example_lib

  builder = builders.make_builder(
    "ski_pose/frames", data_dir=str(tmp_path), file_format="array_record"
  )
  assert isinstance(builder, ski.Builder)
  builder = bt.build(ski.Builder, "frames", tmp_path, dummy.DUMMY_DIR)
  row = builder.as_data_source()["test"][0]
  ex = example_lib.check_example(sources.ski_pose_example(row, 112))
  kp, ref = ex.keypoints_2d["openpose25"], np.asarray(row["keypoints2d_crop"], np.float32)
  # OpenPose L hip (12) = the file's 2D joint 4; R wrist (4) = joint 16.
  np.testing.assert_allclose(kp[[12, 4], :2], ref[[4, 16], :2] / 2, atol=0.05)
  assert kp[:, 2].sum() == 13 and ex.has_3d == 0 and ex.has_smpl == 0
