"""Real-data sets of the ScoreHMR program, read from the builders' committed dummy data."""

import csv
import functools
import logging
import pathlib
import sys

import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.data import builders, sources
from jhmr.data import example as example_lib
from jhmr.data.emdb import dummy_data_generator as emdb_dummy
from jhmr.data.h36m import dummy_data_generator as h36m_dummy
from jhmr.data.threedpw import dummy_data_generator as threedpw_dummy
from jhmr.keys import KeySeq
from jhmr.pipelines import real_data, scorehmr

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `from configs import ...`
from configs import scorehmr as scorehmr_config  # noqa: E402

DUMMY = {"threedpw": threedpw_dummy, "emdb": emdb_dummy, "h36m": h36m_dummy}


@pytest.fixture(scope="module")
def body_model():
  return load_body_model("anny-tiny")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _config(source, data_dir, **data):
  config = scorehmr_config.get_config("tiny")
  config.data.source = source
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(DUMMY[source].DUMMY_DIR)
  config.data.update(data)
  return config


def _load(source, data_dir, body_model, **data):
  return real_data.load_sets(_config(source, data_dir, **data), body_model, KeySeq(0))


@pytest.fixture(scope="module")
def sets(data_dir, body_model):
  return {s: _load(s, data_dir, body_model) for s in DUMMY}


def _builder(data_dir, name):
  return builders.make_builder(name, data_dir=str(data_dir), file_format="array_record")


def _split_size(data_dir, name, split):
  return _builder(data_dir, name).info.splits[split].num_examples


def _read_all(source, body_model):
  """Every example of a source, checked; the batch."""
  examples = [example_lib.check_example(source[i]) for i in range(len(source))]
  batch = example_lib.stack(examples)
  assert batch.image.shape == (len(source), 32, 32, 3)
  assert batch.betas.shape == (len(source), body_model.num_betas)
  assert batch.keypoints_2d["openpose25"].shape == (len(source), 25, 3)
  return batch


def test_whole_splits_are_read(sets, data_dir, body_model):
  # The dummy splits: 3DPW train 2 / test 2 (frame 2 of the test sequence has no detection);
  # EMDB all 4 = EMDB 1's 2 + the other sequence's 2; H36M test_p1 11 entries, 2 four-view groups.
  size = functools.partial(_split_size, data_dir)
  emdb1 = size("emdb/emdb1", "test")
  sizes = {
    "threedpw": (size("threedpw/frames", "train"), size("threedpw/frames", "test")),
    "emdb": (size("emdb/all", "test") - emdb1, emdb1),
    "h36m": (size("h36m/frames", "train"), size("h36m/frames", "test_p1")),
  }
  assert sizes == {"threedpw": (2, 2), "emdb": (2, 2), "h36m": (2, 11)}
  for source, (train, test) in sizes.items():
    s = sets[source]
    assert isinstance(s.train, sources.MappedSource)
    assert (len(s.train), len(s.keypoints)) == (train, test), source
    for name, data in (("train", s.train), *s.tasks().items()):
      batch = _read_all(data, body_model)
      assert np.all(batch.has_smpl == 1) and np.all(batch.has_3d == 1), (source, name)
      if source == "h36m":  # placed by the fit (3DPW / EMDB: where the random dummy puts it)
        assert np.all(batch.cam_t[:, 2] > 0)
    keypoints = _read_all(s.keypoints, body_model)
    np.testing.assert_array_equal(keypoints.group, np.arange(test))  # each its own group
  assert sets["threedpw"].multiview is None and sets["emdb"].multiview is None
  # Dummy runs are shorter than the tiny config's sequence_length (6): no video windows.
  assert sets["threedpw"].video is None and sets["emdb"].video is None
  assert sets["h36m"].video is None and len(sets["h36m"].multiview) == 8


def test_emdb_trains_outside_emdb1(sets):
  seq = emdb_dummy.sequence("P0", "09_outdoor_walk")  # the EMDB 1 sequence
  test = example_lib.stack([sets["emdb"].keypoints[i] for i in range(2)])
  got = sorted(test.body_pose.reshape(2, -1).tolist())
  np.testing.assert_allclose(got, sorted(seq["smpl"]["poses_body"][[0, 2]].tolist()), rtol=1e-5)
  train = example_lib.stack([sets["emdb"].train[i] for i in range(2)])
  other = emdb_dummy.sequence("P1", "14_indoor_stairs")
  got = sorted(train.body_pose.reshape(2, -1).tolist())
  np.testing.assert_allclose(got, sorted(other["smpl"]["poses_body"].tolist()), rtol=1e-5)


def test_threedpw_uses_the_real_camera(sets):
  data = threedpw_dummy.sequence("office_phone_00")  # the test split's sequence
  for i in range(2):
    ex = sets["threedpw"].keypoints[i]
    np.testing.assert_allclose(ex.intrinsics, data["cam_intrinsics"], rtol=1e-6)
    t = int(np.flatnonzero(np.all(np.isclose(data["poses"][0][:, 3:], ex.body_pose.ravel()), 1))[0])
    # The dataset's own 2D keypoints (COCO-18) in their BODY_25 slots of the crop.
    kp = ex.keypoints_2d["openpose25"][list(sources.COCO18_TO_BODY25)]
    detected = data["poses2d"][0][t].T  # [18, 3] image px
    crop_from_image = np.asarray(ex.crop_from_image, np.float64)
    want = detected[:, :2] @ crop_from_image[:, :2].T + crop_from_image[:, 2]
    conf = detected[:, 2] > 0
    np.testing.assert_allclose(kp[conf, :2], want[conf], atol=1e-3)
    assert np.all(kp[~conf, 2] == 0)


