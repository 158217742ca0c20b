"""Tests of the OpenPose JSON and PHALP pickle writers (round trips through the readers), and of
`read_phalp` on a file written by joblib itself."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.io import keypoints as keypoints_lib
from jhmr.io import tracks as tracks_lib


def _people(rng, p):
  xy = rng.uniform(0, 300, (p, 25, 2))
  c = rng.uniform(0.0, 1.0, (p, 25, 1))
  out = np.concatenate([xy, c], -1).astype(np.float32)
  out[:, 3] = 0.0  # a missing point
  return out


def test_write_openpose_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  frames = [_people(rng, 2), _people(rng, 0), _people(rng, 1)]
  names = ["000000", "000001", "000002"]
  paths = keypoints_lib.write_openpose(tmp_path / "op", frames, names, person_ids=[[4, 7], [], [7]])
  assert [p.name for p in paths] == [f"{n}_keypoints.json" for n in names]
  doc = json.loads(paths[0].read_text())
  assert doc["version"] == 1.3
  person = doc["people"][0]
  assert person["person_id"] == [4] and len(person["pose_keypoints_2d"]) == 75
  for key in ("face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"):
    assert person[key] == []
  for key in ("pose", "face", "hand_left", "hand_right"):
    assert person[f"{key}_keypoints_3d"] == []
  assert json.loads(paths[1].read_text())["people"] == []

  read = keypoints_lib.read_openpose(tmp_path / "op")
  assert read.num_frames == 3
  np.testing.assert_array_equal(read.num_people, [2, 0, 1])
  np.testing.assert_allclose(read.keypoints[0], frames[0], rtol=1e-6)
  np.testing.assert_allclose(read.keypoints[2, 0], frames[2][0], rtol=1e-6)
  np.testing.assert_array_equal(read.person_id, [[4, 7], [-1, -1], [7, -1]])
  assert read.face is None and read.hand_left is None


def test_write_openpose_default_names_and_errors(tmp_path):
  paths = keypoints_lib.write_openpose(tmp_path, [np.zeros((1, 25, 3))])
  assert paths[0].name == "000000000000_keypoints.json"
  assert keypoints_lib.read_openpose(paths[0]).person_id[0, 0] == -1
  with pytest.raises(ValueError, match=r"\[P, 25, 3\]"):
    keypoints_lib.write_openpose(tmp_path, [np.zeros((1, 18, 3))])
  with pytest.raises(ValueError, match=r"\[P, 25, 3\]"):
    keypoints_lib.write_openpose(tmp_path, [np.zeros((25, 3))])
  with pytest.raises(ValueError, match="NaN"):
    keypoints_lib.write_openpose(tmp_path, [np.full((1, 25, 3), np.nan)])
  with pytest.raises(ValueError, match="frame names"):
    keypoints_lib.write_openpose(tmp_path, [np.zeros((1, 25, 3))], ["a", "b"])


def _track(rng, tid, frames, shots):
  t = len(frames)
  x1 = rng.uniform(0, 100, (t, 2))
  kp = np.concatenate([rng.uniform(0, 300, (t, 25, 2)), rng.uniform(0, 1, (t, 25, 1))], -1)
  return tracks_lib.Track(
    track_id=tid,
    frames=np.asarray(frames, np.int64),
    boxes=np.concatenate([x1, x1 + rng.uniform(20, 100, (t, 2))], -1).astype(np.float32),
    keypoints=kp.astype(np.float32),
    global_orient=Rotation.random(t, random_state=rng).as_rotvec().astype(np.float32),
    body_pose=Rotation.random(t * 23, random_state=rng)
    .as_rotvec()
    .reshape(t, 23, 3)
    .astype(np.float32),
    betas=rng.normal(size=(t, 10)).astype(np.float32),
    translation=rng.normal([0, 0, 30], 1, (t, 3)).astype(np.float32),
    crop_camera=rng.normal(size=(t, 3)).astype(np.float32),
    shots=np.asarray(shots, np.int64),
    observed=np.ones(t, bool),
  )


def _assert_tracks_equal(got, want):
  assert got.ids == want.ids
  for a, b in zip(got, want, strict=True):
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.shots, b.shots)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.keypoints, b.keypoints, rtol=1e-6)
    np.testing.assert_allclose(a.betas, b.betas)
    np.testing.assert_allclose(a.translation, b.translation, rtol=1e-6)
    np.testing.assert_allclose(a.crop_camera, b.crop_camera)
    for rot_a, rot_b in ((a.global_orient, b.global_orient), (a.body_pose, b.body_pose)):
      ma = Rotation.from_rotvec(rot_a.reshape(-1, 3)).as_matrix()
      mb = Rotation.from_rotvec(rot_b.reshape(-1, 3)).as_matrix()
      np.testing.assert_allclose(ma, mb, atol=1e-5)
    assert a.observed.all()


def test_write_phalp_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  names = tuple(f"frames/{i:06d}.jpg" for i in range(12))
  tracks = tracks_lib.Tracks(
    tracks=(
      _track(rng, 1, range(12), [0] * 7 + [1] * 5),  # a cut at frame 7
      _track(rng, 5, [2, 3, 4, 8, 9], [0, 0, 0, 1, 1]),  # a gap
    ),
    frame_names=names,
    image_size=(240, 320),
    focal_length=5000 * 320 / 256,
    source="phalp",
  )
  path = tracks_lib.write_phalp(tmp_path / "out" / "demo.pkl", tracks)
  assert path.exists() and not list(path.parent.glob(".*tmp"))
  raw = joblib.load(path)
  frame = raw[names[3]]
  assert frame["time"] == 3 and frame["tid"] == [1, 5] and frame["tracked_ids"] == [1, 5]
  assert frame["smpl"][0]["global_orient"].shape == (1, 3, 3)
  assert frame["smpl"][0]["body_pose"].shape == (23, 3, 3)
  assert frame["2d_joints"][0].shape == (90,) and frame["extra_data"][0].shape == (25, 3)
  np.testing.assert_allclose(frame["size"][0], [240, 320])
  x1, y1, x2, y2 = tracks[1].boxes[3]
  np.testing.assert_allclose(frame["bbox"][0], [x1, y1, x2 - x1, y2 - y1], rtol=1e-6)
  assert [raw[n]["shot"] for n in names] == [0] * 7 + [1] + [0] * 4
  uv = frame["2d_joints"][0].reshape(45, 2)
  assert np.all(uv[25:] == 0)

  read = tracks_lib.read_phalp(path)
  assert read.frame_names == names and read.image_size == (240, 320)
  assert read.focal_length == pytest.approx(5000 * 320 / 256)
  _assert_tracks_equal(read, tracks)


def test_write_phalp_converts_focal_and_needs_size(tmp_path):
  rng = np.random.default_rng(2)
  track = _track(rng, 0, range(3), [0, 0, 0])
  tracks = tracks_lib.Tracks((track,), focal_length=500.0)
  with pytest.raises(ValueError, match="image_size"):
    tracks_lib.write_phalp(tmp_path / "a.pkl", tracks)
  path = tracks_lib.write_phalp(tmp_path / "a.pkl", tracks, image_size=(100, 200))
  read = tracks_lib.read_phalp(path)
  assert read.frame_names == ("000000.jpg", "000001.jpg", "000002.jpg")
  f = 5000 * 200 / 256
  np.testing.assert_allclose(read[0].translation[:, :2], track.translation[:, :2], rtol=1e-6)
  np.testing.assert_allclose(
    read[0].translation[:, 2], track.translation[:, 2] * f / 500, rtol=1e-6
  )


def _rotmats(rng, n):
  return Rotation.random(n, random_state=rng).as_matrix().astype(np.float32)


def test_read_phalp_of_a_real_joblib_file(tmp_path):
  """A PHALP-layout dict (io_formats.md §3) written by joblib.dump(compress=3) itself."""
  rng = np.random.default_rng(3)
  h, w = 480, 640
  data, truth = {}, []
  for t in range(4):
    go, bp = _rotmats(rng, 1), _rotmats(rng, 23)
    kp = np.concatenate([rng.uniform(0, 400, (25, 2)), rng.uniform(0, 1, (25, 1))], 1)
    kp = kp.astype(np.float32)
    cam = np.asarray([0.1 * t, 0.2, 40.0 + t], np.float32)
    entry_stale = {"global_orient": _rotmats(rng, 1), "body_pose": _rotmats(rng, 23)}
    entry_stale["betas"] = np.zeros(10, np.float32)
    data[f"outputs/frames/{t:06d}.jpg"] = {
      "time": t,
      "shot": 0,
      "frame_path": f"outputs/frames/{t:06d}.jpg",
      "tid": [3, 9],
      "tracked_ids": [3],  # 9 is stale
      "tracked_bbox": [np.asarray([10, 20, 100, 200], np.float32)],
      "bbox": [np.asarray([10, 20, 100, 200], np.float32)] * 2,
      "tracked_time": [0, 3],
      "center": [np.asarray([60, 120], np.float32)] * 2,
      "scale": [np.asarray([200, 200], np.float32)] * 2,
      "size": [[h, w], [h, w]],
      "img_path": [f"frames/{t:06d}.jpg"] * 2,
      "img_name": [f"{t:06d}.jpg"] * 2,
      "class_name": [np.int64(0)] * 2,
      "conf": [np.float32(0.98), np.float32(0.5)],
      "annotations": [[], []],
      "mask": [[{"size": [h, w], "counts": "PPY`0"}]] * 2,
      "smpl": [
        {"global_orient": go, "body_pose": bp, "betas": np.arange(10, dtype=np.float32)},
        entry_stale,
      ],
      "camera": [cam, np.zeros(3, np.float32)],
      "camera_bbox": [np.asarray([0.9, 0.01, 0.02], np.float32)] * 2,
      "3d_joints": [np.zeros((45, 3), np.float32)] * 2,
      "2d_joints": [rng.uniform(0, 1, 90).astype(np.float32)] * 2,
      "extra_data": [kp, kp],
    }
    truth.append((go, bp, cam, kp))
  path = tmp_path / "demo_video.pkl"
  joblib.dump(data, path, compress=3)
  assert path.read_bytes()[:1] == b"\x78"  # a zlib stream
  tr = tracks_lib.read_phalp(path)
  assert tr.ids == (3,) and tr.image_size == (h, w)
  t3 = tr[3]
  np.testing.assert_array_equal(t3.frames, np.arange(4))
  np.testing.assert_allclose(t3.boxes[0], [10, 20, 110, 220])
  np.testing.assert_allclose(t3.betas[2], np.arange(10))
  for t, (go, bp, cam, kp) in enumerate(truth):
    np.testing.assert_allclose(t3.translation[t], cam)
    np.testing.assert_allclose(t3.keypoints[t], kp)
    np.testing.assert_allclose(
      Rotation.from_rotvec(t3.global_orient[t]).as_matrix(), go[0], atol=2e-5
    )
    got = Rotation.from_rotvec(t3.body_pose[t]).as_matrix()
    np.testing.assert_allclose(got, bp, atol=2e-5)
