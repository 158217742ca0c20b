"""DPMesh's diffusion-prior backbone: VAE latent ‖ joint heatmaps → ControlNet → SD U-Net (one
step, joint-token prompt) → decoder features + cross-attention maps → fusion to [B, 8, 8, 2048].

  cfg = DPMESH_PAPER                      # or DPMESH_RELEASED (the released checkpoints' inputs)
  model = DPMeshBackbone(cfg)
  params = jax.jit(model.init)(key, *model.dummy_inputs())['params']
  params = with_pretrained(params, vae=..., unet=..., controlnet=None)   # converted diffusers trees
  out = model.apply({'params': params}, images [B, 256, 256, 3] in [0, 1],
                    keypoints [B, 30, 3] (x, y crop px, confidence),
                    train=True, rngs={'dropout': key})                   # -> BackboneOutput
  tx = optax.multi_transform({True: adamw, False: optax.set_to_zero()}, trainable_mask(params))

Parameters are one tree `{'vae', 'unet', 'unet_lora', 'controlnet', 'prompt', 'fusion'}`. The VAE
(encoder and quant_conv only) and the U-Net base are frozen (`stop_gradient` inside, and
`trainable_mask` False); the ControlNet, the U-Net LoRA (`jhmr.models.lora`, rank 64 on every
Dense of attn1/attn2 and GEGLU.proj), the joint prompt and the fusion convs train. CLIP is never
built: the prompt replaces the text tokens.

Feature path (notes research/dpmesh.md §5–6): the U-Net's output blocks 1, 4, 7 and 11 (CompVis
numbering; SD 1.5: 1280@4², 1280@8², 640@16², 320@32²) and its down/up-block cross-attention maps
(middle block excluded), averaged over heads, then over the layers of each resolution, kept at
latent/4 and latent/2 (8² and 16²). Maps are concatenated onto the 8² and 16² features; the
fusion convs of `Fusion` bring everything to 8².

Paper vs released code (`DPMeshBackboneConfig.prompt`, `image_range`, `latent_scale`):
- paper: 2-layer MLP over the visible joints (invisible joints give zero tokens), images mapped
  to SD's [-1, 1], latent = VAE mean × 0.18215;
- released: `kp_lifting` = one Dense(2 → 768) on xy/heatmap-size, unmasked; images in [0, 1];
  VAE mean without the scale factor. Both use t = 1 and no noise.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jhmr.models import lora as lora_lib
from jhmr.models.controlnet import (
  DPMESH_CONTROLNET,
  ControlNet,
  ControlNetConfig,
  controlnet_params_from_unet,
)
from jhmr.models.unet import SD15_UNET, UNet, UNetConfig
from jhmr.models.vae import SD_VAE, AutoencoderKL, VAEConfig

Dtype = Any
PROMPT_KINDS = ("paper", "released")
IMAGE_RANGES = ("signed", "unit")
FROZEN = ("vae", "unet")
TRAINABLE = ("unet_lora", "controlnet", "prompt", "fusion")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMeshBackboneConfig:
  """DPMesh backbone (defaults = the paper: SD 1.5 sizes, 256² crops, 30 SMPL-30 joints).

  Attributes:
    unet, controlnet, vae: the Stable Diffusion parts (ControlNet in the direct variant: latent ‖
      `num_joints` heatmaps into conv_in).
    num_joints: heatmap channels and prompt tokens (SMPL-30 order).
    image_size: crop side in pixels (keypoints are in this frame).
    heatmap_sigma: Gaussian σ in heatmap pixels (heatmaps live on the latent grid).
    visibility_threshold: a joint is visible when conf > this and it lies inside the crop.
    joint_dropout: fraction of joints removed from the heatmaps in training (not from the prompt).
    lora_rank, lora_scale, lora_targets: the U-Net LoRA (`jhmr.models.lora`).
    prompt: 'paper' (2-layer MLP, visible joints) or 'released' (Dense(2 → D), unmasked).
    prompt_hidden: width of the paper MLP's hidden layer (None: the token width).
    image_range: what the model feeds the VAE: 'signed' [-1, 1] (SD) or 'unit' [0, 1] (released).
      Inputs are always [0, 1].
    latent_scale: multiplies the VAE posterior mean (SD 0.18215; released 1.0).
    timestep: the one diffusion step of the U-Net and ControlNet (no noise is added).
    feature_blocks: CompVis output-block indices of the features, coarse to fine.
    fusion_channels, fusion_groups: fused width and the GroupNorm groups of the fusion convs.
  """

  unet: UNetConfig = SD15_UNET
  controlnet: ControlNetConfig = DPMESH_CONTROLNET
  vae: VAEConfig = SD_VAE
  num_joints: int = 30
  image_size: int = 256
  heatmap_sigma: float = 2.5
  visibility_threshold: float = 0.05
  joint_dropout: float = 0.1
  lora_rank: int = 64
  lora_scale: float = 1.0
  lora_targets: tuple[str, ...] = lora_lib.UNET_ATTENTION_AND_GEGLU
  prompt: str = "paper"
  prompt_hidden: int | None = None
  image_range: str = "signed"
  latent_scale: float = 0.18215
  timestep: int = 1
  feature_blocks: tuple[int, ...] = (1, 4, 7, 11)
  fusion_channels: int = 2048
  fusion_groups: int = 16

  def __post_init__(self):
    if self.prompt not in PROMPT_KINDS:
      raise ValueError(f"prompt must be one of {PROMPT_KINDS}, got {self.prompt!r}")
    if self.image_range not in IMAGE_RANGES:
      raise ValueError(f"image_range must be one of {IMAGE_RANGES}, got {self.image_range!r}")
    if not self.controlnet.direct or self.controlnet.conditioning_channels != self.num_joints:
      raise ValueError(
        f"the ControlNet must be the direct variant with {self.num_joints} condition channels"
      )
    if self.image_size % self.vae.downsampling:
      raise ValueError(f"image_size {self.image_size} must divide by {self.vae.downsampling}")
    levels = len(self.unet.block_out_channels)
    if levels != 4 or len(self.feature_blocks) != 4:
      raise ValueError("DPMesh's fusion needs a 4-level U-Net and 4 feature blocks")
    layers = self.unet.layers_per_block + 1
    got = tuple(levels - 1 - b // layers for b in self.feature_blocks)
    upsampling = any(b % layers == layers - 1 and b // layers < 3 for b in self.feature_blocks)
    if got != (3, 2, 1, 0) or upsampling:
      raise ValueError(
        f"feature_blocks {self.feature_blocks} must be one non-upsampling layer per level, "
        "coarse to fine"
      )
    if self.latent_size % 8:
      raise ValueError(f"latent side {self.latent_size} must be a multiple of 8")

  @property
  def latent_size(self) -> int:
    """Side of the latent, of the heatmaps and of the finest feature map (32 for 256² crops)."""
    return self.image_size // self.vae.downsampling

  @property
  def attention_sizes(self) -> tuple[int, int]:
    """Sides of the averaged cross-attention maps: latent/4 and latent/2 (8, 16)."""
    return (self.latent_size // 4, self.latent_size // 2)

  @property
  def token_dim(self) -> int:
    return self.unet.cross_attention_dim

  def fusion_in_channels(self) -> tuple[int, int, int, int]:
    """Widths of `[F_1, F_4 ‖ A_8, F_7 ‖ A_16, F_11]` (SD 1.5: 1280, 1310, 670, 320)."""
    c = self.unet.block_out_channels
    return (c[3], c[2] + self.num_joints, c[1] + self.num_joints, c[0])

  def lora_config(self) -> lora_lib.LoRAConfig:
    return lora_lib.LoRAConfig(
      rank=self.lora_rank, scale=self.lora_scale, targets=self.lora_targets
    )

  @classmethod
  def tiny(cls, **overrides) -> DPMeshBackboneConfig:
    """Small widths with DPMesh's structure (4 levels, 2 layers, 32² latent, maps at 8²/16²) from
    64² crops through a 1-downsample VAE: for tests."""
    unet = UNetConfig(
      block_out_channels=(16, 32, 32, 32),
      num_attention_heads=(2, 2, 2, 2),
      cross_attention_dim=32,
      norm_num_groups=8,
    )
    fields = dict(
      unet=unet,
      controlnet=ControlNetConfig.from_unet(
        unet, conditioning_channels=30, conditioning_embedding_out_channels=None
      ),
      vae=VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4),
      image_size=64,
      lora_rank=4,
      fusion_channels=32,
    )
    return cls(**{**fields, **overrides})


DPMESH_PAPER = DPMeshBackboneConfig()
"""The paper's backbone (MLP joint prompt over visible joints, SD input conventions)."""

