"""Tests of the refine program (jhmr.pipelines.refine): inputs, matching, grouping, outputs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.io import results, tracks
from jhmr.io import video as video_io
from jhmr.pipelines import refine, refine_inputs, refine_outputs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(variant="tiny"):
  spec = importlib.util.spec_from_file_location("refine_config", ROOT / "configs" / "refine.py")
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(ROOT))
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _track(track_id, frames, box, keypoints=None, shots=None):
  t = len(frames)
  return tracks.Track(
    track_id=track_id,
    frames=np.asarray(frames, np.int64),
    boxes=np.tile(np.asarray(box, np.float32), (t, 1)),
    keypoints=np.zeros((t, 25, 3), np.float32) if keypoints is None else keypoints,
    global_orient=np.tile([[np.pi, 0, 0]], (t, 1)).astype(np.float32),
    body_pose=np.zeros((t, 23, 3), np.float32),
    betas=np.zeros((t, 10), np.float32),
    translation=np.tile([[0, 0, 8.0]], (t, 1)).astype(np.float32),
    crop_camera=np.full((t, 3), np.nan, np.float32),
    shots=np.zeros(t, np.int64) if shots is None else np.asarray(shots, np.int64),
    observed=np.ones(t, bool),
  )


def _person(box):
  """BODY_25 detections spread over a box (x1, y1, x2, y2), confidence 0.9."""
  x1, y1, x2, y2 = box
  rng = np.random.default_rng(int(x1))
  xy = np.stack([rng.uniform(x1, x2, 25), rng.uniform(y1, y2, 25)], -1)
  xy[0], xy[1] = (x1, y1), (x2, y2)  # the points span the box
  return np.concatenate([xy, np.full((25, 1), 0.9)], -1).astype(np.float32)


def test_track_format_by_name(tmp_path):
  assert refine_inputs.track_format(str(tmp_path)) == "scorehmr"
  assert refine_inputs.track_format("x/demo.pkl") == "phalp"
  assert refine_inputs.track_format("x/wham_output.pkl") == "wham"
  assert refine_inputs.track_format("x/hmr4d_results.pt") == "gvhmr"
  assert refine_inputs.track_format("x/a.pkl", "wham") == "wham"
  with pytest.raises(ValueError, match="cannot tell"):
    refine_inputs.track_format("x/a.txt")
  with pytest.raises(ValueError, match="unknown tracks_format"):
    refine_inputs.track_format("x/a.pkl", "vibe")
  with pytest.raises(FileNotFoundError, match="nope.pkl"):
    refine_inputs.read_tracks(str(tmp_path / "nope.pkl"))


def test_box_iou():
  a = np.array([[0, 0, 10, 10], [np.nan] * 4], np.float32)
  b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  np.testing.assert_allclose(refine_inputs.box_iou(a, b), [[50 / 150, 1, 0], [0, 0, 0]], atol=1e-6)


def test_detections_are_matched_to_the_overlapping_track():
  left, right = (10, 10, 60, 150), (200, 10, 250, 150)
  track_list = [_track(1, [0, 1, 2], left), _track(2, [1, 2], right)]
  detections = {
    0: np.stack([_person(right), _person(left)]),  # order unrelated to the tracks
    1: np.stack([_person(right), _person(left)]),
    2: np.stack([_person((100, 10, 150, 150))]),  # overlaps no track box: matched to none
  }
  out = {t.track_id: t for t in refine_inputs.attach_keypoints(track_list, detections, min_iou=0.3)}
  np.testing.assert_array_equal(out[1].keypoints[0], detections[0][1])
  np.testing.assert_array_equal(out[1].keypoints[1], detections[1][1])
  np.testing.assert_array_equal(out[2].keypoints[0], detections[1][0])
  assert not out[1].keypoints[2].any() and not out[2].keypoints[1].any()


def _view(track_list, name="view0"):
  return refine_inputs.View(
    name=name,
    tracklets=tuple(track_list),
    image_size=(320, 240),
    focal_length=(1000.0, 1000.0),
    camera_center=(160.0, 120.0),
    frames=None,
    fps=24.0,
    source=refine_inputs.ViewInput(tracks="t.pkl"),
  )


def test_groups_follow_the_task():
  body = load_body_model("anny-tiny")
  kp = np.zeros((3, 25, 3), np.float32)
  kp[..., 2] = 1.0
  a = _track(1, [0, 1, 2], (0, 0, 9, 9), kp)
  b = _track(2, [1, 2], (0, 0, 9, 9), kp[:2])
  views = [_view([a, b]), _view([a, b], "view1")]
  rows, obs = refine.rows_and_observation(views, "video", body)
  assert rows.frame.tolist() == [0, 1, 2, 1, 2] * 2 and rows.view.tolist() == [0] * 5 + [1] * 5
  assert np.asarray(obs.group).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
  _, obs = refine.rows_and_observation(views, "keypoints", body)
  assert np.asarray(obs.group).tolist() == list(range(10))
  _, obs = refine.rows_and_observation(views, "multiview", body)
  group = np.asarray(obs.group)
  assert (group[:5] == group[5:]).all() and len(np.unique(group)) == 5  # (track, frame) pairs
  np.testing.assert_allclose(np.asarray(obs.focal_length)[0], [1000, 1000])
  np.testing.assert_allclose(np.asarray(obs.image_size)[0], [320, 240])


@pytest.mark.timeout(900)
def test_tiny_run_writes_every_output_and_refines_toward_the_keypoints(tmp_path):
  config = _config()
  out = refine.run(config, tmp_path)
  res = results.load_results(tmp_path / "results.npz")
  assert res.has_refinement and res.metadata["program"] == "refine"
  assert res.refinement_pose.shape[1] == config.refine.video.num_iters + 1
  np.testing.assert_allclose(res.refinement_pose[:, -1, 0], res.global_orient, atol=1e-5)
  np.testing.assert_allclose(res.refinement_cam_t[:, -1], res.cam_t, atol=1e-6)
  assert len(res.track_ids) == config.example.num_people
  frames, _ = video_io.read_frames(tmp_path / "overlay.mp4")
  w, h = config.example.image_size
  assert frames.shape == (config.example.num_frames, h, 3 * w, 3)
  assert len(list(tmp_path.glob("overlay_*.png"))) == config.outputs.png_frames
  assert len(list((tmp_path / "meshes").glob("*.obj"))) == 2 * config.outputs.png_frames
  for tid in res.track_ids:
    glb = (tmp_path / f"track{tid}.glb").read_bytes()
    magic, version, length = struct.unpack("<4sII", glb[:12])
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    size = struct.unpack("<I", glb[12:16])[0]
    document = json.loads(glb[20 : 20 + size])
    assert document["animations"][0]["channels"] and len(document["skins"][0]["joints"]) == 24
    assert (tmp_path / f"track{tid}.bvh").read_text().startswith("HIERARCHY")
  summary = out["summary"]["view0"]
  assert set(summary) == {int(t) for t in res.track_ids}
  assert "PA-MPJPE" in (tmp_path / "summary.md").read_text()
  # The refined meshes sit where the keypoints say (the reprojection error is finite and the
  # overlay of the refined panel differs from the initial one).
  assert all(np.isfinite(row["keypoint_px"][1]) for row in summary.values())
  assert not np.array_equal(frames[:, :, w : 2 * w], frames[:, :, 2 * w :])


def test_user_files_run_with_the_tracks_keypoints(tmp_path):
  """The example's files given as a user's (no keypoint folder: the pickle's own keypoints)."""
  config = _config()
  first = refine.run(config, tmp_path / "a")
  example = tmp_path / "a" / "example"
  config.inputs.tracks = str(example / "tracks.pkl")
  config.inputs.video = str(example / "video.mp4")
  config.score_model = str(tmp_path / "a" / "score_model")
  out = refine.run(config, tmp_path / "b")
  assert not (tmp_path / "b" / "score_model").exists()  # the given prior was used
  a = results.load_results(tmp_path / "a" / "results.npz")
  b = results.load_results(tmp_path / "b" / "results.npz")
  assert a.num_rows == b.num_rows and b.metadata["inputs"]["keypoints"] == ""
  assert set(out["summary"]["view0"]) == set(first["summary"]["view0"])


def test_bad_inputs_name_the_problem(tmp_path):
  config = _config()
  config.inputs.keypoints = "k/"
  with pytest.raises(ValueError, match="inputs.tracks is required"):
    refine_inputs.view_inputs(config, tmp_path)
  config.inputs.update(tracks="a.pkl,b.pkl", keypoints="k/")
  with pytest.raises(ValueError, match="keypoints lists 1 cameras"):
    refine_inputs.view_inputs(config, tmp_path)
  config.inputs.update(tracks=str(tmp_path / "missing.pkl"), keypoints="")
  with pytest.raises(FileNotFoundError, match="missing.pkl"):
    refine.run(config, tmp_path)


def test_launcher_reports_a_missing_tracks_file_in_one_line(tmp_path):
  cmd = [
    sys.executable, "-m", "jhmr.launch", "--config", "configs/refine.py:tiny",
    "--workdir", str(tmp_path), f"--config.inputs.tracks={tmp_path / 'missing.pkl'}",
  ]  # fmt: skip
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
    f"error: tracks file '{tmp_path / 'missing.pkl'}' not found"
  )
  assert "Traceback" not in proc.stderr


