"""Person crops: bounding boxes from keypoints, square crops, and image encoding (numpy + PIL).

Conventions (SPIN / ScoreHMR / DPMesh): a person box is `center [2]` (pixels, x then y) and
`scale` = the side in pixels of a square box. `bbox_from_keypoints` takes the tight box of the
confident keypoints, expands it (`expand`, DPMesh uses 1.2), and makes it square keeping the
aspect ratio of the person inside. `crop_image` maps that square to a `size x size` image
(optionally rotated about the centre), padding outside the image with zeros; `crop_points`
applies the same map to 2D points.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def bbox_from_keypoints(
  keypoints: np.ndarray, conf: np.ndarray | None = None, expand: float = 1.2, threshold: float = 0.0
) -> tuple[np.ndarray, float]:
  """Square box `(center [2], scale)` around keypoints `[K, 2]` with `conf > threshold`.

  Raises ValueError if no keypoint is confident.
  """
  keypoints = np.asarray(keypoints, np.float64)
  valid = np.ones(len(keypoints), bool) if conf is None else np.asarray(conf) > threshold
  if not valid.any():
    raise ValueError("no confident keypoint to build a bounding box from")
  lo, hi = keypoints[valid].min(0), keypoints[valid].max(0)
  return (lo + hi) / 2, float(max(hi - lo) * expand + 1e-6)


def crop_transform(center, scale: float, size: int, rotation_deg: float = 0.0) -> np.ndarray:
  """`[2, 3]` affine map from image pixels to crop pixels."""
  s = size / scale
  a = np.radians(rotation_deg)
  rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * s
  shift = size / 2 - rot @ np.asarray(center, np.float64)
  return np.concatenate([rot, shift[:, None]], axis=1)


def crop_points(points: np.ndarray, center, scale: float, size: int, rotation_deg=0.0):
  """Image points `[..., 2]` -> crop pixels `[..., 2]` (the map of `crop_image`)."""
  m = crop_transform(center, scale, size, rotation_deg)
  return np.asarray(points) @ m[:, :2].T + m[:, 2]


def crop_image(image: np.ndarray, center, scale: float, size: int, rotation_deg=0.0) -> np.ndarray:
  """`size x size` crop (uint8 `[size, size, C]`) of `image` `[H, W, C]` (bilinear, zero pad)."""
  m = np.concatenate([crop_transform(center, scale, size, rotation_deg), [[0, 0, 1]]])
  inverse = np.linalg.inv(m)[:2].ravel()  # PIL wants crop -> image
  pil = Image.fromarray(np.asarray(image, np.uint8))
  out = pil.transform(
    (size, size), Image.Transform.AFFINE, tuple(inverse), Image.Resampling.BILINEAR
  )
  return np.asarray(out)


def encode_image(image: np.ndarray, format: str = "jpeg", quality: int = 95) -> bytes:
  """uint8 `[H, W, 3]` -> encoded bytes (`jpeg` or `png`)."""
  buffer = io.BytesIO()
  pil = Image.fromarray(np.asarray(image, np.uint8))
  if format == "jpeg":
    pil.save(buffer, format="JPEG", quality=quality)
  else:
    pil.save(buffer, format=format.upper())
  return buffer.getvalue()


def read_image(path) -> np.ndarray:
  """An image file as uint8 RGB `[H, W, 3]` (raises ValueError naming the file if unreadable)."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from None
