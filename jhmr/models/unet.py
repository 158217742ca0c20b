"""Stable Diffusion conditional U-Net (SD 1.x and SD 2 depth configurations), NHWC.

API (NHWC, unlike diffusers' NCHW: transpose with `x.transpose(0, 2, 3, 1)` at the boundary):

  model = UNet(SD15_UNET)                      # dtype=jnp.bfloat16 for bf16 compute
  params = model.init(key, *model.dummy_inputs())['params']
  eps = model.apply({'params': params}, latents [B, H, W, C_in], t [B] or scalar,
                    context [B, S, cross_attention_dim])       # -> [B, H, W, C_out]

ControlNet residuals (`down_residuals`, one per skip tensor, and `mid_residual`) are added to the
skip tensors and the middle-block output exactly as in diffusers. `return_features=True` returns a
`UNetOutput` with the decoder features of every up-block layer (numbered like the original
CompVis `output_blocks`) and the cross-attention probabilities of every transformer block, which
DPMesh reads. Parameter names mirror diffusers (`down_blocks_0/attentions_1/proj_in/kernel`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jhmr.models.sd_layers import (
  ATTENTION_IMPLEMENTATIONS,
  Downsample2D,
  ResnetBlock2D,
  TimestepEmbedding,
  Transformer2DModel,
  Upsample2D,
  timestep_embedding,
)

Dtype = Any
DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of a `UNet2DConditionModel` (diffusers names; defaults = SD 1.5).

  `num_attention_heads` is per down block (SD 1.x: 8 everywhere, head width = channels / 8;
  SD 2: 5/10/20/20 heads of width 64). `transformer_layers_per_block` likewise.
  """

  in_channels: int = 4
  out_channels: int = 4
  down_block_types: tuple[str, ...] = (
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "CrossAttnDownBlock2D",
    "DownBlock2D",
  )
  up_block_types: tuple[str, ...] = (
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "CrossAttnUpBlock2D",
    "CrossAttnUpBlock2D",
  )
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  num_attention_heads: tuple[int, ...] = (8, 8, 8, 8)
  cross_attention_dim: int = 768
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  use_linear_projection: bool = False
  transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)

  def __post_init__(self):
    n = len(self.block_out_channels)
    for name in ("down_block_types", "up_block_types", "num_attention_heads"):
      if len(getattr(self, name)) != n:
        raise ValueError(
          f"UNetConfig.{name} needs {n} entries (one per block), got {getattr(self, name)}"
        )
    if len(self.transformer_layers_per_block) != n:
      raise ValueError(f"UNetConfig.transformer_layers_per_block needs {n} entries")
    for t in self.down_block_types:
      if t not in DOWN_BLOCK_TYPES:
        raise ValueError(f"unsupported down block type {t!r}; expected one of {DOWN_BLOCK_TYPES}")
    for t in self.up_block_types:
      if t not in UP_BLOCK_TYPES:
        raise ValueError(f"unsupported up block type {t!r}; expected one of {UP_BLOCK_TYPES}")
    for c, h in zip(self.block_out_channels, self.num_attention_heads):
      if c % h or c % self.norm_num_groups:
        raise ValueError(
          f"block width {c} must divide by its heads ({h}) and norm groups ({self.norm_num_groups})"
        )


SD15_UNET = UNetConfig()
"""Stable Diffusion 1.x (1.4 / 1.5) U-Net."""

SD2_DEPTH_UNET = UNetConfig(
  in_channels=5,
  num_attention_heads=(5, 10, 20, 20),
  cross_attention_dim=1024,
  use_linear_projection=True,
)
"""stabilityai/stable-diffusion-2-depth U-Net: 4 latent channels + 1 depth channel in."""


@flax.struct.dataclass
class UNetOutput:
  """`sample [B, H, W, C_out]`; `up_features`: output of every up-block layer, in CompVis
  `output_blocks` order (block i, layer j -> index i * (layers_per_block + 1) + j; a block's last
  layer includes its upsampler); `cross_attention_probs`: `{module path: [B, heads, h*w, S]}` for
  every transformer block (softmax over the S context tokens, float32)."""

  sample: jax.Array
  up_features: tuple[jax.Array, ...]
  cross_attention_probs: dict[str, jax.Array]


