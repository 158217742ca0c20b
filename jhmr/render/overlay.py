"""2D drawing and image files: keypoint skeletons (PIL) and PNG writing.

Pixel convention (shared with the rasteriser and `jhmr.geometry.cameras`): a keypoint at
continuous coordinates (u, v) lies in pixel (floor(v), floor(u)); pixel centres are at +0.5.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

# OpenPose BODY_25 limbs (the render pairs of OpenPose's POSE_BODY_25 model).
OPENPOSE25_EDGES = (
  (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11), (8, 12),
  (12, 13), (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18), (14, 19), (19, 20),
  (14, 21), (11, 22), (22, 23), (11, 24),
)  # fmt: skip


def to_uint8(image) -> np.ndarray:
  """Image in any of uint8 [0, 255], float [0, 1] or bool -> uint8 numpy array."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if image.dtype == bool:
    return image.astype(np.uint8) * 255
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"images must be uint8, bool or float in [0, 1], got {image.dtype}")
  return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def palette(n: int) -> np.ndarray:
  """n distinct saturated RGB colours (uint8 [n, 3]) around the hue circle."""
  hue = np.arange(n) / max(n, 1)
  k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6.0) % 6.0
  rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return np.round(rgb * 230 + 25).astype(np.uint8)


def draw_keypoints(
  image,
  kp2d,
  conf=None,
  edges=None,
  threshold: float = 0.0,
  radius: float | None = None,
  colors=None,
  line_width: int | None = None,
) -> np.ndarray:
  """Draws 2D keypoints (and optional skeleton edges) on an image.

  Args:
    image: [H, W, 3] uint8 or float in [0, 1].
    kp2d: [K, 2] pixel coordinates (u, v).
    conf: optional [K] confidences; keypoints with conf <= threshold (and edges touching them)
      are not drawn.
    edges: optional sequence of (i, j) keypoint index pairs, e.g. `OPENPOSE25_EDGES`.
    threshold: confidence threshold.
    radius: dot radius in pixels (default max(1.5, min(H, W) / 100)).
    colors: optional [K, 3] uint8 colours (default: a hue palette).
    line_width: edge width in pixels (default max(1, radius / 2)).

  Returns:
    [H, W, 3] uint8 image with the keypoints drawn.
  """
  img = to_uint8(image)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3], got shape {img.shape}")
  kp = np.asarray(kp2d, np.float64)
  if kp.ndim != 2 or kp.shape[-1] != 2:
    raise ValueError(f"kp2d must be [K, 2], got shape {kp.shape}")
  k = kp.shape[0]
  conf = np.ones(k) if conf is None else np.asarray(conf, np.float64).reshape(-1)
  if conf.shape != (k,):
    raise ValueError(f"conf must be [K={k}], got shape {conf.shape}")
  visible = (conf > threshold) & np.all(np.isfinite(kp), axis=-1)
  colors = palette(k) if colors is None else np.asarray(colors, np.uint8).reshape(k, 3)
  h, w = img.shape[:2]
  radius = max(1.5, min(h, w) / 100.0) if radius is None else float(radius)
  line_width = max(1, int(round(radius / 2))) if line_width is None else int(line_width)
  pil = Image.fromarray(img)
  draw = ImageDraw.Draw(pil)
  xy = kp - 0.5  # PIL addresses pixel centres with integers
  for i, j in edges or ():
    if not (0 <= i < k and 0 <= j < k):
      raise ValueError(f"edge ({i}, {j}) is out of range for {k} keypoints")
    if visible[i] and visible[j]:
      c = tuple(int(x) for x in (colors[i].astype(int) + colors[j]) // 2)
      draw.line([tuple(xy[i]), tuple(xy[j])], fill=c, width=line_width)
  for i in np.flatnonzero(visible):
    x, y = xy[i]
    draw.ellipse(
      [x - radius, y - radius, x + radius, y + radius],
      fill=tuple(int(c) for c in colors[i]),
      outline=(0, 0, 0),
    )
  return np.asarray(pil)


def save_png(path: str | os.PathLike, image) -> pathlib.Path:
  """Writes an image ([H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; uint8, bool or float in [0, 1]).

  Parent directories are created. Returns the path.
  """
  img = to_uint8(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
    raise ValueError(f"save_png needs [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {img.shape}")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(img).save(path, format="PNG")
  return path