def test_h36m_multiview_is_the_multiview_builder(sets, data_dir):
  import tensorflow_datasets as tfds

  builder = _builder(data_dir, "h36m/multiview")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(h36m_dummy.DUMMY_DIR))
  )
  rows = builder.as_data_source("test_p1")
  want = sorted((rows[i]["group"].decode(), i) for i in range(len(rows)))
  mv = sets["h36m"].multiview
  np.testing.assert_array_equal(mv.group_ids(), np.repeat([0, 1], 4))
  for g, (_, i) in enumerate(want):
    for v in range(4):
      ex = mv[4 * g + v]
      assert (int(ex.group), int(ex.frame)) == (g, v)
      np.testing.assert_array_equal(ex.image, sources.resize_crop(rows[i]["views"]["image"][v], 32))
      np.testing.assert_allclose(ex.body_pose, rows[i]["views"]["body_pose"][v])


def test_images_are_the_builder_crops_resized(sets, data_dir):
  rows = _builder(data_dir, "h36m/frames").as_data_source("train")
  from PIL import Image

  for i in range(len(rows)):
    crop = Image.fromarray(rows[i]["image"]).resize((32, 32), Image.BILINEAR)
    np.testing.assert_array_equal(sets["h36m"].train[i].image, np.asarray(crop))


def test_video_windows_of_the_test_split(data_dir, body_model):
  # office_phone_00: frames 0 and 1 are detected, frame 2 is not -> one window of two frames.
  video = _load("threedpw", data_dir, body_model, sequence_length=2).video
  assert len(video) == 2
  batch = _read_all(video, body_model)
  np.testing.assert_array_equal(batch.group, [0, 0])
  np.testing.assert_array_equal(batch.frame, [0, 1])
  data = threedpw_dummy.sequence("office_phone_00")
  np.testing.assert_allclose(batch.body_pose.reshape(2, -1), data["poses"][0][:2, 3:], rtol=1e-5)
  # EMDB 1's good frames are 0 and 2: no two consecutive frames.
  assert _load("emdb", data_dir, body_model, sequence_length=2).video is None


def test_caps_are_printed(data_dir, body_model, capsys, caplog):
  with caplog.at_level(logging.WARNING):
    s = _load("h36m", data_dir, body_model, max_train=1, max_test=5)
  assert (len(s.train), len(s.keypoints), len(s.multiview)) == (1, 5, 4)
  printed = capsys.readouterr().out
  for line in (
    "h36m train capped to 1 of 2 examples by data.max_train=1",
    "h36m keypoints capped to 5 of 11 examples by data.max_test=5",
    "h36m multiview capped to 1 of 2 groups (4 examples) by data.max_test=5",
  ):
    assert line in printed and line in caplog.text
  # No cap in use, nothing said.
  _load("threedpw", data_dir, body_model, max_train=100, max_test=100)
  assert "capped" not in capsys.readouterr().out


def test_corrupted_estimates_get_the_training_poses(data_dir, body_model):
  config = _config("threedpw", data_dir)
  config.estimate = "corrupted"
  s = real_data.load_sets(config, body_model, KeySeq(0))
  assert s.train is None and s.prior_poses.shape == (2, 144)
  rows = _builder(data_dir, "threedpw/frames").as_data_source("train")
  from jhmr.data import synthesis

  want = synthesis.pose_6d(
    example_lib.stack([sources.threedpw_example(rows[i], body_model, 32) for i in range(2)])
  )
  np.testing.assert_allclose(s.prior_poses, want, atol=1e-5)


def test_missing_data_names_the_directory(tmp_path, body_model):
  config = _config("threedpw", tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    real_data.load_sets(config, body_model, KeySeq(0))


@pytest.mark.timeout(900)
def test_program_runs_end_to_end_on_3dpw(data_dir, tmp_path):
  config = _config("threedpw", data_dir)
  result = scorehmr.run(config, tmp_path / "run")
  tasks = {(r["task"], r["method"]) for r in result["rows"]}
  assert ("keypoint fitting", "ScoreHMR") in tasks
  assert not any(t.startswith("multi-view") for t, _ in tasks)  # 3DPW has no multi-view set
  assert {r["N"] for r in result["rows"]} == {2}  # the whole dummy test split
  with open(tmp_path / "run" / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == len(result["rows"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_program_runs_end_to_end_on_h36m(data_dir, tmp_path):
  result = scorehmr.run(_config("h36m", data_dir), tmp_path / "run")
  tasks = {(r["task"], r["method"]) for r in result["rows"]}
  assert any(t.startswith("multi-view") and m == "ScoreHMR" for t, m in tasks)
