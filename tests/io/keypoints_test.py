"""Tests for the OpenPose and COCO-results importers (files written here from the documented
format, io_formats.md §1-2)."""

import json

import numpy as np
import pytest

from jhmr.io import joint_maps, keypoints


def _person(pose, person_id=-1, face=(), hands=((), ())):
  return {
    "person_id": [person_id],
    "pose_keypoints_2d": [float(v) for v in np.asarray(pose).reshape(-1)],
    "face_keypoints_2d": list(face),
    "hand_left_keypoints_2d": list(hands[0]),
    "hand_right_keypoints_2d": list(hands[1]),
    "pose_keypoints_3d": [],
    "face_keypoints_3d": [],
    "hand_left_keypoints_3d": [],
    "hand_right_keypoints_3d": [],
  }


def _write(path, obj):
  path.write_text(json.dumps(obj))
  return path


def _pose(k, seed):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, 640, (k, 2))
  c = rng.uniform(0.1, 1.0, (k, 1))
  return np.round(np.concatenate([xy, c], -1), 3)


def test_body25_two_people(tmp_path):
  a, b = _pose(25, 0), _pose(25, 1)
  path = _write(
    tmp_path / "img_keypoints.json", {"version": 1.3, "people": [_person(a, 3), _person(b, 7)]}
  )
  frames = keypoints.read_openpose(path)
  assert frames.keypoints.shape == (1, 2, 25, 3)
  np.testing.assert_allclose(frames.keypoints[0, 0], a, rtol=1e-6)
  np.testing.assert_allclose(frames.keypoints[0, 1], b, rtol=1e-6)
  assert frames.person_id.tolist() == [[3, 7]]
  assert frames.num_people.tolist() == [2]
  assert frames.frame_index.tolist() == [0]
  assert frames.face is None and frames.hand_left is None and frames.hand_right is None


def test_coco18_file_unmapped_joints_have_confidence_zero(tmp_path):
  pose = _pose(18, 2)
  path = _write(tmp_path / "x_keypoints.json", {"version": 1.3, "people": [_person(pose)]})
  frames = keypoints.read_openpose(path)  # to BODY_25
  kp = frames.keypoints[0, 0]
  missing = [8, 19, 20, 21, 22, 23, 24]  # MidHip and the feet
  assert np.all(kp[missing] == 0)
  present = [i for i in range(25) if i not in missing]
  np.testing.assert_allclose(kp[present], pose, rtol=1e-6)  # same order, MidHip removed
  assert frames.person_id.tolist() == [[-1]]
  coco = keypoints.read_openpose(path, joint_set="coco17")
  np.testing.assert_allclose(coco.keypoints[0, 0, 5], pose[5], rtol=1e-6)  # LShoulder
  np.testing.assert_allclose(coco.keypoints[0, 0, 6], pose[2], rtol=1e-6)  # RShoulder


def test_face_and_hands(tmp_path):
  face = _pose(70, 3).reshape(-1)
  hand = _pose(21, 4).reshape(-1)
  people = [_person(_pose(25, 0), face=face, hands=([], hand)), _person(_pose(25, 1))]
  path = _write(tmp_path / "f_keypoints.json", {"version": 1.3, "people": people})
  frames = keypoints.read_openpose(path)
  assert frames.face.shape == (1, 2, 70, 3) and frames.hand_left is None
  np.testing.assert_allclose(frames.face[0, 0].reshape(-1), face, rtol=1e-6)
  np.testing.assert_allclose(frames.hand_right[0, 0].reshape(-1), hand, rtol=1e-6)
  assert np.all(frames.face[0, 1] == 0)


def test_directory_of_video_frames(tmp_path):
  poses = {12: [_pose(25, 0)], 3: [_pose(25, 1), _pose(25, 2)], 7: []}
  for n, people in poses.items():
    _write(
      tmp_path / f"clip_{n:012d}_keypoints.json",
      {"version": 1.3, "people": [_person(p, i) for i, p in enumerate(people)]},
    )
  (tmp_path / "notes.txt").write_text("not a keypoint file")
  frames = keypoints.read_openpose(tmp_path)
  assert frames.frame_index.tolist() == [3, 7, 12]
  assert frames.num_people.tolist() == [2, 0, 1]
  assert frames.keypoints.shape == (3, 2, 25, 3)
  np.testing.assert_allclose(frames.keypoints[0, 1], poses[3][1], rtol=1e-6)
  np.testing.assert_allclose(frames.keypoints[2, 0], poses[12][0], rtol=1e-6)
  assert np.all(frames.keypoints[1] == 0) and np.all(frames.keypoints[2, 1] == 0)
  assert frames.person_id.tolist() == [[0, 1], [-1, -1], [0, -1]]
  assert frames.paths[0].endswith("clip_000000000003_keypoints.json")

  kp, conf = keypoints.to_observation_keypoints(frames, person_id=1)
  assert kp.shape == (3, 25, 2) and conf.shape == (3, 25)
  np.testing.assert_allclose(kp[0], poses[3][1][:, :2], rtol=1e-6)
  assert np.all(conf[1:] == 0)
  kp0, conf0 = keypoints.to_observation_keypoints(frames)
  np.testing.assert_allclose(conf0[2], poses[12][0][:, 2], rtol=1e-6)


