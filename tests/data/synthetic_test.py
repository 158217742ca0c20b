"""The synthetic TFDS builder: DatasetBuilderTestCase, TF-free build, determinism, content."""

import functools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jhmr.body import build_body_model, random_body_model_arrays
from jhmr.data.cmu_mocap import dummy_data_generator as cmu_dummy
from jhmr.data.synthetic import synthetic_dataset_builder as synthetic


@functools.cache
def _random_body():
  return build_body_model(random_body_model_arrays(0, 200))


class SmallSynthetic(synthetic.Builder):
  """Tiny configs on a random 200-vertex body model (no asset needed)."""

  name = "synthetic_small_test"
  BUILDER_CONFIGS = [
    synthetic.SyntheticConfig(name="procedural", crop_size=32, num_train=3, num_test=2),
    synthetic.SyntheticConfig(
      name="cmu_rig", pose_source="cmu", num_views=2, clip_length=2, num_train=0, num_test=0
    ),
  ]

  def body_model(self):
    return _random_body()


# The DatasetBuilderTestCase runs compile the JAX generator again (~40 s each on a loaded 2-core
# machine): slow. The TF-free tests below cover the same builds by default.
@pytest.mark.slow
class SyntheticProceduralTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = SmallSynthetic
  BUILDER_CONFIG_NAMES_TO_TEST = ["procedural"]
  SPLITS = {"train": 3, "test": 2}
  EXAMPLE_DIR = str(cmu_dummy.DUMMY_DIR)  # unused by the procedural config


@pytest.mark.slow
class SyntheticCmuRigTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = SmallSynthetic
  BUILDER_CONFIG_NAMES_TO_TEST = ["cmu_rig"]
  EXAMPLE_DIR = str(cmu_dummy.DUMMY_DIR)
  SPLITS = {"train": 6, "test": 2}  # 2-frame windows of the 4-frame dummy files


def _build(tmp_path, config, name="a"):
  builder = SmallSynthetic(config=config, data_dir=tmp_path / name, file_format="array_record")
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(cmu_dummy.DUMMY_DIR))
  )
  return builder.as_data_source()


@pytest.mark.slow  # one JAX compilation of the generator: ~50 s on the loaded 2-core machine
def test_procedural_is_deterministic_and_consistent(tmp_path):
  first, second = _build(tmp_path, "procedural", "a"), _build(tmp_path, "procedural", "b")
  for i in range(3):
    a, b = first["train"][i], second["train"][i]
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  row = first["train"][0]
  assert row["image"].shape == (32, 32, 3) and row["image"].dtype == np.uint8
  assert row["keypoints2d"].shape == (25, 3) and row["body_pose"].shape == (23, 3)
  # Train and test examples differ (different keys).
  assert not np.allclose(first["test"][0]["body_pose"], row["body_pose"])
  # The noisy keypoints scatter around the exact projections; confidences are in [0, 1].
  conf = row["keypoints2d"][:, 2]
  assert np.all((conf >= 0) & (conf <= 1))
  seen = conf > 0
  err = np.linalg.norm(row["keypoints2d"][seen, :2] - row["keypoints2d_true"][seen], axis=-1)
  assert np.median(err) < 0.1 * row["scale"]
  # The crop keypoints are the full-image ones mapped into the crop.
  ratio = 32 / row["scale"]
  expected = (row["keypoints2d"][seen, :2] - row["center"]) * ratio + 16
  np.testing.assert_allclose(row["keypoints2d_crop"][seen, :2], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_cmu_rig_keeps_the_retargeted_motion(tmp_path):
  source = _build(tmp_path, "cmu_rig")["test"]
  rows = sorted((source[i] for i in range(len(source))), key=lambda r: r["source"])
  assert [r["source"] for r in rows] == [b"02/02_01/0", b"02/02_01/2"] or [
    r["source"] for r in rows
  ] == ["02/02_01/0", "02/02_01/2"]
  row = rows[1]
  assert row["keypoints2d"].shape == (2, 2, 25, 3) and row["cam_rotation"].shape == (2, 3, 3)
  # Frames 2-3 of the dummy clip: the same translation steps as the known motion (the offset
  # and scale differ: retargeting onto the random model's skeleton).
  known = cmu_dummy.known_motion("02")
  step, known_step = row["transl"][1] - row["transl"][0], known.transl[3] - known.transl[2]
  np.testing.assert_allclose(
    step / np.linalg.norm(step), known_step / np.linalg.norm(known_step), atol=1e-4
  )
  # Camera-frame translation agrees with the world pose seen through each camera.
  r, t = row["cam_rotation"], row["cam_translation"]
  pelvis_world = row["joints3d"][:, 0]  # [T, 3]
  pelvis_cam = np.einsum("vij,tj->tvi", r, pelvis_world) + t
  rest_shift = pelvis_world - row["transl"]  # rest pelvis of this shape
  np.testing.assert_allclose(row["transl_cam"] + rest_shift[:, None], pelvis_cam, atol=1e-4)


def test_unknown_pose_source_is_a_clear_error(tmp_path):
  class Bad(SmallSynthetic):
    name = "synthetic_bad_test"
    BUILDER_CONFIGS = [synthetic.SyntheticConfig(name="x", pose_source="mystery")]

  with pytest.raises(ValueError, match="unknown pose_source 'mystery'"):
    Bad(config="x", data_dir=tmp_path, file_format="array_record").download_and_prepare()


def test_feature_shapes_follow_the_config(tmp_path):
  shapes = lambda config: {
    k: v.shape for k, v in synthetic.Builder(config=config, data_dir=tmp_path).info.features.items()
  }
  rig, video, crops = shapes("procedural_multiview"), shapes("cmu_video"), shapes("procedural_224")
  assert rig["keypoints2d"] == (4, 25, 3) and rig["cam_rotation"] == (4, 3, 3)
  assert rig["body_pose"] == (23, 3) and "image" not in rig
  assert video["keypoints2d"] == (16, 25, 3) and video["transl_cam"] == (16, 3)
  assert video["cam_rotation"] == (3, 3) and video["body_pose"] == (16, 23, 3)
  assert crops["image"] == (224, 224, 3) and crops["keypoints2d"] == (25, 3)

  class Bad(SmallSynthetic):
    name = "synthetic_bad_images_test"
    BUILDER_CONFIGS = [synthetic.SyntheticConfig(name="x", num_views=2, crop_size=64)]

  with pytest.raises(ValueError, match="images are stored only for one view and one frame"):
    _ = Bad(config="x", data_dir=tmp_path).info
