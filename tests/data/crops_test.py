"""jhmr.data.crops.warp_affine: cv2.warpAffine semantics (integer pixel centres, constant border,
uint8 rounding), hand-computed."""

import numpy as np
import pytest

from jhmr.data import crops
from jhmr.errors import InputError


def test_warp_affine_matches_cv2_semantics():
  image = np.arange(12, dtype=np.float32).reshape(3, 4)
  # identity and an integer shift: exact pixels; taps outside read the border value
  np.testing.assert_array_equal(crops.warp_affine(image, [[1, 0, 0], [0, 1, 0]], (4, 3)), image)
  shifted = crops.warp_affine(image, [[1, 0, 1], [0, 1, 0]], (4, 3), border=-1)
  np.testing.assert_array_equal(shifted[:, 1:], image[:, :3])
  np.testing.assert_array_equal(shifted[:, 0], -1)
  # half a pixel: the mean of two neighbours (dst(x) = src(x + 0.5)); the last column blends
  # with the zero border, as cv2 does
  half = crops.warp_affine(image, [[1, 0, -0.5], [0, 1, 0]], (4, 3))
  np.testing.assert_allclose(half[:, :3], (image[:, :3] + image[:, 1:]) / 2)
  np.testing.assert_allclose(half[:, 3], image[:, 3] / 2)
  # uint8 in -> rounded uint8 out; [H, W, C] keeps its channels
  rgb = np.stack([np.array([[0, 3]], np.uint8)] * 3, -1)
  out = crops.warp_affine(rgb, [[1, 0, -1 / 3], [0, 1, 0]], (2, 1))
  assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
  np.testing.assert_array_equal(out[0, :, 0], [1, 2])  # 1.0 and 3 * 2/3 = 2.0


def test_warp_affine_refuses_bad_input():
  with pytest.raises(InputError, match=r"\[2, 3\]"):
    crops.warp_affine(np.zeros((2, 2)), np.eye(3), (2, 2))
  with pytest.raises(InputError, match="singular"):
    crops.warp_affine(np.zeros((2, 2)), [[0, 0, 0], [0, 1, 0]], (2, 2))