def test_directory_without_frame_numbers_uses_sorted_order(tmp_path):
  for name, seed in (("b_keypoints.json", 1), ("a_keypoints.json", 0)):
    _write(tmp_path / name, {"version": 1.3, "people": [_person(_pose(25, seed))]})
  frames = keypoints.read_openpose(tmp_path)
  assert frames.frame_index.tolist() == [0, 1]
  np.testing.assert_allclose(frames.keypoints[0, 0], _pose(25, 0), rtol=1e-6)


def test_scorehmr_nested_pose_is_read(tmp_path):
  pose = _pose(25, 5)
  path = _write(tmp_path / "s_keypoints.json", {"people": [{"pose_keypoints_2d": pose.tolist()}]})
  np.testing.assert_allclose(keypoints.read_openpose(path).keypoints[0, 0], pose, rtol=1e-6)


def test_openpose_errors(tmp_path):
  bad = tmp_path / "bad_keypoints.json"
  bad.write_text('{"version": 1.3, "people": [')
  with pytest.raises(ValueError, match=r"bad_keypoints\.json: malformed JSON"):
    keypoints.read_openpose(bad)
  path = _write(tmp_path / "nopeople_keypoints.json", {"version": 1.3})
  with pytest.raises(ValueError, match=r"nopeople_keypoints\.json: missing 'people'"):
    keypoints.read_openpose(path)
  path = _write(tmp_path / "len_keypoints.json", {"people": [_person(np.ones(60))]})
  with pytest.raises(
    ValueError, match=r"len_keypoints\.json: person 0 .* 60 numbers, expected 3 x"
  ):
    keypoints.read_openpose(path)
  nan = tmp_path / "nan_keypoints.json"
  values = ", ".join(["1.0"] * 74 + ["NaN"])
  nan.write_text(
    '{"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": [' + values + "]}]}"
  )
  with pytest.raises(ValueError, match=r"nan_keypoints\.json: .*NaN"):
    keypoints.read_openpose(nan)
  with pytest.raises(ValueError, match="no such file"):
    keypoints.read_openpose(tmp_path / "missing")
  with pytest.raises(ValueError, match="unknown joint set 'body25'"):
    keypoints.read_openpose(tmp_path / "len_keypoints.json", joint_set="body25")


def _detection(image_id, seed, score, bbox=True):
  entry = {
    "image_id": image_id,
    "category_id": 1,
    "keypoints": [float(v) for v in _pose(17, seed).reshape(-1)],
    "score": score,
  }
  if bbox:
    entry["bbox"] = [10.0, 20.0, 100.0, 200.0]
  return entry


def test_coco_results(tmp_path):
  entries = [_detection(1, 0, 0.9), _detection(1, 1, 0.2, bbox=False), _detection(5, 2, 0.8)]
  path = _write(tmp_path / "results.json", entries)
  det = keypoints.read_coco_results(path)
  assert det.image_id.tolist() == [1, 1, 5]
  assert det.keypoints.shape == (3, 17, 3)
  np.testing.assert_allclose(det.keypoints[2], _pose(17, 2), rtol=1e-6)
  np.testing.assert_allclose(det.bbox, [[10, 20, 100, 200], [0, 0, 0, 0], [10, 20, 100, 200]])
  np.testing.assert_allclose(det.score, [0.9, 0.2, 0.8], rtol=1e-6)
  assert keypoints.read_coco_results(path, min_score=0.5).image_id.tolist() == [1, 5]
  assert keypoints.read_coco_results(path, image_ids=[5]).score.tolist() == pytest.approx([0.8])
  empty = keypoints.read_coco_results(_write(tmp_path / "empty.json", []))
  assert empty.keypoints.shape == (0, 17, 3) and empty.bbox.shape == (0, 4)
  # Into BODY_25 for guidance, as ScoreHMR's demo does.
  body25 = joint_maps.convert(det.keypoints, "coco17", "openpose25")
  assert body25.shape == (3, 25, 3) and np.all(body25[:, 8, 2] == 0)


def test_coco_results_errors(tmp_path):
  path = _write(tmp_path / "dict.json", {"annotations": []})
  with pytest.raises(ValueError, match=r"dict\.json: top level is dict, expected a list"):
    keypoints.read_coco_results(path)
  entry = _detection(1, 0, 0.9)
  entry["keypoints"] = entry["keypoints"] + [0.0, 0.0, 0.0]  # 18 points
  path = _write(tmp_path / "count.json", [entry])
  with pytest.raises(
    ValueError, match=r"count\.json: entry 0 keypoints has 54 numbers, expected 3 x 17 = 51"
  ):
    keypoints.read_coco_results(path)
  entry = _detection(1, 0, 0.9) | {"category_id": 2}
  path = _write(tmp_path / "cat.json", [_detection(1, 0, 0.9), entry])
  with pytest.raises(ValueError, match=r"cat\.json: entry 1 has category_id 2, expected 1"):
    keypoints.read_coco_results(path)
  path = tmp_path / "nan.json"
  path.write_text(json.dumps([_detection(1, 0, float("nan"))]))  # writes a bare NaN
  with pytest.raises(ValueError, match=r"nan\.json: entry 0 score has NaN"):
    keypoints.read_coco_results(path)
  path = _write(tmp_path / "noscore.json", [{"image_id": 1, "keypoints": [0.0] * 51}])
  with pytest.raises(ValueError, match=r"noscore\.json: entry 0 has no 'score'"):
    keypoints.read_coco_results(path)
