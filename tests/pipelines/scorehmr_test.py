"""The ScoreHMR program's data: independent randomness per purpose, group-aligned chunks."""

import pathlib
import sys

import jax
import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.data import synthesis
from jhmr.keys import KeySeq
from jhmr.pipelines import scorehmr

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from configs import scorehmr as scorehmr_config  # noqa: E402

_BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0])


def _yaw_pitch(root):
  m = np.einsum("ij,njk->nik", _BODY_TO_CAMERA.T, root)  # = Rx(pitch) @ Ry(yaw)
  return np.arctan2(m[:, 0, 2], m[:, 0, 0]), np.arctan2(m[:, 2, 1], m[:, 1, 1])


def test_camera_yaw_and_pitch_are_independent():
  spec = synthesis.SceneSpec()
  root, _ = synthesis.sample_views(KeySeq(0).child("views"), 2048, spec)
  yaw, pitch = _yaw_pitch(root)
  assert np.abs(yaw).max() <= np.deg2rad(spec.yaw_deg) + 1e-5
  assert np.abs(pitch).max() <= np.deg2rad(spec.pitch_deg) + 1e-5
  assert abs(np.corrcoef(yaw, pitch)[0, 1]) < 0.1
  # Independent: the pitch of a yaw quantile covers the whole pitch range.
  low = pitch[yaw < np.quantile(yaw, 0.25)]
  assert low.min() < -0.8 * np.deg2rad(spec.pitch_deg) and low.max() > 0.8 * np.deg2rad(10)


@pytest.fixture(scope="module")
def tiny_sets():
  config = scorehmr_config.get_config("tiny")
  config.data.update(num_train=16, num_test=16)
  body = load_body_model(config.body_model)
  return body, scorehmr.build_sets(config, body, KeySeq(config.seed).child("data"))


def _detection_residuals(body, batch):
  out = body.joints_only(batch.betas, batch.body_pose, batch.global_orient, joint_set="openpose25")
  points = np.asarray(out.keypoints) + batch.cam_t[:, None]
  from jhmr.data.example import project_to_crop

  exact = project_to_crop(batch, points)
  kp = batch.keypoints_2d["openpose25"]
  return np.where(kp[..., 2:] > 0, kp[..., :2] - exact, np.nan)


def test_the_sets_draw_their_own_noise(tiny_sets):
  body, sets = tiny_sets
  train = _detection_residuals(body, sets.train.batch)
  test = _detection_residuals(body, sets.keypoints.batch)
  both = np.isfinite(train) & np.isfinite(test)
  assert both.sum() > 100
  assert np.nanstd(train) > 0.05  # the detector adds noise
  assert abs(np.corrcoef(train[both], test[both])[0, 1]) < 0.3
  poses = [s.batch.body_pose for s in (sets.train, sets.keypoints)]
  assert not np.allclose(poses[0][:16], poses[1][:16])


def test_group_chunks_never_split_a_group(tiny_sets):
  _, sets = tiny_sets
  source = sets.video  # 1 clip of 6 frames
  chunks = list(scorehmr.group_chunks(source, max_rows=4))
  assert [len(c.group) for c in chunks] == [6]
  multiview = sets.multiview  # 2 people x 2 views
  chunks = list(scorehmr.group_chunks(multiview, max_rows=3))
  assert [list(c.group) for c in chunks] == [[0, 0], [1, 1]]
  assert sum(len(c.group) for c in scorehmr.group_chunks(sets.keypoints, 5)) == 16


def test_corrupted_estimates_are_reproducible_and_near_the_truth(tiny_sets):
  body, sets = tiny_sets
  models = scorehmr.TrainedModels(body_model=body, score_params={})
  batch = sets.keypoints.batch
  a = scorehmr.estimate(models, batch, jax.random.PRNGKey(0))
  b = scorehmr.estimate(models, batch, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(a.rotmat, b.rotmat)
  err = scorehmr.errors(body, a.rotmat, a.betas, batch)
  assert 5 < err["mpjpe"].mean() < 200
