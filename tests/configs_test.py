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


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_tiny_variant_runs_end_to_end(path, tmp_path):
  from jhmr import launch

  config = _load(path).get_config("tiny")
  assert config.task in launch.TASKS, f"{path.name}: config.task {config.task!r} not dispatched"
  launch.TASKS[config.task](config, str(tmp_path))
  assert any(tmp_path.iterdir()), "the run wrote nothing"
  if path.stem == "scorehmr":
    with open(tmp_path / "results.csv") as f:
      rows = list(csv.DictReader(f))
    methods = {(r["task"], r["method"]) for r in rows}
    assert ("keypoint fitting", "ScoreHMR") in methods
    assert ("keypoint fitting", "optimisation baseline") in methods
    assert {("multi-view", "ScoreHMR"), ("video", "ScoreHMR")} <= methods
    assert all(float(r["MPJPE (mm)"]) > 0 for r in rows)
    for name in ("results.md", "error_per_iteration.png", "per_joint_error.png", "overlay.png"):
      assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / "meshes").glob("*.obj"))) >= 2
    assert (tmp_path / "regressor" / "checkpoints").is_dir()


def test_launch_parses_overrides_and_rejects_unknown_tasks(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "jhmr.launch",
    "--config",
    "configs/scorehmr.py:tiny",
    "--config.task=nope",
    "--config.score.trainer.train.steps=7",
    f"--workdir={tmp_path}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "unknown config.task 'nope'" in proc.stderr
  bad = subprocess.run(
    cmd[:4] + ["configs/scorehmr.py:nope", f"--workdir={tmp_path}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0 and "unknown config variant 'nope'" in bad.stderr
