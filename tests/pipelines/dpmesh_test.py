"""The DPMesh program: `configs/dpmesh.py:tiny` end to end through its stages (slow: it compiles
the tiny DPMesh's training step three times), resuming without retraining; and, in the default
suite, the refusals (missing models, missing user files) that stop before any computation."""

import csv
import math
import pathlib
import sys

import pytest

from jhmr import launch
from jhmr.errors import InputError
from jhmr.pipelines import dpmesh
from jhmr.pipelines.stages import run_stage

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from configs import dpmesh as dpmesh_config  # noqa: E402

METHODS = {
  "HMR regressor (image only)",
  "DPMesh-tiny teacher (clean-keypoint training)",
  "DPMesh-tiny (NKR student)",
  "DPMesh-tiny without NKR",
}


def _run(config, workdir):
  config.lock()  # as the launcher's --config flag holds it
  return run_stage("dpmesh", launch.PROGRAMS["dpmesh"](), config, str(workdir))


def test_dpmesh_is_a_program():
  assert launch.PROGRAMS["dpmesh"]() is dpmesh.STAGES
  assert set(dpmesh.STAGES) == {"all", "codebook", "teacher", "student", "evaluate"}
  for variant in ("", "tiny", "paper", "released"):
    config = dpmesh_config.get_config(variant)
    assert config.program == "dpmesh" and config.model in dpmesh.MODELS


def test_stages_refuse_missing_models(tmp_path):
  config = dpmesh_config.get_config("tiny")
  config.student.ablation = True
  config.stage = "evaluate"
  needed = "codebook/checkpoints, teacher/checkpoints, student/checkpoints, student_no_nkr/"
  with pytest.raises(FileNotFoundError, match=needed + r".*--config.stage=student"):
    _run(config, tmp_path)
  config = dpmesh_config.get_config("tiny")
  config.stage = "student"
  with pytest.raises(FileNotFoundError, match=r"needs codebook/checkpoints, teacher/checkpoints "):
    _run(config, tmp_path)
  assert not any(tmp_path.iterdir())  # refused before writing anything


def test_paper_and_released_name_the_missing_files(tmp_path):
  config = dpmesh_config.get_config("paper")
  config.data.update(data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))
  config.codebook.cmu_root = str(tmp_path / "cmu")
  with pytest.raises(InputError) as e:
    _run(config, tmp_path / "run")
  message = str(e.value)
  for what in ("--config.init.sd15", str(tmp_path / "cmu"), str(tmp_path / "raw"), "threedpw"):
    assert what in message
  config = dpmesh_config.get_config("released")
  config.data.update(data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))
  config.checkpoint = str(tmp_path / "3dpw_best_ckpt.pth.tar")
  with pytest.raises(InputError, match=r"official checkpoint .*3dpw_best_ckpt\.pth\.tar"):
    _run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def _rows(workdir):
  with open(workdir / "results.csv") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # ~5 min on an idle 2-core CPU (more under load): compiles the tiny DPMesh
@pytest.mark.timeout(3600)
def test_tiny_runs_end_to_end_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  config = dpmesh_config.get_config("tiny")
  config.student.ablation = True
  out = _run(config, workdir)
  rows = _rows(workdir)
  assert {(r["test set"], r["method"]) for r in rows} == {
    (t, m) for t in ("unoccluded", "occluded") for m in METHODS
  }
  for r in rows:
    assert int(r["N"]) == 4
    for column in ("MPJPE (mm)", "PA-MPJPE (mm)", "MPJPE visible (mm)"):
      assert math.isfinite(float(r[column])) and float(r[column]) > 0, (r, column)
  occluded = [r for r in rows if r["test set"] == "occluded"]
  assert all(float(r["invisible joints (%)"]) > 0 for r in occluded)
  markdown = (workdir / "results.md").read_text()
  for heading in ("## NKR ablation", "## Pose codebook", "MPJPE invisible (mm)", "perplexity"):
    assert heading in markdown
  figures = out["codebook"]
  assert figures["mpjpe_mm"] > 0 and 0 < figures["usage"] <= 1 and figures["perplexity"] >= 1
  for name in ("codebook", "teacher", "student", "student_no_nkr", "hmr"):
    assert (workdir / name / "checkpoints").is_dir(), name

  # Resume: every training is finished, so a second run restores and trains nothing.
  def logged_steps():
    return {p: p.stat().st_mtime_ns for p in workdir.glob("*/checkpoints/*")}

  before = logged_steps()
  config = dpmesh_config.get_config("tiny")
  config.student.ablation = True
  config.stage = "evaluate"
  _run(config, workdir)
  assert logged_steps() == before
  assert _rows(workdir) == rows
