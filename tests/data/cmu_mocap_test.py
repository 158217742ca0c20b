"""The cmu_mocap TFDS builder: DatasetBuilderTestCase (TF) and a TF-free array_record build."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from jhmr.data import mocap
from jhmr.data.cmu_mocap import cmu_mocap_dataset_builder as cmu
from jhmr.data.cmu_mocap import dummy_data_generator as dummy


class DummyCmu(cmu.Builder):
  """The builder retargeting onto the dummy files' own skeleton (exact recovery)."""

  name = "cmu_mocap_dummy_test"
  BUILDER_CONFIGS = [
    cmu.CmuConfig(name="frames"),
    cmu.CmuConfig(name="clips", clip_length=3, clip_stride=1),
  ]

  def target_skeleton(self):
    return dummy.SKELETON


# dummy_data: train folders 01, 60-61A, 60-61B and test folder 02 (crc32 split), 4 frames each.
class CmuFramesTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = DummyCmu
  EXAMPLE_DIR = str(dummy.DUMMY_DIR)
  BUILDER_CONFIG_NAMES_TO_TEST = ["frames"]
  SPLITS = {"train": 12, "test": 4}


class CmuClipsTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = DummyCmu
  EXAMPLE_DIR = str(dummy.DUMMY_DIR)
  BUILDER_CONFIG_NAMES_TO_TEST = ["clips"]
  SPLITS = {"train": 6, "test": 2}


def _angle_deg(a, b):
  return np.degrees(
    (
      Rotation.from_rotvec(a.reshape(-1, 3)).inv() * Rotation.from_rotvec(b.reshape(-1, 3))
    ).magnitude()
  )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("cmu")
  out = {}
  for config in ("frames", "clips"):
    builder = DummyCmu(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(dummy.DUMMY_DIR))
    )
    out[config] = builder
  return out


def test_array_record_frames_hold_the_known_motion(built):
  builder = built["frames"]
  assert mocap.cmu_subject_split(dummy.DUMMY_DIR) == (["01", "60-61A", "60-61B"], ["02"])
  assert builder.info.splits["train"].num_examples == 12
  source = builder.as_data_source()
  test = source["test"]
  assert len(test) == 4
  rows = sorted((test[i] for i in range(4)), key=lambda r: r["frame_index"])
  known = dummy.known_motion("02")
  for t, row in enumerate(rows):
    assert row["name"] in ("02/02_01", b"02/02_01") and row["frame_index"] == t
    assert _angle_deg(row["body_pose"], known.body_pose[t]).max() < 0.1
    assert _angle_deg(row["global_orient"], known.global_orient[t]).max() < 0.1
    np.testing.assert_allclose(row["transl"], known.transl[t], atol=1e-4)
  subjects = {source["train"][i]["subject"] for i in range(12)}
  assert {s.decode() if isinstance(s, bytes) else s for s in subjects} == {"01", "60-61A", "60-61B"}


def test_array_record_clips_are_windows_of_the_frames(built):
  clips = built["clips"].as_data_source()["test"]
  assert len(clips) == 2
  by_start = {int(clips[i]["start"]): clips[i] for i in range(2)}
  known = dummy.known_motion("02")
  for start, clip in by_start.items():
    assert clip["body_pose"].shape == (3, 23, 3)
    assert _angle_deg(clip["body_pose"], known.body_pose[start : start + 3]).max() < 0.1


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  builder = DummyCmu(config="frames", data_dir=tmp_path / "out", file_format="array_record")
  with pytest.raises(Exception, match="does not exist"):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "nowhere"))
    )


def test_malformed_bvh_names_the_file(tmp_path):
  (tmp_path / "01").mkdir()
  (tmp_path / "01" / "bad.bvh").write_text("HIERARCHY\nROOT a\n{\nOFFSET 0 0\n}\nMOTION\n")
  (tmp_path / "02").mkdir()
  (tmp_path / "02" / "bad.bvh").write_text("HIERARCHY\nROOT a\n{\nOFFSET 0 0\n}\nMOTION\n")
  builder = DummyCmu(config="frames", data_dir=tmp_path / "out", file_format="array_record")
  with pytest.raises(Exception, match=r"bad\.bvh:4: OFFSET needs 3 numbers"):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path))
    )


@pytest.mark.slow
def test_builds_every_shared_cmu_file(shared_data_dir, tmp_path):
  """All 185 shared BVH files -> frames (73,246 frames minus one rest frame per file)."""
  pytest.importorskip("jhmr.body")
  builder = cmu.Builder(config="frames", data_dir=tmp_path, file_format="array_record")
  try:
    builder.target_skeleton()
  except FileNotFoundError as e:
    pytest.skip(f"default body model asset missing: {e}")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(shared_data_dir / "cmu_mocap"))
  )
  splits = builder.info.splits
  assert splits["train"].num_examples + splits["test"].num_examples == 73246 - 185
  row = builder.as_data_source()["test"][0]
  assert np.all(np.isfinite(row["body_pose"])) and row["body_pose"].shape == (23, 3)
