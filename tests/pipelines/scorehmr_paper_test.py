"""The paper protocol end to end on dummy released files (written here from the documented
layouts, §5), random score-net weights and a stand-in feature function."""

import csv
import pickle

import numpy as np
import pytest
from PIL import Image

from configs import scorehmr_paper as paper_config
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


def _config(root):
  config = paper_config.get_config("tiny")
  config.data_dir = str(root)
  config.image_dirs = dict(
    threedpw=str(root / "3DPW"), h36m=str(root / "H36M"), mannequin=str(root / "Mannequin")
  )
  return config


@pytest.mark.timeout(300)
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
  keys = [k for k in paper_config.ROWS]
  assert list(out["results"]) == keys
  for key in keys:
    res = out["results"][key]
    assert res["frames"] > 0 and res["seconds"] > 0
    for name in ("initial", "refined"):
      assert np.isfinite(res[name]["mpjpe"]) and np.isfinite(res[name]["pa_mpjpe"])
  assert np.isfinite(out["results"]["video_3dpw"]["refined"]["accel"])
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
  ]
  assert float(lines[1]["paper ScoreHMR"]) == 44.7
  assert "| setting | dataset | metric |" in (tmp_path / "work/paper_table.md").read_text()


def test_missing_files_and_emdb_are_refused(tmp_path):
  config = _config(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"pare_feat_stats\.npz"):
    scorehmr_paper.run(config, tmp_path / "work")
  config = paper_config.get_config("video_emdb")
  with pytest.raises(InputError, match="EMDB-1"):
    scorehmr_paper.run(config, tmp_path / "work")
