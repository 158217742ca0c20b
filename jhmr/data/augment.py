"""Per-example augmentation for the input pipeline (numpy; `transform(example, rng) -> example`).

Each factory returns a transform for `jhmr.data.pipeline.make_dataset`. Conventions: images are
uint8 `[H, W, 3]` crops, 2D keypoints `[K, 3]` rows `(x, y, conf)` in crop pixels, SMPL poses
axis-angle in the camera frame (x right, y down, z forward).

* `keypoint_noise`: detector-like noise on 2D keypoints (Gaussian scaled with person size,
  outliers, dropped joints) - the numpy counterpart of `jhmr.data.observations.KeypointNoise`
  for use inside loaders.
* `occluders`: DPMesh-style synthetic occluders (uniform-noise rectangles, area up to 30% of the
  person box, aspect 0.5-2).
* `crop_jitter`: DPMesh's scale / rotation augmentation (scale `1 + clip(N, -1, 1) * 0.25`,
  rotation `clip(N, -2, 2) * 30` deg with probability 0.6), applied to the image, the 2D
  keypoints and (about the camera axis) the global orientation.
* `flip`: horizontal mirror of image, keypoints (left/right swapped) and SMPL pose.
* `color_jitter`: per-channel gain in [0.8, 1.2].
* `joint_heatmaps` / `add_heatmaps`: Gaussian joint heatmaps, DPMesh's ControlNet condition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from jhmr.data import crops

Example = dict[str, Any]
SMPL_FLIP_PAIRS = (
  (1, 2),
  (4, 5),
  (7, 8),
  (10, 11),
  (13, 14),
  (16, 17),
  (18, 19),
  (20, 21),
  (22, 23),
)


def _person_size(kp: np.ndarray) -> float:
  valid = kp[:, 2] > 0
  if not valid.any():
    return 1.0
  pts = kp[valid, :2]
  return float(max(np.max(pts.max(0) - pts.min(0)), 1.0))


def keypoint_noise(
  sigma: float = 0.01,
  outlier_prob: float = 0.02,
  outlier_sigma: float = 0.25,
  missing_prob: float = 0.05,
  key: str = "keypoints2d",
):
  """Gaussian noise (std `sigma` x person size), outliers and dropped joints on `example[key]`."""

  def transform(example: Example, rng: np.random.Generator) -> Example:
    kp = np.array(example[key], np.float32)
    size = _person_size(kp)
    k = len(kp)
    outlier = rng.random(k) < outlier_prob
    std = np.where(outlier, outlier_sigma, sigma)[:, None] * size
    kp[:, :2] += (rng.normal(size=(k, 2)) * std).astype(np.float32)
    kp[outlier, 2] *= 0.3
    kp[rng.random(k) < missing_prob] = 0.0
    return {**example, key: kp}

  return transform


def occluders(prob: float = 0.5, max_area: float = 0.3, tries: int = 5, key: str = "image"):
  """With probability `prob`, paste a uniform-noise rectangle (area U(0, max_area) of the image,
  aspect U(0.5, 2)) fully inside the image; gives up after `tries` draws that do not fit."""

  def transform(example: Example, rng: np.random.Generator) -> Example:
    if rng.random() >= prob:
      return example
    image = np.array(example[key])
    h, w = image.shape[:2]
    for _ in range(tries):
      area = rng.uniform(0.0, max_area) * h * w
      aspect = rng.uniform(0.5, 2.0)
      oh, ow = int(np.sqrt(area * aspect)), int(np.sqrt(area / aspect))
      if 0 < oh < h and 0 < ow < w:
        y, x = rng.integers(0, h - oh), rng.integers(0, w - ow)
        image[y : y + oh, x : x + ow] = rng.integers(0, 256, (oh, ow, image.shape[2]))
        return {**example, key: image}
    return example

  return transform


def _rotate_orient(orient: np.ndarray, degrees: float) -> np.ndarray:
  """Camera-frame global orientation after rotating the image by `degrees` (counter-clockwise
  on screen) about the principal point = crop centre."""
  spin = Rotation.from_rotvec([0.0, 0.0, -np.radians(degrees)])
  return (spin * Rotation.from_rotvec(orient)).as_rotvec().astype(np.float32)


def crop_jitter(
  scale_factor: float = 0.25,
  rotation_deg: float = 30.0,
  rotation_prob: float = 0.6,
  image_key: str = "image",
  keypoint_keys: Sequence[str] = ("keypoints2d",),
  orient_key: str | None = "global_orient",
):
  """Re-crops the (square) image about its centre with DPMesh's random scale and rotation."""

  def transform(example: Example, rng: np.random.Generator) -> Example:
    image = example[image_key]
    size = image.shape[0]
    scale = 1.0 + np.clip(rng.normal(), -1.0, 1.0) * scale_factor
    rot = np.clip(rng.normal(), -2.0, 2.0) * rotation_deg if rng.random() < rotation_prob else 0.0
    center = np.array([size / 2, size / 2])
    out = {**example, image_key: crops.crop_image(image, center, size * scale, size, rot)}
    for k in keypoint_keys:
      if k in example:
        kp = np.array(example[k], np.float32)
        kp[:, :2] = crops.crop_points(kp[:, :2], center, size * scale, size, rot)
        out[k] = kp
    if orient_key and orient_key in example and rot:
      out[orient_key] = _rotate_orient(np.asarray(example[orient_key], np.float64), rot)
    return out

  return transform


