"""The h36m TFDS builder on dummy npz files in SPIN's and in ScoreHMR's (ProHMR's) layout."""

import shutil

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


def _crop(points, center, box_px, size=224):
  """Image px -> crop px of the square box of side `box_px` around `center`."""
  return (points - center) * size / box_px + size / 2


def test_frames_hold_the_spin_npz_values(sources):
  assert {k: len(v) for k, v in sources["frames"].items()} == FRAMES
  data = dummy.arrays("test_p1")
  by_name = {bt.text(r["imgname"]): r for r in (sources["frames"]["test_p1"][i] for i in range(11))}
  i = 5
  row = by_name[str(data["imgname"][i])]
  assert bt.text(row["subject"]) == "S9" and bt.text(row["action"]) == "Directions_1"
  assert bt.text(row["camera"]) == dummy.CAMERAS[1] and row["frame"] == 2
  np.testing.assert_allclose(row["global_orient"], data["pose"][i, :3], rtol=1e-6)
  np.testing.assert_allclose(row["body_pose"].ravel(), data["pose"][i, 3:], rtol=1e-6)
  np.testing.assert_allclose(row["betas"], data["shape"][i], rtol=1e-6)
  np.testing.assert_allclose(row["keypoints2d"], data["part"][i], rtol=1e-6)
  np.testing.assert_allclose(row["joints3d"], data["S"][i], rtol=1e-6)
  assert row["has_smpl"] == 1 and not row["openpose"].any()  # no openpose key: conf 0
  # SPIN's scale is the box side / 200: the crop box has side scale * 200.
  assert row["scale"] == pytest.approx(data["scale"][i])
  expected = _crop(data["part"][i, :, :2], data["center"][i], data["scale"][i] * 200)
  np.testing.assert_allclose(row["keypoints2d_crop"][:, :2], expected, rtol=1e-4, atol=1e-3)
  assert row["image"].shape == (224, 224, 3)


def test_protocol2_in_scorehmr_layout_has_px_scale_and_no_fits(sources):
  data = dummy.arrays("test_p2")
  assert "scale" in data and "pose" not in data and "body_pose" not in data
  row = sources["frames"]["test_p2"][0]
  assert row["has_smpl"] == 0 and not row["body_pose"].any() and not row["betas"].any()
  assert row["scale"] == pytest.approx(data["scale"][0] / 200)  # stored in SPIN's unit
  np.testing.assert_allclose(row["keypoints2d"][:19], data["extra_keypoints_2d"][0], rtol=1e-6)
  np.testing.assert_array_equal(row["keypoints2d"][19:], 0)
  np.testing.assert_allclose(row["joints3d"][:19], data["extra_keypoints_3d"][0], rtol=1e-6)
  kp = data["extra_keypoints_2d"][0]
  seen = kp[:, 2] > 0
  expected = _crop(kp[seen, :2], data["center"][0], data["scale"][0])  # box side = scale px
  np.testing.assert_allclose(row["keypoints2d_crop"][:19][seen, :2], expected, rtol=1e-4, atol=1e-3)


def test_scorehmr_file_with_fits_gives_px_boxes_pose_and_betas(tmp_path):
  root = tmp_path / "raw"
  shutil.copytree(dummy.DUMMY_DIR, root)
  names = list(dummy.arrays("train")["imgname"])
  data = dummy.scorehmr_arrays(names)
  np.savez(root / "h36m_train.npz", **data)
  rows = bt.build(h36m.Builder, "frames", tmp_path / "out", root).as_data_source()["train"]
  by_name = {bt.text(r["imgname"]): r for r in (rows[i] for i in range(len(rows)))}
  assert sorted(by_name) == sorted(names)
  for i, name in enumerate(names):
    row = by_name[name]
    box = data["scale"][i]  # px
    assert row["scale"] == pytest.approx(box / 200)
    np.testing.assert_allclose(row["center"], data["center"][i], rtol=1e-6)
    np.testing.assert_allclose(row["global_orient"], data["body_pose"][i, :3], rtol=1e-6)
    np.testing.assert_allclose(row["body_pose"].ravel(), data["body_pose"][i, 3:], rtol=1e-6)
    np.testing.assert_allclose(row["betas"], data["betas"][i], rtol=1e-6)
    assert row["has_smpl"] == (1.0 if i == 0 else 0.0)  # entry 1 has has_betas 0
    np.testing.assert_allclose(row["openpose"], data["body_keypoints_2d"][i], rtol=1e-6)
    np.testing.assert_allclose(row["keypoints2d"][:19], data["extra_keypoints_2d"][i], rtol=1e-6)
    np.testing.assert_allclose(row["joints3d"][:19], data["extra_keypoints_3d"][i], rtol=1e-6)
    np.testing.assert_array_equal(row["joints3d"][19:], 0)
    kp = data["extra_keypoints_2d"][i]
    seen = kp[:, 2] > 0
    expected = _crop(kp[seen, :2], data["center"][i], box)
    np.testing.assert_allclose(
      row["keypoints2d_crop"][:19][seen, :2], expected, rtol=1e-4, atol=1e-3
    )
    # Read as SPIN's unit the box would be 200x larger and the keypoints would sit at the centre.
    assert np.ptp(row["keypoints2d_crop"][:19][seen, 0]) > 50
  # Per-axis box sizes (N,2): the larger side is the box, as ScoreHMR's loader takes it.
  wide = data | {"scale": np.stack([data["scale"], data["scale"] / 2], -1)}
  np.savez(tmp_path / "wide.npz", **wide)
  np.testing.assert_allclose(h36m.read_npz(tmp_path / "wide.npz")["scale"], data["scale"] / 200)


