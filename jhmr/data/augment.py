"""Per-example augmentation of `PersonExample`s (numpy): `transform(example, rng) -> example`.

Every factory returns a pure transform for the input pipeline (`jhmr.data.pipeline`), called per
example with a generator derived from (seed, index); the same generator state gives the same
output. Transforms keep the image and every point set of the example consistent:

* `crop_jitter` (`warp_crop`): re-crop the crop by a similarity T (scale, rotation, shift about
  the crop centre): `crop_from_image <- T @ crop_from_image`, the image and the occlusion mask are
  re-warped with T (`jhmr.data.crops`, bilinear, zero padding) and every keypoint set is mapped
  by T. The camera-frame 3D (SMPL parameters, `cam_t`, `joints_3d`) does not move;
  `PersonExample.crop_rotation` exposes the in-plane rotation. DPMesh / SPIN numbers: scale
  `1 + clip(N, -1, 1) * 0.25`, rotation `clip(N, -2, 2) * 30` deg with probability 0.6
  (research/dpmesh.md section 14).
* `flip` (`flip_example`): mirror the 3D scene (X -> -X). An involution.
* `color_jitter`: per-channel gain U(0.8, 1.2).
* `noise_occluder`, `patch_occluders`: synthetic occluders (DPMesh / JOTR); they set `occlusion`
  and zero `joint_visibility` of the SMPL joints that project onto covered pixels.
* `posefix_keypoints` (`jhmr.data.posefix`): PoseFix's "realistic" 2D keypoint errors on one set.
* `chain`, `default_train_transforms`: the full training chain.
* `joint_heatmaps`: Gaussian joint heatmaps, DPMesh's ControlNet condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from jhmr.data import crops, observations
from jhmr.data.example import PersonExample, project_to_crop
from jhmr.data.posefix import posefix_keypoints

Transform = Callable[[PersonExample, np.random.Generator], PersonExample]

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


def permutation_from_pairs(size: int, pairs) -> np.ndarray:
  """`[size]` int32 index array that swaps each pair `(a, b)` (the left/right flip of a set)."""
  perm = np.arange(size, dtype=np.int32)
  for a, b in np.asarray(pairs, np.int64).reshape(-1, 2):
    perm[[a, b]] = perm[[b, a]]
  return perm


SMPL_FLIP_PERMUTATION = permutation_from_pairs(24, SMPL_FLIP_PAIRS)


def chain(*transforms: Transform) -> Transform:
  """One transform applying `transforms` in order (sharing the generator)."""

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    for t in transforms:
      example = t(example, rng)
    return example

  return transform


# -- geometry helpers ----------------------------------------------------------------------------


def _homogeneous(affine) -> np.ndarray:
  """`[2, 3]` (or `[3, 3]`) affine -> `[3, 3]` float64."""
  affine = np.asarray(affine, np.float64)
  if affine.shape == (3, 3):
    return affine
  return np.concatenate([affine, [[0.0, 0.0, 1.0]]], 0)


def _map_keypoints(kp: np.ndarray, transform: np.ndarray) -> np.ndarray:
  """Keypoints `[K, 3]` (x, y, conf) through a `[3, 3]` affine; missing ones stay zero."""
  kp = np.asarray(kp, np.float32)
  xy = kp[:, :2].astype(np.float64) @ transform[:2, :2].T + transform[:2, 2]
  xy = np.where(kp[:, 2:] > 0, xy, 0.0)
  return np.concatenate([xy, kp[:, 2:]], 1).astype(np.float32)


def visible_joints(example: PersonExample, occlusion: np.ndarray | None = None) -> np.ndarray:
  """`[24]` bool: SMPL joints in front of the camera whose projection falls inside the crop and
  not on an occluded pixel (`occlusion`, default the example's). All True without 3D labels
  (`has_3d == 0`), since nothing is known then."""
  if float(example.has_3d) <= 0:
    return np.ones(len(example.joint_visibility), bool)
  occlusion = example.occlusion if occlusion is None else occlusion
  size = example.crop_size
  joints = np.asarray(example.joints_3d, np.float64)
  xy = np.nan_to_num(project_to_crop(example, joints), nan=-1.0, posinf=-1.0, neginf=-1.0)
  inside = (joints[:, 2] > 0) & np.all((xy >= 0) & (xy < size), axis=1)
  ix = np.clip(np.floor(xy[:, 0]), 0, size - 1).astype(int)
  iy = np.clip(np.floor(xy[:, 1]), 0, size - 1).astype(int)
  return inside & ~np.asarray(occlusion, bool)[iy, ix]


def _restrict_visibility(example: PersonExample) -> PersonExample:
  vis = np.asarray(example.joint_visibility, np.float32) * visible_joints(example)
  return example.replace(joint_visibility=vis.astype(np.float32))


def person_box(example: PersonExample) -> np.ndarray:
  """`[4]` (x0, y0, x1, y1) crop pixels: the tight box of the confident keypoints of all sets,
  else of the projected SMPL joints (`has_3d`), else the whole crop."""
  points = [kp[kp[:, 2] > 0, :2] for kp in map(np.asarray, example.keypoints_2d.values())]
  points = np.concatenate([np.zeros((0, 2))] + points, 0)
  if len(points) < 2 and float(example.has_3d) > 0:
    points = project_to_crop(example, example.joints_3d)
  if len(points) < 2:
    return np.array([0.0, 0.0, example.crop_size, example.crop_size])
  return np.concatenate([points.min(0), points.max(0)]).astype(np.float64)


# -- crop jitter ---------------------------------------------------------------------------------


def warp_crop(example: PersonExample, center, scale: float, rotation_deg: float = 0.0):
  """Re-crops the crop: the square of side `scale` (crop pixels) centred at `center` (crop
  pixels), rotated by `rotation_deg` (counter-clockwise on screen), becomes the new `S x S` crop.

  T = `jhmr.data.crops.crop_transform(center, scale, S, rotation_deg)` (old crop -> new crop)
  is composed into `crop_from_image`, the image (bilinear) and the occlusion mask are re-warped
  with `crops.crop_image` (zero padding: pixels from outside the old crop are black and not
  occluded), every keypoint set is mapped by T (keypoints may leave the crop; their confidence is
  kept) and `joint_visibility` loses the joints that leave the crop.
  """
  size = example.crop_size
  t = _homogeneous(crops.crop_transform(center, scale, size, rotation_deg))
  image = crops.crop_image(example.image, center, scale, size, rotation_deg)
  occlusion = np.asarray(example.occlusion, bool)
  if occlusion.any():
    mask = occlusion.astype(np.uint8) * 255
    occlusion = crops.crop_image(mask, center, scale, size, rotation_deg) >= 128
  out = example.replace(
    image=image,
    occlusion=occlusion,
    crop_from_image=(t @ _homogeneous(example.crop_from_image))[:2].astype(np.float32),
    keypoints_2d={k: _map_keypoints(kp, t) for k, kp in example.keypoints_2d.items()},
  )
  return _restrict_visibility(out)


def crop_jitter(
  scale_factor: float = 0.25,
  rotation_deg: float = 30.0,
  rotation_prob: float = 0.6,
  translation: float = 0.0,
) -> Transform:
  """Random re-crop (`warp_crop`) about the crop centre.

  Box side `S * (1 + clip(N, -1, 1) * scale_factor)` (> S zooms out), rotation
  `clip(N, -2, 2) * rotation_deg` with probability `rotation_prob` (DPMesh / SPIN: 0.25, 30,
  0.6), centre shift `clip(N, -1, 1) * translation * S` per axis (DPMesh has none: 0).
  """

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    size = example.crop_size
    zoom = 1.0 + np.clip(rng.normal(), -1.0, 1.0) * scale_factor
    rot = np.clip(rng.normal(), -2.0, 2.0) * rotation_deg
    rot = rot if rng.random() < rotation_prob else 0.0
    shift = np.clip(rng.normal(size=2), -1.0, 1.0) * translation * size
    return warp_crop(example, size / 2 + shift, size * zoom, rot)

  return transform


# -- flip ----------------------------------------------------------------------------------------


def flip_permutations(body_model, joint_sets: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """`{joint set: [K] index array}` left/right permutations of a body model's joint sets (all
  of `body_model.available_joint_sets` by default), from the joint names
  (`jhmr.data.observations.left_right_pairs`)."""
  sets = body_model.available_joint_sets if joint_sets is None else joint_sets
  out = {}
  for name in sets:
    names = body_model.joint_names(name)
    out[name] = permutation_from_pairs(len(names), observations.left_right_pairs(names))
  return out


def _mirror_pose(global_orient, body_pose) -> tuple[np.ndarray, np.ndarray]:
  """Axis-angle pose of the mirrored body: left/right joints swapped, y and z negated."""
  pose = np.concatenate([np.asarray(global_orient)[None], np.asarray(body_pose)], 0)
  pose = pose[SMPL_FLIP_PERMUTATION] * np.array([1.0, -1.0, -1.0])
  return pose[0].astype(np.float32), pose[1:].astype(np.float32)


def flip_example(example: PersonExample, permutations: Mapping[str, np.ndarray]) -> PersonExample:
  """The mirrored example: the 3D scene mirrored X -> -X (an involution).

  * `crop_from_image <- F @ A @ M`, F: x -> S - x (crop), M: x -> 2 cx - x (full image about
    the principal point of `intrinsics`), so crop pixels of mirrored points are the old ones
    mirrored; the image and the occlusion mask are mirrored left-right.
  * keypoint sets: x -> S - x and left/right swapped with `permutations[set name]` (missing
    keypoints stay zero); a set without a permutation raises ValueError.
  * SMPL: body_pose / global_orient with left/right joints swapped and the y and z axis-angle
    components negated; `joints_3d` x negated and swapped, `joint_visibility` swapped; `cam_t` so
    that the mirrored pelvis is the mirror of the old one: the rest pelvis
    `joints_3d[0] - cam_t` does not move under global rotation, new `cam_t = mirror(joints_3d[0])
    - rest pelvis`. Without 3D labels (`has_3d == 0`) the rest pelvis is taken on the symmetry
    plane (x = 0), i.e. `cam_t` x is negated.
  """
  missing = sorted(set(example.keypoints_2d) - set(permutations))
  if missing:
    raise ValueError(
      f"flip needs a left/right permutation for the keypoint sets {missing} (have "
      f"{sorted(permutations)}); build them with augment.flip_permutations(body_model)"
    )
  size = example.crop_size
  cx = float(np.asarray(example.intrinsics)[0, 2])
  mirror_crop = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  mirror_image = np.array([[-1.0, 0.0, 2.0 * cx], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  affine = mirror_crop @ _homogeneous(example.crop_from_image) @ mirror_image
  keypoints = {}
  for name, kp in example.keypoints_2d.items():
    kp = np.asarray(kp, np.float32)[np.asarray(permutations[name])]
    x = np.where(kp[:, 2] > 0, size - kp[:, 0], 0.0)
    keypoints[name] = np.concatenate([x[:, None], kp[:, 1:]], 1).astype(np.float32)
  orient, body_pose = _mirror_pose(example.global_orient, example.body_pose)
  joints = np.asarray(example.joints_3d, np.float32)
  cam_t = np.asarray(example.cam_t, np.float32)
  if float(example.has_3d) > 0:
    cam_t = cam_t - np.array([2.0 * joints[0, 0], 0.0, 0.0], np.float32)
  else:
    cam_t = cam_t * np.array([-1.0, 1.0, 1.0], np.float32)
  return example.replace(
    image=np.ascontiguousarray(np.asarray(example.image)[:, ::-1]),
    occlusion=np.ascontiguousarray(np.asarray(example.occlusion)[:, ::-1]),
    crop_from_image=affine[:2].astype(np.float32),
    keypoints_2d=keypoints,
    global_orient=orient,
    body_pose=body_pose,
    cam_t=cam_t.astype(np.float32),
    joints_3d=(joints * np.array([-1.0, 1.0, 1.0], np.float32))[SMPL_FLIP_PERMUTATION],
    joint_visibility=np.asarray(example.joint_visibility, np.float32)[SMPL_FLIP_PERMUTATION],
  )


def flip(permutations: Mapping[str, np.ndarray], prob: float = 0.5) -> Transform:
  """`flip_example` with probability `prob` (DPMesh: 0.5); `permutations` from
  `flip_permutations(body_model)`."""
  permutations = {k: np.asarray(v) for k, v in permutations.items()}

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    return flip_example(example, permutations) if rng.random() < prob else example

  return transform


# -- colour --------------------------------------------------------------------------------------


def color_jitter(low: float = 0.8, high: float = 1.2) -> Transform:
  """Multiplies each colour channel of the image by U(low, high) (DPMesh: 0.8, 1.2)."""

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    gains = rng.uniform(low, high, 3)
    image = np.asarray(example.image)
    if image.dtype != np.uint8:
      image = image.astype(np.float32) * gains
      return example.replace(image=np.clip(np.round(image), 0, 255).astype(np.uint8))
    # uint8: a [3, 256] lookup table, the same rounded products as the float path, ~8x faster
    table = np.clip(np.round(np.arange(256.0) * gains[:, None]), 0, 255).astype(np.uint8)
    out = np.empty_like(image)
    for c in range(3):
      np.take(table[c], image[..., c], out=out[..., c])
    return example.replace(image=out)

  return transform


# -- occluders -----------------------------------------------------------------------------------


def _occlude(example: PersonExample, image: np.ndarray, covered: np.ndarray) -> PersonExample:
  occlusion = np.asarray(example.occlusion, bool) | covered
  vis = np.asarray(example.joint_visibility, np.float32) * visible_joints(example, occlusion)
  return example.replace(image=image, occlusion=occlusion, joint_visibility=vis)


def noise_occluder(
  prob: float = 0.5, max_area: float = 0.3, aspect=(0.5, 2.0), tries: int = 5
) -> Transform:
  """With probability `prob`, a rectangle of uniform noise, DPMesh's `occlusion_aug`: area
  U(0, max_area) of the person box (`person_box`), height/width U(aspect), top-left corner
  uniform such that it starts inside the box; a draw that leaves the crop is redrawn, at most
  `tries` times (then nothing is pasted)."""

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    if rng.random() >= prob:
      return example
    size = example.crop_size
    x0, y0, x1, y1 = person_box(example)
    bw, bh = x1 - x0, y1 - y0
    for _ in range(tries):
      area = rng.uniform(0.0, max_area) * bw * bh
      ratio = rng.uniform(*aspect)
      h, w = np.sqrt(area * ratio), np.sqrt(area / ratio)
      left = rng.random() * (bw - w - 1) + x0
      top = rng.random() * (bh - h - 1) + y0
      if left >= 0 and top >= 0 and left + w < size and top + h < size:
        left, top, w, h = int(left), int(top), int(w), int(h)
        if w == 0 or h == 0:
          return example
        image = np.array(example.image)
        image[top : top + h, left : left + w] = rng.integers(0, 256, (h, w, 3))
        covered = np.zeros((size, size), bool)
        covered[top : top + h, left : left + w] = True
        return _occlude(example, image, covered)
    return example

  return transform


def _cut_patch(source: np.ndarray, width: int, height: int, rng) -> np.ndarray:
  """A random region of `source` with the aspect of the patch, resized to `[height, width, 3]`."""
  sh, sw = source.shape[:2]
  fit = min(sw, sh * width / height)
  rw = rng.uniform(0.3, 1.0) * fit
  rh = rw * height / width
  x, y = rng.uniform(0, sw - rw), rng.uniform(0, sh - rh)
  pil = Image.fromarray(source)
  box = (x, y, x + rw, y + rh)
  return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR, box=box), np.float32)


def _patch_alpha(height: int, width: int, blend: str) -> np.ndarray:
  """`[height, width]` opacity: 1 (`hard`) or a soft ellipse (`alpha`: 1 inside 80% of the
  radius, fading linearly to 0 at the rim)."""
  if blend == "hard":
    return np.ones((height, width), np.float32)
  v = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
  u = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
  r = np.sqrt(u[None, :] ** 2 + v[:, None] ** 2)
  return np.clip((1.0 - r) / 0.2, 0.0, 1.0)


def patch_occluders(
  bank: Sequence[np.ndarray],
  prob: float = 0.5,
  count=(1, 4),
  size=(0.2, 0.5),
  aspect=(0.5, 2.0),
  blend: str = "alpha",
) -> Transform:
  """With probability `prob`, pastes U{count} textured patches cut from random images of `bank`
  (uint8 `[H, W, 3]`: other crops, backgrounds, object photos), DPMesh's Pascal-VOC occluders
  with rectangles instead of segmented objects: 1-4 patches of side U(0.2, 0.5) x the larger
  side of the person box (`person_box`), height/width U(aspect), centred uniformly in the box.
  `blend='alpha'` blends a soft ellipse (covered where opacity >= 0.5), `'hard'` pastes the
  rectangle."""
  bank = [np.asarray(b, np.uint8) for b in bank]
  if not bank or any(b.ndim != 3 or b.shape[2] != 3 or min(b.shape[:2]) < 2 for b in bank):
    raise ValueError("patch_occluders needs a non-empty bank of uint8 [H, W, 3] images")
  if blend not in ("alpha", "hard"):
    raise ValueError(f"blend must be 'alpha' or 'hard', got {blend!r}")

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    if rng.random() >= prob:
      return example
    s = example.crop_size
    x0, y0, x1, y1 = person_box(example)
    side = max(x1 - x0, y1 - y0, 1.0)
    pastes = []  # (rows, cols, alpha [h, w, 1], patch [h, w, 3]) clipped to the crop
    for _ in range(rng.integers(count[0], count[1] + 1)):
      source = bank[rng.integers(len(bank))]
      length, ratio = rng.uniform(*size) * side, rng.uniform(*aspect)
      h = max(2, int(round(length * np.sqrt(ratio))))
      w = max(2, int(round(length / np.sqrt(ratio))))
      patch = _cut_patch(source, w, h, rng)
      alpha = _patch_alpha(h, w, blend)
      top = int(round(rng.uniform(y0, y1) - h / 2))
      left = int(round(rng.uniform(x0, x1) - w / 2))
      # Intersection of the patch with the crop.
      cy0, cy1, cx0, cx1 = max(top, 0), min(top + h, s), max(left, 0), min(left + w, s)
      if cy0 >= cy1 or cx0 >= cx1:
        continue
      a = alpha[cy0 - top : cy1 - top, cx0 - left : cx1 - left, None]
      p = patch[cy0 - top : cy1 - top, cx0 - left : cx1 - left]
      pastes.append((slice(cy0, cy1), slice(cx0, cx1), a, p))
    # Blend in float32 and round only inside the box around the patches (a uint8 pixel outside
    # it would round to itself).
    image = np.array(example.image)
    ry0, rx0 = (min(q[i].start for q in pastes) if pastes else 0 for i in (0, 1))
    ry1, rx1 = (max(q[i].stop for q in pastes) if pastes else 0 for i in (0, 1))
    if image.dtype != np.uint8:
      ry0, ry1, rx0, rx1 = 0, s, 0, s
    region = image[ry0:ry1, rx0:rx1].astype(np.float32)
    covered = np.zeros((s, s), bool)
    for rows, cols, a, p in pastes:
      local = (slice(rows.start - ry0, rows.stop - ry0), slice(cols.start - rx0, cols.stop - rx0))
      region[local] = a * p + (1.0 - a) * region[local]
      covered[rows, cols] |= a[..., 0] >= 0.5
    image = image.astype(np.uint8)
    image[ry0:ry1, rx0:rx1] = np.clip(np.round(region), 0, 255).astype(np.uint8)
    return _occlude(example, image, covered)

  return transform


# -- the training chain --------------------------------------------------------------------------


def default_train_transforms(
  body_model,
  *,
  keypoint_set: str | None = "openpose25",
  occluder_bank: Sequence[np.ndarray] | None = None,
  scale_factor: float = 0.25,
  rotation_deg: float = 30.0,
  rotation_prob: float = 0.6,
  translation: float = 0.0,
  flip_prob: float = 0.5,
  color: tuple[float, float] = (0.8, 1.2),
  noise_occluder_prob: float = 0.5,
  patch_occluder_prob: float = 0.5,
) -> Transform:
  """The training augmentation chain: `crop_jitter` -> `flip` -> `color_jitter` ->
  `noise_occluder` -> `patch_occluders` (with an `occluder_bank`) -> `posefix_keypoints` on
  `keypoint_set` (None: no keypoint errors). Defaults are DPMesh's (research/dpmesh.md section
  14); the occluder probabilities are ours (DPMesh released the helpers, not their callers).
  `body_model` gives the joint names of the flip permutations and of the keypoint set.
  """
  transforms = [
    crop_jitter(scale_factor, rotation_deg, rotation_prob, translation),
    flip(flip_permutations(body_model), flip_prob),
    color_jitter(*color),
    noise_occluder(noise_occluder_prob),
  ]
  if occluder_bank is not None:
    transforms.append(patch_occluders(occluder_bank, patch_occluder_prob))
  if keypoint_set is not None:
    transforms.append(posefix_keypoints(keypoint_set, body_model.joint_names(keypoint_set)))
  return chain(*transforms)


# -- heatmaps ------------------------------------------------------------------------------------


def joint_heatmaps(
  keypoints: np.ndarray, size: int, sigma: float = 2.0, image_size: int | None = None
) -> np.ndarray:
  """`[size, size, K]` float32 Gaussian heatmaps (peak 1) of keypoints `[K, 3]` (x, y, conf);
  keypoints with conf 0 give empty maps. `image_size` (default `size`) is the pixel frame of
  the keypoints (the crop side of a `PersonExample`); they are rescaled to the heatmap."""
  kp = np.asarray(keypoints, np.float32)
  factor = size / (image_size or size)
  grid = np.arange(size, dtype=np.float32) + 0.5
  dx = grid[None, :] - kp[:, :1] * factor  # [K, size]
  dy = grid[None, :] - kp[:, 1:2] * factor
  gx, gy = np.exp(-(dx**2) / (2 * sigma**2)), np.exp(-(dy**2) / (2 * sigma**2))
  maps = gy[:, :, None] * gx[:, None, :] * (kp[:, 2] > 0)[:, None, None]
  return np.moveaxis(maps, 0, -1)
