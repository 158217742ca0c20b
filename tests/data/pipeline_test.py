"""Tests for jhmr.data.pipeline (the one input pipeline) on plain, typed and TFDS sources."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jhmr.data import pipeline
from jhmr.data.cmu_mocap import cmu_mocap_dataset_builder as cmu
from jhmr.data.cmu_mocap import dummy_data_generator as dummy
from jhmr.data.example import PersonExample

SOURCE = [{"index": np.int32(i), "x": np.full((2,), i, np.float32)} for i in range(40)]


def _add_noise(example, rng):
  return {**example, "noise": np.float32(rng.normal())}


def _scale(example, rng):  # a second random transform: the chain draws per transform
  return {**example, "x": example["x"] * rng.uniform(0.5, 2.0)}


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, x, y)


def test_epochs_are_seeded_permutations():
  it = pipeline.make_iterator(SOURCE, 8, seed=1, process_index=0, process_count=1)
  batches = _take(it, 10)  # two epochs of 40
  assert batches[0]["x"].shape == (8, 2) and batches[0]["index"].dtype == np.int32
  np.testing.assert_array_equal(batches[0]["x"][:, 0], batches[0]["index"])
  first = np.concatenate([b["index"] for b in batches[:5]])
  second = np.concatenate([b["index"] for b in batches[5:]])
  assert sorted(first) == sorted(second) == list(range(40))
  assert not np.array_equal(first, second)  # reshuffled every epoch
  again = pipeline.make_iterator(SOURCE, 8, seed=1, process_index=0, process_count=1)
  _assert_batches_equal(_take(again, 10), batches)
  other = pipeline.make_iterator(SOURCE, 8, seed=2, process_index=0, process_count=1)
  assert not np.array_equal(np.concatenate([b["index"] for b in _take(other, 5)]), first)


def test_global_position_splits_each_global_batch_into_contiguous_rows():
  positions = [
    [pipeline.global_position(i, 6, p, 3) for i in range(8)] for p in range(3)
  ]  # L = 2: process p reads rows [2p, 2p + 2) of every global batch of 6
  assert positions == [[0, 1, 6, 7, 12, 13, 18, 19], [2, 3, 8, 9, 14, 15, 20, 21],
                       [4, 5, 10, 11, 16, 17, 22, 23]]  # fmt: skip
  assert [pipeline.global_position(i, 6) for i in range(8)] == list(range(8))


def test_two_processes_rebuild_the_single_process_batches():
  """Process 0's rows ++ process 1's rows of step k == single-process batch k, for 25 steps of
  batch 6 over 40 examples (three epoch boundaries, one inside a batch), random transforms on."""
  chain = (_add_noise, _scale)
  whole = pipeline.make_iterator(SOURCE, 6, seed=7, transforms=chain, process_count=1)
  parts = [
    pipeline.make_iterator(SOURCE, 6, seed=7, transforms=chain, process_index=p, process_count=2)
    for p in range(2)
  ]
  noises = []
  for _ in range(25):
    want = next(whole)
    rows = [next(it) for it in parts]
    assert rows[0]["index"].shape == (3,)
    got = jax.tree.map(lambda *xs: np.concatenate(xs), *rows)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    noises.append(want["noise"])
  noises = np.concatenate(noises)
  assert len(np.unique(noises)) == len(noises)  # a fresh draw at every position, every epoch


def test_thread_and_prefetch_counts_do_not_change_batches():
  def batches(threads, prefetch):
    it = pipeline.make_iterator(
      SOURCE, 8, seed=6, transforms=[_add_noise], process_count=1, num_threads=threads,
      prefetch=prefetch,
    )  # fmt: skip
    return _take(it, 7)

  reference = batches(0, 1)
  _assert_batches_equal(batches(1, 2), reference)
  _assert_batches_equal(batches(4, 8), reference)


def test_iterator_state_resumes_exactly():
  def make():
    return pipeline.make_iterator(
      SOURCE, 6, seed=5, transforms=[_add_noise, _scale], process_index=1, process_count=2
    )

  it = make()
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # plain JSON (orbax JsonSave)
  expected = _take(it, 3)  # crosses the epoch boundary (40 examples, 6 per global step)
  resumed = make()
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 3), expected)


def _person(i: int) -> PersonExample:
  f = lambda *shape: np.full(shape, i, np.float32)  # noqa: E731
  return PersonExample(
    image=np.full((8, 8, 3), i, np.uint8),
    crop_from_image=f(2, 3),
    intrinsics=f(3, 3),
    image_size=f(2),
    keypoints_2d={"openpose25": f(25, 3), "smpl24": f(24, 3)},
    global_orient=f(3),
    body_pose=f(23, 3),
    betas=f(10),
    cam_t=f(3),
    joints_3d=f(24, 3),
    joint_visibility=f(24),
    occlusion=np.zeros((8, 8), bool),
    has_smpl=np.float32(1),
    has_3d=np.float32(0),
    group=np.int32(i),
    frame=np.int32(0),
  )


def _jitter_betas(example: PersonExample, rng) -> PersonExample:
  return example.replace(betas=example.betas + rng.normal(size=10).astype(np.float32))


def test_person_examples_batch_into_a_person_example():
  source = [_person(i) for i in range(10)]
  it = pipeline.make_iterator(source, 4, seed=0, transforms=[_jitter_betas], process_count=1)
  batch = next(it)
  assert isinstance(batch, PersonExample)
  assert batch.image.shape == (4, 8, 8, 3) and batch.image.dtype == np.uint8
  assert batch.keypoints_2d["openpose25"].shape == (4, 25, 3)
  assert batch.body_pose.shape == (4, 23, 3) and batch.group.shape == (4,)
  np.testing.assert_array_equal(batch.body_pose[:, 0, 0], batch.group)
  assert np.abs(batch.betas - batch.group[:, None]).max() > 0  # transformed


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="batch size 15 is not divisible by 2 processes"):
    pipeline.make_iterator(SOURCE, 15, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="process_index 2 outside"):
    pipeline.make_iterator(SOURCE, 8, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="empty"):
    pipeline.make_iterator([], 8, seed=0, process_count=1)


def test_worker_processes_do_not_change_batches():
  noise = [lambda ex, rng: {**ex, "noise": np.float32(rng.normal())}]  # pickled by value
  it = pipeline.make_iterator(SOURCE, 8, seed=3, transforms=noise, process_count=1, worker_count=2)
  try:
    got = _take(it, 7)
  finally:
    it.close()
  want = _take(pipeline.make_iterator(SOURCE, 8, seed=3, transforms=noise, process_count=1), 7)
  _assert_batches_equal(got, want)


_DISTRIBUTED = """
import sys
import jax
import numpy as np

