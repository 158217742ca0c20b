"""HRNet backbone of PARE (Bin Xiao's pose-HRNet with PARE's "conv" upsampling), NHWC.

image [B, H, W, 3] (ImageNet-normalised, H and W multiples of 32)
  -> stem: conv3x3 s2, BN, ReLU, conv3x3 s2, BN, ReLU                     [B, H/4, W/4, 64]
  -> layer1: bottleneck blocks (64 -> 256)                                [B, H/4, W/4, 256]
  -> transition1, stage2 (2 branches), transition2, stage3 (3 branches), transition3,
     stage4 (4 branches, all kept: multi_scale_output=True)
     -> branches [B, H/2^(k+2), W/2^(k+2), widths[k]] for k = 0..3
  -> upsample_stage_{2,3,4}: k repeats of [bilinear x2 (align_corners=True), conv3x3, BN, ReLU]
     on branch k, then concatenation                           [B, H/4, W/4, sum(widths)] (480)

Each stage is a sequence of high-resolution modules: every branch runs BASIC residual blocks,
then the branches are fused. Output i of a fuse is ReLU(sum_j f_ij(x_j)) with
  j > i: conv1x1 c_j -> c_i, BN, nearest upsampling x2^(j-i);
  j = i: identity;
  j < i: (i-j-1) x [conv3x3 s2 c_j -> c_j, BN, ReLU], then conv3x3 s2 c_j -> c_i, BN.
PARE's `final_layer` (conv1x1 32 -> 24) is never used by PARE and is not part of this module.

Submodule names mirror the PyTorch keys, with each name and the indices that follow it joined by
`_` (`stage3.1.branches.2.0.conv1` -> `stage3_1/branches_2_0/conv1`, `transition1.1.0.0` ->
`transition1_1_0_0`, `upsample_stage_4.5` -> `upsample_stage_4_5`), so `jhmr.convert.hrnet`
converts them mechanically. BatchNorm running statistics live in the `batch_stats` collection
(`train=True` updates them: `mutable=['batch_stats']`); eps 1e-5 and momentum 0.9 match
PyTorch's defaults (momentum 0.1 there).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
  """Architecture of `HRNet`; the defaults are PARE's HRNet-W32.

  Attributes:
    widths: channels of the four branches (W32: 32, 64, 128, 256). Stage s uses the first s.
    stem_width: stem channels and layer1 bottleneck width; layer1 outputs 4x this.
    layer1_blocks: bottleneck blocks in layer1.
    num_modules: high-resolution modules in stages 2, 3, 4.
    num_blocks: BASIC blocks per branch in every module of stages 2, 3, 4.
  """

  widths: tuple[int, int, int, int] = (32, 64, 128, 256)
  stem_width: int = 64
  layer1_blocks: int = 4
  num_modules: tuple[int, int, int] = (1, 4, 3)
  num_blocks: tuple[int, int, int] = (4, 4, 4)

  def __post_init__(self):
    if len(self.widths) != 4 or len(self.num_modules) != 3 or len(self.num_blocks) != 3:
      raise ValueError("HRNetConfig needs 4 widths and 3 entries in num_modules / num_blocks")

  @property
  def out_channels(self) -> int:
    """Channels of the concatenated output (480 for W32)."""
    return sum(self.widths)


HRNET_W32 = HRNetConfig()


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  """PyTorch `Conv2d(k, stride, padding=k // 2, bias=False)`."""
  return nn.Conv(
    features, (kernel, kernel), (stride, stride), kernel // 2, use_bias=False, name=name
  )


def _norm(train: bool, name: str) -> nn.BatchNorm:
  """PyTorch `BatchNorm2d` (eps 1e-5, momentum 0.1 = flax 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def upsample_bilinear_x2(x: jax.Array) -> jax.Array:
  """`[B, H, W, C] -> [B, 2H, 2W, C]`, PyTorch bilinear with `align_corners=True`.

  Output pixel o samples input coordinate o * (n - 1) / (2n - 1), so the corner pixels of input
  and output coincide (`jax.image.resize` uses half-pixel centres instead).
  """
  for axis in (1, 2):
    n = x.shape[axis]
    src = np.arange(2 * n) * ((n - 1) / (2 * n - 1))
    lo = np.floor(src).astype(np.int32)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = 2 * n
    w = jnp.asarray((src - lo).reshape(shape), x.dtype)
    x = jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w
  return x


def _upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """`[B, H, W, C] -> [B, fH, fW, C]`, PyTorch `Upsample(scale_factor=f, mode='nearest')`."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual: `[B, H, W, Cin] -> [B, H, W, features]`."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(_norm(train, "bn1")(_conv(self.features, 3, 1, "conv1")(x)))
    y = _norm(train, "bn2")(_conv(self.features, 3, 1, "conv2")(y))
    if x.shape[-1] != self.features:
      x = _norm(train, "downsample_1")(_conv(self.features, 1, 1, "downsample_0")(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1, 3x3, 1x1 (x4) convs with a residual: `[B, H, W, Cin] -> [B, H, W, 4 * planes]`."""

  planes: int

  @nn.compact
  def __call__(self, x, train: bool):
    out = 4 * self.planes
    y = nn.relu(_norm(train, "bn1")(_conv(self.planes, 1, 1, "conv1")(x)))
    y = nn.relu(_norm(train, "bn2")(_conv(self.planes, 3, 1, "conv2")(y)))
    y = _norm(train, "bn3")(_conv(out, 1, 1, "conv3")(y))
    if x.shape[-1] != out:
      x = _norm(train, "downsample_1")(_conv(out, 1, 1, "downsample_0")(x))
    return nn.relu(x + y)


class HighResolutionModule(nn.Module):
  """BASIC blocks on every branch, then the all-to-all SUM fuse (see the module docstring).

  `xs[i]: [B, H/2^i, W/2^i, widths[i]]` -> a list of the same shapes.
  """

  widths: tuple[int, ...]
  num_blocks: int

  @nn.compact
  def __call__(self, xs, train: bool):
    xs = list(xs)
    for i, width in enumerate(self.widths):
      for b in range(self.num_blocks):
        xs[i] = BasicBlock(width, name=f"branches_{i}_{b}")(xs[i], train)
    fused = []
    for i, width in enumerate(self.widths):
      y = 0.0
      for j, x in enumerate(xs):
        name = f"fuse_layers_{i}_{j}"
        if j > i:
          x = _norm(train, f"{name}_1")(_conv(width, 1, 1, f"{name}_0")(x))
          x = _upsample_nearest(x, 2 ** (j - i))
        elif j < i:
          for k in range(i - j):
            last = k == i - j - 1
            x = _conv(width if last else self.widths[j], 3, 2, f"{name}_{k}_0")(x)
            x = _norm(train, f"{name}_{k}_1")(x)
            x = x if last else nn.relu(x)
        y = y + x
      fused.append(nn.relu(y))
    return fused


class HRNet(nn.Module):
  """PARE's HRNet backbone: image `[B, H, W, 3]` -> features `[B, H/4, W/4, sum(widths)]`.

  `__call__(x, train=False, return_branches=False)`:
    x: `[B, H, W, 3]` ImageNet-normalised RGB, H and W multiples of 32.
    train: batch statistics (and `batch_stats` updates) instead of running statistics.
    return_branches: also return the four stage-4 outputs before upsampling,
      `[B, H/2^(k+2), W/2^(k+2), widths[k]]` for k = 0..3.
  Returns the `[B, H/4, W/4, sum(widths)]` map (480 channels for W32), or
  `(features, branches)` when `return_branches`.
  """

  config: HRNetConfig = HRNET_W32

  def dummy_inputs(self, batch: int = 1):
    return (jnp.zeros((batch, 32, 32, 3)),)

  @nn.compact
  def __call__(self, x, train: bool = False, return_branches: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {x.shape}")
    if x.shape[1] % 32 or x.shape[2] % 32:
      raise ValueError(f"image height and width must be multiples of 32, got {x.shape[1:3]}")
    cfg = self.config
    x = nn.relu(_norm(train, "bn1")(_conv(cfg.stem_width, 3, 2, "conv1")(x)))
    x = nn.relu(_norm(train, "bn2")(_conv(cfg.stem_width, 3, 2, "conv2")(x)))
    for b in range(cfg.layer1_blocks):
      x = Bottleneck(cfg.stem_width, name=f"layer1_{b}")(x, train)
    xs = [x]
    for s, (modules, blocks) in enumerate(zip(cfg.num_modules, cfg.num_blocks, strict=True)):
      widths = cfg.widths[: s + 2]
      xs = self._transition(xs, widths, f"transition{s + 1}", train)
      for m in range(modules):
        xs = HighResolutionModule(widths, blocks, name=f"stage{s + 2}_{m}")(xs, train)
    outs = [xs[0]]
    for k in range(1, 4):
      y = xs[k]
      for r in range(k):
        y = upsample_bilinear_x2(y)
        y = _conv(cfg.widths[k], 3, 1, f"upsample_stage_{k + 1}_{4 * r + 1}")(y)
        y = nn.relu(_norm(train, f"upsample_stage_{k + 1}_{4 * r + 2}")(y))
      outs.append(y)
    features = jnp.concatenate(outs, axis=-1)
    return (features, xs) if return_branches else features

  def _transition(self, xs, widths, name, train):
    """Adapts the previous stage's outputs to `widths`; new branches come from the last one.

    As in the original, any non-identity transition reads the *last* previous branch; for
    existing branches one only exists when the width changes (transition1: 256 -> widths[0]).
    """
    out = []
    for i, width in enumerate(widths):
      if i < len(xs) and xs[i].shape[-1] == width:
        out.append(xs[i])
        continue
      y = xs[-1]
      if i < len(xs):  # a width change: conv3x3 s1
        layers = [(f"{name}_{i}", 1, width)]
      else:  # a new branch: stride-2 convs, the intermediate ones keeping the input width
        n = i + 1 - len(xs)
        layers = [(f"{name}_{i}_{j}", 2, width if j == n - 1 else y.shape[-1]) for j in range(n)]
      for prefix, stride, features in layers:
        y = nn.relu(_norm(train, f"{prefix}_1")(_conv(features, 3, stride, f"{prefix}_0")(y)))
      out.append(y)
    return out
