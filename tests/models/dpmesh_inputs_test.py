"""`jhmr.models.dpmesh.prepare_inputs`, the checks `predict` runs on a user's crops and keypoints,
without a model (numpy only): wrong crop size, keypoints outside the crop, NaN keypoints, every
joint invisible. `tests/models/dpmesh_test.py` runs the same cases through `predict`."""

import numpy as np
import pytest

from jhmr.models.dpmesh import DPMESH30_NAMES, DPMeshConfig, prepare_inputs

CFG = DPMeshConfig.tiny()
S = CFG.image_size


def _inputs(batch=2):
  rng = np.random.default_rng(0)
  crops = rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8)
  xy = rng.uniform(4, S - 4, (batch, 30, 2))
  return crops, np.concatenate([xy, np.full((batch, 30, 1), 0.9)], -1).astype(np.float32)


@pytest.mark.parametrize(
  "shape", [(2, S // 2, S // 2, 3), (2, S, S // 2, 3), (2, S, S, 4), (S, S, 3), (2, S, S)]
)
def test_wrong_crop_size_names_the_expected_shape(shape):
  _, kp = _inputs()
  with pytest.raises(ValueError, match=rf"crops must be \[B, {S}, {S}, 3\] .* got \("):
    prepare_inputs(np.zeros(shape, np.uint8), kp, CFG)


def test_keypoints_outside_the_crop_are_missing_joints():
  crops, kp = _inputs()
  kp[0, 3] = (-0.5, 10.0, 0.9)  # left of the crop
  kp[0, 4] = (10.0, S, 0.9)  # the row just below the last one
  kp[1, 20] = (1e6, -1e6, 0.9)
  _, got, visible = prepare_inputs(crops, kp, CFG)
  assert visible.sum() == 60 - 3
  assert not visible[0, 3] and not visible[0, 4] and not visible[1, 20]
  np.testing.assert_array_equal(got[0, 3], 0.0)  # as a joint marked missing
  np.testing.assert_array_equal(got[~visible], 0.0)
  np.testing.assert_array_equal(got[visible], kp[visible])


def test_nan_keypoints_raise_unless_marked_missing():
  crops, kp = _inputs()
  bad = kp.copy()
  bad[1, 7, 1] = np.inf
  with pytest.raises(ValueError, match=rf"keypoints_2d\[1, 7\] \({DPMESH30_NAMES[7]}\) is NaN"):
    prepare_inputs(crops, bad, CFG)
  bad = kp.copy()
  bad[0, 2, 2] = np.nan  # a NaN confidence
  with pytest.raises(ValueError, match=r"mark a missing joint with confidence 0"):
    prepare_inputs(crops, bad, CFG)
  ok = kp.copy()
  ok[0, 5] = (np.nan, np.nan, 0.0)  # NaN coordinates of a joint with confidence 0: missing
  _, got, visible = prepare_inputs(crops, ok, CFG)
  assert not visible[0, 5] and np.all(np.isfinite(got))


def test_every_joint_invisible_warns_and_zeroes_the_joints():
  crops, kp = _inputs()
  kp[1, :, 2] = 0.01  # below the 0.05 threshold
  with pytest.warns(UserWarning, match=r"no visible joint in crops \[1\]"):
    images, got, visible = prepare_inputs(crops, kp, CFG)
  assert visible[0].all() and not visible[1].any()
  np.testing.assert_array_equal(got[1], 0.0)
  assert images.dtype == np.float32 and 0.0 <= images.min() and images.max() <= 1.0
