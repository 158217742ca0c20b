"""The shared trainer: learning, EMA, exact resume after SIGTERM / SIGKILL, sharding, multi-host."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the `configs` package

from jhmr.train import trainer  # noqa: E402
from jhmr.train.metrics import read_metrics  # noqa: E402

TOY_PATH = pathlib.Path(__file__).with_name("toy.py")
_spec = importlib.util.spec_from_file_location("toy_task", TOY_PATH)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)

STEPS = 20


def _flat(state):
  return {
    "/".join(str(k.key) for k in path): np.asarray(jax.device_get(leaf))
    for tree in ("params", "ema_params")
    for path, leaf in jax.tree_util.tree_flatten_with_path({tree: getattr(state, tree)})[0]
  }


def _assert_same(npz_or_dict, reference, atol=0.0):
  got = dict(npz_or_dict)
  got.pop("step", None)
  assert sorted(got) == sorted(reference)
  for k in reference:
    np.testing.assert_allclose(got[k], reference[k], atol=atol, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted in-process run: (workdir, flattened final params and EMA params)."""
  workdir = tmp_path_factory.mktemp("reference")
  config = toy.make_config(STEPS)
  config.train.tensorboard = True
  config.train.eval_every = 10
  state = trainer.train(config, workdir, toy.make_task())
  assert int(state.step) == STEPS
  return workdir, _flat(state)


def _script(workdir, steps, *args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, str(TOY_PATH), str(workdir), str(steps), *map(str, args)]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_loss_decreases_and_ema_lags(reference):
  workdir, flat = reference
  rows = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
  evals = [r for r in read_metrics(workdir) if "eval/mse" in r]
  assert [r["step"] for r in evals] == [10, 20]  # the periodic evaluation hook (EMA params)
  assert evals[-1]["eval/mse"] < evals[0]["eval/mse"]
  assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
  assert all(r["examples_per_s"] > 0 and r["lr"] == pytest.approx(1e-2) for r in rows)
  diffs = [np.abs(flat[k] - flat["ema_" + k]).max() for k in flat if k.startswith("params/")]
  assert max(diffs) > 1e-4  # the EMA is a real average, not a copy
  assert (workdir / "tensorboard").is_dir()


def test_finished_run_restarts_as_noop(reference, tmp_path):
  workdir, flat = reference
  state = trainer.train(toy.make_config(STEPS), workdir, toy.make_task())
  _assert_same(_flat(state), flat)


def _latest_checkpoint(workdir):
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  return max(steps, default=0)


@pytest.mark.timeout(300)
def test_resume_after_sigterm_and_sigkill_matches_uninterrupted(reference, tmp_path):
  _, flat = reference
  runs = {}
  for sig in (signal.SIGTERM, signal.SIGKILL):
    workdir = tmp_path / sig.name
    # log every step (so the test knows where the run is) and read examples slowly.
    runs[sig] = (workdir, _script(workdir, STEPS, "--sleep", 0.03, "--log_every", 1))
  pending = dict(runs)
  deadline = time.time() + 120
  while pending and time.time() < deadline:  # signal each run as soon as it passes step 8
    for sig, (workdir, proc) in list(pending.items()):
      rows = read_metrics(workdir)
      if rows and rows[-1]["step"] >= 8:
        proc.send_signal(sig)
        del pending[sig]
      elif proc.poll() is not None:
        raise AssertionError(f"run ended early: {proc.stdout.read()[-3000:]}")
    time.sleep(0.02)
  assert not pending, "runs did not reach step 8 in time"
  stopped = {}
  for sig, (workdir, proc) in runs.items():
    out = proc.communicate(timeout=120)[0]
    last = read_metrics(workdir)[-1]["step"]
    stopped[sig] = (last, _latest_checkpoint(workdir))
    assert last < STEPS, "the run finished before the signal; nothing was interrupted"
    if sig == signal.SIGTERM:
      assert proc.returncode == 143, out[-3000:]
      assert stopped[sig][1] == last  # SIGTERM saves at the step it stopped at
    else:
      assert proc.returncode == -signal.SIGKILL
      assert last - stopped[sig][1] <= 5  # loses at most one checkpoint interval
  for _sig, (workdir, _) in runs.items():
    state = trainer.train(toy.make_config(STEPS), workdir, toy.make_task())
    _assert_same(_flat(state), flat, atol=1e-6)


@pytest.mark.timeout(240)
def test_eight_devices_match_one_device(reference, tmp_path):
  _, flat = reference
  out = tmp_path / "eight.npz"
  proc = _script(tmp_path / "eight", STEPS, "--devices", 8, "--out", out)
  try:
    log = proc.communicate(timeout=150)[0]
  finally:
    proc.kill()
  assert proc.returncode == 0, log[-3000:]
  assert "devices=8" in log
  _assert_same(np.load(out), flat, atol=2e-5)


@pytest.mark.timeout(240)
def test_two_processes_match_single_process(reference, tmp_path):
  import portpicker

  _, flat = reference
  port = portpicker.pick_unused_port()
  out = tmp_path / "multi.npz"
  procs = [
    _script(
      tmp_path / "shared",  # one workdir on a shared filesystem, as on a cluster
      STEPS,
      "--coordinator",
      f"127.0.0.1:{port}",
      "--num_processes",
      2,
      "--process_id",
      i,
      "--out",
      out,
      "--no_checkpoints",
    )
    for i in range(2)
  ]
  try:
    logs = [p.communicate(timeout=150)[0] for p in procs]
  finally:
    for p in procs:  # SIGTERM only asks the trainer for a checkpoint; a hung run needs SIGKILL
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert "devices=2 processes=2" in logs[0]
  _assert_same(np.load(out), flat, atol=2e-5)


def test_ema_follows_ema_pytorch_rule():
  from jhmr.train.state import ema_update

  decay, every, start = 0.9, 2, 3
  ema, online = np.zeros(()), np.zeros(())
  ema_jax = jax.numpy.zeros(())
  for step in range(1, 20):
    online = online + 1.0
    ema_jax = ema_update(ema_jax, online, step, decay=decay, every=every, start=start)
    if step % every == 0:  # lucidrains/ema-pytorch EMA.update, inv_gamma=1, power=2/3
      if step <= start:
        ema = online
      else:
        d = min(decay, max(0.0, 1 - (1 + step - start - 1) ** (-2 / 3)))
        ema = d * ema + (1 - d) * online
    np.testing.assert_allclose(float(ema_jax), ema, rtol=1e-6)


def test_bad_configs_raise():
  from jhmr.train.state import make_optimizer

  config = toy.make_config(10)
  config.optimizer.name = "lion"
  with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
    make_optimizer(config)
  from jhmr.train.input_pipeline import make_iterator

  with pytest.raises(ValueError, match="batch size 15 is not divisible by 2 processes"):
    make_iterator([{"i": 0}], 15, seed=0, process_index=0, process_count=2)


def test_process_slices_rebuild_the_global_batch():
  from jhmr.train.input_pipeline import make_iterator

  source = [{"i": np.int32(i)} for i in range(11)]
  whole = make_iterator(source, 6, seed=1)
  parts = [make_iterator(source, 6, seed=1, process_index=p, process_count=3) for p in range(3)]
  for _ in range(5):
    expect = next(whole)["i"]
    got = np.concatenate([next(it)["i"] for it in parts])
    np.testing.assert_array_equal(got, expect)
  state = whole.get_state()
  after = [next(whole)["i"] for _ in range(2)]
  again = make_iterator(source, 6, seed=1)
  again.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(np.stack([next(again)["i"] for _ in range(2)]), np.stack(after))