def _kw(module) -> dict:
  return dict(dtype=module.dtype, param_dtype=module.param_dtype)


class DownBlock(nn.Module):
  """`layers` x (resnet [+ transformer]) [+ downsampler]. Returns `(h, skip tensors, probs)`."""

  out_channels: int
  layers: int
  has_attention: bool
  add_downsample: bool
  heads: int
  depth: int
  groups: int
  eps: float
  use_linear_projection: bool
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context, return_probs: bool = False):
    skips, probs = [], {}
    for j in range(self.layers):
      h = ResnetBlock2D(
        self.out_channels, groups=self.groups, eps=self.eps, name=f"resnets_{j}", **_kw(self)
      )(h, temb)
      if self.has_attention:
        h = _attend(self, f"attentions_{j}", h, context, return_probs, probs)
      skips.append(h)
    if self.add_downsample:
      h = Downsample2D(self.out_channels, name="downsamplers_0", **_kw(self))(h)
      skips.append(h)
    return h, skips, probs


class UpBlock(nn.Module):
  """`layers` x (concat skip, resnet [+ transformer]) [+ upsampler]. Returns
  `(h, per-layer features, probs)`."""

  out_channels: int
  layers: int
  has_attention: bool
  add_upsample: bool
  heads: int
  depth: int
  groups: int
  eps: float
  use_linear_projection: bool
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, skips, temb, context, return_probs: bool = False):
    features, probs = [], {}
    for j in range(self.layers):
      h = jnp.concatenate([h, skips[-1 - j]], axis=-1)
      h = ResnetBlock2D(
        self.out_channels, groups=self.groups, eps=self.eps, name=f"resnets_{j}", **_kw(self)
      )(h, temb)
      if self.has_attention:
        h = _attend(self, f"attentions_{j}", h, context, return_probs, probs)
      if j == self.layers - 1 and self.add_upsample:
        h = Upsample2D(self.out_channels, name="upsamplers_0", **_kw(self))(h)
      features.append(h)
    return h, features, probs


class MidBlock(nn.Module):
  """resnet, transformer, resnet (`UNetMidBlock2DCrossAttn`). Returns `(h, probs)`."""

  heads: int
  depth: int
  groups: int
  eps: float
  use_linear_projection: bool
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, context, return_probs: bool = False):
    c = h.shape[-1]
    resnet = lambda name: ResnetBlock2D(c, groups=self.groups, eps=self.eps, name=name, **_kw(self))
    h = resnet("resnets_0")(h, temb)
    probs = {}
    h = _attend(self, "attentions_0", h, context, return_probs, probs)
    h = resnet("resnets_1")(h, temb)
    return h, probs


def block_classes(remat: bool) -> tuple[type, type, type]:
  """`(DownBlock, MidBlock, UpBlock)`, each under `nn.remat` when `remat`: its activations are
  recomputed in the backward pass instead of stored (less memory for training, about one more
  forward of compute). Parameter names and values are the same either way."""
  if not remat:
    return DownBlock, MidBlock, UpBlock
  # static_argnums count `self` as 0: `return_probs` is a Python bool (it changes the outputs).
  return (
    nn.remat(DownBlock, static_argnums=(4,)),
    nn.remat(MidBlock, static_argnums=(4,)),
    nn.remat(UpBlock, static_argnums=(5,)),
  )


def _attend(block: nn.Module, name: str, h, context, return_probs: bool, probs: dict):
  """Runs a `Transformer2DModel` child of `block` named `name`; records its maps in `probs`."""
  transformer = Transformer2DModel(
    block.heads,
    h.shape[-1] // block.heads,
    depth=block.depth,
    use_linear_projection=block.use_linear_projection,
    groups=block.groups,
    implementation=block.implementation,
    name=name,
    **_kw(block),
  )
  if not return_probs:
    return transformer(h, context)
  h, maps = transformer(h, context, return_probs=True)
  probs.update({f"{name}/transformer_blocks_{k}": p for k, p in enumerate(maps)})
  return h