def test_contiguous_runs_split_at_gaps():
  res = dataclasses.make_dataclass("R", ["track_id", "frame"])(
    np.array([1, 1, 1, 1, 2]), np.array([5, 3, 4, 9, 0])
  )
  runs = refine_outputs.contiguous_runs(res, 1)
  assert [r.tolist() for r in runs] == [[1, 2, 0], [3]]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
  from jhmr.pipelines import refine_example

  config = _config()
  ex = config.example
  return refine_example.make_example(
    tmp_path_factory.mktemp("example"), body_model=config.body_model, num_people=ex.num_people,
    num_frames=ex.num_frames, image_size=tuple(ex.image_size), fps=ex.fps,
  )  # fmt: skip


def _user_config(example, **inputs):
  config = _config()
  config.inputs.update(
    tracks=str(example.tracks), keypoints=str(example.openpose_dir), video=str(example.video)
  )
  config.inputs.update(**inputs)
  return config


def test_bad_user_files_are_input_errors_naming_the_file(example, tmp_path):
  from jhmr.errors import InputError

  source = lambda config: refine_inputs.view_inputs(config, tmp_path)[0][0]  # noqa: E731
  view = refine_inputs.load_view(0, source(_user_config(example)), _user_config(example))
  assert [len(t) for t in view.tracklets] == [example.num_frames] * 2
  assert view.frames.shape[0] == example.num_frames
  # Malformed OpenPose JSON.
  bad_kp = tmp_path / "openpose"
  bad_kp.mkdir()
  (bad_kp / "000000_keypoints.json").write_text('{"version": 1.3, "people": [')
  config = _user_config(example, keypoints=str(bad_kp))
  with pytest.raises(InputError, match="000000_keypoints.json"):
    refine_inputs.load_view(0, source(config), config)
  # A keypoint file with the wrong joint count.
  (bad_kp / "000000_keypoints.json").write_text(
    '{"version": 1.3, "people": [{"pose_keypoints_2d": [1, 2, 0.5, 3, 4, 0.5]}]}'
  )
  with pytest.raises(InputError, match="000000_keypoints.json"):
    refine_inputs.load_view(0, source(config), config)
  # A video that cannot be decoded.
  (tmp_path / "broken.mp4").write_bytes(example.video.read_bytes()[:300])
  config = _user_config(example, video=str(tmp_path / "broken.mp4"))
  with pytest.raises(InputError, match="broken.mp4"):
    refine_inputs.load_view(0, source(config), config)
  # A pickle carrying a foreign global: refused by name, nothing runs.
  import pickle

  evil = tmp_path / "evil.pkl"
  evil.write_bytes(pickle.dumps({"x": dataclasses.replace}))
  config = _user_config(example, tracks=str(evil), keypoints="")
  with pytest.raises(InputError, match="dataclasses"):
    refine_inputs.load_view(0, source(config), config)
  # Tracks too short for the demo's thresholds: the lengths are named.
  config = _user_config(example)
  config.tracks.min_length = 100
  with pytest.raises(InputError, match=r"min_length=100.*track lengths"):
    refine_inputs.load_view(0, source(config), config)


