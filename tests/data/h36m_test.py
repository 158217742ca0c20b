"""The h36m TFDS builder on dummy SPIN-format npz files."""

import numpy as np
import pytest

from jhmr.data import builder_testing as bt
from jhmr.data import raw
from jhmr.data.h36m import dummy_data_generator as dummy
from jhmr.data.h36m import h36m_dataset_builder as h36m

FRAMES = {"train": 2, "test_p1": 11, "test_p2": 1}
H36mFramesTest = bt.builder_test_case(h36m.Builder, "frames", FRAMES, dummy.DUMMY_DIR)
H36mMultiviewTest = bt.builder_test_case(h36m.Builder, "multiview", {"test_p1": 2}, dummy.DUMMY_DIR)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("h36m")
  return {
    c: bt.build(h36m.Builder, c, data_dir, dummy.DUMMY_DIR).as_data_source()
    for c in ("frames", "multiview")
  }


def test_frames_hold_the_npz_values(sources):
  assert {k: len(v) for k, v in sources["frames"].items()} == FRAMES
  data = dummy.arrays("test_p1")
  by_name = {bt.text(r["imgname"]): r for r in (sources["frames"]["test_p1"][i] for i in range(11))}
  i = 5
  row = by_name[str(data["imgname"][i])]
  assert bt.text(row["subject"]) == "S9" and bt.text(row["action"]) == "Directions_1"
  assert bt.text(row["camera"]) == dummy.CAMERAS[1] and row["frame"] == 2
  np.testing.assert_allclose(row["body_pose"].ravel(), data["pose"][i, 3:], rtol=1e-6)
  np.testing.assert_allclose(row["betas"], data["shape"][i], rtol=1e-6)
  np.testing.assert_allclose(row["keypoints2d"], data["part"][i], rtol=1e-6)
  # Crop keypoints: the square box of side scale * 200 around center, mapped to 224 px.
  expected = (data["part"][i, :, :2] - data["center"][i]) * 224 / (data["scale"][i] * 200) + 112
  np.testing.assert_allclose(row["keypoints2d_crop"][:, :2], expected, rtol=1e-4, atol=1e-3)
  assert row["image"].shape == (224, 224, 3)
  p2 = sources["frames"]["test_p2"][0]
  assert p2["has_smpl"] == 0 and not p2["body_pose"].any()


def test_multiview_groups_four_cameras(sources):
  groups = sources["multiview"]["test_p1"]
  assert len(groups) == 2  # frame 3 has three views only
  group = groups[0]
  assert [bt.text(c) for c in group["views"]["camera"]] == list(dummy.CAMERAS)
  assert len(set(np.asarray(group["views"]["frame"]).tolist())) == 1
  assert np.asarray(group["views"]["image"]).shape == (4, 224, 224, 3)


def test_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="h36m_train.npz"):
    bt.build(h36m.Builder, "frames", tmp_path / "out", tmp_path)
  data = dummy.arrays("train")
  np.savez(tmp_path / "bad.npz", **(data | {"center": np.zeros((2, 3))}))
  with pytest.raises(
    raw.RawDataError, match=r"bad.npz: center has shape \(2, 3\), expected \(2, 2\)"
  ):
    h36m.read_npz(tmp_path / "bad.npz")
  with pytest.raises(raw.RawDataError, match="imgname 'x.jpg' is not"):
    h36m.parse_imgname("x.jpg", "file.npz")
  np.savez(tmp_path / "objects.npz", imgname=np.array([{"a": 1}], dtype=object))
  with pytest.raises(raw.RawDataError, match="objects.npz"):
    h36m.read_npz(tmp_path / "objects.npz")