def _block_kwargs(module: nn.Module, cfg: UNetConfig, i: int) -> dict:
  return dict(
    heads=cfg.num_attention_heads[i],
    depth=cfg.transformer_layers_per_block[i],
    groups=cfg.norm_num_groups,
    eps=cfg.norm_eps,
    use_linear_projection=cfg.use_linear_projection,
    implementation=module.attention_implementation,
    **_kw(module),
  )


def encode(
  module: nn.Module,
  cfg: UNetConfig,
  sample: jax.Array,
  timesteps: jax.Array,
  context: jax.Array,
  *,
  hint: jax.Array | None = None,
  return_probs: bool = False,
):
  """The part a ControlNet copies: `conv_in`, time embedding, down blocks and middle block,
  created as children of `module` (call from inside its `@nn.compact __call__`), under
  `nn.remat` when `module.remat` is set (`block_classes`).

  Args:
    sample: `[B, H, W, C]` NHWC input (already checked).
    timesteps: `[B]` or scalar.
    context: `[B, S, cross_attention_dim]`.
    hint: optional `[B, H, W, C0]` added to the `conv_in` output (ControlNet condition).

  Returns:
    `(h [B, h, w, C_last] middle-block output, skips (list of skip tensors), temb [B, 4 C0],
    probs {path: [B, heads, h*w, S]})`.
  """
  kw = _kw(module)
  down_block, mid_block, _ = block_classes(module.remat)
  sample = sample.astype(module.dtype)
  context = context.astype(module.dtype)
  c0 = cfg.block_out_channels[0]
  timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (sample.shape[0],))
  temb = timestep_embedding(timesteps, c0).astype(module.dtype)
  temb = TimestepEmbedding(4 * c0, name="time_embedding", **kw)(temb)
  h = nn.Conv(c0, (3, 3), padding=((1, 1), (1, 1)), name="conv_in", **kw)(sample)
  if hint is not None:
    h = h + hint.astype(h.dtype)
  skips, probs = [h], {}
  n = len(cfg.block_out_channels)
  for i, block_type in enumerate(cfg.down_block_types):
    h, block_skips, block_probs = down_block(
      cfg.block_out_channels[i],
      cfg.layers_per_block,
      has_attention=block_type.startswith("CrossAttn"),
      add_downsample=i < n - 1,
      name=f"down_blocks_{i}",
      **_block_kwargs(module, cfg, i),
    )(h, temb, context, return_probs)
    skips += block_skips
    probs.update({f"down_blocks_{i}/{k}": v for k, v in block_probs.items()})
  h, mid_probs = mid_block(name="mid_block", **_block_kwargs(module, cfg, n - 1))(
    h, temb, context, return_probs
  )
  probs.update({f"mid_block/{k}": v for k, v in mid_probs.items()})
  return h, skips, temb, probs


def check_inputs(cfg, sample, context, in_channels: int, implementation: str) -> None:
  """Raises ValueError naming the problem when the U-Net inputs do not fit `cfg`."""
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
      f"attention_implementation {implementation!r} not in {ATTENTION_IMPLEMENTATIONS}"
    )
  if sample.ndim != 4 or sample.shape[-1] != in_channels:
    raise ValueError(f"sample must be NHWC [B, H, W, {in_channels}], got {sample.shape}")
  factor = 2 ** (len(cfg.block_out_channels) - 1)
  if sample.shape[1] % factor or sample.shape[2] % factor:
    raise ValueError(f"sample height and width must be multiples of {factor}, got {sample.shape}")
  if context.ndim != 3 or context.shape[-1] != cfg.cross_attention_dim:
    raise ValueError(f"context must be [B, S, {cfg.cross_attention_dim}], got {context.shape}")
  if context.shape[0] != sample.shape[0]:
    raise ValueError(f"batch of context {context.shape} != batch of sample {sample.shape}")


