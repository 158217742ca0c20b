"""ControlNet for the Stable Diffusion U-Net (diffusers `ControlNetModel`), NHWC.

A trainable copy of the U-Net's encoder (`conv_in`, time embedding, down blocks, middle block)
whose skip tensors pass through zero-initialised 1x1 convs (`controlnet_down_blocks_i`,
`controlnet_mid_block`) and are then added to the U-Net's skips (`UNet(...,
down_residuals=..., mid_residual=...)`).

The condition enters in one of two ways:
- hint encoder (`conditioning_embedding_out_channels` set, diffusers / lllyasviel): a small conv
  stack maps the condition image `[B, 2^k H, 2^k W, conditioning_channels]` (k = number of
  stride-2 stages, 3 for SD: 512x512 images for 64x64 latents) to `[B, H, W, C0]`, added to the
  `conv_in` output;
- direct (`conditioning_embedding_out_channels=None`, DPMesh): the condition `[B, H, W,
  conditioning_channels]` (e.g. 30 joint heatmaps at latent resolution) is concatenated to the
  latent on channels and `conv_in` takes `in_channels + conditioning_channels` channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jhmr.models.unet import UNetConfig, check_inputs, encode

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
  """ControlNet architecture (diffusers names; defaults = the SD 1.5 ControlNets)."""

  in_channels: int = 4
  down_block_types: tuple[str, ...] = (
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "DownBlock2D",
  )
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
  cross_attention_dim: int = 768
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  use_linear_projection: bool = False
  transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
  conditioning_channels: int = 3
  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256)

  def __post_init__(self):
    self.encoder_config()  # validates the shared fields
    if self.conditioning_channels < 1:
      raise ValueError(f"conditioning_channels must be >= 1, got {self.conditioning_channels}")

  @property
  def direct(self) -> bool:
    """True for DPMesh's variant: condition concatenated to the latent, no hint encoder."""
    return self.conditioning_embedding_out_channels is None

  def encoder_config(self) -> UNetConfig:
    """The U-Net config whose encoder this ControlNet copies (`conv_in` input widened in the
    direct variant)."""
    n = len(self.block_out_channels)
    in_channels = self.in_channels + (self.conditioning_channels if self.direct else 0)
    return UNetConfig(
      in_channels=in_channels,
      out_channels=self.in_channels,
      down_block_types=self.down_block_types,
      up_block_types=("UpBlock2D",) * n,
      block_out_channels=self.block_out_channels,
      layers_per_block=self.layers_per_block,
      num_attention_heads=self.num_attention_heads,
      cross_attention_dim=self.cross_attention_dim,
      norm_num_groups=self.norm_num_groups,
      norm_eps=self.norm_eps,
      use_linear_projection=self.use_linear_projection,
      transformer_layers_per_block=self.transformer_layers_per_block,
    )

  @classmethod
  def from_unet(cls, unet: UNetConfig, **overrides) -> ControlNetConfig:
    """The ControlNet matching a U-Net config (like diffusers `ControlNetModel.from_unet`)."""
    fields = dict(
      in_channels=unet.in_channels,
      down_block_types=unet.down_block_types,
      block_out_channels=unet.block_out_channels,
      layers_per_block=unet.layers_per_block,
      num_attention_heads=unet.num_attention_heads,
      cross_attention_dim=unet.cross_attention_dim,
      norm_num_groups=unet.norm_num_groups,
      norm_eps=unet.norm_eps,
      use_linear_projection=unet.use_linear_projection,
      transformer_layers_per_block=unet.transformer_layers_per_block,
    )
    return cls(**{**fields, **overrides})


SD15_CONTROLNET = ControlNetConfig()
"""The lllyasviel SD 1.5 ControlNets (RGB hint image at 8x the latent resolution)."""

DPMESH_CONTROLNET = ControlNetConfig(
  conditioning_channels=30, conditioning_embedding_out_channels=None
)
"""DPMesh: latent (4) + 30 SMPL-joint heatmaps at latent resolution into a 3x3 `conv_in`."""


