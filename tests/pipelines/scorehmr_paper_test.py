"""The paper protocol end to end on dummy released files (written here from the documented
layouts, §5), random score-net weights and a stand-in feature function."""

import csv
import pickle

import numpy as np
import pytest
from PIL import Image

from configs import scorehmr_paper as paper_config
from jhmr.data.emdb import dummy_data_generator as emdb_dummy
from jhmr.errors import InputError
from jhmr.eval import paper
from jhmr.pipelines import scorehmr_paper
from tests.data.scorehmr_files_test import dummy_hmr2, dummy_rows


def _write_files(root, num_vertices):
  rng = np.random.default_rng(0)
  (root / "data/datasets").mkdir(parents=True)
  (root / "data/stats").mkdir(parents=True)
  (root / "cache/hmr2b").mkdir(parents=True)
  for d in ("3DPW", "H36M", "Mannequin"):
    (root / d).mkdir()
    for name in ("a.png", "b.png"):
      Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / d / name)
  np.savez(root / "data/datasets/3dpw_test.npz", **dummy_rows(rng, 4, ["a.png", "b.png"]))
  np.savez(root / "cache/hmr2b/3dpw_test.npz", **dummy_hmr2(rng, 4))
  for name, sizes in (
    ("3dpw_test_video", (4, 4)),
    ("h36m_val_multiview", (4, 4)),
    ("mannequin", (4, 4)),
  ):
    groups = [dummy_rows(rng, n, ["a.png", "b.png"]) for n in sizes]
    (root / f"data/datasets/{name}.pkl").write_bytes(pickle.dumps(groups, protocol=2))
    caches = [dummy_hmr2(rng, n) for n in sizes]
    (root / f"cache/hmr2b/{name}.pkl").write_bytes(pickle.dumps(caches, protocol=2))
  np.savez(
    root / "data/stats/pare_feat_stats.npz",
    pose_feats_mean=np.zeros((128, 24), np.float32),
    pose_feats_std=np.full((128, 24), 2.0, np.float32),
    cam_shape_feats_mean=np.zeros((64, 24), np.float32),
    cam_shape_feats_std=np.ones((64, 24), np.float32),
  )
  j19 = rng.random((19, num_vertices))
  (root / "data/SMPL_to_J19.pkl").write_bytes(pickle.dumps(j19 / j19.sum(1, keepdims=True)))
  emdb_dummy.main(root / "EMDB", frames=4)  # the official EMDB layout: 4 good frames a sequence


def _config(root):
  config = paper_config.get_config("tiny")
  config.data_dir = str(root)
  config.image_dirs = dict(
    threedpw=str(root / "3DPW"), h36m=str(root / "H36M"), mannequin=str(root / "Mannequin")
  )
  config.emdb.update(data_dir=str(root / "tfds"), manual_dir=str(root / "EMDB"))
  config.lock()  # as the launcher's --config flag holds it
  return config


@pytest.mark.timeout(300)
@pytest.mark.slow  # ~1 min; test_emdb_rows_reuse_the_cached_network_outputs runs the program
def test_paper_protocol_end_to_end(tmp_path):
  from jhmr.body import load_body_model

  _write_files(tmp_path, load_body_model("anny-tiny").num_vertices)
  calls = []

  def features(crops):
    assert crops.shape[1:] == (224, 224, 3) and crops.dtype == np.float32
    calls.append(len(crops))
    return scorehmr_paper.stand_in_feature_fn()(crops)

  out = scorehmr_paper.run(_config(tmp_path), tmp_path / "work", feature_fn=features)
  assert calls
  keys = [*paper_config.ROWS, "keypoints_emdb", "video_emdb"]
  assert list(out["results"]) == keys
  for key in keys:
    res = out["results"][key]
    assert res["frames"] > 0 and res["seconds"] > 0
    for name in ("initial", "refined"):
      assert np.isfinite(res[name]["mpjpe"]) and np.isfinite(res[name]["pa_mpjpe"])
  assert np.isfinite(out["results"]["video_3dpw"]["refined"]["accel"])
  assert np.isfinite(out["results"]["video_emdb"]["refined"]["accel"])
  assert out["results"]["keypoints_emdb"]["frames"] == 4  # the EMDB-1 sequence's 4 good frames
  assert (tmp_path / "work/emdb/09_outdoor_walk.npz").is_file()  # the networks' cached outputs
  with open(tmp_path / "work/paper_table.csv") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == paper.TABLE_COLUMNS
    lines = list(reader)
  assert [(r["dataset"], r["metric"]) for r in lines] == [
    ("3DPW", "pa_mpjpe"),
    ("H36M", "mpjpe"),
    ("H36M", "pa_mpjpe"),
    ("Mannequin", "mpjpe"),
    ("Mannequin", "pa_mpjpe"),
    ("3DPW", "pa_mpjpe"),
    ("3DPW", "accel"),
    ("EMDB-1", "pa_mpjpe"),
    ("EMDB-1", "pa_mpjpe"),
    ("EMDB-1", "accel"),
  ]
  assert float(lines[1]["paper ScoreHMR"]) == 44.7
  assert float(lines[-1]["paper ScoreHMR"]) == 11.9
  table = (tmp_path / "work/paper_table.md").read_text()
  assert "| setting | dataset | metric |" in table
  assert "jhmr's EMDB-1 protocol" in table and "RANDOM WEIGHTS" in table


