"""Inception-V3 in the FID variant (TF "inception-2015-12-05", as pytorch-fid builds it), NHWC.

The network of FID / KID: torchvision's Inception3 trunk with 1008 classes and no aux head, whose
Mixed_5b..5d, 6b..6e, 7b and 7c blocks are pytorch-fid's `FIDInceptionA`, `FIDInceptionC`,
`FIDInceptionE_1` and `FIDInceptionE_2`. They differ from torchvision's blocks only in pooling:
the 3x3 average pool of the pool branch excludes the zero padding from its count
(`count_include_pad=False`), and the last block (`E_2`) max-pools there instead. Every conv is
torchvision's `BasicConv2d`: conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU.
Submodule names are the PyTorch ones (`Conv2d_1a_3x3/conv`, `Mixed_5b/branch1x1/bn`, `fc`), so
`jhmr.convert.inception` maps keys one to one.

Output: `pool` [B, 2048], the global average of the Mixed_7c map (pytorch-fid's block 3, "pool3",
the FID/KID feature), and `logits` [B, 1008] from `fc` (dropout is inert at inference).

Input: [B, H, W, 3] float32 in the network's range (about [-1, 1]), H, W >= 75. Two conventions
make it from images (`preprocess`):
  * "pytorch_fid": RGB in [0, 1] (uint8 / 255), resized to 299^2 with bilinear interpolation
    (half-pixel centres, no antialiasing: torch `F.interpolate(mode='bilinear',
    align_corners=False)`), then 2 x - 1. pytorch-fid's `InceptionV3(resize_input=True,
    normalize_input=True)`.
  * "clean": clean-fid's "clean" mode (clean-fid 0.1.35, what Diffusion-HPC's FID/KID ran): uint8
    RGB, each channel resized on the host with PIL's bicubic filter on float32 ("F") images to
    299^2 (antialiased when shrinking; no re-quantisation), clipped to [0, 255], then
    (x - 128) / 128 (the normalisation clean-fid applies before its TorchScript Inception).
clean-fid runs NVIDIA's TorchScript export of the same TF graph rather than pytorch-fid's `.pth`;
both are conversions of the 2015-12-05 weights, so the same converted weights serve both (that the
two files hold equal values was not checked here: no weights can be fetched).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

FID_SIZE = 299  # the input side both conventions resize to
MIN_SIZE = 75  # the smallest side the trunk accepts (the last 3x3 / stride-2 stages need it)
POOL_FEATURES = 2048
NUM_CLASSES = 1008  # the TF graph's classifier (1000 ImageNet classes + 8 unused)
Convention = Literal["pytorch_fid", "clean"]
CONVENTIONS = ("pytorch_fid", "clean")


@flax.struct.dataclass
class InceptionOutput:
  """`pool` [B, 2048]: FID/KID features; `logits` [B, num_classes] or None (no head)."""

  pool: jax.Array
  logits: jax.Array | None


class BasicConv(nn.Module):
  """torchvision `BasicConv2d`: conv (no bias) -> BatchNorm(eps 1e-3, running stats) -> ReLU."""

  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    (ph, pw) = self.padding
    x = nn.Conv(
      self.features,
      self.kernel,
      (self.strides, self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3 / stride 1 / pad 1 average, the padding not counted (FID blocks)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int, pad: int = 0):
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """Mixed_5b..5d (`FIDInceptionA`): 64 + 64 + 96 + `pool_features` channels."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(48, name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision `InceptionB`), stride 2: 384 + 96 + input channels."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (`FIDInceptionC`), factorised 7x7: 4 x 192 channels."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row = dict(kernel=(1, 7), padding=(0, 3))  # 1x7
    col = dict(kernel=(7, 1), padding=(3, 0))  # 7x1
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c7, name="branch7x7_1")(x)
    b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision `InceptionD`), stride 2: 320 + 192 + input channels."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (`FIDInceptionE_1`, average pool) / 7c (`FIDInceptionE_2`, max pool): 2048 ch."""

  max_pool: bool

  @nn.compact
  def __call__(self, x):
    row = dict(kernel=(1, 3), padding=(0, 1))
    col = dict(kernel=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, **row, name="branch3x3_2a")(b3),
        BasicConv(384, **col, name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
        BasicConv(384, **col, name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    pooled = _max_pool_3x3(x, 1, pad=1) if self.max_pool else _avg_pool_3x3(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-V3 (see the module docstring); inference only (BN running statistics).

  Attributes:
    num_classes: size of the `fc` head (1008 in the FID weights); 0 builds no head.
  """

  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x) -> InceptionOutput:
    """[B, H, W, 3] network input (see `preprocess`), H, W >= 75 -> `InceptionOutput`."""
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"expected [B, H, W, 3] with H, W >= {MIN_SIZE}, got shape {x.shape}")
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(pool) if self.num_classes else None
    return InceptionOutput(pool=pool, logits=logits)


# -- preprocessing -------------------------------------------------------------------------------


def _linear_weights(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] bilinear weights, half-pixel centres, source clamped at 0 (torch)."""
  # float32 arithmetic as torch's CPU kernel does it, so the weights agree to the last bit or so
  scale = np.float32(size_in) / np.float32(size_out)
  src = scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  lo = np.minimum(np.floor(src).astype(int), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo.astype(np.float32)
  weights = np.zeros((size_out, size_in), np.float32)
  np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), hi), frac)
  return weights


def resize_bilinear(images, size: int = FID_SIZE):
  """[B, H, W, C] -> [B, size, size, C], torch `F.interpolate(bilinear, align_corners=False)`.

  No antialiasing (unlike `jax.image.resize` when shrinking): pytorch-fid's resize.
  """
  images = jnp.asarray(images, jnp.float32)
  wy = jnp.asarray(_linear_weights(images.shape[1], size))
  wx = jnp.asarray(_linear_weights(images.shape[2], size))
  rows = jnp.einsum("yh,bhwc->bywc", wy, images, precision="highest")
  return jnp.einsum("xw,bywc->byxc", wx, rows, precision="highest")


def clean_resize(image: np.ndarray, size: int = FID_SIZE) -> np.ndarray:
  """clean-fid's "clean" resize of one uint8 image [H, W, 3] -> float32 [size, size, 3] in [0, 255].

  Each channel as a PIL float32 ("F") image, `Image.resize((size, size), BICUBIC)`, clipped to
  [0, 255]; not re-quantised. Runs on the host (numpy + PIL).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
      f"clean resize expects a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}"
    )
  channels = []
  for c in range(3):
    plane = Image.fromarray(image[..., c].astype(np.float32))  # a float32 2-D array: mode "F"
    channels.append(np.asarray(plane.resize((size, size), resample=Image.Resampling.BICUBIC)))
  return np.clip(np.stack(channels, axis=-1), 0.0, 255.0).astype(np.float32)


def preprocess(images: np.ndarray | Sequence[np.ndarray], convention: Convention = "clean"):
  """Images -> [B, 299, 299, 3] float32 network input in the given `convention`.

  Args:
    images: [B, H, W, 3] RGB, or a sequence of [H, W, 3] images (sizes may differ).
      "clean": uint8 (what clean-fid reads from image files). "pytorch_fid": uint8 (/ 255) or
      floating in [0, 1].
    convention: "clean" (PIL bicubic, (x - 128) / 128) or "pytorch_fid" (bilinear, 2 x - 1);
      see the module docstring.

  Raises:
    ValueError: an unknown convention, a wrong shape or dtype.
  """
  if convention not in CONVENTIONS:
    raise ValueError(f"unknown FID preprocessing convention {convention!r}; one of {CONVENTIONS}")
  if convention == "clean":
    resized = np.stack([clean_resize(image) for image in images])
    return jnp.asarray((resized - 128.0) / 128.0)
  out = []
  for image in images:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"expected [H, W, 3] RGB images, got shape {image.shape}")
    if image.dtype == np.uint8:
      image = image.astype(np.float32) / 255.0
    elif not np.issubdtype(image.dtype, np.floating):
      raise ValueError(f"pytorch_fid convention expects uint8 or float images, got {image.dtype}")
    out.append(resize_bilinear(image[None])[0])
  return 2.0 * jnp.stack(out) - 1.0


__all__ = [
  "CONVENTIONS",
  "FID_SIZE",
  "MIN_SIZE",
  "NUM_CLASSES",
  "POOL_FEATURES",
  "InceptionOutput",
  "InceptionV3",
  "clean_resize",
  "preprocess",
  "resize_bilinear",
]
