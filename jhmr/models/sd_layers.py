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
# On CPU, where blocks that stay in cache win (see `attention`): 'auto' forms the whole batch's
# logits at once when one sample's block is at most `_CPU_SAMPLE_LOGITS` elements and the
# batch's at most `_CPU_BATCH_LOGITS`; otherwise it runs one sample and one query chunk of at
# most `_CPU_STEP_LOGITS` logits at a time.
_CPU_SAMPLE_LOGITS = 1 << 20
_CPU_BATCH_LOGITS = 1 << 23
_CPU_STEP_LOGITS = 1 << 21
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


class GroupNorm(nn.Module):
  """GroupNorm over `[B, ..., C]` with per-channel `scale` and `bias` (flax `nn.GroupNorm`'s
  parameters and statistics: biased variance `E[x^2] - E[x]^2`, in float32).

  One reshape to `[B, N, G, C/G]` and two fused reductions; on XLA CPU this is ~4x faster than
  `nn.GroupNorm` (3.7 vs 0.9 ms at 32x32x320). Output in `dtype`.
  """

  num_groups: int = 32
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    xg = x.astype(jnp.float32).reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)
    mean = xg.mean((1, 3), keepdims=True)
    var = jnp.maximum(jnp.square(xg).mean((1, 3), keepdims=True) - jnp.square(mean), 0.0)
    y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


# Largest image (H * W) for which `Conv3x3` runs as one patches-times-kernel matmul on CPU.
_IM2COL_MAX_PIXELS = 64


