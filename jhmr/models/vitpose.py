"""ViTPose (top-down 2D human pose, COCO-17): ViT backbone + heatmap head, crops and decoding.

  model = VitPose(VITPOSE_H)
  variables = model.init(key, model.dummy_input())        # {'params', 'batch_stats'}
  center, scale = boxes_to_center_scale(boxes_xywh)        # [B, 2], [B, 2] (units of 200 px)
  crops = jhmr.data.crops.crop_for_vitpose(image [H, W, 3], center, scale)  # [B, 256, 192, 3]
  heatmaps = model.apply(variables, crops, flip_test=True) # [B, 64, 48, 17]
  keypoints = decode_heatmaps(heatmaps, center, scale)     # [B, 17, 3] (x, y, score), image px
  openpose = to_openpose25(keypoints)                      # [B, 25, 3] (ScoreHMR's demo slots)

Heads (research/regressors.md §4):
- "classic" (the original ViTPose-B/H checkpoints, ScoreHMR's ViTPose-H): two blocks of
  ConvTranspose(k4, s2, p1, no bias) -> BatchNorm (running stats, eps 1e-5) -> ReLU, then a 1x1
  Conv to the keypoints. Parameters `head/deconv{1,2}/kernel` (the equivalent forward-conv kernel,
  flipped, [4, 4, in, out]), `head/batchnorm{1,2}/{scale, bias}` + batch_stats `{mean, var}`,
  `head/conv/{kernel, bias}`.
- "simple" (transformers' default `use_simple_decoder=True`, hub `vitpose-base-simple`): ReLU ->
  bilinear x4 (align_corners=False, = `jax.image.resize`) -> 3x3 Conv, `head/conv/*`.
The backbone is `backbone` (`jhmr.models.vit.ViT`, see its parameter list).

The test pipeline follows ViTPose's COCO configs (`test_cfg`: flip_test, post_process="default",
shift_heatmap=False, modulate_kernel=11, use_udp=True):
- box (x, y, w, h) -> centre, and scale = (w, h) enlarged to the 192:256 aspect, x1.25, / 200;
- UDP crop: crop pixel u = (x - c) (size - 1) / (s 200) + (size - 1) / 2, bilinear, zeros
  outside, then ImageNet normalisation (`jhmr.data.crops.crop_for_vitpose`);
- flip test: the model on the mirrored crop, heatmaps mirrored back with the COCO left/right
  pairs swapped, averaged with the plain ones (no heatmap shift: shift_heatmap=False);
- decode: argmax (score = the raw maximum), DARK-UDP refinement (Gaussian blur 11x11 with
  cv2's sigma 2.0, clip [0.001, 50], log, one Newton step on the edge-padded log map), then the
  UDP inverse x (s 200) / (w_hm - 1) + c - s 100.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jhmr.io.joint_maps import convert as convert_joints
from jhmr.models.vit import VIT_B, VIT_H, VIT_TINY, ViT, ViTConfig

Dtype = Any

# COCO-17 left/right pairs (mmpose `apis/inference.py`); keypoint 0 (nose) maps to itself.
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("classic", "simple")


@dataclasses.dataclass(frozen=True)
class VitPoseConfig:
  """ViTPose architecture: backbone, head kind and keypoint count."""

  vit: ViTConfig = VIT_H
  head: str = "classic"  # "classic" (deconv) or "simple" (bilinear x4 + 3x3 conv)
  num_keypoints: int = 17
  deconv_channels: int = 256
  batch_norm_eps: float = 1e-5
  scale_factor: int = 4  # simple head upsampling

  def __post_init__(self):
    if self.head not in HEADS:
      raise ValueError(f"head {self.head!r} is not one of {HEADS}")

  @property
  def heatmap_size(self) -> tuple[int, int]:
    """(h, w) of the heatmaps: 4x the token grid (64x48 for 256x192)."""
    return tuple(4 * g for g in self.vit.grid)


VITPOSE_H = VitPoseConfig(vit=VIT_H)
VITPOSE_B = VitPoseConfig(vit=VIT_B)
VITPOSE_B_SIMPLE = VitPoseConfig(vit=VIT_B, head="simple")
VITPOSE_TINY = VitPoseConfig(vit=VIT_TINY)  # heatmaps 16x12; transformers fixes 256 deconv ch.


class ClassicHead(nn.Module):
  """[ConvT(k4 s2 p1) -> BN -> ReLU] x 2 -> 1x1 Conv. `[B, h, w, C] -> [B, 4h, 4w, K]`."""

  config: VitPoseConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in (1, 2):
      # torch ConvTranspose2d(k=4, s=2, p=1) == conv of the 2x-dilated input, padding k-1-p = 2,
      # with the spatially flipped kernel (the converter flips it).
      x = nn.ConvTranspose(
        cfg.deconv_channels, (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=False,
        name=f"deconv{i}", **kw,
      )(x)  # fmt: skip
      x = nn.BatchNorm(
        use_running_average=True, epsilon=cfg.batch_norm_eps, name=f"batchnorm{i}", **kw
      )(x)
      x = nn.relu(x)
    return nn.Conv(cfg.num_keypoints, (1, 1), name="conv", **kw)(x)


class SimpleHead(nn.Module):
  """ReLU -> bilinear x`scale_factor` (half-pixel centres) -> 3x3 Conv."""

  config: VitPoseConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    b, h, w, c = x.shape
    x = nn.relu(x)
    f = cfg.scale_factor
    x = jax.image.resize(x, (b, h * f, w * f, c), "bilinear", antialias=False)
    return nn.Conv(
      cfg.num_keypoints, (3, 3), padding=((1, 1), (1, 1)), name="conv",
      dtype=self.dtype, param_dtype=self.param_dtype,
    )(x)  # fmt: skip


def flip_back(heatmaps: jax.Array, flip_pairs=COCO_FLIP_PAIRS) -> jax.Array:
  """Heatmaps of a mirrored crop `[B, h, w, K]` -> heatmaps of the crop: mirror W, swap pairs."""
  perm = list(range(heatmaps.shape[-1]))
  for a, b in flip_pairs:
    perm[a], perm[b] = b, a
  return heatmaps[:, :, ::-1, :][..., np.asarray(perm)]


def _shift(heatmaps: jax.Array) -> jax.Array:
  """mmpose `shift_heatmap=True`: out[..., 1:] = out[..., :-1] along W (not used by ViTPose)."""
  return heatmaps.at[:, :, 1:].set(heatmaps[:, :, :-1])


def merge_flip(
  heatmaps: jax.Array, flipped: jax.Array, flip_pairs=COCO_FLIP_PAIRS, shift_heatmap=False
) -> jax.Array:
  """The flip test's average: `(heatmaps + flip_back(flipped)) / 2` (heatmaps `[B, h, w, K]`)."""
  heatmaps = jnp.asarray(heatmaps)
  back = flip_back(jnp.asarray(flipped), flip_pairs)
  if shift_heatmap:
    back = _shift(back)
  return (heatmaps + back) * 0.5


