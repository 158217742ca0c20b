"""Hole filling and mask dilation for compositing (`jhmr.render.inpaint`)."""

from __future__ import annotations

import numpy as np

from jhmr.render import inpaint


def test_dilate_grows_a_pixel_into_a_square():
  mask = np.zeros((1, 9, 9), bool)
  mask[0, 4, 4] = True
  grown = np.asarray(inpaint.dilate(mask, 2))
  expected = np.zeros((9, 9), bool)
  expected[2:7, 2:7] = True
  np.testing.assert_array_equal(grown[0], expected)


def test_fill_keeps_known_pixels_and_fills_a_hole_from_its_border():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  image[1] = 0.25  # a flat scene: the fill must be that value
  hole = np.zeros((2, 16, 16), bool)
  hole[:, 4:11, 3:9] = True
  filled = np.asarray(inpaint.fill_holes(image, hole))
  np.testing.assert_array_equal(filled[~hole], image[~hole])
  np.testing.assert_allclose(filled[1][hole[1]], 0.25, atol=1e-6)
  # a mean of neighbours never leaves the range of the pixels around the hole
  border = image[0][np.asarray(inpaint.dilate(hole, 1))[0] & ~hole[0]]
  inside = filled[0][hole[0]]
  assert np.all(inside >= border.min(0) - 1e-6) and np.all(inside <= border.max(0) + 1e-6)
  assert not np.allclose(inside, image[0][hole[0]])  # the random content under the hole is gone


def test_fill_of_a_ramp_stays_a_ramp():
  ramp = np.broadcast_to(np.linspace(0, 1, 16, dtype=np.float32)[None, :, None], (16, 16, 3))
  hole = np.zeros((1, 16, 16), bool)
  hole[0, :, 6:10] = True  # a vertical band: the fill runs from the left to the right value
  filled = np.asarray(inpaint.fill_holes(ramp[None], hole))[0]
  row = filled[8, 5:11, 0]
  assert np.all(np.diff(row) >= -1e-6), row
  assert ramp[0, 5, 0] < row[1:-1].mean() < ramp[0, 10, 0]


def test_an_image_that_is_all_hole_stays_as_it_was():
  image = np.full((1, 8, 8, 3), 0.5, np.float32)
  filled = np.asarray(inpaint.fill_holes(image, np.ones((1, 8, 8), bool)))
  np.testing.assert_array_equal(filled, image)