def test_launcher_prints_a_corrupt_tracks_file_in_one_line(example, tmp_path):
  broken = tmp_path / "tracks.pkl"
  broken.write_bytes(example.tracks.read_bytes()[:200])
  cmd = [
    sys.executable, "-m", "jhmr.launch", "--config", "configs/refine.py:tiny",
    "--workdir", str(tmp_path / "run"), f"--config.inputs.tracks={broken}",
  ]  # fmt: skip
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(broken) in last


# -- PARE-conditioned score models (config.features, config.score_model_format) ----------------


@pytest.fixture(scope="module")
def tiny_pare():
  """A RANDOM tiny PARE (shapes-only variables, no `init` compile) with random statistics, and
  a RANDOM conditional ScoreNet whose cond_dim is PARE's feature size."""
  import jax.numpy as jnp

  from jhmr.models import pare as pare_lib
  from jhmr.models.score_net import ScoreNet
  from jhmr.pipelines import image_to_mesh as itm

  module, size = itm.TINY_CONFIGS.pare, itm.TINY_CONFIGS.pare_size
  variables = itm.random_variables(module, jnp.zeros((1, size, size, 3)), seed=1)
  dim = module.num_deconv_filters * 24
  rng = np.random.default_rng(0)
  stats = pare_lib.FeatureStats(
    rng.normal(size=dim).astype(np.float32), rng.uniform(0.5, 2.0, dim).astype(np.float32)
  )
  model = refine.FeatureModel(itm.Net(module, variables), stats, size=size)
  net = ScoreNet(cond_dim=dim, hidden=16, num_blocks=1)
  x = (jnp.zeros((1, net.pose_dim)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, dim)))
  return model, itm.random_variables(net, *x, seed=2)