class VitPose(nn.Module):
  """ViTPose: `__call__(x [B, 256, 192, 3] normalised RGB crops, flip_test=False) -> heatmaps
  [B, 64, 48, K]` (NHWC). With `flip_test` the mirrored crops run in the same batch and the
  result is `merge_flip(plain, mirrored)`."""

  config: VitPoseConfig = VITPOSE_H
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def dummy_input(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, *self.config.vit.img_size, 3), self.dtype)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = ViT(self.config.vit, self.implementation, **kw)
    head = ClassicHead if self.config.head == "classic" else SimpleHead
    self.head = head(self.config, **kw)

  def heatmaps(self, x: jax.Array) -> jax.Array:
    """Raw heatmaps `[B, h, w, K]` of crops `x` (no flip test)."""
    return self.head(self.backbone(x)).astype(jnp.float32)

  def __call__(self, x: jax.Array, flip_test: bool = False) -> jax.Array:
    if not flip_test:
      return self.heatmaps(x)
    b = x.shape[0]
    both = self.heatmaps(jnp.concatenate([x, x[:, :, ::-1]], axis=0))
    return merge_flip(both[:b], both[b:])


# ----------------------------------------------------------------------------------------------
# Boxes (the crop itself: jhmr.data.crops.crop_for_vitpose)