def test_multiview_groups_four_cameras(sources):
  groups = sources["multiview"]["test_p1"]
  assert len(groups) == 2  # frame 3 has three views only
  group = groups[0]
  assert [bt.text(c) for c in group["views"]["camera"]] == list(dummy.CAMERAS)
  assert len(set(np.asarray(group["views"]["frame"]).tolist())) == 1
  assert np.asarray(group["views"]["image"]).shape == (4, 224, 224, 3)


def _names(n=2):
  return np.array([f"images/S9_Eating.{dummy.CAMERAS[0]}_{f:06d}.jpg" for f in range(1, n + 1)])


@pytest.mark.parametrize(
  "keys,missing",
  [
    # Unknown keys: neither schema; both schemas' missing keys are named.
    (
      {"keypoints": np.zeros((2, 24, 3))},
      ["SPIN dataset_extras schema: missing keys S; unexpected keys keypoints",
       "ScoreHMR schema: missing keys extra_keypoints_2d, extra_keypoints_3d"],
    ),
    # imgname, center, scale only: the unit of scale cannot be told, so it is refused.
    ({}, ["SPIN dataset_extras schema: missing keys S;",
          "ScoreHMR schema: missing keys extra_keypoints_2d, extra_keypoints_3d"]),
  ],
)  # fmt: skip
def test_unknown_key_set_is_refused_naming_the_missing_keys(tmp_path, keys, missing):
  base = {"imgname": _names(), "center": np.full((2, 2), 20.0), "scale": np.ones(2)}
  np.savez(tmp_path / "other.npz", **(base | keys))
  with pytest.raises(raw.RawDataError, match="other.npz: keys .* are no supported npz schema") as e:
    h36m.read_npz(tmp_path / "other.npz")
  for text in missing:
    assert text in str(e.value)


def test_missing_required_key_of_a_schema_is_refused_by_name(tmp_path):
  spin = dummy.arrays("train")
  scorehmr = dummy.scorehmr_arrays(list(spin["imgname"]))
  cases = [
    (spin, "S", "SPIN dataset_extras schema: missing keys S"),
    (spin, "shape", "SPIN dataset_extras schema: missing keys shape"),  # pose without shape
    (scorehmr, "extra_keypoints_3d", "ScoreHMR schema: missing keys extra_keypoints_3d"),
    (scorehmr, "has_body_pose", "ScoreHMR schema: missing keys has_body_pose"),
    (scorehmr, "has_betas", "ScoreHMR schema: missing keys has_betas"),
  ]
  for data, key, message in cases:
    path = tmp_path / f"no_{key}.npz"
    np.savez(path, **{k: v for k, v in data.items() if k != key})
    with pytest.raises(raw.RawDataError, match=f"no_{key}.npz: ") as e:
      h36m.read_npz(path)
    assert message in str(e.value), str(e.value)
  # A file mixing both schemas' keys is neither.
  np.savez(tmp_path / "mixed.npz", **(spin | {"body_pose": spin["pose"]}))
  with pytest.raises(raw.RawDataError, match="unexpected keys body_pose"):
    h36m.read_npz(tmp_path / "mixed.npz")


def test_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="h36m_train.npz"):
    bt.build(h36m.Builder, "frames", tmp_path / "out", tmp_path)
  data = dummy.arrays("train")
  np.savez(tmp_path / "bad.npz", **(data | {"center": np.zeros((2, 3))}))
  with pytest.raises(
    raw.RawDataError, match=r"bad.npz: center has shape \(2, 3\), expected \(2, 2\)"
  ):
    h36m.read_npz(tmp_path / "bad.npz")
  np.savez(tmp_path / "zero.npz", **(data | {"scale": np.zeros(2)}))
  with pytest.raises(raw.RawDataError, match="zero.npz: scale holds values <= 0"):
    h36m.read_npz(tmp_path / "zero.npz")
  with pytest.raises(raw.RawDataError, match="imgname 'x.jpg' is not"):
    h36m.parse_imgname("x.jpg", "file.npz")
  np.savez(tmp_path / "objects.npz", imgname=np.array([{"a": 1}], dtype=object))
  with pytest.raises(raw.RawDataError, match="objects.npz"):
    h36m.read_npz(tmp_path / "objects.npz")