jax.distributed.initialize(
  sys.argv[1], num_processes=2, process_id=int(sys.argv[2]), initialization_timeout=60
)
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jhmr.data import pipeline

source = [{"i": np.int32(i)} for i in range(10)]
noise = lambda ex, rng: {**ex, "noise": rng.normal(size=2).astype(np.float32)}
it = pipeline.make_iterator(source, 4, seed=1, transforms=[noise])  # jax.process_index / count
mesh = jax.make_mesh((jax.device_count(),), ("data",))
sharding = NamedSharding(mesh, P("data"))
for step in range(6):
  batch = pipeline.to_global(next(it), sharding)
  whole = multihost_utils.process_allgather(batch, tiled=True)
  if jax.process_index() == 0:
    print("STEP", step, whole["i"].tolist(), whole["noise"].round(6).tolist(), flush=True)
"""


@pytest.mark.timeout(120)
def test_two_jax_processes_read_the_single_process_batches(tmp_path):
  """Two real `jax.distributed` CPU processes: the gathered global batches of `to_global`
  equal the batches of a single-process iterator."""
  import portpicker

  script = tmp_path / "two.py"
  script.write_text(_DISTRIBUTED)
  root = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, PYTHONPATH=str(root), XLA_FLAGS="", JAX_PLATFORMS="cpu")
  address = f"127.0.0.1:{portpicker.pick_unused_port()}"
  procs = [
    subprocess.Popen(
      [sys.executable, str(script), address, str(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )  # fmt: skip
    for i in range(2)
  ]
  try:
    logs = [p.communicate(timeout=100)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  lines = [line for line in logs[0].splitlines() if line.startswith("STEP")]
  source = [{"i": np.int32(i)} for i in range(10)]
  noise = lambda ex, rng: {**ex, "noise": rng.normal(size=2).astype(np.float32)}  # noqa: E731
  it = pipeline.make_iterator(source, 4, seed=1, transforms=[noise], process_count=1)
  assert len(lines) == 6
  for step, line in enumerate(lines):
    want = next(it)
    assert line == f"STEP {step} {want['i'].tolist()} {want['noise'].round(6).tolist()}"


class PipelineCmu(cmu.Builder):
  name = "cmu_mocap_pipeline_test"

  def target_skeleton(self):
    return dummy.SKELETON


def test_reads_a_tfds_array_record_source(tmp_path):
  builder = PipelineCmu(config="frames", data_dir=tmp_path, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(dummy.DUMMY_DIR))
  )
  source = pipeline.load_source("cmu_mocap_pipeline_test/frames", "train", str(tmp_path))
  assert len(source) == 12
  keep = pipeline.select("body_pose", "transl", "frame_index")
  batches = _take(pipeline.make_iterator(source, 4, seed=0, transforms=[keep], process_count=1), 3)
  assert set(batches[0]) == {"body_pose", "transl", "frame_index"}
  assert batches[0]["body_pose"].shape == (4, 23, 3) and batches[0]["body_pose"].dtype == np.float32
  assert sorted(np.concatenate([b["frame_index"] for b in batches]).tolist()) == sorted(
    int(source[i]["frame_index"]) for i in range(12)
  )


def test_builder_registry():
  from jhmr.data import builders

  assert set(builders.BUILDERS) == {
    "threedpw",
    "emdb",
    "h36m",
    "smart",
    "cmu_mocap",
    "synthetic",
    "ski_pose",
    "diffusion_hpc_synthetic",
  }
  valid = "valid: cmu_mocap, diffusion_hpc_synthetic, emdb"
  with pytest.raises(ValueError, match=f"unknown dataset 'nope'; {valid}"):
    builders.make_builder("nope")
  with pytest.raises(ValueError, match="unknown config 'x' of threedpw; valid: frames, video"):
    builders.make_builder("threedpw/x")
  for name, cls in builders.BUILDERS.items():
    assert cls.name == name and cls.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
    assert cls.__module__.endswith(f"{name}_dataset_builder") and cls.VERSION


_TF_FREE = """
import sys, tempfile
import importlib.abc
import importlib.util