def flip(
  prob: float = 0.5,
  keypoint_pairs: Sequence[tuple[int, int]] = (),
  image_key: str = "image",
  keypoint_key: str = "keypoints2d",
):
  """Mirror left-right with probability `prob`: image, keypoints (x -> W - x, `keypoint_pairs`
  swapped) and SMPL pose (`global_orient [3]`, `body_pose [23, 3]`: left/right joints swapped,
  y and z of each axis-angle negated)."""

  def transform(example: Example, rng: np.random.Generator) -> Example:
    if rng.random() >= prob:
      return example
    out = dict(example)
    width = example[image_key].shape[1] if image_key in example else None
    if image_key in example:
      out[image_key] = np.ascontiguousarray(example[image_key][:, ::-1])
    if keypoint_key in example:
      if width is None:
        raise ValueError("flip needs the image to know its width")
      kp = np.array(example[keypoint_key], np.float32)
      kp[:, 0] = width - kp[:, 0]
      kp[kp[:, 2] <= 0, :2] = 0.0
      for a, b in keypoint_pairs:
        kp[[a, b]] = kp[[b, a]]
      out[keypoint_key] = kp
    if "body_pose" in example:
      pose = np.concatenate([np.zeros((1, 3)), np.asarray(example["body_pose"])], 0)
      for a, b in SMPL_FLIP_PAIRS:
        pose[[a, b]] = pose[[b, a]]
      out["body_pose"] = (pose[1:] * [1, -1, -1]).astype(np.float32)
    if "global_orient" in example:
      out["global_orient"] = (np.asarray(example["global_orient"]) * [1, -1, -1]).astype(np.float32)
    return out

  return transform


def color_jitter(low: float = 0.8, high: float = 1.2, key: str = "image"):
  """Multiplies each colour channel by U(low, high)."""

  def transform(example: Example, rng: np.random.Generator) -> Example:
    image = np.asarray(example[key], np.float32) * rng.uniform(low, high, 3)
    return {**example, key: np.clip(image, 0, 255).astype(np.uint8)}

  return transform


def joint_heatmaps(
  keypoints: np.ndarray, size: int, sigma: float = 2.0, image_size: int | None = None
) -> np.ndarray:
  """`[size, size, K]` float32 Gaussian heatmaps (peak 1) of keypoints `[K, 3]` (x, y, conf);
  keypoints with conf 0 give empty maps. `image_size` (default `size`) is the pixel frame of
  the keypoints; they are rescaled to the heatmap."""
  kp = np.asarray(keypoints, np.float32)
  factor = size / (image_size or size)
  grid = np.arange(size, dtype=np.float32) + 0.5
  dx = grid[None, :] - kp[:, :1] * factor  # [K, size]
  dy = grid[None, :] - kp[:, 1:2] * factor
  gx, gy = np.exp(-(dx**2) / (2 * sigma**2)), np.exp(-(dy**2) / (2 * sigma**2))
  maps = gy[:, :, None] * gx[:, None, :] * (kp[:, 2] > 0)[:, None, None]
  return np.moveaxis(maps, 0, -1)


def add_heatmaps(
  size: int = 64, sigma: float = 2.0, key: str = "keypoints2d", out: str = "heatmaps"
):
  """Adds `example[out] = joint_heatmaps(example[key], size, sigma, image width)`."""

  def transform(example: Example, rng: np.random.Generator) -> Example:
    del rng
    width = example["image"].shape[1] if "image" in example else None
    return {**example, out: joint_heatmaps(example[key], size, sigma, width)}

  return transform
