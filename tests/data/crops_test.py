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


def _reference_warp(image, matrix, out_size, border):
  """cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT) from its documentation, pixel by pixel:
  dst(x, y) = src(M^-1 (x, y, 1)), src bilinear between the four pixels around the point, a pixel
  outside the image reads `border`. float64 `[H_out, W_out, C]`."""
  src = np.asarray(image, np.float64).reshape(*image.shape[:2], -1)
  h, w = src.shape[:2]
  m = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
  inv = np.linalg.inv(m)
  out = np.zeros((out_size[1], out_size[0], src.shape[2]))
  for y in range(out_size[1]):
    for x in range(out_size[0]):
      sx, sy, _ = inv @ [x, y, 1.0]
      x0, y0 = int(np.floor(sx)), int(np.floor(sy))
      for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        weight = (1 - abs(sx - xx)) * (1 - abs(sy - yy))
        pixel = src[yy, xx] if 0 <= xx < w and 0 <= yy < h else border
        out[y, x] += weight * pixel
  return out


def _random_affine(rng, kind: str) -> np.ndarray:
  angle = rng.uniform(-np.pi, np.pi) if kind != "axis" else 0.0
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  linear = rot @ np.diag(rng.uniform(0.4, 2.5, 2))
  if kind == "shear":
    linear = linear @ [[1.0, rng.uniform(-0.8, 0.8)], [0.0, 1.0]]
  return np.concatenate([linear, rng.uniform(-12, 20, (2, 1))], 1)


@pytest.mark.parametrize(
  "shape, out_size",
  [((9, 13), (11, 7)), ((12, 10, 1), (9, 14)), ((7, 8, 2), (10, 10)), ((16, 11, 3), (13, 17)),
   ((10, 10, 4), (8, 12)), ((6, 9, 5), (12, 9)), ((1, 1, 3), (4, 3))],
)  # fmt: skip
def test_warp_affine_matches_reference_resampler(shape, out_size):
  """Random rotations, anisotropic scales, shears and shifts that leave the image (so borders and
  outside pixels occur), uint8 (rounded, within one grey level of the exact value, and equal to
  its rounding almost everywhere) and float (exact)."""
  rng = np.random.default_rng(sum(shape) * 31 + out_size[0])
  image = rng.integers(0, 256, shape, dtype=np.uint8)
  for i, (kind, border) in enumerate([("rotate", 0.0), ("shear", 255.0), ("axis", 41.0)] * 2):
    matrix = _random_affine(rng, kind)
    want = _reference_warp(image, matrix, out_size, border).reshape(out_size[::-1] + shape[2:])
    got = crops.warp_affine(image, matrix, out_size, border)
    assert got.dtype == np.uint8 and got.shape == want.shape and got.flags.c_contiguous
    assert np.abs(got - want).max() <= 0.5 + 1e-3  # rounded to nearest (float32 at ties)
    floats = image.astype(np.float32 if i % 2 else np.float64) / 7.0
    got = crops.warp_affine(floats, matrix, out_size, border / 7.0)
    assert got.dtype == floats.dtype
    np.testing.assert_allclose(got, want / 7.0, rtol=1e-6 if i % 2 else 1e-12, atol=1e-9)


def test_warp_affine_agrees_with_cv2():
  """Against cv2.warpAffine itself (opencv-python-headless 5.0.0.93 when installed): within one
  grey level on random images, a 0/255 checkerboard, nonzero borders, 1, 3 and 4 channels."""
  cv2 = pytest.importorskip("cv2")
  rng = np.random.default_rng(7)
  checker = (np.indices((23, 29)).sum(0) % 2 * 255).astype(np.uint8)
  for i, channels in enumerate([None, 1, 3, 4] * 3):
    base = rng.integers(0, 256, (23, 29), dtype=np.uint8) if i % 3 else checker
    image = base if channels is None else np.repeat(base[..., None], channels, -1)
    image = image if channels is None else (image + np.arange(channels) * 40).astype(np.uint8)
    matrix = _random_affine(rng, ("rotate", "shear", "axis")[i % 3])
    border = (0, 255, 90)[i % 3]
    want = cv2.warpAffine(
      image, matrix, (31, 27), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
      borderValue=(border,) * 4,
    ).reshape((27, 31) + image.shape[2:])  # fmt: skip
    got = crops.warp_affine(image, matrix, (31, 27), border)
    assert np.abs(got.astype(int) - want).max() <= 1
