"""One DPMesh training step on 8 devices (replicated and FSDP) equals the step on one device."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).with_name("dpmesh_sharded_step.py")


def _step(out, *args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(SCRIPT), str(out), *args]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout, dict(np.load(out))


@pytest.mark.slow  # three compilations of the tiny DPMesh's training step (minutes)
@pytest.mark.timeout(7200)
def test_one_dpmesh_step_on_eight_devices_matches_one_device(tmp_path):
  _, one = _step(tmp_path / "one.npz", "--devices", "1")
  log, eight = _step(tmp_path / "eight.npz", "--devices", "8")
  assert "devices=8" in log
  log_fsdp, fsdp = _step(tmp_path / "fsdp.npz", "--devices", "8", "--fsdp")
  assert int(log_fsdp.split("sharded_leaves=")[1].split()[0]) > 10
  assert sorted(one) == sorted(eight) == sorted(fsdp) and len(one) > 50
  for name, other in (("replicated", eight), ("fsdp", fsdp)):
    for k in one:
      np.testing.assert_allclose(other[k], one[k], rtol=1e-4, atol=1e-5, err_msg=f"{name}: {k}")