DPMESH_RELEASED = DPMeshBackboneConfig(prompt="released", image_range="unit", latent_scale=1.0)
"""The released code's inputs (EternalEvan/DPMesh checkpoints): Dense(2 → 768) prompt on xy/32,
images in [0, 1], VAE mean without the scale factor."""


@flax.struct.dataclass
class BackboneOutput:
  """`fused [B, 8, 8, C]`; `decoder_features`: output blocks 1/4/7/11 (`[B, 4², 1280]`,
  `[B, 8², 1280]`, `[B, 16², 640]`, `[B, 32², 320]` at SD 1.5 sizes); `attention_maps`:
  `{8: [B, 8, 8, J], 16: [B, 16, 16, J]}` (cross-attention averaged over heads, then layers,
  float32); `latent [B, 32, 32, 4]`; `heatmaps [B, 32, 32, J]` (as fed to the ControlNet);
  `visible [B, J]` bool; `context [B, J, D]` the prompt tokens."""

  fused: jax.Array
  decoder_features: tuple[jax.Array, ...]
  attention_maps: dict[int, jax.Array]
  latent: jax.Array
  heatmaps: jax.Array
  visible: jax.Array
  context: jax.Array


def joint_grid_coordinates(keypoints: jax.Array, image_size: int, grid_size: int, threshold: float):
  """`keypoints [..., J, 3]` (x, y crop px, conf) -> `(xy [..., J, 2]` on the heatmap grid,
  `visible [..., J]` bool: conf > threshold and inside the grid, as DPMesh's loaders)."""
  xy = keypoints[..., :2].astype(jnp.float32) * (grid_size / image_size)
  inside = jnp.all((xy >= 0) & (xy < grid_size), axis=-1)
  return xy, inside & (keypoints[..., 2] > threshold)


