"""The shared trainer: learning, EMA, exact resume after SIGTERM / SIGKILL, sharding, multi-host."""

import importlib.util
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
def test_eight_devices_fsdp_match_one_device(reference, tmp_path):
  _, flat = reference
  out = tmp_path / "fsdp.npz"
  proc = _script(tmp_path / "fsdp", STEPS, "--devices", 8, "--fsdp", "--out", out)
  try:
    log = proc.communicate(timeout=150)[0]
  finally:
    proc.kill()
  assert proc.returncode == 0, log[-3000:]
  # the 5x16 and 16x3 kernels, their Adam moments and EMA, BatchNorm's 16-vectors: all sharded
  assert int(log.split("sharded_leaves=")[1].split()[0]) >= 12, log[-2000:]
  _assert_same(np.load(out), flat, atol=2e-5)


def test_fsdp_spec_picks_the_largest_divisible_axis():
  from jax.sharding import PartitionSpec as P

  assert trainer.fsdp_spec((320, 1280), 8) == P(None, "data")
  assert trainer.fsdp_spec((3, 3, 320, 320), 8) == P(None, None, "data", None)  # first on ties
  assert trainer.fsdp_spec((7, 9999), 8, min_size=1) == P()  # nothing divides
  assert trainer.fsdp_spec((16,), 8) == P()  # small leaves stay replicated
  assert trainer.fsdp_spec((16,), 8, min_size=1) == P("data")
  assert trainer.fsdp_spec((1024, 1024), 1) == P()


def _grouped_task(initial_variables=None):
  """The toy task with parameter groups: the first Dense frozen, BatchNorm 'norm', the rest
  'head'."""
  import dataclasses

  task = toy.make_task()

  def labels(params):
    return {
      name: jax.tree.map(
        lambda _, n=name: "frozen" if n == "Dense_0" else "norm" if "BatchNorm" in n else "head",
        tree,
      )
      for name, tree in params.items()
    }

  return dataclasses.replace(task, param_labels=labels, initial_variables=initial_variables)


