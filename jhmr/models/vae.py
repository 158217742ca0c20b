"""Stable Diffusion's KL autoencoder (diffusers `AutoencoderKL`), NHWC.

  vae = AutoencoderKL(SD_VAE)
  params = vae.init(key, *vae.dummy_inputs())['params']
  posterior = vae.apply({'params': params}, images, method=AutoencoderKL.encode)
  latents = posterior.sample(key) * SD_VAE.scaling_factor        # [B, H/8, W/8, 4]
  images = vae.apply({'params': params}, latents / SD_VAE.scaling_factor,
                     method=AutoencoderKL.decode)                 # [B, H, W, 3] in ~[-1, 1]

Parameter names mirror diffusers (`encoder/down_blocks_0/resnets_1/conv1/kernel`,
`decoder/mid_block/attentions_0/to_q/kernel`), so `jhmr.convert.diffusers_vae` converts them
mechanically.
Blocks come from `jhmr.models.sd_layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jhmr.models.sd_layers import Downsample2D, ResnetBlock2D, Upsample2D, attention

Dtype = Any
_EPS = 1e-6  # every norm in the diffusers VAE uses eps 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture of an `AutoencoderKL` (diffusers names; defaults = SD 1.x / 2.x VAE).

  `scaling_factor` multiplies latents before the U-Net sees them (0.18215 for SD 1.x and 2.x).
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  mid_block_add_attention: bool = True

  def __post_init__(self):
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f"VAE width {c} must divide by norm_num_groups={self.norm_num_groups}")

  @property
  def downsampling(self) -> int:
    """Image size / latent size (8 for SD)."""
    return 2 ** (len(self.block_out_channels) - 1)


SD_VAE = VAEConfig()


@struct.dataclass
class DiagonalGaussian:
  """The encoder's posterior: `mean, logvar [B, h, w, C]` (logvar clipped to [-30, 20])."""

  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) summed over latent dims: `[B]`."""
    var = jnp.exp(self.logvar)
    return 0.5 * jnp.sum(self.mean**2 + var - 1.0 - self.logvar, axis=(1, 2, 3))


class VAEAttention(nn.Module):
  """Single-head spatial self-attention with its own GroupNorm and a residual (VAE mid block).

  `[B, H, W, C] -> [B, H, W, C]`; q/k/v/out projections have biases (diffusers names).
  """

  groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = x.shape
    y = nn.GroupNorm(num_groups=self.groups, epsilon=_EPS, name="group_norm", **kw)(x)
    y = y.reshape(b, h * w, 1, c)
    q, k, v = (nn.Dense(c, name=n, **kw)(y) for n in ("to_q", "to_k", "to_v"))
    y = nn.Dense(c, name="to_out_0", **kw)(attention(q, k, v).reshape(b, h * w, c))
    return x + y.reshape(b, h, w, c)


class DownEncoderBlock(nn.Module):
  """`layers` resnets, then a stride-2 conv (padded bottom/right) unless the last block."""

  channels: int
  layers: int
  groups: int
  add_downsample: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.layers):
      x = ResnetBlock2D(
        self.channels, use_time_embedding=False, groups=self.groups, eps=_EPS, name=f"resnets_{j}",
        **kw,
      )(x)  # fmt: skip
    if self.add_downsample:
      x = Downsample2D(self.channels, padding=0, name="downsamplers_0", **kw)(x)
    return x


class UpDecoderBlock(nn.Module):
  """`layers` resnets, then nearest x2 + conv unless the last block."""

  channels: int
  layers: int
  groups: int
  add_upsample: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.layers):
      x = ResnetBlock2D(
        self.channels, use_time_embedding=False, groups=self.groups, eps=_EPS, name=f"resnets_{j}",
        **kw,
      )(x)  # fmt: skip
    if self.add_upsample:
      x = Upsample2D(self.channels, name="upsamplers_0", **kw)(x)
    return x


class MidBlock(nn.Module):
  """resnet, attention, resnet at the lowest resolution (diffusers `UNetMidBlock2D`)."""

  channels: int
  groups: int
  add_attention: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    res = lambda name: ResnetBlock2D(
      self.channels, use_time_embedding=False, groups=self.groups, eps=_EPS, name=name, **kw
    )
    x = res("resnets_0")(x)
    if self.add_attention:
      x = VAEAttention(self.groups, name="attentions_0", **kw)(x)
    return res("resnets_1")(x)


def _conv(features, name, kw, size=3):
  pad = size // 2
  return nn.Conv(features, (size, size), padding=((pad, pad), (pad, pad)), name=name, **kw)


class Encoder(nn.Module):
  """`[B, H, W, 3] -> [B, H/f, W/f, 2 * latent]` (mean and log-variance, before quant_conv)."""

  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    chans, groups = cfg.block_out_channels, cfg.norm_num_groups
    h = _conv(chans[0], "conv_in", kw)(x)
    for i, c in enumerate(chans):
      last = i == len(chans) - 1
      h = DownEncoderBlock(
        c, cfg.layers_per_block, groups, not last, name=f"down_blocks_{i}", **kw
      )(h)
    h = MidBlock(chans[-1], groups, cfg.mid_block_add_attention, name="mid_block", **kw)(h)
    h = nn.silu(nn.GroupNorm(num_groups=groups, epsilon=_EPS, name="conv_norm_out", **kw)(h))
    return _conv(2 * cfg.latent_channels, "conv_out", kw)(h)


class Decoder(nn.Module):
  """`[B, h, w, latent] -> [B, h*f, w*f, 3]` (after post_quant_conv)."""

  config: VAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    chans, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
    h = _conv(chans[0], "conv_in", kw)(z)
    h = MidBlock(chans[0], groups, cfg.mid_block_add_attention, name="mid_block", **kw)(h)
    for i, c in enumerate(chans):
      last = i == len(chans) - 1
      h = UpDecoderBlock(
        c, cfg.layers_per_block + 1, groups, not last, name=f"up_blocks_{i}", **kw
      )(h)
    h = nn.silu(nn.GroupNorm(num_groups=groups, epsilon=_EPS, name="conv_norm_out", **kw)(h))
    return _conv(cfg.out_channels, "conv_out", kw)(h)


class AutoencoderKL(nn.Module):
  """The SD VAE: `encode(images [B, H, W, 3]) -> DiagonalGaussian`, `decode(z) -> images`.

  `__call__(images, key=None)` reconstructs through the posterior mean (or a sample with a key).
  """

  config: VAEConfig = SD_VAE
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(cfg, **kw)
    self.decoder = Decoder(cfg, **kw)
    self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), **kw)
    self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), **kw)

  def dummy_inputs(self, batch: int = 1):
    size = self.config.downsampling
    return (jnp.zeros((batch, size, size, self.config.in_channels)),)

  def encode(self, images: jax.Array) -> DiagonalGaussian:
    """`images [B, H, W, 3]` in [-1, 1] (H, W multiples of 8) -> posterior over latents."""
    _check(images, self.config.in_channels, self.config.downsampling, "images")
    moments = self.quant_conv(self.encoder(images))
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return DiagonalGaussian(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

  def decode(self, latents: jax.Array) -> jax.Array:
    """`latents [B, h, w, latent]` (unscaled) -> images `[B, h*8, w*8, 3]`."""
    _check(latents, self.config.latent_channels, 1, "latents")
    return self.decoder(self.post_quant_conv(latents))

  def __call__(self, images: jax.Array, key: jax.Array | None = None) -> jax.Array:
    posterior = self.encode(images)
    return self.decode(posterior.mode() if key is None else posterior.sample(key))


def _check(x, channels, multiple, what):
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{what} must be [B, H, W, {channels}] (NHWC), got shape {x.shape}")
  if x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(f"{what} height/width must be multiples of {multiple}, got {x.shape[1:3]}")
