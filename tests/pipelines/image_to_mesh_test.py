"""image_to_mesh with tiny RANDOM models: the box path, the keypoint-extent path, stage skipping
(a skipped stage's model is None), and bad inputs."""

import dataclasses

import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.errors import InputError
from jhmr.guidance.refinement import task_config
from jhmr.models.pare import load_feature_stats
from jhmr.pipelines import image_to_mesh as itm

CONFIG = itm.ImageToMeshConfig(
  refine=task_config("keypoints").replace(early_stopping=False, num_iters=1, t_start=4)
)
H, W = 64, 96


@pytest.fixture(scope="module")
def models():
  return itm.random_image_models(itm.TINY_CONFIGS, 0, load_body_model("anny-tiny"))


@pytest.fixture(scope="module")
def image():
  img = np.full((H, W, 3), 90, np.uint8)
  img[10:58, 40:56] = 200  # a bright upright "person"
  return img


def _keypoints(p=1):
  rng = np.random.default_rng(0)
  kp = np.zeros((p, 25, 3), np.float32)
  kp[..., 0] = rng.uniform(42, 54, (p, 25))
  kp[..., 1] = rng.uniform(12, 56, (p, 25))
  kp[..., 2] = 0.9
  return kp


def test_box_path_runs_every_stage(models, image):
  res = itm.image_to_mesh(image, models, boxes=[[38, 8, 58, 60]], config=CONFIG)
  v = models.body_model.num_vertices
  assert res.keypoints.shape == (1, 25, 3) and res.features.shape == (1, 8 * 24)
  assert res.initial.pose.shape == res.refined.pose.shape == (1, 24, 3, 3)
  assert res.initial_vertices.shape == res.refined_vertices.shape == (1, v, 3)
  assert res.refined.cam_t[0, 2] > 0 and res.weights == "random"
  assert np.isfinite(res.refined_vertices).all()
  np.testing.assert_allclose(res.boxes, [[38, 8, 58, 60]])


def test_no_boxes_uses_the_keypoint_extent_and_skips_vitpose(models, image):
  kp = _keypoints()
  res = itm.image_to_mesh(
    image, dataclasses.replace(models, vitpose=None), keypoints=kp, config=CONFIG
  )
  lo, hi = kp[0, :, :2].min(0), kp[0, :, :2].max(0)
  c, half = (lo + hi) / 2, (hi - lo) * 1.2 / 2
  np.testing.assert_allclose(res.boxes[0], np.concatenate([c - half, c + half]), rtol=1e-5)
  np.testing.assert_array_equal(res.keypoints, kp)


def test_given_outputs_skip_their_models(models, image):
  given = itm.image_to_mesh(image, models, boxes=[[38, 8, 58, 60]], config=CONFIG)
  bare = dataclasses.replace(models, vitpose=None, hmr2=None, pare=None, pare_stats=None)
  res = itm.image_to_mesh(
    image, bare, boxes=given.boxes, keypoints=given.keypoints, initial=given.initial,
    features=given.features,
    config=CONFIG,
  )  # fmt: skip
  np.testing.assert_allclose(res.initial.cam_t, given.initial.cam_t)
  np.testing.assert_allclose(res.refined.pose, given.refined.pose, atol=1e-5)
  with pytest.raises(InputError, match="no HMR 2.0 model"):
    itm.image_to_mesh(image, bare, boxes=given.boxes, keypoints=given.keypoints, config=CONFIG)


def test_no_person(models, image):
  kp = _keypoints()
  kp[..., 2] = 0.0
  with pytest.raises(InputError, match="no person found in street.jpg"):
    itm.image_to_mesh(image, models, keypoints=kp, config=CONFIG, name="street.jpg")


def test_box_outside_the_image(models, image):
  with pytest.raises(InputError, match=r"box \[200.0, 10.0, 240.0, 60.0\] lies outside the 96x64"):
    itm.image_to_mesh(image, models, boxes=[[200, 10, 240, 60]], config=CONFIG)
  with pytest.raises(InputError, match="boxes .* must be"):
    itm.image_to_mesh(image, models, boxes=[[1, 2, 3]], config=CONFIG)


def test_wrong_size_crop_is_refused(models, image):
  with pytest.raises(InputError, match="multiple of 32, got 50"):
    itm.image_to_mesh(
      image, dataclasses.replace(models, pare_size=50), boxes=[[38, 8, 58, 60]], config=CONFIG
    )
  with pytest.raises(InputError, match=r"HMR 2.0 takes crops of 64x48x3"):
    itm.check_input("HMR 2.0", np.zeros((1, 64, 64, 3)), (64, 48))


def test_bad_files(tmp_path):
  np.savez(tmp_path / "stats.npz", a=np.zeros(3), b=np.ones(3))
  with pytest.raises(InputError, match=r"found \['a', 'b'\]"):
    load_feature_stats(tmp_path / "stats.npz")
  with pytest.raises(InputError, match="checkpoints.hmr2: file 'nowhere.ckpt' not found"):
    itm.load_image_models(
      vitpose=tmp_path / "stats.npz", hmr2="nowhere.ckpt", pare="", pare_stats="", score_hmr=""
    )