class ControlNetConditioningEmbedding(nn.Module):
  """Hint encoder: conv_in, pairs of (3x3 conv, 3x3 stride-2 conv) with SiLU, zero `conv_out`.

  `[B, 2^k H, 2^k W, C_cond] -> [B, H, W, out_channels]` with k = len(channels) - 1.
  """

  channels: tuple[int, ...]
  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda c, name, stride=1, **extra: nn.Conv(
      c, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), name=name, **kw, **extra
    )
    h = nn.silu(conv(self.channels[0], "conv_in")(x))
    for i in range(len(self.channels) - 1):
      h = nn.silu(conv(self.channels[i], f"blocks_{2 * i}")(h))
      h = nn.silu(conv(self.channels[i + 1], f"blocks_{2 * i + 1}", stride=2)(h))
    zeros = nn.initializers.zeros_init()
    return conv(self.out_channels, "conv_out", kernel_init=zeros, bias_init=zeros)(h)


class ControlNet(nn.Module):
  """ControlNet; see the module docstring.

  `__call__(sample [B, H, W, in], timesteps [B] or scalar, context [B, S, cross_dim],
  condition, conditioning_scale=1.0) -> (down_residuals tuple of [B, h_i, w_i, c_i],
  mid_residual [B, h, w, C_last])`, ready for `UNet(..., down_residuals=, mid_residual=)`.
  """

  config: ControlNetConfig = SD15_CONTROLNET
  attention_implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False  # the down and middle blocks under nn.remat (`unet.block_classes`)

  def condition_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The condition shape for latents of `height x width`."""
    cfg = self.config
    scale = 1 if cfg.direct else 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
    return (batch, height * scale, width * scale, cfg.conditioning_channels)

  def dummy_inputs(self, batch: int = 1, size: int | None = None, tokens: int = 4):
    """Zeros `(sample, timesteps, context, condition)` of the smallest valid size."""
    cfg = self.config
    size = size or 2 ** (len(cfg.block_out_channels) - 1)
    return (
      jnp.zeros((batch, size, size, cfg.in_channels)),
      jnp.zeros((batch,)),
      jnp.zeros((batch, tokens, cfg.cross_attention_dim)),
      jnp.zeros(self.condition_shape(batch, size, size)),
    )

  @nn.compact
  def __call__(
    self,
    sample: jax.Array,
    timesteps: jax.Array,
    context: jax.Array,
    condition: jax.Array,
    conditioning_scale: float | jax.Array = 1.0,
  ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    cfg = self.config
    enc = cfg.encoder_config()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    check_inputs(enc, sample, context, cfg.in_channels, self.attention_implementation)
    expected = self.condition_shape(*sample.shape[:3])
    if condition.shape != expected:
      raise ValueError(f"condition must have shape {expected}, got {condition.shape}")
    hint = None
    if cfg.direct:
      sample = jnp.concatenate([sample, condition.astype(sample.dtype)], axis=-1)
    else:
      hint = ControlNetConditioningEmbedding(
        cfg.conditioning_embedding_out_channels,
        cfg.block_out_channels[0],
        name="controlnet_cond_embedding",
        **kw,
      )(condition.astype(self.dtype))
    h, skips, _, _ = encode(self, enc, sample, timesteps, context, hint=hint)
    zeros = nn.initializers.zeros_init()
    zero_conv = lambda c, name: nn.Conv(
      c, (1, 1), kernel_init=zeros, bias_init=zeros, name=name, **kw
    )
    down = tuple(
      zero_conv(s.shape[-1], f"controlnet_down_blocks_{i}")(s) * conditioning_scale
      for i, s in enumerate(skips)
    )
    mid = zero_conv(h.shape[-1], "controlnet_mid_block")(h) * conditioning_scale
    return down, mid


def controlnet_params_from_unet(controlnet_params: dict, unet_params: dict) -> dict:
  """Copies the U-Net's encoder weights into ControlNet params (the standard initialisation).

  Every ControlNet entry that also exists in the U-Net (`conv_in`, `time_embedding`,
  `down_blocks_*`, `mid_block`) is taken from the U-Net; the hint encoder and zero convs keep
  their values. A `conv_in` whose input width differs (DPMesh's direct variant) keeps its
  ControlNet values, as DPMesh does.

  Raises:
    ValueError: a shared entry has a different shape (the configs do not match).
  """
  out = dict(controlnet_params)
  for name, subtree in controlnet_params.items():
    if name not in unet_params:
      continue
    src, dst = unet_params[name], subtree
    src_shapes = jax.tree.map(jnp.shape, src)
    dst_shapes = jax.tree.map(jnp.shape, dst)
    if src_shapes != dst_shapes:
      if name == "conv_in":
        continue
      raise ValueError(f"ControlNet/U-Net mismatch in {name}: {dst_shapes} vs {src_shapes}")
    out[name] = src
  return out
