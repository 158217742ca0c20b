"""The plain ViT backbone of ViTPose (mmpose `ViT`), shared by ViTPose and HMR 2.0 (4D-Humans).

  model = ViT(VIT_H)
  params = model.init(key, model.dummy_input())['params']
  features = model.apply({'params': params}, images [B, 256, 192, 3])   # NHWC, normalised
  features [B, 16, 12, 1280]                                           # after `last_norm`

Architecture (research/regressors.md §2): a Conv patch embedding (kernel = stride = 16,
**padding 2**, so 256x192 gives a 16x12 grid), one learned position table added to every token
(no class token), `depth` pre-norm blocks `x += attn(norm1(x)); x += mlp(norm2(x))` with a fused
qkv projection, exact (erf) GELU and LayerNorm eps 1e-6, then `last_norm`.

Parameters (`jhmr.convert.vitpose.vit_rules` maps the original mmpose / 4D-Humans keys):
- `patch_embed/{kernel [P, P, 3, C], bias [C]}`             <- `patch_embed.proj.*`
- `pos_embed [1, N, C]`, N = grid_h * grid_w: the **folded** table. The original stores
  (1, N + 1, C) and adds `pos[:, 1:] + pos[:, :1]` to the tokens; the converter folds row 0 in.
- `blocks_{i}/norm1/{scale, bias}`, `blocks_{i}/attn/qkv/{kernel [C, 3C], bias}` (columns
  q | k | v, each split into heads as `[heads, head_dim]`), `blocks_{i}/attn/proj/{kernel, bias}`,
  `blocks_{i}/norm2/*`, `blocks_{i}/mlp/fc1/{kernel [C, mlp], bias}`, `blocks_{i}/mlp/fc2/*`
- `last_norm/{scale, bias}`

Presets: `VIT_H` (ViTPose-H and the HMR 2.0 backbone), `VIT_B` (ViTPose-B), `VIT_TINY` (tests:
64x48 input, width 32, 2 blocks). Parameter counts: ViT-H 630,910,720 and ViT-B 85,794,048 here;
the original checkpoints count 630,912,000 and 85,794,816 because their position table keeps the
row that is folded in (C more).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jhmr.models.sd_layers import attention

Dtype = Any


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of a ViTPose-style ViT (mmpose `ViT` argument names)."""

  img_size: tuple[int, int] = (256, 192)  # (H, W) of the input crop
  patch_size: int = 16
  patch_padding: int = 2  # zero padding of the patch-embedding Conv (4 + 2 * (ratio // 2 - 1))
  embed_dim: int = 1280
  depth: int = 32
  num_heads: int = 16
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads} heads")
    if min(self.grid) < 1:
      raise ValueError(f"img_size {self.img_size} is smaller than one patch")

  @property
  def grid(self) -> tuple[int, int]:
    """Token grid (grid_h, grid_w) of an `img_size` input: (H + 2 pad - P) // P + 1 per axis."""
    p, pad = self.patch_size, self.patch_padding
    return tuple((s + 2 * pad - p) // p + 1 for s in self.img_size)

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return int(self.embed_dim * self.mlp_ratio)


VIT_H = ViTConfig()
VIT_B = ViTConfig(embed_dim=768, depth=12, num_heads=12)
VIT_TINY = ViTConfig(img_size=(64, 48), embed_dim=32, depth=2, num_heads=2)


class ViTAttention(nn.Module):
  """Multi-head self-attention with a fused `qkv` Dense and an output `proj` Dense."""

  num_heads: int
  qkv_bias: bool = True
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, name="qkv", **kw)(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads), 2, 0)
    out = attention(q, k, v, implementation=self.implementation).reshape(b, n, c)
    return nn.Dense(c, name="proj", **kw)(out)


class ViTMlp(nn.Module):
  """`fc1` -> exact GELU -> `fc2`."""

  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.Dense(self.hidden_dim, name="fc1", **kw)(x)
    h = nn.gelu(h, approximate=False)
    return nn.Dense(x.shape[-1], name="fc2", **kw)(h)


class ViTBlock(nn.Module):
  """Pre-norm transformer block: `x += attn(norm1(x)); x += mlp(norm2(x))`."""

  config: ViTConfig
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name, **kw)
    x = x + ViTAttention(cfg.num_heads, cfg.qkv_bias, self.implementation, name="attn", **kw)(
      norm("norm1")(x)
    )
    return x + ViTMlp(cfg.mlp_dim, name="mlp", **kw)(norm("norm2")(x))


class ViT(nn.Module):
  """ViTPose ViT backbone: `__call__(x [B, H, W, 3]) -> [B, H/16, W/16, C]` after `last_norm`.

  `x` is the normalised crop (ImageNet mean/std), NHWC, of exactly `config.img_size`; the output
  is the token grid `config.grid` (16x12 for 256x192). `implementation` selects the attention
  kernel (see `jhmr.models.sd_layers.attention`).
  """

  config: ViTConfig = VIT_H
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def dummy_input(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, *self.config.img_size, 3), self.dtype)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    if x.ndim != 4 or tuple(x.shape[1:]) != (*cfg.img_size, 3):
      raise ValueError(
        f"ViT expects images [B, {cfg.img_size[0]}, {cfg.img_size[1]}, 3] (NHWC crops of "
        f"img_size {cfg.img_size}), got shape {tuple(x.shape)}"
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = cfg.patch_padding
    x = nn.Conv(
      cfg.embed_dim,
      (cfg.patch_size, cfg.patch_size),
      strides=(cfg.patch_size, cfg.patch_size),
      padding=((pad, pad), (pad, pad)),
      name="patch_embed",
      **kw,
    )(x.astype(self.dtype))
    b, gh, gw, c = x.shape
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, gh * gw, c), self.param_dtype)
    x = x.reshape(b, gh * gw, c) + pos.astype(self.dtype)
    for i in range(cfg.depth):
      x = ViTBlock(cfg, self.implementation, name=f"blocks_{i}", **kw)(x)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="last_norm", **kw)(x)
    return x.reshape(b, gh, gw, c)
