"""Tests for jhmr.data.pipeline (grain loader) on plain sources and a TFDS array_record source."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jhmr.data import pipeline
from jhmr.data.cmu_mocap import cmu_mocap_dataset_builder as cmu
from jhmr.data.cmu_mocap import dummy_data_generator as dummy

SOURCE = [{"index": np.int32(i), "x": np.full((2,), i, np.float32)} for i in range(40)]


def _add_noise(example, rng):
  return {**example, "noise": np.float32(rng.normal())}


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_one_epoch_is_a_permutation_and_seeds_matter():
  config = pipeline.LoaderConfig(batch_size=8, seed=1, num_epochs=1)
  batches = list(pipeline.make_dataset(SOURCE, config, shard_index=0, shard_count=1))
  order = np.concatenate([b["index"] for b in batches])
  assert len(batches) == 5 and sorted(order) == list(range(40))
  assert batches[0]["x"].shape == (8, 2)
  np.testing.assert_array_equal(batches[0]["x"][:, 0], batches[0]["index"])
  again = list(pipeline.make_dataset(SOURCE, config, shard_index=0, shard_count=1))
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in again]), order)
  other = pipeline.make_dataset(
    SOURCE, pipeline.LoaderConfig(8, seed=2, num_epochs=1), shard_index=0, shard_count=1
  )
  assert not np.array_equal(np.concatenate([b["index"] for b in other]), order)


def test_epochs_reshuffle():
  config = pipeline.LoaderConfig(batch_size=40, seed=3, num_epochs=2)
  first, second = list(pipeline.make_dataset(SOURCE, config, shard_index=0, shard_count=1))
  assert sorted(first["index"]) == sorted(second["index"]) == list(range(40))
  assert not np.array_equal(first["index"], second["index"])


def test_hosts_read_disjoint_shares_of_the_same_order():
  config = pipeline.LoaderConfig(batch_size=5, seed=4, num_epochs=1)
  full = np.concatenate(
    [b["index"] for b in pipeline.make_dataset(SOURCE, config, shard_index=0, shard_count=1)]
  )
  shares = [
    np.concatenate(
      [b["index"] for b in pipeline.make_dataset(SOURCE, config, shard_index=i, shard_count=2)]
    )
    for i in range(2)
  ]
  assert not set(shares[0]) & set(shares[1])
  np.testing.assert_array_equal(shares[0], full[0::2])
  np.testing.assert_array_equal(shares[1], full[1::2])
  with pytest.raises(ValueError, match="shard_index 2"):
    pipeline.make_dataset(SOURCE, config, shard_index=2, shard_count=2)


def test_iterator_state_resumes_exactly():
  config = pipeline.LoaderConfig(batch_size=6, seed=5)
  ds = pipeline.make_dataset(SOURCE, config, [_add_noise], shard_index=0, shard_count=1)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(10)]  # crosses an epoch boundary
  resumed = iter(ds)
  resumed.set_state(json.loads(json.dumps(state)))  # the state is plain JSON (orbax JsonSave)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["index"], want["index"])
    np.testing.assert_array_equal(got["noise"], want["noise"])


def test_augmentation_depends_on_seed_and_element_not_threads():
  one = pipeline.LoaderConfig(batch_size=8, seed=6, num_epochs=1, num_threads=1)
  four = pipeline.LoaderConfig(batch_size=8, seed=6, num_epochs=1, num_threads=4, prefetch=2)
  a = _take(pipeline.make_dataset(SOURCE, one, [_add_noise], shard_index=0, shard_count=1), 5)
  b = _take(pipeline.make_dataset(SOURCE, four, [_add_noise], shard_index=0, shard_count=1), 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["noise"], y["noise"])
  assert len({float(v) for batch in a for v in batch["noise"]}) == 40


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
  config = pipeline.LoaderConfig(batch_size=4, seed=0, num_epochs=1)
  keep = pipeline.select("body_pose", "transl", "frame_index")
  batches = list(pipeline.make_dataset(source, config, [keep], shard_index=0, shard_count=1))
  assert len(batches) == 3 and set(batches[0]) == {"body_pose", "transl", "frame_index"}
  assert batches[0]["body_pose"].shape == (4, 23, 3) and batches[0]["body_pose"].dtype == np.float32


def test_builder_registry():
  from jhmr.data import builders

  assert set(builders.BUILDERS) == {"threedpw", "emdb", "h36m", "smart", "cmu_mocap", "synthetic"}
  with pytest.raises(ValueError, match="unknown dataset 'nope'; valid: cmu_mocap, emdb"):
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
config = pipeline.LoaderConfig(batch_size=4, num_epochs=1)
keep = [pipeline.select("image", "betas")]
batches = list(pipeline.make_dataset(source, config, keep, shard_index=0, shard_count=1))
assert "tensorflow" not in sys.modules
print("OK", len(batches), batches[0]["image"].shape)
"""


@pytest.mark.timeout(300)
def test_build_and_load_without_tensorflow(tmp_path):
  """In a process where TensorFlow cannot be imported: build array_record, read with grain."""
  import subprocess
  import sys

  script = tmp_path / "tf_free.py"
  script.write_text(_TF_FREE)
  result = subprocess.run(
    [sys.executable, str(script)], capture_output=True, text=True, timeout=280
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 2 (4, 224, 224, 3)" in result.stdout