class NoTensorFlow(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
    return None


sys.meta_path.insert(0, NoTensorFlow())  # any `import tensorflow` now fails ...
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: (  # ... and probing says it is not installed
  None if name.split(".")[0] == "tensorflow" else _find_spec(name, *a)
)
from jhmr.data import builder_testing as bt, pipeline
from jhmr.data.h36m import dummy_data_generator as dummy, h36m_dataset_builder as h36m
d = tempfile.mkdtemp()
bt.build(h36m.Builder, "frames", d, dummy.DUMMY_DIR)
source = pipeline.load_source("h36m/frames", "test_p1", d)
keep = [pipeline.select("image", "betas")]
it = pipeline.make_iterator(source, 4, seed=0, transforms=keep, process_count=1)
batches = [next(it) for _ in range(2)]
assert "tensorflow" not in sys.modules
print("OK", len(batches), batches[0]["image"].shape)
"""


@pytest.mark.timeout(300)
def test_build_and_load_without_tensorflow(tmp_path):
  """In a process where TensorFlow cannot be imported: build array_record, read with grain."""
  script = tmp_path / "tf_free.py"
  script.write_text(_TF_FREE)
  result = subprocess.run(
    [sys.executable, str(script)], capture_output=True, text=True, timeout=280
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 2 (4, 224, 224, 3)" in result.stdout