class Conv3x3(nn.Module):
  """3x3 stride-1 'same' convolution, NHWC, with `kernel [3, 3, C_in, C_out]` and `bias [C_out]`
  (the parameters and initialisers of `nn.Conv(features, (3, 3), padding=1)`).

  On CPU, small images (H * W <= 64: SD's 8x8 and 4x4 levels at DPMesh's 32x32 latents) run as
  one matmul of the 9 shifted copies `[B*H*W, 9*C_in]` with the kernel `[9*C_in, C_out]`, which
  reads the (large, 1280-channel) kernel once and is ~2x faster there than XLA CPU's
  convolution; larger images and other backends use `lax.conv_general_dilated`.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features), self.param_dtype
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if h * w <= _IM2COL_MAX_PIXELS and jax.default_backend() == "cpu":
      xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      patches = jnp.concatenate(
        [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], -1
      )
      y = patches.reshape(b * h * w, 9 * c) @ kernel.reshape(9 * c, self.features)
      y = y.reshape(b, h, w, self.features)
    else:
      y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    return y + bias


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
    conv = lambda name: Conv3x3(self.out_channels, name=name, **kw)
    norm = lambda name: GroupNorm(num_groups=self.groups, epsilon=self.eps, name=name, **kw)
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
    return Conv3x3(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(
      x
    )


# ----------------------------------------------------------------------------------------------
# Attention


def _attention_core(q: jax.Array, kt: jax.Array, vt: jax.Array) -> jax.Array:
  """`q [B, H, L_q, D]` (already scaled by 1/sqrt(D)), `kt [B, H, D, L_kv]`, `vt [B, H, L_kv, D]`
  -> `[B, H, L_q, D]` float32. Logits and exponentials in float32; the row sums divide the
  (small) output instead of the (large) probability block."""
  logits = jnp.einsum("bhqd,bhdk->bhqk", q, kt, preferred_element_type=jnp.float32)
  e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(vt.dtype), vt, preferred_element_type=jnp.float32)
  return out / e.sum(-1, keepdims=True)


def _query_chunk(heads_lk: int, lq: int, limit: int, requested: int | None) -> int:
  """Queries per chunk: `requested`, else the largest power of two whose logits (`heads_lk`
  elements per query) stay within `limit`; then the largest divisor of `L_q` not above it."""
  chunk = requested or max(1, limit // heads_lk)
  chunk = min(lq, 1 << (chunk.bit_length() - 1))
  return math.gcd(lq, chunk) if lq % chunk else chunk


def _chunked_attention(qt: jax.Array, kt: jax.Array, vt: jax.Array, samples: int, chunk: int):
  """`_attention_core` over `samples` batch elements and `chunk` queries at a time, one step
  after another (`lax.map`), so at most `[samples, H, chunk, L_kv]` logits exist at once."""
  b, h, lq, d = qt.shape
  groups = lambda t: t.reshape(b // samples, samples, *t.shape[1:])

  def one_group(operands):
    q, k, v = operands  # [samples, H, L_q, D], [samples, H, D, L_kv], [samples, H, L_kv, D]
    if chunk == lq:
      return _attention_core(q, k, v)
    q_chunks = jnp.moveaxis(q.reshape(samples, h, lq // chunk, chunk, d), 2, 0)
    out = jax.lax.map(lambda qc: _attention_core(qc, k, v), q_chunks)  # [n, s, H, chunk, D]
    return jnp.moveaxis(out, 0, 2).reshape(samples, h, lq, d)

  if samples == b:
    return one_group((qt, kt, vt))
  return jax.lax.map(one_group, (groups(qt), groups(kt), groups(vt))).reshape(b, h, lq, d)


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
      'chunked' (query chunks one after another, so only one chunk's logits exist at once: on
      accelerators `[B, H, chunk, L_kv]`; on CPU one sample at a time, `[1, H, chunk, L_kv]`),
      'cudnn' (GPU flash attention, no logits in memory; bf16/fp16 inputs, head width a multiple
      of 8 and <= 256 on Hopper; float32 inputs fall back to 'auto'), or 'auto'. 'auto' is 'xla'
      when the logits block is small and 'chunked' otherwise. "Small" is about 32M elements on
      accelerators. On CPU it is 1M elements per sample (4 MB) and 8M for the batch, and a
      chunk holds at most 2M: cache-sized blocks are 2-3x faster than one large block there
      (SD's 32x32 self-attention at batch 8, 8 heads x 1024 x 1024 logits per sample, on a
      2-core EPYC: about 66 ms in steps of one sample and 256 queries, 116-124 ms in 16-query
      chunks over the whole batch, 210-230 ms unchunked).
    query_chunk_size: queries per chunk for 'chunked' (default: the largest power of two that
      keeps a chunk's logits within the limit above).

  Returns:
    `[B, L_q, H, D]` in the dtype of `q`.
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(
      f"attention implementation {implementation!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
    )
  b, lq, h, d = q.shape
  lk = k.shape[1]
  if implementation == "cudnn":
    if q.dtype in (jnp.bfloat16, jnp.float16):
      return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    implementation = "auto"  # cuDNN flash attention takes half precision only
  on_cpu = jax.default_backend() == "cpu"
  if implementation == "auto":
    if on_cpu:
      small = h * lq * lk <= _CPU_SAMPLE_LOGITS and b * h * lq * lk <= _CPU_BATCH_LOGITS
    else:
      small = b * h * lq * lk <= _MAX_LOGITS_ELEMENTS
    implementation = "xla" if small else "chunked"
  # Heads-major operands, transposed once (not once per query chunk).
  qt = jnp.transpose(q * jnp.asarray(1.0 / math.sqrt(d), q.dtype), (0, 2, 1, 3))
  kt = jnp.transpose(k, (0, 2, 3, 1))
  vt = jnp.transpose(v, (0, 2, 1, 3))
  if implementation == "xla":
    out = _attention_core(qt, kt, vt)
  else:
    samples = 1 if on_cpu else b
    limit = _CPU_STEP_LOGITS if on_cpu else _MAX_LOGITS_ELEMENTS
    chunk = _query_chunk(samples * h * lk, lq, limit, query_chunk_size)
    out = _chunked_attention(qt, kt, vt, samples, chunk)
  return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


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
    h = GroupNorm(num_groups=self.groups, epsilon=1e-6, name="norm", **kw)(x)
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
