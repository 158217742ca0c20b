"""Building blocks shared by the Stable Diffusion U-Net, ControlNet and VAE.

Layout is NHWC (`[B, H, W, C]`) throughout. Submodule names mirror the PyTorch (diffusers) names
with `.N` written `_N` (`resnets_0`, `to_out_0`, `ff/net_0/proj`), so a converter maps
`down_blocks.0.resnets.1.conv1.weight` to `down_blocks_0/resnets_1/conv1/kernel` mechanically.

Every module takes `dtype` (compute) and `param_dtype` (storage); normalisation statistics and
attention softmax are always computed in float32.

Attention: `attention` is the one core used everywhere. It never forms more than one
`[B, heads, chunk, L_kv]` block of logits at a time when the full `[B, heads, L_q, L_kv]` block
would be large (query-chunked, each chunk fused by XLA), and on GPU it can dispatch to cuDNN's
flash attention (`implementation='cudnn'`), which never forms the logits at all.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Largest logits block (elements of [B, heads, L_q, L_kv]) 'auto' forms in one piece.
_MAX_LOGITS_ELEMENTS = 1 << 25
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn")


# ----------------------------------------------------------------------------------------------
# Timestep embedding


def timestep_embedding(
  timesteps: jax.Array,
  dim: int,
  *,
  flip_sin_to_cos: bool = True,
  downscale_freq_shift: float = 0.0,
  max_period: float = 10000.0,
) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM / diffusers.

  Args:
    timesteps: `[B]` (or scalar) timesteps.
    dim: embedding width.
    flip_sin_to_cos: order `[cos, sin]` (SD) instead of `[sin, cos]`.
    downscale_freq_shift: frequencies are `exp(-log(max_period) * i / (dim/2 - shift))`.

  Returns:
    `[B, dim]` float32 embedding.
  """
  timesteps = jnp.atleast_1d(jnp.asarray(timesteps, jnp.float32))
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must be a scalar or [B], got shape {timesteps.shape}")
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(exponent / (half - downscale_freq_shift))
  angles = timesteps[:, None] * freqs[None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nn.Module):
  """MLP on the sinusoidal embedding: `linear_1 -> SiLU -> linear_2`. `[B, C] -> [B, dim]`."""

  dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda name: nn.Dense(
      self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    return dense("linear_2")(nn.silu(dense("linear_1")(x)))


# ----------------------------------------------------------------------------------------------
# Convolutional blocks


class ResnetBlock2D(nn.Module):
  """GroupNorm-SiLU-conv residual block, with an optional additive time embedding.

  `__call__(x [B, H, W, C_in], temb [B, T] or None) -> [B, H, W, out_channels]`. A 1x1
  `conv_shortcut` is created when the channel count changes. `temb` is only accepted when
  `use_time_embedding` (a `time_emb_proj` Dense is then part of the block).
  """

  out_channels: int
  use_time_embedding: bool = True
  groups: int = 32
  eps: float = 1e-5
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    conv = lambda name: nn.Conv(
      self.out_channels, (3, 3), padding=((1, 1), (1, 1)), name=name, **kw
    )
    norm = lambda name: nn.GroupNorm(num_groups=self.groups, epsilon=self.eps, name=name, **kw)
    h = conv("conv1")(nn.silu(norm("norm1")(x)))
    if self.use_time_embedding:
      if temb is None:
        raise ValueError("ResnetBlock2D(use_time_embedding=True) needs a time embedding")
      h = h + nn.Dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))[:, None, None]
    elif temb is not None:
      raise ValueError("ResnetBlock2D(use_time_embedding=False) got a time embedding")
    h = conv("conv2")(nn.silu(norm("norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), name="conv_shortcut", **kw)(x)
    out = x + h
    if self.output_scale_factor != 1.0:
      out = out / self.output_scale_factor
    return out


class Downsample2D(nn.Module):
  """3x3 stride-2 conv named `conv`. `[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), out_channels]`."""

  out_channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.padding
    if p == 0:  # the VAE encoder pads (0, 1) on the bottom/right only
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(
      self.out_channels,
      (3, 3),
      strides=(2, 2),
      padding=((p, p), (p, p)),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="conv",
    )(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour x2 upsampling then a 3x3 conv, named `conv`. `[B,H,W,C] -> [B,2H,2W,C']`."""

  out_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return nn.Conv(
      self.out_channels,
      (3, 3),
      padding=((1, 1), (1, 1)),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="conv",
    )(x)


# ----------------------------------------------------------------------------------------------
# Attention


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  implementation: str = "auto",
  query_chunk_size: int | None = None,
) -> jax.Array:
  """Softmax attention `softmax(q k^T / sqrt(D)) v`, logits and softmax in float32.

  Args:
    q: `[B, L_q, H, D]` queries.
    k, v: `[B, L_kv, H, D]` keys and values.
    implementation: 'xla' (one fused XLA computation, forms `[B, H, L_q, L_kv]` logits),
      'chunked' (query chunks one after another, so at most `[B, H, chunk, L_kv]` logits exist at
      once), 'cudnn' (GPU flash attention, no logits in memory; bf16/fp16 inputs, head width a
      multiple of 8 and <= 256 on Hopper; float32 inputs fall back to 'auto'), or 'auto'
      ('xla' when the logits block is small, 'chunked' otherwise).
    query_chunk_size: queries per chunk for 'chunked' (default: the largest power of two that
      keeps a chunk's logits within about 32M elements).

  Returns:
    `[B, L_q, H, D]` in the dtype of `q`.
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
      f"attention implementation {implementation!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
    )
  b, lq, h, _ = q.shape
  lk = k.shape[1]
  if implementation == "cudnn":
    if q.dtype in (jnp.bfloat16, jnp.float16):
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    implementation = "auto"  # cuDNN flash attention takes half precision only
  if implementation == "auto":
    implementation = "xla" if b * h * lq * lk <= _MAX_LOGITS_ELEMENTS else "chunked"
  if implementation == "xla":
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  chunk = query_chunk_size or max(1, _MAX_LOGITS_ELEMENTS // (b * h * lk))
  chunk = min(lq, 1 << (chunk.bit_length() - 1))
  if lq % chunk:
    chunk = math.gcd(lq, chunk)
  if chunk == lq:
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")
  q_chunks = jnp.moveaxis(q.reshape(b, lq // chunk, chunk, *q.shape[2:]), 1, 0)
  out = jax.lax.map(
    lambda qc: jax.nn.dot_product_attention(qc, k, v, implementation="xla"), q_chunks
  )
  return jnp.moveaxis(out, 0, 1).reshape(q.shape)


def attention_probabilities(q: jax.Array, k: jax.Array) -> jax.Array:
  """Explicit softmax attention weights. `q [B, L_q, H, D], k [B, L_kv, H, D] -> [B, H, L_q, L_kv]`
  float32 (use only where the maps themselves are wanted: it forms the whole logits block)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  return jax.nn.softmax(logits, axis=-1)


class Attention(nn.Module):
  """Multi-head attention with `to_q`, `to_k`, `to_v`, `to_out_0` (diffusers `Attention`).

  `__call__(x [B, L, C], context [B, S, C_ctx] or None (self-attention), return_probs=False)
  -> out [B, L, out_dim or C]`, or `(out, probs [B, heads, L, S] float32)` when `return_probs`.
  """

  heads: int
  head_dim: int
  out_dim: int | None = None
  qkv_bias: bool = False
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: jax.Array, context: jax.Array | None = None, return_probs: bool = False
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = self.heads * self.head_dim
    context = x if context is None else context
    split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)
    q = split(nn.Dense(inner, use_bias=self.qkv_bias, name="to_q", **kw)(x))
    k = split(nn.Dense(inner, use_bias=self.qkv_bias, name="to_k", **kw)(context))
    v = split(nn.Dense(inner, use_bias=self.qkv_bias, name="to_v", **kw)(context))
    probs = None
    if return_probs:
      probs = attention_probabilities(q, k)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    else:
      out = attention(q, k, v, implementation=self.implementation)
    out = out.reshape(*out.shape[:2], inner)
    out = nn.Dense(self.out_dim or x.shape[-1], name="to_out_0", **kw)(out)
    return (out, probs) if return_probs else out


class GEGLU(nn.Module):
  """`proj` (C -> 2*inner), then `hidden * gelu(gate)` (exact GELU). `[..., C] -> [..., inner]`."""

  inner: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Dense(2 * self.inner, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)
    hidden, gate = jnp.split(h, 2, axis=-1)
    return hidden * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """GEGLU feed-forward: `net_0` (GEGLU, C -> mult*C) then `net_2` (Dense, -> C)."""

  mult: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GEGLU(self.mult * x.shape[-1], name="net_0", **kw)(x)
    return nn.Dense(x.shape[-1], name="net_2", **kw)(h)


class BasicTransformerBlock(nn.Module):
  """Self-attention, cross-attention and GEGLU MLP, each pre-LayerNorm and residual.

  `__call__(x [B, L, C], context [B, S, C_ctx], return_probs) -> x [B, L, C]`, or
  `(x, cross_probs [B, heads, L, S])` when `return_probs`.
  """

  heads: int
  head_dim: int
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, return_probs: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = lambda name: Attention(
      self.heads, self.head_dim, implementation=self.implementation, name=name, **kw
    )
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, name=name, **kw)
    x = x + attn("attn1")(norm("norm1")(x))
    cross = attn("attn2")(norm("norm2")(x), context, return_probs=return_probs)
    cross, probs = cross if return_probs else (cross, None)
    x = x + cross
    x = x + FeedForward(name="ff", **kw)(norm("norm3")(x))
    return (x, probs) if return_probs else x


class Transformer2DModel(nn.Module):
  """Spatial transformer: GroupNorm, `proj_in`, transformer blocks, `proj_out`, residual.

  `proj_in`/`proj_out` are 1x1 convs (SD 1.x) or Dense layers (`use_linear_projection`, SD 2);
  both act on channels, only the parameter shapes differ.

  `__call__(x [B, H, W, C], context [B, S, C_ctx], return_probs) -> [B, H, W, C]`, or
  `(out, probs)` with `probs` a tuple of per-block cross-attention maps `[B, heads, H*W, S]`.
  """

  heads: int
  head_dim: int
  depth: int = 1
  use_linear_projection: bool = False
  groups: int = 32
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, return_probs: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, hgt, wid, c = x.shape
    inner = self.heads * self.head_dim
    if self.use_linear_projection:
      proj = lambda features, name: nn.Dense(features, name=name, **kw)
    else:
      proj = lambda features, name: nn.Conv(features, (1, 1), name=name, **kw)
    h = nn.GroupNorm(num_groups=self.groups, epsilon=1e-6, name="norm", **kw)(x)
    h = proj(inner, "proj_in")(h).reshape(b, hgt * wid, inner)
    all_probs = []
    for i in range(self.depth):
      block = BasicTransformerBlock(
        self.heads,
        self.head_dim,
        implementation=self.implementation,
        name=f"transformer_blocks_{i}",
        **kw,
      )
      h = block(h, context, return_probs=return_probs)
      if return_probs:
        h, probs = h
        all_probs.append(probs)
    h = proj(c, "proj_out")(h.reshape(b, hgt, wid, inner))
    out = h + x
    return (out, tuple(all_probs)) if return_probs else out
