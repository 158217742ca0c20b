"""Tests of jhmr.io.results: round trip, sidecar, schema checks, corrupt files, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest

from jhmr.io import results as results_lib


def _random_results(seed=0, keypoints=True, num_betas=10):
  rng = np.random.default_rng(seed)
  frames = [0, 1, 2, 4, 5]
  track_id = np.array([3] * len(frames) + [7] * 3, dtype=np.int32)
  frame = np.array(frames + [1, 2, 3], dtype=np.int32)
  n = track_id.shape[0]
  f = rng.uniform(800, 1500, n)
  intrinsics = np.zeros((n, 3, 3))
  intrinsics[:, 0, 0] = f
  intrinsics[:, 1, 1] = f
  intrinsics[:, 0, 2] = 640
  intrinsics[:, 1, 2] = 360
  intrinsics[:, 2, 2] = 1
  kp = {}
  if keypoints:
    kp = {
      "openpose25": np.concatenate(
        [rng.uniform(0, 1280, (n, 25, 2)), rng.uniform(0, 1, (n, 25, 1))], axis=-1
      ),
      "coco17": np.concatenate(
        [rng.uniform(0, 720, (n, 17, 2)), rng.uniform(0, 1, (n, 17, 1))], axis=-1
      ),
    }
  return results_lib.Results(
    track_id=track_id,
    frame=frame,
    global_orient=rng.normal(size=(n, 3)),
    body_pose=rng.normal(size=(n, 23, 3)) * 0.3,
    betas=rng.normal(size=(n, num_betas)),
    cam_t=rng.normal(size=(n, 3)) + [0, 0, 5],
    intrinsics=intrinsics,
    image_size=np.tile([1280, 720], (n, 1)),
    joints={
      "smpl24": rng.normal(size=(n, 24, 3)),
      "openpose25": rng.normal(size=(n, 25, 3)),
      "h36m17": rng.normal(size=(n, 17, 3)),
    },
    keypoints_2d=kp,
    metadata=results_lib.make_metadata(
      "results_test", config={"steps": 3, "lr": 0.1}, body_model="smpl_neutral", note="hi ü"
    ),
  )


def _files(directory):
  return sorted(os.listdir(directory))


@pytest.mark.parametrize("keypoints", [True, False])
def test_round_trip_is_exact(tmp_path, keypoints):
  res = _random_results(keypoints=keypoints)
  path = results_lib.save_results(tmp_path / "out.npz", res)
  back = results_lib.load_results(path)
  assert back == res
  assert results_lib.results_equal(back, res)
  assert back.track_id.dtype == np.int32 and back.body_pose.dtype == np.float32
  assert set(back.joints) == {"smpl24", "openpose25", "h36m17"}
  assert set(back.keypoints_2d) == ({"openpose25", "coco17"} if keypoints else set())
  assert back.metadata["note"] == "hi ü" and back.metadata["config"] == {"steps": 3, "lr": 0.1}
  assert _files(tmp_path) == ["out.json", "out.npz"]
  # Plain numpy can read it without pickle.
  with np.load(path, allow_pickle=False) as z:
    assert "joints/smpl24" in z.files and int(z["schema_version"]) == 1


def test_equality_detects_differences():
  a = _random_results()
  assert a != _random_results(seed=1)
  assert a != _random_results(keypoints=False)
  b = results_lib.Results(**{**vars(a), "metadata": {**a.metadata, "note": "other"}})
  assert a != b
  assert a == results_lib.Results(**vars(a))


def test_constructor_canonicalises_and_freezes():
  res = _random_results()
  assert res.cam_t.dtype == np.float32 and res.image_size.dtype == np.int32
  with pytest.raises(ValueError):
    res.cam_t[0, 0] = 1.0
  assert res.num_rows == 8 and res.track_ids.tolist() == [3, 7]


def test_sidecar_content(tmp_path):
  res = _random_results(num_betas=16)
  results_lib.save_results(tmp_path / "run.npz", res)
  side = json.loads((tmp_path / "run.json").read_text())
  assert side["schema"] == "jhmr.results"
  assert side["schema_version"] == results_lib.SCHEMA_VERSION == 1
  assert side["data_file"] == "run.npz" and side["num_rows"] == 8 and side["num_tracks"] == 2
  fields = side["fields"]
  assert fields["body_pose"]["shape"] == [8, 23, 3]
  assert fields["betas"]["shape"] == [8, 16]
  assert fields["joints/openpose25"]["shape"] == [8, 25, 3]
  assert fields["keypoints_2d/coco17"] == {
    "shape": [8, 17, 3],
    "dtype": "float32",
    "doc": fields["keypoints_2d/coco17"]["doc"],
  }
  assert "camera frame" in fields["global_orient"]["doc"]
  assert "metres" in fields["cam_t"]["doc"]
  assert side["metadata"] == res.metadata
  assert side["metadata"]["body_model"] == "smpl_neutral"
  assert side["metadata"]["program"] == "results_test" and "jhmr_version" in side["metadata"]


def _rewrite(path, **changes):
  with np.load(path, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  for key, value in changes.items():
    key = key.replace("__", "/")
    if value is None:
      del arrays[key]
    else:
      arrays[key] = value
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def test_newer_schema_is_refused(tmp_path):
  path = results_lib.save_results(tmp_path / "new.npz", _random_results())
  _rewrite(path, schema_version=np.array(2))
  with pytest.raises(ValueError) as e:
    results_lib.load_results(path)
  message = str(e.value)
  assert str(path) in message and "version 2" in message and "supported version 1" in message


def test_wrong_schema_name_is_refused(tmp_path):
  path = results_lib.save_results(tmp_path / "x.npz", _random_results())
  _rewrite(path, schema=np.array("something.else"))
  with pytest.raises(ValueError, match="something.else"):
    results_lib.load_results(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.0])
def test_truncated_file_is_refused_naming_file(tmp_path, fraction):
  path = results_lib.save_results(tmp_path / "cut.npz", _random_results())
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * fraction)])
  with pytest.raises(results_lib.ResultsFileError) as e:
    results_lib.load_results(path)
  assert str(path) in str(e.value)
  assert not isinstance(e.value, zipfile.BadZipFile)


def test_corrupt_member_is_refused_naming_file(tmp_path):
  path = results_lib.save_results(tmp_path / "bad.npz", _random_results())
  data = bytearray(path.read_bytes())
  # Flip bytes inside the compressed data (after the first local header) -> CRC / zlib error.
  for i in range(200, 260):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(results_lib.ResultsFileError, match=str(path)):
    results_lib.load_results(path)


def test_not_a_zip_is_refused(tmp_path):
  path = tmp_path / "text.npz"
  path.write_text("hello")
  with pytest.raises(results_lib.ResultsFileError, match="text.npz"):
    results_lib.load_results(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    results_lib.load_results(tmp_path / "nope.npz")


@pytest.mark.parametrize("field", ["body_pose", "cam_t", "track_id", "metadata", "schema_version"])
def test_missing_field_is_refused_naming_field(tmp_path, field):
  path = results_lib.save_results(tmp_path / "m.npz", _random_results())
  _rewrite(path, **{field: None})
  with pytest.raises(ValueError) as e:
    results_lib.load_results(path)
  assert str(path) in str(e.value) and f"'{field}'" in str(e.value)


def test_missing_joints_is_refused(tmp_path):
  path = results_lib.save_results(tmp_path / "j.npz", _random_results())
  _rewrite(path, joints__smpl24=None, joints__openpose25=None, joints__h36m17=None)
  with pytest.raises(ValueError, match="'joints'"):
    results_lib.load_results(path)


@pytest.mark.parametrize(
  "key,value,needle",
  [
    ("body_pose", np.zeros((8, 24, 3), np.float32), "'body_pose' has shape (8, 24, 3)"),
    ("cam_t", np.zeros((7, 3), np.float32), "expected (N=8, 3)"),
    ("joints__smpl24", np.zeros((8, 24, 2), np.float32), "'joints/smpl24'"),
    ("keypoints_2d__coco17", np.zeros((9, 17, 3), np.float32), "'keypoints_2d/coco17'"),
    ("frame", np.zeros(8, np.int32), "duplicate"),
    ("intrinsics", np.full((8, 3, 3), np.nan, np.float32), "'intrinsics' holds NaN"),
    ("betas", np.array(["a"] * 8), "'betas' has dtype"),
    ("extra_thing", np.zeros(8), "unknown field 'extra_thing'"),
  ],
)
def test_bad_field_is_refused_naming_file_and_field(tmp_path, key, value, needle):
  path = results_lib.save_results(tmp_path / "b.npz", _random_results())
  _rewrite(path, **{key: value})
  with pytest.raises(ValueError) as e:
    results_lib.load_results(path)
  assert str(path) in str(e.value) and needle in str(e.value)


def test_constructor_refuses_bad_input():
  res = _random_results()
  with pytest.raises(ValueError, match="'global_orient' holds NaN"):
    results_lib.Results(**{**vars(res), "global_orient": np.full((8, 3), np.nan)})
  with pytest.raises(ValueError, match="not JSON-serialisable"):
    results_lib.Results(**{**vars(res), "metadata": {"x": object()}})
  with pytest.raises(ValueError, match="invalid set name"):
    results_lib.Results(**{**vars(res), "joints": {"a/b": res.joints["smpl24"]}})
  with pytest.raises(ValueError, match="no joint set"):
    results_lib.Results(**{**vars(res), "joints": {}})


def test_save_requires_npz_suffix(tmp_path):
  with pytest.raises(ValueError, match=".npz"):
    results_lib.save_results(tmp_path / "out.pkl", _random_results())


def test_failed_validation_writes_nothing_and_keeps_old_file(tmp_path):
  path = results_lib.save_results(tmp_path / "keep.npz", _random_results(seed=0))
  old_npz, old_json = path.read_bytes(), (tmp_path / "keep.json").read_bytes()
  bad = _random_results(seed=1)
  # Arrays are read-only; force a NaN in the way a careless caller could (a writable view).
  body_pose = bad.body_pose.copy()
  body_pose[2, 5, 1] = np.nan
  object.__setattr__(bad, "body_pose", body_pose)
  with pytest.raises(ValueError) as e:
    results_lib.save_results(path, bad)
  assert str(path) in str(e.value) and "'body_pose' holds NaN" in str(e.value)
  assert path.read_bytes() == old_npz and (tmp_path / "keep.json").read_bytes() == old_json
  assert _files(tmp_path) == ["keep.json", "keep.npz"]


def test_failed_write_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
  path = results_lib.save_results(tmp_path / "keep.npz", _random_results(seed=0))
  old_npz = path.read_bytes()

  def broken(f, **arrays):
    f.write(b"PK partial")
    raise OSError("disk full")

  monkeypatch.setattr(results_lib.np, "savez_compressed", broken)
  with pytest.raises(OSError, match="disk full"):
    results_lib.save_results(path, _random_results(seed=1))
  assert path.read_bytes() == old_npz
  assert _files(tmp_path) == ["keep.json", "keep.npz"]
  monkeypatch.undo()
  assert results_lib.load_results(path) == _random_results(seed=0)


def test_overwrite_replaces_both_files(tmp_path):
  path = tmp_path / "o.npz"
  results_lib.save_results(path, _random_results(seed=0))
  new = _random_results(seed=2, num_betas=11)
  results_lib.save_results(path, new)
  assert results_lib.load_results(path) == new
  assert json.loads((tmp_path / "o.json").read_text())["fields"]["betas"]["shape"] == [8, 11]
  assert _files(tmp_path) == ["o.json", "o.npz"]


def test_empty_results_round_trip(tmp_path):
  res = results_lib.Results(
    track_id=np.zeros(0, np.int32),
    frame=np.zeros(0, np.int32),
    global_orient=np.zeros((0, 3)),
    body_pose=np.zeros((0, 23, 3)),
    betas=np.zeros((0, 10)),
    cam_t=np.zeros((0, 3)),
    intrinsics=np.zeros((0, 3, 3)),
    image_size=np.zeros((0, 2), np.int32),
    joints={"smpl24": np.zeros((0, 24, 3))},
  )
  path = results_lib.save_results(tmp_path / "empty.npz", res)
  assert results_lib.load_results(path) == res


def _with_refinement(res, iterations=3, seed=1):
  rng = np.random.default_rng(seed)
  n = res.num_rows
  return dataclasses.replace(
    res,
    refinement_pose=rng.normal(size=(n, iterations, 24, 3)) * 0.2,
    refinement_cam_t=rng.normal(size=(n, iterations, 3)) + [0, 0, 5],
  )


def test_refinement_iterations_round_trip(tmp_path):
  res = _with_refinement(_random_results())
  assert res.has_refinement and not _random_results().has_refinement
  path = results_lib.save_results(tmp_path / "out.npz", res)
  back = results_lib.load_results(path)
  assert back == res and back.refinement_pose.shape == (res.num_rows, 3, 24, 3)
  assert back != _random_results()  # the iterations take part in equality
  side = json.loads((tmp_path / "out.json").read_text())
  assert side["fields"]["refinement_cam_t"]["shape"] == [res.num_rows, 3, 3]


def test_refinement_fields_come_together_with_one_iteration_count():
  res = _random_results()
  with pytest.raises(results_lib.ResultsFileError, match="come together"):
    dataclasses.replace(res, refinement_pose=np.zeros((res.num_rows, 2, 24, 3)))
  with pytest.raises(results_lib.ResultsFileError, match="differ in iterations"):
    dataclasses.replace(
      res,
      refinement_pose=np.zeros((res.num_rows, 2, 24, 3)),
      refinement_cam_t=np.zeros((res.num_rows, 3, 3)),
    )
  with pytest.raises(results_lib.ResultsFileError, match="refinement_pose.*shape"):
    dataclasses.replace(
      res,
      refinement_pose=np.zeros((res.num_rows, 2, 23, 3)),
      refinement_cam_t=np.zeros((res.num_rows, 2, 3)),
    )
