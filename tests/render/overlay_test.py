"""Shading, compositing, keypoint drawing and PNG writing."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jhmr.render import overlay, rasterizer, shading


def _fragments(normals, mask):
  b, h, w = mask.shape
  return rasterizer.Fragments(
    depth=jnp.where(mask, 2.0, 0.0),
    mask=jnp.asarray(mask),
    face_ids=jnp.where(mask, 0, -1),
    bary=jnp.zeros((b, h, w, 3)),
    normals=jnp.where(mask[..., None], jnp.asarray(normals, jnp.float32), 0.0),
  )


def test_lambertian_values():
  mask = np.zeros((1, 4, 5), bool)
  mask[0, 1:3, 1:4] = True
  n = np.broadcast_to(np.array([0.0, 0.0, -1.0]), (1, 4, 5, 3))
  frag = _fragments(n, mask)
  head_on = shading.shade(frag, color=(1.0, 0.5, 0.0), light_direction=(0, 0, -1), ambient=0.2)
  np.testing.assert_allclose(np.asarray(head_on)[mask], [[1.0, 0.5, 0.0]] * mask.sum(), atol=1e-6)
  assert np.all(np.asarray(head_on)[~mask] == 0)
  # 60 degrees: cos = 0.5 -> 0.2 + 0.8 * 0.5 = 0.6.
  light = (np.sin(np.pi / 3), 0.0, -np.cos(np.pi / 3))
  oblique = shading.shade(frag, color=(1.0, 1.0, 1.0), light_direction=light, ambient=0.2)
  np.testing.assert_allclose(np.asarray(oblique)[mask], 0.6, atol=1e-5)
  # A back-lit face is ambient-only one-sided, fully lit two-sided.
  back = shading.shade(frag, (1, 1, 1), (0, 0, 1), ambient=0.2, two_sided=False)
  np.testing.assert_allclose(np.asarray(back)[mask], 0.2, atol=1e-6)
  with pytest.raises(ValueError, match="ambient"):
    shading.shade(frag, ambient=2.0)


def test_overlay_mesh_blends_only_inside_the_mask():
  mask = np.zeros((1, 6, 6), bool)
  mask[0, 2:4, 2:5] = True
  frag = _fragments(np.broadcast_to(np.array([0.0, 0, -1]), (1, 6, 6, 3)), mask)
  image = np.full((6, 6, 3), 100, np.uint8)
  out = np.asarray(
    shading.overlay_mesh(image, frag, (1.0, 1.0, 1.0), alpha=0.5, light_direction=(0, 0, -1))
  )
  assert out.dtype == np.uint8 and out.shape == (6, 6, 3)
  np.testing.assert_array_equal(out[~mask[0]], 100)
  np.testing.assert_array_equal(out[mask[0]], round(0.5 * 255 + 0.5 * 100))
  floats = shading.overlay_mesh(image[None] / 255.0, frag, alpha=1.0)
  assert floats.shape == (1, 6, 6, 3) and floats.dtype == jnp.float32
  with pytest.raises(ValueError, match="does not match"):
    shading.overlay_mesh(np.zeros((5, 6, 3)), frag)


def test_depth_to_image():
  depth = np.array([[[0.0, 2.0], [3.0, 4.0]]], np.float32)
  img = np.asarray(shading.depth_to_image(depth))
  np.testing.assert_allclose(img, [[[0.0, 1.0], [0.6, 0.2]]], atol=1e-6)


def test_draw_keypoints_places_dots_and_respects_confidence():
  img = np.zeros((40, 60, 3), np.uint8)
  kp = np.array([[10.5, 10.5], [30.5, 20.5], [50.5, 30.5]])
  conf = np.array([1.0, 0.9, 0.05])
  colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  out = overlay.draw_keypoints(img, kp, conf, edges=[(0, 1), (1, 2)], threshold=0.1,
                               radius=3, colors=colors)  # fmt: skip
  np.testing.assert_array_equal(out[10, 10], [255, 0, 0])
  np.testing.assert_array_equal(out[20, 30], [0, 255, 0])
  assert not out[30, 50].any()  # below the confidence threshold
  mid = out[15, 20]  # on the edge between keypoints 0 and 1 (mixed colour)
  assert mid[0] > 0 and mid[1] > 0
  assert not out[:, 40:].any()  # no edge towards the hidden keypoint
  with pytest.raises(ValueError, match="out of range"):
    overlay.draw_keypoints(img, kp, edges=[(0, 7)])
  with pytest.raises(ValueError, match="kp2d"):
    overlay.draw_keypoints(img, kp[:, :1])


def test_save_png_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (8, 9, 3)).astype(np.uint8)
  path = overlay.save_png(tmp_path / "a" / "x.png", rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
  grey = overlay.save_png(tmp_path / "g.png", np.linspace(0, 1, 12).reshape(3, 4))
  np.testing.assert_array_equal(
    np.asarray(Image.open(grey)), np.round(np.linspace(0, 255, 12)).reshape(3, 4)
  )
  with pytest.raises(ValueError, match="save_png"):
    overlay.save_png(tmp_path / "bad.png", np.zeros((2, 2, 2), np.uint8))
