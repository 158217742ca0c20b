"""Real-data sets of the ScoreHMR job, read from the builders' committed dummy data."""

import csv
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from jhmr.body import load_body_model
from jhmr.data.emdb import dummy_data_generator as emdb_dummy
from jhmr.data.h36m import dummy_data_generator as h36m_dummy
from jhmr.data.threedpw import dummy_data_generator as threedpw_dummy
from jhmr.pipelines import real_data

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `from configs import ...`
from configs import scorehmr as scorehmr_config  # noqa: E402

DUMMY = {"threedpw": threedpw_dummy, "emdb": emdb_dummy, "h36m": h36m_dummy}
KEYS = {"image", "rotmat", "betas", "joints3d", "cam", "cam_t", "keypoints3d", "keypoints_2d"}


@pytest.fixture(scope="module")
def body_model():
  return load_body_model("anny-tiny")


def _config(source, data_dir):
  config = scorehmr_config.get_config("tiny")
  config.data.source = source
  config.data.data_dir = str(data_dir)
  config.data.manual_dir = str(DUMMY[source].DUMMY_DIR)
  return config


@pytest.fixture(scope="module")
def sets(tmp_path_factory, body_model):
  data_dir = tmp_path_factory.mktemp("tfds")
  return {s: real_data.load_sets(_config(s, data_dir), body_model) for s in DUMMY}


def _check_set(data, size, num_betas):
  n = len(data["image"])
  assert KEYS <= set(data) and n > 0
  assert data["image"].shape == (n, size, size, 3) and data["image"].dtype == np.uint8
  assert data["rotmat"].shape == (n, 24, 3, 3) and data["betas"].shape == (n, num_betas)
  assert data["joints3d"].shape == (n, 24, 3)
  np.testing.assert_allclose(data["joints3d"][:, 0], 0, atol=1e-6)  # root-centred
  assert data["keypoints_2d"].shape == (n, 25, 2) and data["confidence"].shape == (n, 25)
  assert np.all(data["cam"][:, 0] > 0) and np.all(data["cam_t"][:, 2] > 0)
  assert np.all(np.isfinite(data["keypoints_2d"]))


def _axis_angle(rotmat):
  return Rotation.from_matrix(np.asarray(rotmat, np.float64)).as_rotvec()


def test_sets_per_dataset(sets, body_model):
  assert set(sets["threedpw"]) == {"train", "keypoints"}  # dummy test runs: 2 frames < 3
  assert set(sets["emdb"]) == {"train", "keypoints"}  # EMDB 1 good frames 0, 2: no run
  assert set(sets["h36m"]) == {"train", "keypoints", "multiview"}
  for source in sets.values():
    for data in source.values():
      _check_set(data, 32, body_model.num_betas)
  mv = sets["h36m"]["multiview"]
  np.testing.assert_array_equal(mv["group"], np.repeat([0, 1], 4))


def test_threedpw_ground_truth_is_the_sequence_files(sets):
  data = threedpw_dummy.sequence("office_phone_00")  # the test split's sequence
  test = sets["threedpw"]["keypoints"]
  for i, t in enumerate((0, 1)):
    np.testing.assert_allclose(test["body_pose"][i].ravel(), data["poses"][0][t, 3:], rtol=1e-6)
    cam = Rotation.from_matrix(data["cam_poses"][t][:3, :3]) * Rotation.from_rotvec(
      data["poses"][0][t, :3]
    )
    np.testing.assert_allclose(
      _axis_angle(test["rotmat"][i, 0]), cam.as_rotvec(), atol=1e-4
    )  # the root in the camera frame
    np.testing.assert_allclose(test["betas"][i], data["betas"][0][:10], rtol=1e-6)


def test_emdb_trains_outside_emdb1_and_h36m_matches_the_npz(sets):
  # EMDB: train = the sequence outside EMDB 1; keypoints = EMDB 1's good frames 0 and 2.
  seq = emdb_dummy.sequence("P0", "09_outdoor_walk")
  test = sets["emdb"]["keypoints"]
  got = sorted(test["body_pose"].reshape(2, -1).tolist())
  want = sorted(seq["smpl"]["poses_body"][[0, 2]].tolist())
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert not np.isin(sets["emdb"]["train"]["body_pose"], seq["smpl"]["poses_body"]).any()
  # H36M: the pose is in the camera frame already; test = protocol 1 entries with SMPL.
  npz = h36m_dummy.arrays("test_p1")
  test = sets["h36m"]["keypoints"]
  for i in range(len(test["image"])):
    pose = test["body_pose"][i].ravel()
    match = np.flatnonzero(np.all(np.isclose(npz["pose"][:, 3:], pose, rtol=1e-5, atol=1e-7), 1))
    assert match.size == 1, "the pose is not (exactly one) npz entry's"
    np.testing.assert_allclose(
      _axis_angle(test["rotmat"][i, 0]), npz["pose"][match[0], :3], atol=1e-4
    )
    np.testing.assert_allclose(test["betas"][i], npz["shape"][match[0]], rtol=1e-6)