def dpmesh_heatmaps(xy: jax.Array, mask: jax.Array, size: int, sigma: float) -> jax.Array:
  """DPMesh's joint heatmaps: `xy [B, J, 2]` on the grid, `mask [B, J]` -> `[B, size, size, J]`,
  exp(-|p - xy|² / 2σ²) at integer pixel indices p (peak 1), masked joints all zero.

  (`jhmr.data.augment.joint_heatmaps` evaluates at pixel centres, i + 0.5, and is numpy on the
  data floor; DPMesh's checkpoints expect integer indices, and the training dropout is in-graph.)
  """
  grid = jnp.arange(size, dtype=jnp.float32)
  gx = jnp.exp(-((grid - xy[..., 0:1]) ** 2) / (2 * sigma**2))  # [B, J, size]
  gy = jnp.exp(-((grid - xy[..., 1:2]) ** 2) / (2 * sigma**2))
  maps = jnp.einsum("bjy,bjx->byxj", gy, gx)
  return maps * mask[:, None, None, :].astype(maps.dtype)


class JointPrompt(nn.Module):
  """Joint tokens for the cross-attention: `xy01 [B, J, 2]` (grid xy / grid size, in [0, 1]),
  `visible [B, J]` -> `[B, J, D]`. 'paper': Dense → ReLU → Dense, invisible joints zeroed;
  'released': `kp_lifting` Dense(2 → D), all joints."""

  dim: int
  kind: str = "paper"
  hidden: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xy01: jax.Array, visible: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.kind == "released":
      return nn.Dense(self.dim, name="kp_lifting", **kw)(xy01)
    h = nn.relu(nn.Dense(self.hidden or self.dim, name="mlp_0", **kw)(xy01))
    tokens = nn.Dense(self.dim, name="mlp_1", **kw)(h)
    return tokens * visible[..., None].astype(tokens.dtype)


_fusion_init = dict(
  kernel_init=nn.initializers.truncated_normal(0.02), bias_init=nn.initializers.zeros_init()
)