def boxes_to_center_scale(
  boxes, img_size=(256, 192), padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
  """COCO boxes `[B, 4]` (x, y, w, h) -> centre `[B, 2]` and scale `[B, 2]` in units of 200 px.

  The box is enlarged to the crop's aspect w:h = img_size[1]:img_size[0], then by `padding`
  (mmpose `_box2cs`, transformers `box_to_center_and_scale`).
  """
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  x, y, w, h = boxes.T
  aspect = img_size[1] / img_size[0]
  center = np.stack([x + 0.5 * w, y + 0.5 * h], -1)
  w2 = np.where(w > aspect * h, w, h * aspect)
  h2 = np.where(w > aspect * h, w / aspect, h)
  scale = np.stack([w2, h2], -1) / 200.0 * padding
  return center.astype(np.float32), scale.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Decoding


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  r = (size - 1) / 2
  k = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma**2))
  return k / k.sum()


def _blur(heatmaps: jax.Array, size: int, sigma: float, border: str) -> jax.Array:
  """Separable Gaussian blur of `[B, K, h, w]` over (h, w). border "reflect101" = cv2's default
  (`jnp.pad` "reflect"), "symmetric" = scipy.ndimage's default "reflect"."""
  k = jnp.asarray(_gaussian_kernel(size, sigma), heatmaps.dtype)
  r = size // 2
  modes = {"reflect101": "reflect", "symmetric": "symmetric"}
  if border not in modes:
    raise ValueError(f"border {border!r} is not one of {sorted(modes)}")
  x = jnp.pad(heatmaps, ((0, 0), (0, 0), (r, r), (r, r)), mode=modes[border])
  h, w = heatmaps.shape[-2:]
  x = sum(k[i] * x[..., i : i + h, :] for i in range(size))
  return sum(k[i] * x[..., i : i + w] for i in range(size))


