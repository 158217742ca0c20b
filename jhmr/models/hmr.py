"""HMR regressor: a ResNet backbone and the SPIN/HMR iterative error-feedback body-parameter head.

image [B, H, W, 3] -> ResNet -> pooled features [B, C] -> 3 iterations of
  (pose6d, betas, cam) += MLP(concat(features, pose6d, betas, cam))
starting from the mean parameters. Pose is predicted in ScoreHMR's 6D layout (24 joints, global
orient first), so the output is ready for the score network, whose image conditioning is the same
pooled feature vector (the ProHMR-feature variant of ScoreHMR, 2048-D for ResNet-50).

Depth is configurable: 18 / 34 (basic blocks), 50 / 101 / 152 (bottlenecks), ResNet-50 default;
`width` scales all channels (64 = torchvision). BatchNorm running statistics live in the
`batch_stats` collection (`train=True` updates them: `mutable=['batch_stats']`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jhmr.geometry import rotations

STAGES = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
  152: ("bottleneck", (3, 8, 36, 3)),
}

# Mean parameters when none are given: rest pose with the body upright in a y-down camera frame
# (global orient = 180 degrees about x), zero shape, weak-perspective camera (s, tx, ty).
UPRIGHT_6D = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
DEFAULT_CAM = (0.9, 0.0, 0.0)


class ResidualBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block, torchvision v1.5 (stride on 3x3)."""

  filters: int
  strides: int
  kind: str

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name, zero=False: nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
      name=name,
    )
    conv = lambda f, k, s, name: nn.Conv(
      f, (k, k), (s, s), padding=k // 2, use_bias=False, name=name
    )
    if self.kind == "basic":
      out_filters = self.filters
      y = nn.relu(norm("bn1")(conv(self.filters, 3, self.strides, "conv1")(x)))
      y = norm("bn2", zero=True)(conv(self.filters, 3, 1, "conv2")(y))
    else:
      out_filters = 4 * self.filters
      y = nn.relu(norm("bn1")(conv(self.filters, 1, 1, "conv1")(x)))
      y = nn.relu(norm("bn2")(conv(self.filters, 3, self.strides, "conv2")(y)))
      y = norm("bn3", zero=True)(conv(out_filters, 1, 1, "conv3")(y))
    if x.shape[-1] != out_filters or self.strides != 1:
      x = norm("downsample_bn")(conv(out_filters, 1, self.strides, "downsample_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet trunk without the classifier: image [B, H, W, 3] -> pooled features [B, C]."""

  depth: int = 50
  width: int = 64

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.depth not in STAGES:
      raise ValueError(f"unsupported ResNet depth {self.depth}; valid: {sorted(STAGES)}")
    kind, stage_sizes = STAGES[self.depth]
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, name="conv1")(images)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(stage_sizes):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = ResidualBlock(self.width * 2**i, strides, kind, name=f"layer{i + 1}_{j}")(x, train)
    return jnp.mean(x, axis=(1, 2))


class IterativeRegressor(nn.Module):
  """SPIN head: `num_iterations` residual updates of (pose6d [24*6], betas [NB], cam [3]).

  Two 1024-wide layers with dropout, then linear decoders initialised with gain 0.01 (xavier) as
  in SPIN, so the first prediction stays near the mean parameters.
  """

  num_betas: int = 10
  num_iterations: int = 3
  hidden: int = 1024
  dropout: float = 0.5
  mean_pose6d: Sequence[float] = UPRIGHT_6D + IDENTITY_6D * 23
  mean_betas: Sequence[float] | None = None
  mean_cam: Sequence[float] = DEFAULT_CAM

  @nn.compact
  def __call__(self, features, train: bool = False):
    batch = features.shape[0]
    mean_betas = self.mean_betas if self.mean_betas is not None else (0.0,) * self.num_betas
    if len(self.mean_pose6d) != 144 or len(mean_betas) != self.num_betas or len(self.mean_cam) != 3:
      raise ValueError("mean parameters must have 144 (pose6d), num_betas and 3 (cam) values")
    pose = jnp.broadcast_to(jnp.asarray(self.mean_pose6d, features.dtype), (batch, 144))
    betas = jnp.broadcast_to(jnp.asarray(mean_betas, features.dtype), (batch, self.num_betas))
    cam = jnp.broadcast_to(jnp.asarray(self.mean_cam, features.dtype), (batch, 3))
    fc1, fc2 = nn.Dense(self.hidden, name="fc1"), nn.Dense(self.hidden, name="fc2")
    small = nn.initializers.variance_scaling(0.01**2, "fan_avg", "uniform")
    dec_pose = nn.Dense(144, kernel_init=small, name="dec_pose")
    dec_betas = nn.Dense(self.num_betas, kernel_init=small, name="dec_betas")
    dec_cam = nn.Dense(3, kernel_init=small, name="dec_cam")
    drop = nn.Dropout(self.dropout, deterministic=not train)
    for _ in range(self.num_iterations):
      h = jnp.concatenate([features, pose, betas, cam], axis=-1)
      h = drop(fc2(drop(fc1(h))))
      pose, betas, cam = pose + dec_pose(h), betas + dec_betas(h), cam + dec_cam(h)
    return pose.reshape(batch, 24, 6), betas, cam


class HMR(nn.Module):
  """ResNet + iterative regressor.

  __call__(images [B, H, W, 3] normalised, train) -> dict:
    pose6d [B, 24, 6] (global orient first), rotmat [B, 24, 3, 3], betas [B, NB],
    cam [B, 3] weak perspective (s, tx, ty) on the crop, features [B, C] pooled backbone features.
  """

  depth: int = 50
  width: int = 64
  num_betas: int = 10
  num_iterations: int = 3
  hidden: int = 1024
  dropout: float = 0.5
  mean_pose6d: Sequence[float] = UPRIGHT_6D + IDENTITY_6D * 23
  mean_betas: Sequence[float] | None = None
  mean_cam: Sequence[float] = DEFAULT_CAM

  @nn.compact
  def __call__(self, images, train: bool = False):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
    features = ResNet(self.depth, self.width, name="backbone")(images, train)
    pose6d, betas, cam = IterativeRegressor(
      self.num_betas,
      self.num_iterations,
      self.hidden,
      self.dropout,
      tuple(self.mean_pose6d),
      None if self.mean_betas is None else tuple(self.mean_betas),
      tuple(self.mean_cam),
      name="regressor",
    )(features, train)
    return {
      "pose6d": pose6d,
      "rotmat": rotations.rot6d_to_matrix(pose6d),
      "betas": betas,
      "cam": cam,
      "features": features,
    }


def feature_dim(depth: int, width: int = 64) -> int:
  """Size C of the pooled features: 8 * width (basic blocks) or 32 * width (bottlenecks)."""
  return (8 if STAGES[depth][0] == "basic" else 32) * width
