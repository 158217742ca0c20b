"""The refine example writes a clip and the files a user would bring, readable by jhmr.io."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.io import keypoints as keypoints_io
from jhmr.io import track_handling
from jhmr.io import tracks as tracks_io
from jhmr.io import video as video_io
from jhmr.pipelines import refine_example

TINY = dict(body_model="anny-tiny", num_frames=12, image_size=(96, 64), seed=3)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
  directory = tmp_path_factory.mktemp("example")
  return directory, refine_example.make_example(directory, **TINY)


def test_files_and_video(example):
  _, files = example
  assert isinstance(files, refine_example.ExampleFiles)
  for path in (files.video, files.tracks, files.truth):
    assert path.is_file()
  assert files.image_size == (96, 64) and files.num_frames == 12 and files.fps == 24.0
  frames, fps = video_io.read_frames(files.video)
  assert frames.shape == (12, 64, 96, 3) and fps == pytest.approx(24.0)
  truth = np.load(files.truth)
  np.testing.assert_array_equal(truth["image_size"], [64, 96])
  assert truth["joints_smpl24"].shape == (2, 12, 24, 3)
  np.testing.assert_array_equal(truth["track_ids"], [1, 2])
  # Something is drawn where the people are: the box interiors differ from the corners' colour.
  box = truth["boxes"][0, 0].astype(int)
  patch = frames[0, box[1] : box[3], box[0] : box[2]].astype(float)
  assert patch.std() > 5


def test_openpose_matches_truth(example):
  _, files = example
  truth = np.load(files.truth)
  op = keypoints_io.read_openpose(files.openpose_dir)
  assert op.num_frames == 12
  assert [p.split("/")[-1] for p in op.paths[:2]] == [
    "000000_keypoints.json",
    "000001_keypoints.json",
  ]
  assert op.num_people.max() == 2
  det = truth["detections"]  # [P, T, 25, 3]
  exact = truth["keypoints_2d"]
  good = det[..., 2] >= 0.5  # confident detections: error within a few noise stds (3 px)
  err = np.linalg.norm(det[..., :2] - exact, axis=-1)[good]
  assert good.mean() > 0.5 and np.median(err) < 6 and err.max() < 20
  conf = det[..., 2][det[..., 2] > 0]
  assert conf.max() <= 1.0 and (conf < 0.4).any()
  # Every OpenPose person is one of the track's detections of that frame.
  for t in range(op.num_frames):
    for p in range(op.num_people[t]):
      d = np.abs(det[:, t] - op.keypoints[t, p][None]).max(axis=(1, 2))
      assert d.min() < 1e-3


def test_phalp_reads_back(example):
  _, files = example
  truth = np.load(files.truth)
  tr = tracks_io.read_phalp(files.tracks)
  assert tr.ids == (1, 2) and tr.image_size == (64, 96)
  assert tr.focal_length == pytest.approx(float(truth["focal_length"]))
  assert tr.frame_names[0] == "000000.jpg" and len(tr.frame_names) == 12
  kept = track_handling.prepare_tracks(tr, min_length=5, min_shot_length=5)
  assert len(kept) == 2 and all(len(t) == 12 for t in kept)
  for p, track in enumerate(tr):
    np.testing.assert_array_equal(track.frames, np.arange(12))
    np.testing.assert_allclose(track.keypoints, truth["detections"][p], atol=1e-5)
    np.testing.assert_allclose(track.translation, truth["estimate_translation"][p], rtol=1e-5)
    # Estimates differ from the truth, but not wildly (regressor-like errors).
    est = Rotation.from_rotvec(track.body_pose.reshape(-1, 3))
    true = Rotation.from_rotvec(truth["body_pose"][p].reshape(-1, 3))
    angle = np.degrees((est.inv() * true).magnitude())
    assert 2 < angle.mean() < 25
    go = (
      Rotation.from_rotvec(track.global_orient)
      * Rotation.from_rotvec(truth["global_orient"][p]).inv()
    )
    assert np.degrees(go.magnitude()).max() < 40
    depth_ratio = track.translation[:, 2] / truth["translation"][p, :, 2]
    assert np.all(np.abs(np.log(depth_ratio)) < 0.6) and np.std(depth_ratio) > 1e-3
    assert np.all(np.isfinite(track.crop_camera))


def test_rerun_skips(example):
  directory, files = example
  stamp = files.tracks.stat().st_mtime_ns
  again = refine_example.make_example(directory, **TINY)
  assert again == files and files.tracks.stat().st_mtime_ns == stamp
  manifest = json.loads((directory / "manifest.json").read_text())
  assert manifest["seed"] == 3 and manifest["image_size"] == [96, 64]


def test_deterministic_from_seed(tmp_path, example):
  _, files = example
  other = refine_example.make_example(tmp_path, **TINY)
  a, b = np.load(files.truth), np.load(other.truth)
  for key in ("detections", "estimate_body_pose", "translation"):
    np.testing.assert_array_equal(a[key], b[key])
  # New arguments in the same directory: the files are rewritten.
  changed = refine_example.make_example(tmp_path, **{**TINY, "seed": 4})
  assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 4
  assert not np.array_equal(np.load(changed.truth)["detections"], a["detections"])
