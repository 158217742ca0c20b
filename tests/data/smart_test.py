"""The smart TFDS builder on dummy SMART annotations (Diffusion-HPC few-shot splits)."""

import json
import shutil

import numpy as np
import pytest

from jhmr.data import builder_testing as bt
from jhmr.data import raw
from jhmr.data.smart import dummy_data_generator as dummy
from jhmr.data.smart import smart_dataset_builder as smart

# polevault: 2 train videos x (7 - 5) frames; test: 7 frames minus one without joints.
# vault: 4 train / 1 test videos of 2 frames. diving: 15 train videos, frames 0 and 10 (video 3
# frame 0 has too few visible joints); test: 1 video x 12 frames.
SPLITS = {
  "polevault": {"train": 4, "test": 6},
  "vault": {"train": 8, "test": 2},
  "diving": {"train": 29, "test": 12},
}
SmartPolevaultTest = bt.builder_test_case(
  smart.Builder, "polevault", SPLITS["polevault"], dummy.DUMMY_DIR
)
SmartDivingTest = bt.builder_test_case(smart.Builder, "diving", SPLITS["diving"], dummy.DUMMY_DIR)


def test_splits_and_values(tmp_path):
  for config, splits in SPLITS.items():
    source = bt.build(smart.Builder, config, tmp_path, dummy.DUMMY_DIR).as_data_source()
    assert {k: len(v) for k, v in source.items()} == splits, config
  pole = bt.build(smart.Builder, "polevault", tmp_path, dummy.DUMMY_DIR).as_data_source()
  train_videos = {bt.text(pole["train"][i]["video"]) for i in range(4)}
  assert train_videos == {"cgt_000", "cgt_001"}
  row = next(pole["test"][i] for i in range(6) if pole["test"][i]["frame_index"] == 1)
  meta = dummy.videos("Table_VideoInfo_polevalut_highjump_badminton.json")[2]["frames"][1]
  joints = np.array(meta["joints"])
  np.testing.assert_allclose(row["keypoints2d"][:, :2], joints[:, :2], rtol=1e-6)
  expected_conf = np.zeros(25)
  expected_conf[:15] = 1
  expected_conf[3] = 0  # inverted flag 1 = not visible
  np.testing.assert_array_equal(row["keypoints2d"][:, 2], expected_conf)
  np.testing.assert_allclose(row["part"][0], row["keypoints2d"][11])  # SPIN R ankle = OP 11
  assert not row["part"][13].any()  # head top: no OpenPose counterpart
  diving = bt.build(smart.Builder, "diving", tmp_path, dummy.DUMMY_DIR).as_data_source()["train"]
  frames = sorted({int(diving[i]["frame_index"]) for i in range(len(diving))})
  assert frames == [0, 10]
  assert diving[0]["scale"] == pytest.approx(25 * 1.2)


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Table_VideoInfo_gym.json"):
    bt.build(smart.Builder, "vault", tmp_path / "out", tmp_path)
  shutil.copytree(dummy.DUMMY_DIR, tmp_path / "raw")
  path = tmp_path / "raw" / "annotations" / "Table_VideoInfo_gym.json"
  data = dummy.videos("Table_VideoInfo_gym.json")
  data[0]["frames"][0]["joints"] = [[1.0, 2.0]] * 25
  path.write_text(json.dumps(data))
  with pytest.raises(
    raw.RawDataError, match=r"gym.json: vt_000 frame 0 joints has shape \(25, 2\)"
  ):
    bt.build(smart.Builder, "vault", tmp_path / "out", tmp_path / "raw")
  path.write_text("{not json")
  with pytest.raises(raw.RawDataError, match="gym.json: not valid JSON"):
    bt.build(smart.Builder, "vault", tmp_path / "out2", tmp_path / "raw")
