"""The threedpw TFDS builder on dummy files in the official layout."""

import pickle
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from jhmr.data import raw
from jhmr.data.threedpw import dummy_data_generator as dummy
from jhmr.data.threedpw import threedpw_dataset_builder as threedpw

EXPECTED = {
  "frames": {"train": 2, "validation": 4, "test": 2},
  "video": {"train": 1, "validation": 2, "test": 1},
  "oc": {"test": 1},
  "pc": {"test": 2},
  "crowd": {"validation": 4},
}


def _case(config):
  return type(
    f"Threedpw{config.capitalize()}Test",
    (tfds.testing.DatasetBuilderTestCase,),
    {
      "DATASET_CLASS": threedpw.Builder,
      "EXAMPLE_DIR": str(dummy.DUMMY_DIR),
      "BUILDER_CONFIG_NAMES_TO_TEST": [config],
      "SPLITS": EXPECTED[config],
    },
  )


ThreedpwFramesTest = _case("frames")
ThreedpwVideoTest = _case("video")
ThreedpwCrowdTest = _case("crowd")  # oc / pc: built TF-free below (same code path as crowd)


def _build(config, data_dir, manual_dir=dummy.DUMMY_DIR):
  builder = threedpw.Builder(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("threedpw")
  return {c: _build(c, data_dir).as_data_source() for c in ("frames", "video", "oc", "pc")}


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def test_split_sizes(sources):
  for config in ("frames", "video", "oc", "pc"):
    assert {k: len(v) for k, v in sources[config].items()} == EXPECTED[config]


def test_frames_hold_the_sequence_values(sources):
  data = dummy.sequence("office_phone_00")
  rows = sorted((sources["frames"]["test"][i] for i in range(2)), key=lambda r: r["frame_index"])
  for row, t in zip(rows, (0, 1)):
    assert (
      _text(row["sequence"]) == "office_phone_00"
      and _text(row["image_file"]) == f"image_{t:05d}.jpg"
    )
    np.testing.assert_allclose(row["global_orient"], data["poses"][0][t, :3], rtol=1e-6)
    np.testing.assert_allclose(row["body_pose"].ravel(), data["poses"][0][t, 3:], rtol=1e-6)
    np.testing.assert_allclose(row["transl"], data["trans"][0][t], rtol=1e-6)
    np.testing.assert_allclose(row["betas"], data["betas"][0], rtol=1e-6)
    kp = data["poses2d"][0][t].T
    np.testing.assert_allclose(row["keypoints2d"], kp, rtol=1e-6)
    cam = Rotation.from_matrix(data["cam_poses"][t][:3, :3]) * Rotation.from_rotvec(
      data["poses"][0][t, :3]
    )
    np.testing.assert_allclose(row["global_orient_cam"], cam.as_rotvec(), atol=1e-5)
    assert row["image"].shape == (256, 256, 3) and row["image"].dtype == np.uint8
    assert _text(row["gender"]) == "m"
    # The crop keypoints: confident joints inside the crop; box = x1.2 the keypoint extent.
    seen = kp[:, 2] > 0
    extent = np.max(kp[seen, :2].max(0) - kp[seen, :2].min(0))
    assert row["scale"] == pytest.approx(1.2 * extent, rel=1e-5)
    inside = row["keypoints2d_crop"][seen, :2]
    assert np.all((inside >= 0) & (inside <= 256))
    np.testing.assert_allclose(row["image_size"], dummy.IMAGE_SIZE)


def test_video_and_subsets(sources):
  video = sources["video"]["train"][0]
  data = dummy.sequence("downtown_walk_00")
  np.testing.assert_array_equal(video["valid"], [True, False, True])
  np.testing.assert_allclose(video["keypoints2d"], data["poses2d"][0].transpose(0, 2, 1), rtol=1e-6)
  assert video["body_pose"].shape == (3, 23, 3)
  oc = sources["oc"]["test"][0]
  assert _text(oc["sequence"]) == "office_phone_00" and _text(oc["image_file"]) == "image_00001.jpg"


def test_official_keys_give_each_actor_its_gender_and_values(sources):
  # courtyard_hug_00 (validation) has two actors; the file's `genders` list is ['f', 'm'].
  data = dummy.sequence("courtyard_hug_00")
  assert data["genders"] == ["f", "m"] and "gender" not in data
  rows = [sources["frames"]["validation"][i] for i in range(4)]
  assert sorted((int(r["actor"]), int(r["frame_index"])) for r in rows) == [
    (0, 0), (0, 1), (1, 0), (1, 1)
  ]  # fmt: skip
  for row in rows:
    a, t = int(row["actor"]), int(row["frame_index"])
    assert _text(row["gender"]) == ("f", "m")[a]
    np.testing.assert_allclose(row["body_pose"].ravel(), data["poses"][a][t, 3:], rtol=1e-6)
    np.testing.assert_allclose(row["betas"], data["betas"][a], rtol=1e-6)
    np.testing.assert_allclose(row["keypoints2d"], data["poses2d"][a][t].T, rtol=1e-6)
  videos = [sources["video"]["validation"][i] for i in range(2)]
  assert {int(v["actor"]): _text(v["gender"]) for v in videos} == {0: "f", 1: "m"}


def test_images_are_numbered_by_frame_not_by_img_frame_ids(sources):
  # img_frame_ids index the 60 Hz arrays (0, 2, 4, ...); image t is image_{t:05d}.jpg.
  data = dummy.sequence("downtown_walk_00")
  np.testing.assert_array_equal(data["img_frame_ids"], [0, 2, 4])
  np.testing.assert_allclose(data["poses_60Hz"][0][data["img_frame_ids"]], data["poses"][0])
  video = sources["video"]["train"][0]
  assert [_text(f) for f in video["image_files"]] == [f"image_{t:05d}.jpg" for t in range(3)]
  rows = [sources["frames"]["train"][i] for i in range(2)]
  assert sorted(_text(r["image_file"]) for r in rows) == ["image_00000.jpg", "image_00002.jpg"]
  assert sorted(int(r["frame_index"]) for r in rows) == [0, 2]  # frame 1: no camera pose


@pytest.mark.parametrize("official,readme", [("genders", "gender"), ("poses2d", "poses2D")])
def test_only_the_official_key_names_are_read(tmp_path, official, readme):
  # The readme's spellings are not the files'; a file without the official key is refused
  # with the file and the key named.
  data = dummy.sequence("office_phone_00")
  data[readme] = data.pop(official)
  path = tmp_path / "office_phone_00.pkl"
  path.write_bytes(pickle.dumps(data, protocol=2))
  with pytest.raises(raw.RawDataError, match=f"office_phone_00.pkl: missing key '{official}'"):
    threedpw.read_sequence(path)


def test_unknown_gender_is_refused(tmp_path):
  data = dummy.sequence("courtyard_hug_00")
  data["genders"] = ["f", "male"]
  path = tmp_path / "courtyard_hug_00.pkl"
  path.write_bytes(pickle.dumps(data, protocol=2))
  with pytest.raises(raw.RawDataError, match=r"courtyard_hug_00.pkl: genders\[1\] is 'male'"):
    threedpw.read_sequence(path)


def test_missing_manual_dir_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected sequenceFiles in the manual_dir"):
    _build("frames", tmp_path / "out", tmp_path)
  shutil.copytree(dummy.DUMMY_DIR, tmp_path / "raw")
  (tmp_path / "raw" / "3DPW_oc.json").unlink()
  with pytest.raises(FileNotFoundError, match="3DPW_oc.json"):
    _build("oc", tmp_path / "out", tmp_path / "raw")


def test_malformed_sequence_file_names_file_and_key(tmp_path):
  shutil.copytree(dummy.DUMMY_DIR, tmp_path / "raw")
  path = tmp_path / "raw" / "sequenceFiles" / "test" / "office_phone_00.pkl"
  data = dummy.sequence("office_phone_00")
  data["trans"] = [np.zeros((3, 2))]
  path.write_bytes(pickle.dumps(data, protocol=2))
  with pytest.raises(raw.RawDataError, match=r"office_phone_00.pkl: trans\[0\] has shape \(3, 2\)"):
    _build("frames", tmp_path / "out", tmp_path / "raw")
  del data["cam_poses"]
  path.write_bytes(pickle.dumps(data, protocol=2))
  with pytest.raises(raw.RawDataError, match="missing key 'cam_poses'"):
    _build("frames", tmp_path / "out2", tmp_path / "raw")


def test_pickle_with_foreign_objects_is_refused(tmp_path):
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"sequence": "x", "f": shutil.rmtree}, protocol=2))
  with pytest.raises(raw.RawDataError, match="evil.pkl: refusing to load global shutil.rmtree"):
    threedpw.read_sequence(path)
