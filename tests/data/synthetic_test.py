"""The synthetic TFDS builder: TF-free builds into PersonExamples, determinism, multi-view groups,
CMU frames; DatasetBuilderTestCase runs (slow)."""

import functools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jhmr.body import build_body_model, random_body_model_arrays
from jhmr.data import mocap, synthesis
from jhmr.data.cmu_mocap import dummy_data_generator as cmu_dummy
from jhmr.data.example import check_example, index, project_to_crop
from jhmr.data.synthetic import synthetic_dataset_builder as synthetic
from jhmr.geometry import rotations
from jhmr.keys import KeySeq


@functools.cache
def _random_body():
  return build_body_model(random_body_model_arrays(0, 200))


class SmallSynthetic(synthetic.Builder):
  """Tiny configs on a random 200-vertex body model (no asset needed)."""

  name = "synthetic_small_test"
  BUILDER_CONFIGS = [
    synthetic.SyntheticConfig(name="tiny", crop_size=32, num_train=5, num_test=2, chunk=4),
    synthetic.SyntheticConfig(
      name="tiny_multiview", crop_size=32, views=2, num_train=3, num_test=1, chunk=4
    ),
    synthetic.SyntheticConfig(
      name="tiny_cmu", pose_source="cmu", crop_size=32, frame_stride=2, chunk=4
    ),
  ]

  def body_model(self):
    return _random_body()


def _build(data_dir, config):
  builder = SmallSynthetic(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(cmu_dummy.DUMMY_DIR))
  )
  return builder.as_data_source()