def test_images_are_the_builder_crops_resized(tmp_path, body_model):
  from jhmr.data import builders

  config = _config("h36m", tmp_path)
  data = real_data.load_sets(config, body_model)["train"]
  rows = builders.make_builder("h36m/frames", data_dir=str(tmp_path)).as_data_source()["train"]
  crop = Image.fromarray(rows[0]["image"]).resize((32, 32), Image.BILINEAR)
  np.testing.assert_array_equal(data["image"][0], np.asarray(crop))


def test_fit_crop_camera_recovers_a_weak_perspective_camera():
  rng = np.random.default_rng(0)
  points = rng.normal(size=(3, 25, 3))
  cam = np.array([[0.9, 0.1, -0.05], [1.2, 0.0, 0.02], [0.7, -0.1, 0.1]])
  target = 16 * cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:]) + 16
  conf = np.ones((3, 25))
  conf[0, :20] = 0  # a few confident points are enough
  fitted = real_data.fit_crop_camera(points, target, conf, 32)
  np.testing.assert_allclose(fitted, cam, rtol=1e-5, atol=1e-6)
  box = real_data.fit_crop_camera(points, target, np.zeros((3, 25)), 32)  # no 2D: the box
  extent = (points[..., :2].max(1) - points[..., :2].min(1)).max(-1)
  np.testing.assert_allclose(box[:, 0], 2 / (1.2 * extent), rtol=1e-5)


def test_video_windows_are_consecutive_frames_of_one_sequence():
  seq = ["a", "a", "a", "a", "b", "b", "b", "a"]
  frame = [0, 1, 2, 4, 5, 6, 7, 3]
  windows = real_data.video_windows(seq, frame, 3, 10)
  assert [[(seq[i], frame[i]) for i in w] for w in windows] == [
    [("a", 0), ("a", 1), ("a", 2)],
    [("b", 5), ("b", 6), ("b", 7)],
  ]  # a's frames 3, 4 are a run of two only
  assert len(real_data.video_windows(seq, frame, 3, 1)) == 1


def test_missing_data_names_the_directory(tmp_path, body_model):
  config = _config("threedpw", tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    real_data.load_sets(config, body_model)


def _run(source, tmp_path):
  from jhmr import launch

  config = _config(source, tmp_path / "tfds")
  workdir = tmp_path / "run"
  with pytest.raises(FileNotFoundError, match="task refine needs trained models"):
    launch.TASKS["refine"](config, str(workdir))
  result = launch.TASKS["scorehmr"](config, str(workdir))
  tasks = {(r["task"], r["method"]) for r in result["rows"]}
  assert ("keypoint fitting", "ScoreHMR") in tasks
  with open(workdir / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == len(result["rows"])
  return tasks, config, workdir, result


@pytest.mark.timeout(600)
def test_threedpw_job_runs_end_to_end_and_refines_again(tmp_path):
  from jhmr import launch

  tasks, config, workdir, result = _run("threedpw", tmp_path)
  assert not any(t == "multi-view" for t, _ in tasks)  # 3DPW has no multi-view set
  # The refine task reuses the trained models: the same refinement, the same numbers.
  again = launch.TASKS["refine"](config, str(workdir))
  assert again["rows"] == result["rows"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("source", ["emdb", "h36m"])
def test_job_runs_end_to_end(source, tmp_path):
  tasks = _run(source, tmp_path)[0]
  assert (("multi-view", "ScoreHMR") in tasks) == (source == "h36m")


def test_video_set_groups_consecutive_frames(tmp_path, body_model):
  from jhmr.data import builders

  config = _config("threedpw", tmp_path)
  real_data.load_sets(config, body_model)  # prepares threedpw/frames
  source = builders.make_builder("threedpw/frames", data_dir=str(tmp_path)).as_data_source()
  row = source["test"][0]
  # One track of 5 frames (0-3 consecutive, then 9): the shortest run allowed is 3.
  rows = [dict(row, frame_index=np.int32(t)) for t in (0, 1, 2, 3, 9)]
  video = real_data._video(
    jax_key(), rows, body_model, config, real_data._threedpw_reference, "sequence"
  )
  np.testing.assert_array_equal(video["group"], [0, 0, 0, 0])  # sequence_length 6 -> 4
  _check_set(video, 32, body_model.num_betas)
  np.testing.assert_allclose(video["body_pose"], np.repeat(row["body_pose"][None], 4, 0))
  rows = [dict(row, frame_index=np.int32(t)) for t in (0, 1, 5, 6)]
  assert real_data._video(jax_key(), rows, body_model, config, None, "sequence") is None


def jax_key():
  import jax

  return jax.random.PRNGKey(0)