@pytest.mark.timeout(600)
def test_pare_conditioned_refinement_of_the_example(example, tiny_pare, tmp_path, monkeypatch):
  """The example clip refines end to end with PARE features, which are PARE on the crops of the
  track boxes, in row order."""
  import jax.numpy as jnp

  from jhmr.data import crops
  from jhmr.models import pare as pare_lib

  model, params = tiny_pare
  seen = {}
  make_rows = refine.rows_and_observation

  def spy(views, task, body_model, features=None):
    seen.update(views=views, features=features)
    seen["rows"], seen["obs"] = make_rows(views, task, body_model, features)
    return seen["rows"], seen["obs"]

  monkeypatch.setattr(refine, "rows_and_observation", spy)
  config = _user_config(example)
  config.outputs.update(video=False, png_frames=1)
  out = refine.run(config, tmp_path, score=(params, "random conditional"), pare=model)
  res = results.load_results(tmp_path / "results.npz")
  assert res.has_refinement and np.isfinite(res.body_pose).all()
  assert set(out["summary"]["view0"]) == {int(t) for t in res.track_ids}
  # The features refine was given: one row of the second track, by hand.
  (view,), rows = seen["views"], seen["rows"]
  features = np.asarray(seen["obs"].features)
  np.testing.assert_array_equal(features, seen["features"])
  assert features.shape == (len(rows.frame), model.dim) and np.isfinite(features).all()
  first = len(view.tracklets[0])
  tr = view.tracklets[1]
  r = first + 3
  assert rows.track_id[r] == tr.track_id and rows.frame[r] == tr.frames[3]
  crop = crops.crop_for_pare(view.frames[tr.frames[3]], tr.boxes[3], model.size)
  pare_out = model.net.module.apply(model.net.variables, jnp.asarray(crop)[None])
  want = pare_lib.standardise(pare_lib.features(pare_out), model.stats)[0]
  np.testing.assert_allclose(features[r], np.asarray(want), rtol=1e-4, atol=1e-4)
  assert not np.allclose(features[r], features[r - first])  # the other person, same frame


def test_feature_settings_name_what_is_missing(example, tiny_pare, tmp_path):
  from jhmr.errors import InputError

  model, params = tiny_pare
  config = _user_config(example)
  config.features.kind = "pare"
  with pytest.raises(InputError, match="config.features.pare_checkpoint"):
    refine.run(config, tmp_path)
  ckpt = tmp_path / "pare_checkpoint.ckpt"
  ckpt.write_bytes(b"x")
  config.features.pare_checkpoint = str(ckpt)
  with pytest.raises(InputError, match="config.features.pare_stats"):
    refine.run(config, tmp_path)
  config.features.pare_stats = str(tmp_path / "missing.npz")
  with pytest.raises(InputError, match=r"config.features.pare_stats.*missing.npz"):
    refine.run(config, tmp_path)
  config.features.pare_stats = str(ckpt)
  config.inputs.video = ""
  with pytest.raises(InputError, match="config.inputs.video"):
    refine.run(config, tmp_path)
  # The official model needs features; its file is checked by name.
  config = _user_config(example, tracks=str(tmp_path / "missing.pkl"))
  config.score_model_format = "official"
  with pytest.raises(InputError, match="config.features.kind='pare'"):
    refine.run(config, tmp_path)
  config.features.update(kind="pare", pare_checkpoint=str(ckpt), pare_stats=str(ckpt))
  with pytest.raises(InputError, match="config.score_model"):
    refine.score_params(config, tmp_path, None)
  # A conditional model without features, an unconditional one with them.
  with pytest.raises(InputError, match="config.features.kind='pare'"):
    refine.check_conditioning(params, None)
  import jax.numpy as jnp

  from jhmr.models.score_net import ScoreNet
  from jhmr.pipelines import image_to_mesh as itm

  net = ScoreNet(cond_dim=0, hidden=8, num_blocks=1)
  plain = itm.random_variables(net, jnp.zeros((1, net.pose_dim)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(InputError, match="config.features.kind='none'"):
    refine.check_conditioning(plain, model)
