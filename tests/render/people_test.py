"""Tests of jhmr.render.people: several meshes per image, composited by depth."""

from __future__ import annotations

import numpy as np

from jhmr.render import people

# A unit square (two triangles) facing the camera.
SQUARE = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def _render(vertices, present, colors):
  b = vertices.shape[0]
  return np.asarray(
    people.render_people(
      vertices,
      present,
      FACES,
      np.full((b, 2), 20.0, np.float32),
      np.full((b, 2), 16.0, np.float32),
      np.zeros((b, 32, 32, 3), np.uint8),
      colors,
      image_size=(32, 32),
    )
  )


def test_nearer_person_covers_the_farther_and_absent_people_are_not_drawn():
  left = SQUARE + [-0.4, 0, 4.0]  # near, left of centre
  right = SQUARE + [0.4, 0, 6.0]  # far, right of centre, overlapping in the middle
  verts = np.stack([np.stack([left, right])] * 2).astype(np.float32)
  colors = np.array([[1, 0, 0], [0, 0, 1]], np.float32)  # red near, blue far
  images = _render(verts, np.array([[True, True], [False, True]]), colors)
  both, far_only = images[0].astype(int), images[1].astype(int)
  # Both drawn: the overlap (image centre) is red; the far square's free right part is blue.
  assert both[16, 16, 0] > 50 and both[16, 16, 2] == 0
  assert both[16, 19, 2] > 50 and both[16, 19, 0] == 0
  # The near person absent: the centre shows the far one.
  assert far_only[16, 16, 2] > 50 and far_only[16, 16, 0] == 0
  assert (far_only[..., 0] == 0).all()  # no red anywhere
  assert people.person_colors(5).shape == (5, 3)