def test_emdb_rows_reuse_the_cached_network_outputs(tmp_path, monkeypatch):
  from jhmr.body import load_body_model
  from jhmr.pipelines import image_to_mesh, scorehmr_paper_emdb

  _write_files(tmp_path, load_body_model("anny-tiny").num_vertices)
  config = _config(tmp_path)
  config.rows = ("keypoints_emdb",)
  first = scorehmr_paper.run(config, tmp_path / "work")["results"]["keypoints_emdb"]

  def fail(*args, **kwargs):
    raise AssertionError("ViTPose ran again despite the cache")

  monkeypatch.setattr(image_to_mesh, "run_vitpose", fail)
  second = scorehmr_paper.run(config, tmp_path / "work")["results"]["keypoints_emdb"]
  assert second["initial"] == first["initial"]  # the cached HMR 2.0 estimate
  # a cache of other frames is recomputed, not used
  cached = dict(np.load(tmp_path / "work/emdb/09_outdoor_walk.npz"))
  cached["frame_index"] = cached["frame_index"] + 1
  np.savez(tmp_path / "work/emdb/09_outdoor_walk.npz", **cached)
  with pytest.raises(AssertionError, match="ran again"):
    scorehmr_paper.run(config, tmp_path / "work")
  assert scorehmr_paper_emdb.CROP_SIZE == 224


def test_emdb_errors_on_a_hand_built_case():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 24, 3))
  # a pure translation: zero after pelvis centring; a 10 mm shift of one joint: 10/24 mm MPJPE
  pred = target + np.array([1.0, 2.0, 3.0])
  pred[1, 5, 0] += 0.010
  errors = paper.emdb_joint_errors(pred, target)
  np.testing.assert_allclose(errors["mpjpe"], [0.0, 10.0 / 24], atol=1e-3)  # float32
  # a rotation and scale of the whole body: PA-MPJPE 0, MPJPE not
  angle = 0.3
  rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
  turned = 1.1 * target @ rot.T
  errors = paper.emdb_joint_errors(turned, target)
  np.testing.assert_allclose(errors["pa_mpjpe"], 0.0, atol=1e-3)
  assert np.all(errors["mpjpe"] > 10.0)
  # constant velocity: zero acceleration error against a static target moved the same way
  frames = np.stack([target[0] + t * np.array([0.1, 0.0, 0.0]) for t in range(5)])
  np.testing.assert_allclose(paper.emdb_acceleration_error(frames, frames), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="24, 3"):
    paper.emdb_joint_errors(np.zeros((2, 44, 3)), np.zeros((2, 44, 3)))


def test_missing_files_are_refused_by_name(tmp_path):
  config = _config(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"pare_feat_stats\.npz"):
    scorehmr_paper.run(config, tmp_path / "work")
  config = paper_config.get_config("video_emdb")  # the released models, checked before any work
  names = [path.name for path in scorehmr_paper.required_files(config)]
  assert "vitpose-h-multi-coco.pth" in names and "epoch=35-step=1000000.ckpt" in names
  assert "3dpw_test.npz" not in names
  from jhmr.body import load_body_model

  _write_files(tmp_path / "files", load_body_model("anny-tiny").num_vertices)
  config = _config(tmp_path / "files")
  config.rows = ("video_emdb",)
  config.emdb.manual_dir = str(tmp_path / "no_emdb")
  with pytest.raises(FileNotFoundError, match="no_emdb"):
    scorehmr_paper.run(config, tmp_path / "work")
  config.rows = ("keypoints_kitti",)
  with pytest.raises(InputError, match="keypoints_kitti"):
    scorehmr_paper.run(config, tmp_path / "work")


@pytest.mark.slow  # renders four sets (about a minute idle)
def test_the_self_check_example_files_read_back_in_the_released_layouts(tmp_path):
  from jhmr.body import load_body_model
  from jhmr.data import scorehmr_files as files_lib
  from jhmr.models.pare import load_feature_stats
  from jhmr.pipelines import scorehmr_paper_example as example

  body = load_body_model("anny-tiny")
  dirs = example.write_example(tmp_path, body, people=4, clips=1, clip_length=4, views=2)
  kp = files_lib.read_eval_npz(tmp_path / "data/datasets/3dpw_test.npz")
  video = files_lib.read_eval_groups(tmp_path / "data/datasets/3dpw_test_video.pkl")
  views = files_lib.read_eval_groups(tmp_path / "data/datasets/h36m_val_multiview.pkl")
  assert (len(kp), len(video), len(views)) == (4, 4, 4)
  assert [len(g) for g in views.groups()] == [2, 2]
  preds = files_lib.read_hmr2_cache(tmp_path / "cache/hmr2b/3dpw_test_video.pkl")
  files_lib.check_aligned("cache", video, preds)
  j19 = files_lib.read_j19_regressor(tmp_path / "data/SMPL_to_J19.pkl", body.num_vertices)
  assert len(load_feature_stats(tmp_path / "data/stats/pare_feat_stats.npz").mean) == 3072
  # ground truth = the posed body: J19's pelvis (row 14, output joint 39) relative to OpenPose's
  # mid-hip (8) equals the same offset of the body posed with the file's pose and betas
  pose = kp.body_pose.reshape(4, 24, 3)
  out = body(kp.betas[:, : body.num_betas], pose[:, 1:], pose[:, 0], joint_set="openpose25")
  pelvis = np.einsum("v,bvd->bd", j19[14], np.asarray(out.vertices))
  expected = pelvis - np.asarray(out.keypoints[:, 8])
  got = kp.keypoints_3d[:, paper.PELVIS, :3] - kp.keypoints_3d[:, 8, :3]
  np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 at ~30 m from the camera
  np.testing.assert_allclose(j19[14], np.asarray(body.J_regressor)[0], atol=1e-7)
  assert (dirs["threedpw"] / str(kp.imgname[0])).is_file()
  assert (dirs["h36m"] / str(views.imgname[0])).is_file()