def _rows(source):
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Each tiny config built once (and `tiny` twice, into two folders)."""
  root = tmp_path_factory.mktemp("synthetic")
  return {
    "a": _build(root / "a", "tiny"),
    "b": _build(root / "b", "tiny"),
    "multiview": _build(root / "a", "tiny_multiview"),
  }


def test_rows_are_valid_person_examples(built):
  source = built["a"]
  assert len(source["train"]) == 5 and len(source["test"]) == 2
  for split in ("train", "test"):
    for i, row in enumerate(_rows(source[split])):
      ex = check_example(synthetic.to_example(row))
      assert ex.image.shape == (32, 32, 3) and ex.betas.shape == (10,)
      assert set(ex.keypoints_2d) == {"openpose25", "smpl24"}
      assert ex.keypoints_2d["openpose25"].shape == (25, 3)
      assert int(ex.group) == i and int(ex.frame) == 0
      assert not ex.occlusion.any() and float(ex.has_smpl) == 1.0
  # Train and test examples differ (different keys); so do the examples of one chunk.
  train, test = source["train"], source["test"]
  assert not np.allclose(train[0]["body_pose"], test[0]["body_pose"])
  assert not np.allclose(train[0]["body_pose"], train[1]["body_pose"])


def test_smpl24_keypoints_are_the_projected_joints(built):
  for row in _rows(built["a"]["train"]):
    ex = synthetic.to_example(row)
    exact = project_to_crop(ex, ex.joints_3d)
    np.testing.assert_allclose(ex.keypoints_2d["smpl24"][:, :2], exact, atol=1e-2)
    inside = np.all((exact >= 0) & (exact < 32), -1)
    np.testing.assert_array_equal(ex.keypoints_2d["smpl24"][:, 2], inside)
    # The detections scatter around the body (a few keypoints may be dropped or swapped).
    kp = ex.keypoints_2d["openpose25"]
    conf = kp[:, 2]
    assert np.all((conf >= 0) & (conf <= 1)) and (conf > 0).sum() >= 12
    centre = ex.keypoints_2d["smpl24"][:, :2].mean(0)
    assert np.median(np.linalg.norm(kp[conf > 0, :2] - centre, axis=-1)) < 32


def test_two_builds_are_equal(built):
  for split in ("train", "test"):
    for a, b in zip(_rows(built["a"][split]), _rows(built["b"][split]), strict=True):
      jax.tree.map(np.testing.assert_array_equal, a, b)


def test_examples_are_the_generators_chunks(built):
  """Example i is row i % chunk of chunk i // chunk, generated from its own keys (so the
  build order and the split size change nothing)."""
  keys = KeySeq(0).child("train").child("chunk1")
  spec = synthesis.SceneSpec(crop_size=32)
  chunk = synthesis.single_view_set(keys, 4, _random_body(), synthesis.PoseSource(), spec)
  row = synthetic.to_example(built["a"]["train"][4])
  expected = index(chunk, 0)
  np.testing.assert_array_equal(row.image, expected.image)
  np.testing.assert_allclose(row.body_pose, expected.body_pose, atol=1e-6)
  np.testing.assert_allclose(row.keypoints_2d["openpose25"], expected.keypoints_2d["openpose25"])


def test_multiview_groups_consecutive_views(built):
  source = built["multiview"]
  assert len(source["train"]) == 6 and len(source["test"]) == 2
  rows = [synthetic.to_example(r) for r in _rows(source["train"])]
  assert [int(r.group) for r in rows] == [0, 0, 1, 1, 2, 2]
  assert [int(r.frame) for r in rows] == [0, 1, 0, 1, 0, 1]
  for a, b in zip(rows[::2], rows[1::2], strict=True):
    check_example(a)
    # One person: same pose and shape, two views (different root orientation and image).
    np.testing.assert_allclose(a.body_pose, b.body_pose, atol=1e-5)
    np.testing.assert_array_equal(a.betas, b.betas)
    assert not np.allclose(a.global_orient, b.global_orient)
  assert not np.allclose(rows[0].body_pose, rows[2].body_pose)


def test_cmu_config_walks_the_subject_split(tmp_path):
  source = _build(tmp_path, "tiny_cmu")
  # Dummy data: train folders 01, 60-61A, 60-61B and test folder 02, 4 frames each after the
  # rest frame; every 2nd frame -> 2 people per file.
  assert len(source["train"]) == 6 and len(source["test"]) == 2
  body = _random_body()
  test = [synthetic.to_example(r) for r in _rows(source["test"])]
  motion = mocap.load_cmu(cmu_dummy.DUMMY_DIR, ["02"], body)["02/02_01"]
  for t, ex in enumerate(test):
    check_example(ex)
    np.testing.assert_allclose(
      ex.rotmat()[1:],
      np.asarray(rotations.axis_angle_to_matrix(motion.body_pose[2 * t])),
      atol=1e-4,
    )


def test_unknown_pose_source_is_a_clear_error(tmp_path):
  class Bad(SmallSynthetic):
    name = "synthetic_bad_test"
    BUILDER_CONFIGS = [synthetic.SyntheticConfig(name="x", pose_source="mystery")]

  with pytest.raises(ValueError, match="unknown pose_source 'mystery'"):
    Bad(config="x", data_dir=tmp_path, file_format="array_record").download_and_prepare()


def test_feature_shapes_follow_the_config(tmp_path):
  def shapes(config):
    features = synthetic.Builder(config=config, data_dir=tmp_path).info.features
    return {k: v.shape for k, v in features.items()}

  names = [c.name for c in synthetic.Builder.BUILDER_CONFIGS]
  assert names == ["demo_mix_64", "demo_mix_224", "uniform_224", "cmu_224", "demo_mix_multiview"]
  small, large = shapes("demo_mix_64"), shapes("demo_mix_224")
  assert small["image"] == (64, 64, 3) and small["occlusion"] == (64, 64)
  assert large["image"] == (224, 224, 3) and large["betas"] == (10,)
  assert large["keypoints_2d"] == {"openpose25": (25, 3), "smpl24": (24, 3)}
  assert large["group"] == () and large["joints_3d"] == (24, 3)

  class Bad(SmallSynthetic):
    name = "synthetic_bad_views_test"
    BUILDER_CONFIGS = [synthetic.SyntheticConfig(name="x", views=3, chunk=4)]

  with pytest.raises(ValueError, match="must be a multiple of views"):
    _ = Bad(config="x", data_dir=tmp_path).info


# The DatasetBuilderTestCase runs compile the JAX generator again (~40 s each on a loaded 2-core
# machine): slow. The TF-free tests above cover the same builds by default.
@pytest.mark.slow
class SyntheticTinyTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = SmallSynthetic
  BUILDER_CONFIG_NAMES_TO_TEST = ["tiny"]
  SPLITS = {"train": 5, "test": 2}
  EXAMPLE_DIR = str(cmu_dummy.DUMMY_DIR)  # unused by the procedural config


@pytest.mark.slow
class SyntheticCmuTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = SmallSynthetic
  BUILDER_CONFIG_NAMES_TO_TEST = ["tiny_cmu"]
  SPLITS = {"train": 6, "test": 2}
  EXAMPLE_DIR = str(cmu_dummy.DUMMY_DIR)


def test_stripes_background_changes_the_scene_and_nothing_else():
  body = _random_body()
  plain, striped = (  # the same keys for both
    synthesis.single_view_set(
      KeySeq(3).child("people"),
      4,
      body,
      synthesis.PoseSource(),
      synthesis.SceneSpec(crop_size=32, background=kind),
    )
    for kind in ("gradient", "stripes")
  )
  # same people, labels and detections; the body's pixels are the same, the scene is not
  np.testing.assert_array_equal(plain.joints_3d, striped.joints_3d)
  np.testing.assert_array_equal(
    plain.keypoints_2d["openpose25"], striped.keypoints_2d["openpose25"]
  )
  same = np.all(plain.image == striped.image, -1)
  assert 0.02 < same.mean() < 0.6  # the body (and chance equal pixels), not the background
  # a gradient varies along one axis only and smoothly; the stripes vary along both, in bars
  key = jax.random.key(0)
  gradient, stripes = (
    np.asarray(synthesis.backgrounds(key, 4, 32, k)) for k in ("gradient", "stripes")
  )
  assert gradient.shape == stripes.shape == (4, 32, 32, 3)
  assert 0 <= stripes.min() and stripes.max() <= 1
  np.testing.assert_allclose(np.diff(gradient, axis=2), 0, atol=1e-6)  # constant along rows
  bumps = lambda b, axis: np.abs(np.diff(b, 2, axis=axis)).mean()
  for axis in (1, 2):
    assert bumps(stripes, axis) > 20 * bumps(gradient, 1)
  with pytest.raises(ValueError, match="background"):
    synthesis.SceneSpec(background="checkerboard")