def test_param_groups_frozen_leaves_and_group_rates(tmp_path):
  init = toy.make_task().init(jax.random.key(1), toy.make_task().batch_spec(16))
  init = jax.tree.map(np.asarray, init)
  config = toy.make_config(10)
  config.optimizer.group_learning_rates = {"norm": 0.0}
  state = trainer.train(config, tmp_path / "groups", _grouped_task(init))
  params = jax.device_get(state.params)
  # frozen: the given weights, no optimiser state, no EMA copy
  np.testing.assert_array_equal(params["Dense_0"]["kernel"], init["params"]["Dense_0"]["kernel"])
  assert state.ema_params["Dense_0"]["kernel"] is None
  frozen_shape = init["params"]["Dense_0"]["kernel"].shape  # (5, 16): no other leaf has it
  assert [np.shape(x) for x in jax.tree.leaves(state.opt_state)].count(frozen_shape) == 0
  averaged = state.averaged_params()
  np.testing.assert_array_equal(averaged["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
  # a group at rate 0 keeps its start, the head group learns
  np.testing.assert_array_equal(
    params["BatchNorm_0"]["scale"], init["params"]["BatchNorm_0"]["scale"]
  )
  assert np.abs(params["Dense_1"]["kernel"] - init["params"]["Dense_1"]["kernel"]).max() > 1e-3
  # resuming a grouped run (checkpoints with None leaves) reaches the uninterrupted result
  for steps in (5, 10):
    config = toy.make_config(steps)
    config.optimizer.group_learning_rates = {"norm": 0.0}
    full = trainer.train(config, tmp_path / "resumed", _grouped_task(init))
    assert int(full.step) == steps
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_group_rate_nobody_carries_raises(tmp_path):
  config = toy.make_config(2)
  config.optimizer.group_learning_rates = {"backbone": 1e-4}
  with pytest.raises(ValueError, match="backbone"):
    trainer.train(config, tmp_path / "bad", _grouped_task())


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


def test_bad_configs_raise():
  from jhmr.train.state import make_optimizer

  config = toy.make_config(10)
  config.optimizer.name = "lion"
  with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
    make_optimizer(config)
  from jhmr.data.pipeline import make_iterator

  with pytest.raises(ValueError, match="batch size 15 is not divisible by 2 processes"):
    make_iterator([{"i": 0}], 15, seed=0, process_index=0, process_count=2)


def test_task_transforms_reach_the_batches(tmp_path):
  """`Task.transforms` run in the trainer's pipeline and `batch_spec` sees their output."""
  import jax.numpy as jnp

  from jhmr.train.task import ArraySource, Task

  seen = []

  def add_noise(example, rng):
    return {**example, "noise": rng.normal(size=2).astype(np.float32)}

  def init(key, batch):
    seen.append(batch)
    return {"params": {"w": jnp.zeros(2)}}

  def loss(params, state, batch, key):
    return jnp.mean((batch["noise"] - params["w"]) ** 2), ({}, state)

  source = ArraySource({"x": np.arange(12, dtype=np.float32)})
  task = Task(name="noise", init=init, loss=loss, source=source, transforms=(add_noise,))
  spec = task.batch_spec(4)
  assert spec["noise"].shape == (4, 2) and spec["noise"].dtype == np.float32
  assert spec["x"].shape == (4,)
  config = toy.make_config(2, batch_size=4)
  config.train.log_every = 1
  state = trainer.train(config, tmp_path, task)
  assert seen and set(seen[0]) == {"x", "noise"}
  assert float(jnp.abs(state.params["w"]).max()) > 0  # learned from the transformed field


def test_batch_spec_of_person_examples():
  from jhmr.data.example import PersonExample
  from jhmr.train.task import Task

  def person(i):
    f = lambda *shape: np.full(shape, i, np.float32)  # noqa: E731
    return PersonExample(
      image=np.zeros((8, 8, 3), np.uint8), crop_from_image=f(2, 3), intrinsics=f(3, 3),
      image_size=f(2), keypoints_2d={"openpose25": f(25, 3)}, global_orient=f(3),
      body_pose=f(23, 3), betas=f(10), cam_t=f(3), joints_3d=f(24, 3), joint_visibility=f(24),
      occlusion=np.zeros((8, 8), bool), has_smpl=f(), has_3d=f(), group=np.int32(i),
      frame=np.int32(0),
    )  # fmt: skip

  def add_heatmap(example, rng):  # a transform that changes the structure and a shape
    return example.replace(keypoints_2d={**example.keypoints_2d, "heat": rng.random((4, 4))})

  task = Task(name="p", init=None, loss=None, source=[person(0)], transforms=[add_heatmap])
  spec = task.batch_spec(5)
  assert isinstance(spec, PersonExample)
  assert spec.image.shape == (5, 8, 8, 3) and spec.image.dtype == np.uint8
  assert spec.keypoints_2d["heat"].shape == (5, 4, 4) and spec.group.shape == (5,)
  assert spec.group.dtype == np.int32 and not spec.occlusion.any()


def test_restore_params_reads_the_ema_without_the_model(reference, tmp_path):
  from jhmr.train import checkpoint

  workdir, flat = reference
  for where in (workdir, workdir / "checkpoints"):
    got = checkpoint.restore_params(where)
    leaves = jax.tree_util.tree_flatten_with_path(got["params"])[0]
    assert len(leaves) == sum(k.startswith("ema_params/") for k in flat)
    for path, leaf in leaves:
      key = "ema_params/" + "/".join(str(getattr(p, "key", p)) for p in path)
      np.testing.assert_array_equal(leaf, flat[key])
  with pytest.raises(FileNotFoundError, match="not found"):
    checkpoint.restore_params(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoint.restore_params(tmp_path)
  with pytest.raises(KeyError, match="no 'nope'"):
    checkpoint.restore_params(workdir, field="nope")
  # A corrupt checkpoint is an InputError naming the directory and step.
  import shutil

  from jhmr.errors import InputError

  broken = tmp_path / "broken"
  shutil.copytree(workdir / "checkpoints", broken / "checkpoints")
  step = _latest_checkpoint(broken)
  for f in (broken / "checkpoints" / str(step) / "state").iterdir():
    if f.is_file() and f.name != "commit_success.txt":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  with pytest.raises(InputError, match=f"broken/checkpoints.*step {step} cannot be read"):
    checkpoint.restore_params(broken)


def test_task_compiler_options_reach_the_training_step(tmp_path):
  """`Task.compiler_options` are the training step's `jax.jit` options: an option XLA does not
  know fails that compile, naming it; a known one trains as usual."""
  import dataclasses

  task = toy.make_task()
  config = toy.make_config(2)
  bad = dataclasses.replace(task, compiler_options={"xla_no_such_option_for_jhmr": "1"})
  with pytest.raises(Exception, match="xla_no_such_option_for_jhmr"):
    trainer.train(config, tmp_path / "bad", bad)
  good = dataclasses.replace(task, compiler_options={"xla_cpu_enable_fast_math": False})
  assert int(trainer.train(config, tmp_path / "good", good).step) == 2
