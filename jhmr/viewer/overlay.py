"""The image panel: input frames (video file or image directory) with the reprojected meshes."""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import numpy as np

from jhmr.io import video as video_io
from jhmr.render import people

BACKGROUND = 128  # grey when no input frame is available


def display_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
  """(display width, display height, scale) so that the longer side is at most `max_side`."""
  scale = min(1.0, max_side / max(width, height))
  return max(1, round(width * scale)), max(1, round(height * scale)), scale


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """[H, W, C] -> [height, width, C] by nearest-neighbour sampling of pixel centres."""
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image
  rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
  return image[rows][:, cols]


class FrameSource:
  """Input frames by frame index, resized to a display size; None where none is available.

  `path` is a video file (decoded once with `jhmr.io.video.read_frames`, up to `max_frames`,
  kept at display size) or a directory of images sorted by file name (frame index = position,
  read on demand). Frames are uint8 RGB [height, width, 3].
  """

  def __init__(self, path: str | os.PathLike | None, width: int, height: int, max_frames: int):
    self.width, self.height = width, height
    self._files: list[pathlib.Path] = []
    self._video: np.ndarray | None = None
    if path is None:
      return
    path = pathlib.Path(path)
    if path.is_dir():
      self._files = video_io.image_files(path)
    elif path.is_file():
      frames, _ = video_io.read_frames(path, max_frames=max_frames)
      self._video = np.stack([resize_nearest(f, width, height) for f in frames])
    else:
      raise FileNotFoundError(f"frames {str(path)!r} not found (a video file or image directory)")

  def __call__(self, index: int) -> np.ndarray | None:
    if self._video is not None:
      return self._video[index] if 0 <= index < len(self._video) else None
    if 0 <= index < len(self._files):
      image = video_io.read_image(self._files[index])
      return resize_nearest(image, self.width, self.height)
    return None


def render_overlay(image, vertices, faces, intrinsics, colors, scale: float = 1.0) -> np.ndarray:
  """Meshes reprojected over an image with jhmr's rasteriser (z-buffered across people).

  Args:
    image: [H, W, 3] uint8, already at the display size (original size * `scale`).
    vertices: [K, V, 3] metres, camera frame (OpenCV); rows with z <= 0 are not drawn, so
      padding with points behind the camera keeps one compiled shape for any track count.
    faces: [F, 3] int triangles.
    intrinsics: [3, 3] pixels of the original image.
    colors: [K, 3] RGB in [0, 1] per mesh.
    scale: display size / original size (scales the focal length and principal point).

  Returns:
    [H, W, 3] uint8.
  """
  k = np.asarray(intrinsics, np.float32)
  focal = np.array([k[0, 0], k[1, 1]], np.float32) * scale
  center = np.array([k[0, 2], k[1, 2]], np.float32) * scale
  vertices = jnp.asarray(vertices, jnp.float32)[None]
  out = people.render_people(
    vertices,
    vertices[..., 2].max(-1) > 0,
    jnp.asarray(faces, jnp.int32),
    jnp.asarray(focal)[None],
    jnp.asarray(center)[None],
    jnp.asarray(image, jnp.uint8)[None],
    jnp.asarray(colors, jnp.float32),
    alpha=0.85,
    image_size=(int(image.shape[0]), int(image.shape[1])),
  )
  return np.asarray(out[0])