class Fusion(nn.Module):
  """DPMesh's `outmodules` (names mirror them): `[F_1 @s/8, F_4‖A @s/4, F_7‖A @s/2, F_11 @s]`
  -> `[B, s/4, s/4, channels]`.

  F_11: conv3×3 s2 → GN → ReLU → conv3×3 s2; F_7‖A: conv3×3 s2; F_4‖A ‖ nearest-×2 F_1; concat
  (SD 1.5: 320 + 670 + 2590 = 3580) → conv1×1 → GN → ReLU. Trunc-normal(0.02) kernels, zero
  biases; GroupNorm eps 1e-5 (PyTorch's).
  """

  channels: int = 2048
  groups: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: tuple[jax.Array, ...]) -> jax.Array:
    f1, f4, f7, f11 = features
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda c, name, size=3, stride=2: nn.Conv(
      c,
      (size, size),
      strides=(stride, stride),
      padding=((size // 2, size // 2),) * 2,
      name=name,
      **kw,
      **_fusion_init,
    )
    norm = lambda name: nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, name=name, **kw)
    c0 = f11.shape[-1]
    a = conv(c0, "outmodules_0_0")(f11)
    a = conv(c0, "outmodules_0_3")(nn.relu(norm("outmodules_0_1")(a)))
    b = conv(f7.shape[-1], "outmodules_1_0")(f7)
    up = jnp.repeat(jnp.repeat(f1, 2, axis=1), 2, axis=2)
    y = jnp.concatenate([a, b, f4.astype(a.dtype), up.astype(a.dtype)], axis=-1)
    y = conv(self.channels, "outmodules_2_0", size=1, stride=1)(y)
    return nn.relu(norm("outmodules_2_1")(y))


def average_cross_attention(probs: dict[str, jax.Array], sizes: tuple[int, ...]) -> dict:
  """`{path: [B, heads, h*w, S]}` (a `UNetOutput.cross_attention_probs`) -> `{side: [B, side,
  side, S]}`: the maps of the down and up blocks (not the middle), averaged over heads, then over
  the layers with `side²` queries (DPMesh's `up_cross+down_cross` selector)."""
  grouped: dict[int, list] = {s: [] for s in sizes}
  for path, p in probs.items():
    if not re.match(r"(down|up)_blocks_\d+/", path):
      continue
    side = int(round(p.shape[2] ** 0.5))
    if side in grouped:
      grouped[side].append(p.astype(jnp.float32).mean(axis=1))
  out = {}
  for side, maps in grouped.items():
    if not maps:
      raise ValueError(f"no down/up cross-attention layer at {side}x{side}")
    mean = jnp.mean(jnp.stack(maps), axis=0)
    out[side] = mean.reshape(mean.shape[0], side, side, mean.shape[-1])
  return out


class DPMeshBackbone(nn.Module):
  """See the module docstring. `__call__(images [B, H, W, 3] in [0, 1], keypoints [B, J, 3]
  crop px + conf, train=False) -> BackboneOutput`. Training with `joint_dropout > 0` needs a
  'dropout' rng."""

  config: DPMeshBackboneConfig = DPMESH_PAPER
  attention_implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False  # U-Net and ControlNet blocks under nn.remat (`unet.block_classes`)

  def dummy_inputs(self, batch: int = 1):
    cfg = self.config
    return (
      jnp.zeros((batch, cfg.image_size, cfg.image_size, 3)),
      jnp.zeros((batch, cfg.num_joints, 3)),
    )

  def _parts(self):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    vae = AutoencoderKL(cfg.vae, parent=None, **kw)
    unet = UNet(cfg.unet, self.attention_implementation, parent=None, remat=self.remat, **kw)
    return vae, unet

  @nn.compact
  def __call__(self, images: jax.Array, keypoints: jax.Array, train: bool = False):
    cfg = self.config
    size, j = cfg.image_size, cfg.num_joints
    if images.shape[1:] != (size, size, 3):
      raise ValueError(f"images must be [B, {size}, {size}, 3], got {images.shape}")
    if keypoints.shape != (images.shape[0], j, 3):
      raise ValueError(f"keypoints must be [{images.shape[0]}, {j}, 3], got {keypoints.shape}")
    vae, unet = self._parts()
    s = cfg.latent_size

    # Frozen parts: whole parameter subtrees, applied functionally (no gradient reaches them).
    vae_params = self.param(
      "vae",
      lambda key: vae.init(key, jnp.zeros((1, size, size, 3)), method=AutoencoderKL.encode)[
        "params"
      ],
    )
    unet_params = self.param("unet", lambda key: unet.init(key, *unet.dummy_inputs())["params"])
    lora = self.param(
      "unet_lora", lambda key: lora_lib.init_lora(key, unet_params, cfg.lora_config())
    )

    x = images.astype(jnp.float32)
    if cfg.image_range == "signed":
      x = 2.0 * x - 1.0
    posterior = vae.apply(
      {"params": jax.lax.stop_gradient(vae_params)}, x, method=AutoencoderKL.encode
    )
    latent = jax.lax.stop_gradient(posterior.mode() * cfg.latent_scale)

    xy, visible = joint_grid_coordinates(keypoints, size, s, cfg.visibility_threshold)
    mask = visible
    if train and cfg.joint_dropout > 0:
      keep = jax.random.uniform(self.make_rng("dropout"), visible.shape) >= cfg.joint_dropout
      mask = mask & keep
    heatmaps = dpmesh_heatmaps(xy, mask, s, cfg.heatmap_sigma)
    context = JointPrompt(
      cfg.token_dim,
      cfg.prompt,
      cfg.prompt_hidden,
      name="prompt",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )(xy / s, visible)

    t = jnp.full((images.shape[0],), cfg.timestep, jnp.float32)
    down, mid = ControlNet(
      cfg.controlnet,
      self.attention_implementation,
      remat=self.remat,
      name="controlnet",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )(latent, t, context, heatmaps)
    merged = lora_lib.merge(jax.lax.stop_gradient(unet_params), lora, cfg.lora_scale)
    out = unet.apply(
      {"params": merged},
      latent,
      t,
      context,
      down_residuals=down,
      mid_residual=mid,
      return_features=True,
    )
    features = tuple(out.up_features[b] for b in cfg.feature_blocks)
    expected = (s // 8, s // 4, s // 2, s)
    if tuple(f.shape[1] for f in features) != expected:
      raise ValueError(
        f"feature_blocks give sides {[f.shape[1] for f in features]}, not {expected}"
      )
    maps = average_cross_attention(out.cross_attention_probs, cfg.attention_sizes)
    lo, hi = cfg.attention_sizes
    f1, f4, f7, f11 = features
    fused = Fusion(
      cfg.fusion_channels,
      cfg.fusion_groups,
      name="fusion",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )(
      (
        f1,
        jnp.concatenate([f4, maps[lo].astype(f4.dtype)], axis=-1),
        jnp.concatenate([f7, maps[hi].astype(f7.dtype)], axis=-1),
        f11,
      )
    )
    return BackboneOutput(
      fused=fused,
      decoder_features=features,
      attention_maps=maps,
      latent=latent,
      heatmaps=heatmaps,
      visible=visible,
      context=context,
    )


def trainable_mask(params: Any) -> dict:
  """Bool pytree over the backbone params: True on the ControlNet, LoRA, prompt and fusion, False
  on the frozen VAE and U-Net base (for `optax.multi_transform` / `optax.masked`)."""
  params = dict(params)
  unknown = set(params) - set(FROZEN) - set(TRAINABLE)
  if unknown:
    raise ValueError(f"unknown backbone parameter groups {sorted(unknown)}")
  return {k: jax.tree.map(lambda _, k=k: k in TRAINABLE, v) for k, v in params.items()}


def parameter_counts(params: Any) -> dict[str, int]:
  """`{group: count}` plus 'trainable' and 'frozen' totals (works on `jax.eval_shape` trees)."""
  counts = {k: sum(int(x.size) for x in jax.tree.leaves(v)) for k, v in dict(params).items()}
  counts["trainable"] = sum(v for k, v in counts.items() if k in TRAINABLE)
  counts["frozen"] = sum(v for k, v in counts.items() if k in FROZEN)
  return counts


def with_pretrained(
  params: Any, *, vae: Any = None, unet: Any = None, controlnet: Any = None
) -> dict:
  """Backbone params with pretrained parts swapped in: `vae` (a full converted VAE tree; only
  `encoder` and `quant_conv` are kept), `unet` (converted U-Net), `controlnet` (converted direct
  ControlNet; None with a `unet`: initialised from the U-Net, conv_in kept random, as DPMesh)."""
  out = dict(params)
  if vae is not None:
    out["vae"] = {k: vae[k] for k in ("encoder", "quant_conv")}
  if unet is not None:
    out["unet"] = unet
    if controlnet is None:
      out["controlnet"] = controlnet_params_from_unet(dict(params["controlnet"]), unet)
  if controlnet is not None:
    out["controlnet"] = controlnet
  return out