def cv2_sigma(kernel: int) -> float:
  """The sigma `cv2.GaussianBlur(ksize=kernel, sigmaX=0)` uses: 0.3 ((k - 1) / 2 - 1) + 0.8."""
  return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def refine_dark_udp(
  coords: jax.Array, heatmaps: jax.Array, kernel: int = 11, sigma=None, border="reflect101"
) -> jax.Array:
  """mmpose `post_dark_udp`: one Newton step on the blurred log-heatmap at integer `coords`.

  Args:
    coords: `[B, K, 2]` integer-valued (x, y) heatmap maxima.
    heatmaps: `[B, K, h, w]` (channels first, as the original).
    kernel, sigma: Gaussian blur size and sigma (default cv2's for `kernel`: 2.0 for 11).
    border: "reflect101" (cv2) or "symmetric" (scipy, which transformers uses with sigma 0.8).
  """
  sigma = cv2_sigma(kernel) if sigma is None else sigma
  b, k, h, w = heatmaps.shape
  logh = jnp.log(jnp.clip(_blur(heatmaps, kernel, sigma, border), 0.001, 50.0))
  pad = jnp.pad(logh, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
  x = coords[..., 0].astype(jnp.int32) + 1
  y = coords[..., 1].astype(jnp.int32) + 1
  bi, ki = jnp.meshgrid(jnp.arange(b), jnp.arange(k), indexing="ij")
  at = lambda dy, dx: pad[bi, ki, y + dy, x + dx]
  i_ = at(0, 0)
  dx = 0.5 * (at(0, 1) - at(0, -1))
  dy = 0.5 * (at(1, 0) - at(-1, 0))
  dxx = at(0, 1) - 2 * i_ + at(0, -1)
  dyy = at(1, 0) - 2 * i_ + at(-1, 0)
  dxy = 0.5 * (at(1, 1) - at(0, 1) - at(1, 0) + 2 * i_ - at(0, -1) - at(-1, 0) + at(-1, -1))
  eps = float(np.finfo(np.float32).eps)
  a, d, c = dxx + eps, dyy + eps, dxy
  det = a * d - c * c
  step_x = (d * dx - c * dy) / det
  step_y = (-c * dx + a * dy) / det
  return coords - jnp.stack([step_x, step_y], -1)


def decode_heatmaps(
  heatmaps: jax.Array,
  center,
  scale,
  flip_heatmaps: jax.Array | None = None,
  *,
  flip_pairs=COCO_FLIP_PAIRS,
  shift_heatmap: bool = False,
  refine: bool = True,
  kernel: int = 11,
  sigma: float | None = None,
  border: str = "reflect101",
) -> jax.Array:
  """Heatmaps `[B, h, w, K]` -> keypoints `[B, K, 3]` (x, y in image px, score), as ViTPose.

  Args:
    heatmaps: model output for the crops (NHWC).
    center, scale: `[B, 2]` from `boxes_to_center_scale` (scale in units of 200 px).
    flip_heatmaps: optional raw heatmaps of the mirrored crops; merged as the flip test does.
    shift_heatmap: mmpose's flip-test shift (False in ViTPose's configs).
    refine: DARK-UDP sub-pixel refinement (`refine_dark_udp`); False keeps integer argmaxes.
    kernel, sigma, border: the refinement's blur (defaults: cv2 11x11, sigma 2.0, as mmpose).

  The score is the raw maximum; where it is <= 0 the location is (-1, -1) before the inverse
  transform, as mmpose's `_get_max_preds` (and the refinement is skipped there).
  """
  heatmaps = jnp.asarray(heatmaps, jnp.float32)
  if heatmaps.ndim != 4:
    raise ValueError(f"heatmaps must be [B, h, w, K], got {tuple(heatmaps.shape)}")
  if flip_heatmaps is not None:
    heatmaps = merge_flip(heatmaps, jnp.asarray(flip_heatmaps, jnp.float32), flip_pairs,
                          shift_heatmap)  # fmt: skip
  b, h, w, k = heatmaps.shape
  center = jnp.asarray(center, jnp.float32).reshape(b, 1, 2)
  scale = jnp.asarray(scale, jnp.float32).reshape(b, 1, 2)
  chw = jnp.moveaxis(heatmaps, -1, 1)
  flat = chw.reshape(b, k, h * w)
  idx = jnp.argmax(flat, -1)
  score = jnp.max(flat, -1)
  coords = jnp.stack([idx % w, idx // w], -1).astype(jnp.float32)
  valid = (score > 0)[..., None]
  if refine:
    coords = jnp.where(valid, refine_dark_udp(coords, chw, kernel, sigma, border), coords)
  coords = jnp.where(valid, coords, -1.0)
  size = scale * 200.0
  xy = coords * size / jnp.asarray([w - 1.0, h - 1.0]) + center - size * 0.5
  return jnp.concatenate([xy, score[..., None]], -1)


def to_openpose25(keypoints):
  """COCO-17 `[..., 17, C]` -> OpenPose BODY_25 slots `[..., 25, C]` (zeros elsewhere), the map
  of ScoreHMR's demo [0,16,15,18,17,5,2,6,3,7,4,12,9,13,10,14,11] (`jhmr.io.joint_maps`)."""
  return convert_joints(keypoints, "coco17", "openpose25")