class UNet(nn.Module):
  """Stable Diffusion U-Net (diffusers `UNet2DConditionModel`), NHWC; see the module docstring.

  Attributes:
    config: the architecture.
    attention_implementation: see `jhmr.models.sd_layers.attention` ('auto', 'xla', 'chunked',
      'cudnn').
    dtype: compute dtype (e.g. `jnp.bfloat16`); param_dtype: storage dtype of the parameters.
    remat: rematerialise the down, middle and up blocks in the backward pass (`block_classes`).
  """

  config: UNetConfig = SD15_UNET
  attention_implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  def dummy_inputs(self, batch: int = 1, size: int | None = None, tokens: int = 4):
    """Zeros `(sample, timesteps, context)` of the smallest valid size (for init / eval_shape)."""
    cfg = self.config
    size = size or 2 ** (len(cfg.block_out_channels) - 1)
    return (
      jnp.zeros((batch, size, size, cfg.in_channels)),
      jnp.zeros((batch,)),
      jnp.zeros((batch, tokens, cfg.cross_attention_dim)),
    )

  @nn.compact
  def __call__(
    self,
    sample: jax.Array,
    timesteps: jax.Array,
    context: jax.Array,
    *,
    down_residuals: tuple[jax.Array, ...] | None = None,
    mid_residual: jax.Array | None = None,
    return_features: bool = False,
  ) -> jax.Array | UNetOutput:
    """`sample [B, H, W, in]`, `timesteps [B] or scalar`, `context [B, S, cross_dim]` ->
    `[B, H, W, out]` (or `UNetOutput` with `return_features`). `down_residuals`/`mid_residual`
    are a ControlNet's outputs (one per skip tensor, `[B, h_i, w_i, c_i]`)."""
    cfg = self.config
    check_inputs(cfg, sample, context, cfg.in_channels, self.attention_implementation)
    h, skips, temb, probs = encode(
      self, cfg, sample, timesteps, context, return_probs=return_features
    )
    if down_residuals is not None:
      if len(down_residuals) != len(skips):
        raise ValueError(
          f"down_residuals: got {len(down_residuals)} tensors, the U-Net has {len(skips)} skips"
        )
      for i, (s, r) in enumerate(zip(skips, down_residuals)):
        if r.shape != s.shape:
          raise ValueError(f"down_residuals[{i}] has shape {r.shape}, expected {s.shape}")
      skips = [s + r.astype(s.dtype) for s, r in zip(skips, down_residuals)]
    if mid_residual is not None:
      if mid_residual.shape != h.shape:
        raise ValueError(f"mid_residual has shape {mid_residual.shape}, expected {h.shape}")
      h = h + mid_residual.astype(h.dtype)
    context = context.astype(self.dtype)
    features = []
    n = len(cfg.block_out_channels)
    rev_channels = cfg.block_out_channels[::-1]
    rev_heads = cfg.num_attention_heads[::-1]
    rev_depth = cfg.transformer_layers_per_block[::-1]
    layers = cfg.layers_per_block + 1
    _, _, up_block = block_classes(self.remat)
    for i, block_type in enumerate(cfg.up_block_types):
      block_skips, skips = skips[-layers:], skips[:-layers]
      h, block_features, block_probs = up_block(
        rev_channels[i],
        layers,
        has_attention=block_type.startswith("CrossAttn"),
        add_upsample=i < n - 1,
        heads=rev_heads[i],
        depth=rev_depth[i],
        groups=cfg.norm_num_groups,
        eps=cfg.norm_eps,
        use_linear_projection=cfg.use_linear_projection,
        implementation=self.attention_implementation,
        name=f"up_blocks_{i}",
        **_kw(self),
      )(h, block_skips, temb, context, return_features)
      features += block_features
      probs.update({f"up_blocks_{i}/{k}": v for k, v in block_probs.items()})
    h = nn.GroupNorm(
      num_groups=cfg.norm_num_groups, epsilon=cfg.norm_eps, name="conv_norm_out", **_kw(self)
    )(h)
    out = nn.Conv(cfg.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="conv_out", **_kw(self))(
      nn.silu(h)
    )
    if return_features:
      return UNetOutput(sample=out, up_features=tuple(features), cross_attention_probs=probs)
    return out
