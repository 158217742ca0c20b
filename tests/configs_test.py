"""Every config in configs/ runs end to end in its `:tiny` variant (so configs cannot rot)."""

import csv
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `from configs import common` inside the config files
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "common"))


def _load(path):
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_documents_its_command(path):
  module = _load(path)
  assert f"python -m jhmr.launch --config configs/{path.name}" in module.__doc__
  with pytest.raises(ValueError, match="unknown config variant"):
    module.get_config("no-such-variant")


# Tiny runs whose program another default test already runs (tests/pipelines/refine_test.py:
# configs/refine.py:tiny with every output checked; tests/pipelines/real_data_test.py:
# scorehmr.run end to end at :tiny sizes; tests/pipelines/image_to_mesh_test.py: every stage of
# image_to_mesh with tiny models): slow here, to keep the default suite near 20 minutes.
SLOW_TINY = {"refine", "scorehmr", "image_to_mesh"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
  "path",
  [pytest.param(p, marks=[pytest.mark.slow] if p.stem in SLOW_TINY else []) for p in CONFIGS],
  ids=lambda p: p.stem,
)
def test_tiny_variant_runs_end_to_end(path, tmp_path):
  from jhmr import launch
  from jhmr.pipelines.stages import run_stage

  if path.stem == "scorehmr_paper":
    pytest.skip("run by tests/pipelines/scorehmr_paper_test.py on its dummy released files")
  if path.stem in ("dpmesh", "diffusion_hpc"):  # minutes of compilation: slow tests run them
    pytest.skip(f"run by tests/pipelines/{path.stem}_test.py (slow: pytest -m slow)")
  config = _load(path).get_config("tiny")
  config.lock()  # as the launcher's --config flag holds it
  assert config.program in launch.PROGRAMS, f"{path.name}: program {config.program!r} unknown"
  run_stage(config.program, launch.PROGRAMS[config.program](), config, str(tmp_path))
  assert any(tmp_path.iterdir()), "the run wrote nothing"
  if path.stem == "scorehmr":
    with open(tmp_path / "results.csv") as f:
      rows = list(csv.DictReader(f))
    methods = {(r["task"], r["method"]) for r in rows}
    assert ("keypoint fitting", "ScoreHMR") in methods
    for task in ("keypoint fitting", "multi-view (2 views)", "video"):
      assert {(task, m) for m in ("regressor", "optimisation baseline", "ScoreHMR")} <= methods
    assert all(float(r["MPJPE (mm)"]) > 0 for r in rows)
    for name in ("results.md", "error_per_iteration.png", "per_joint_error.png", "overlay.png"):
      assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / "meshes").glob("*.obj"))) >= 2
    assert (tmp_path / "regressor" / "checkpoints").is_dir()


@pytest.mark.slow  # ~1 min; the scorehmr tiny run above covers the program's default path
def test_cmu_prior_tiny_runs_on_real_motion(tmp_path):
  """The benchmark config: an unconditional prior on CMU poses refining corrupted truth."""
  from jhmr.pipelines import scorehmr

  config = _load(ROOT / "configs" / "scorehmr.py").get_config("cmu_prior_tiny")
  config.data.cmu_root = str(ROOT.parent / "shared" / "data" / "cmu_mocap")
  if not pathlib.Path(config.data.cmu_root).is_dir():
    pytest.skip("../shared/data/cmu_mocap is not here")
  rows = scorehmr.run(config, str(tmp_path))["rows"]
  assert {r["method"] for r in rows} == {"initial estimate", "optimisation baseline", "ScoreHMR"}
  assert not (tmp_path / "regressor").exists()


def test_evaluate_stage_refuses_missing_models(tmp_path):
  from jhmr import launch
  from jhmr.pipelines.stages import run_stage

  config = _load(ROOT / "configs" / "scorehmr.py").get_config("tiny")
  config.stage = "evaluate"
  with pytest.raises(FileNotFoundError, match="score_model/checkpoints, regressor/checkpoints"):
    run_stage("scorehmr", launch.PROGRAMS["scorehmr"](), config, str(tmp_path))
  config.stage = "nope"
  with pytest.raises(ValueError, match="no stage 'nope'"):
    run_stage("scorehmr", launch.PROGRAMS["scorehmr"](), config, str(tmp_path))


def test_missing_dataset_stops_the_launcher_with_one_line(tmp_path):
  cmd = [
    sys.executable, "-m", "jhmr.launch", "--config", "configs/scorehmr.py:tiny",
    "--config.data.source=threedpw", f"--config.data.data_dir={tmp_path / 'tfds'}",
    f"--config.data.manual_dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'run'}",
  ]  # fmt: skip
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "nowhere" in last
  assert "Traceback" not in proc.stderr


def test_launch_parses_overrides_and_rejects_unknown_programs(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "jhmr.launch",
    "--config",
    "configs/scorehmr.py:tiny",
    "--config.program=nope",
    "--config.score.trainer.train.steps=7",
    f"--workdir={tmp_path}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "unknown config.program 'nope'" in proc.stderr
  bad = subprocess.run(
    cmd[:4] + ["configs/scorehmr.py:nope", f"--workdir={tmp_path}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0 and "unknown config variant 'nope'" in bad.stderr
