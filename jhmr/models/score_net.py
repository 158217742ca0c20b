"""ScoreHMR's denoising network: a time- and image-conditioned residual MLP over 6D poses.

Functionally identical to the official `FC` model (statho/ScoreHMR, research/scorehmr.md section 1):

  x [B, 144] (24 joints x 6D, global orient first), t [B] integer timesteps, c [B, C] features
  tau = Linear(576)(GELU(Linear(576)(sinusoid_144(t))))
  h   = Linear(144)(x)
  3 x block:  scale, shift = split(Linear(288)(SiLU(tau)));  h = h * (1 + scale) + shift
              h = h + GELU(Linear(144)(LN(GELU(Linear(1024)(LN(concat(h, c)))))))
  eps = Linear(144)(h)

GELU is the exact (erf) one and LayerNorm uses eps 1e-5, as in PyTorch. `cond_dim=0` gives an
unconditional prior. Initialisation follows PyTorch's `nn.Linear` default, so a fresh model
behaves like a fresh official one. `use_betas=True` adds the official parallel 10-D betas branch
(input [B, 154], betas last). Parameter names mirror the PyTorch module (`time_mlp_1`,
`blocks_0/mlp_1`, `blocks_0/block/linear_layer1`, ...) so `jhmr.convert.scorehmr` is a rename table.

Refinement evaluates the network hundreds of times with the same condition. `encode_condition`
and `denoise_cached` split the computation exactly: the condition's share of each block's first
LayerNorm + Linear (the 3072 x 1024 matmul that dominates the cost) is computed once, and each step
only pays for the 144-D part. See `denoise_cached` for the algebra.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-5


def gelu(x):
  """Exact (erf) GELU, PyTorch's `nn.GELU()` default."""
  return jax.nn.gelu(x, approximate=False)


def torch_linear_init(key, shape, dtype=jnp.float32):
  """PyTorch's default `nn.Linear` init for a flax kernel [in, out]: U(-1/sqrt(in), 1/sqrt(in))."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def Dense(features: int, name: str, fan_in: int) -> nn.Dense:
  """`nn.Dense` initialised like PyTorch's `nn.Linear` (weights and bias U(+-1/sqrt(fan_in)))."""

  def bias_init(key, shape, dtype=jnp.float32):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Dense(features, name=name, kernel_init=torch_linear_init, bias_init=bias_init)


def sinusoidal_embedding(t, dim: int):
  """Sinusoidal timestep embedding, sin first: [...] -> [..., dim].

  freq_k = exp(-k ln(10000) / (dim/2 - 1)), k = 0..dim/2-1 (the official `(half - 1)` form).
  """
  if dim % 2 or dim < 4:
    raise ValueError(f"sinusoidal embedding needs an even dim >= 4, got {dim}")
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
  args = jnp.asarray(t, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeMLP(nn.Module):
  """sinusoid(dim) -> Linear(time_dim) -> GELU -> Linear(time_dim). t [...] -> [..., time_dim]."""

  dim: int
  time_dim: int

  @nn.compact
  def __call__(self, t):
    h = Dense(self.time_dim, "1", self.dim)(sinusoidal_embedding(t, self.dim))
    return Dense(self.time_dim, "3", self.time_dim)(gelu(h))


class MLPBlock(nn.Module):
  """GELU(Linear(out)(LN(GELU(Linear(hidden)(LN(z)))))): [..., in] -> [..., out]."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, z):
    h = nn.LayerNorm(epsilon=LN_EPS, name="layer_norm1")(z)
    h = gelu(Dense(self.hidden, "linear_layer1", z.shape[-1])(h))
    h = nn.LayerNorm(epsilon=LN_EPS, name="layer_norm2")(h)
    return gelu(Dense(self.out, "linear_layer2", self.hidden)(h))


class ResMLPBlock(nn.Module):
  """Time-modulated residual block: x [..., d], tau [..., time_dim], c [..., C] -> [..., d]."""

  dim: int
  hidden: int

  @nn.compact
  def __call__(self, x, tau, cond):
    scale_shift = Dense(2 * self.dim, "mlp_1", tau.shape[-1])(nn.silu(tau))
    scale, shift = jnp.split(scale_shift, 2, axis=-1)
    x = x * (1.0 + scale) + shift
    z = jnp.concatenate([x, cond], axis=-1) if cond is not None else x
    return x + MLPBlock(self.hidden, self.dim, name="block")(z)


def _branch(module, name, x, tau_t, cond, dim, hidden, num_blocks):
  """init_mlp -> blocks -> final_mlp of one branch (pose or betas), built inside `module`."""
  h = Dense(dim, f"init_mlp{name}", dim)(x)
  tau = TimeMLP(dim, 4 * dim, name=f"time_mlp{name}")(tau_t)
  for i in range(num_blocks):
    h = ResMLPBlock(dim, hidden, name=f"blocks{name}_{i}")(h, tau, cond)
  return Dense(dim, f"final_mlp{name}", dim)(h)


class ScoreNet(nn.Module):
  """The ScoreHMR denoiser. Defaults are the released model (11,307,024 parameters).

  Attributes:
    pose_dim: 6D pose size, 24 x 6 = 144.
    cond_dim: image-feature size of the pose branch (3072 for PARE, 2048 for ProHMR, 0 for none).
    hidden: hidden width of each block's MLP.
    num_blocks: residual blocks of the pose branch.
    use_betas: adds the betas branch; inputs become [B, pose_dim + betas_dim].
    betas_dim, betas_cond_dim, num_blocks_betas: the betas branch (10, 1536 for PARE, 2).
    shared_cond: the betas branch sees the same features as the pose branch (ProHMR); otherwise
      the condition is [B, cond_dim + betas_cond_dim], split pose part first (PARE).
  """

  pose_dim: int = 144
  cond_dim: int = 3072
  hidden: int = 1024
  num_blocks: int = 3
  use_betas: bool = False
  betas_dim: int = 10
  betas_cond_dim: int = 1536
  num_blocks_betas: int = 2
  shared_cond: bool = False

  @property
  def input_dim(self) -> int:
    return self.pose_dim + (self.betas_dim if self.use_betas else 0)

  @property
  def total_cond_dim(self) -> int:
    if self.use_betas and not self.shared_cond:
      return self.cond_dim + self.betas_cond_dim
    return self.cond_dim

  def split_condition(self, cond):
    """[B, total_cond_dim] (or None) -> (pose condition, betas condition), each maybe None."""
    if self.total_cond_dim == 0:
      if cond is not None and cond.shape[-1] != 0:
        raise ValueError(f"unconditional ScoreNet got a condition of shape {cond.shape}")
      return None, None
    if cond is None or cond.shape[-1] != self.total_cond_dim:
      got = None if cond is None else cond.shape
      raise ValueError(f"ScoreNet expects a condition [..., {self.total_cond_dim}], got {got}")
    if not self.use_betas or self.shared_cond:
      return cond, cond
    return cond[..., : self.cond_dim], cond[..., self.cond_dim :]

  @nn.compact
  def __call__(self, x, t, cond=None):
    """Noise prediction.

    Args:
      x: [..., input_dim] noisy 6D pose (+ scaled betas last when `use_betas`).
      t: [...] or scalar integer timesteps (0..T-1).
      cond: [..., total_cond_dim] image features, or None when `cond_dim == 0`.

    Returns:
      eps [..., input_dim].
    """
    if x.shape[-1] != self.input_dim:
      raise ValueError(f"ScoreNet expects x [..., {self.input_dim}], got {x.shape}")
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:-1])
    cond_pose, cond_betas = self.split_condition(cond)
    x_pose = x[..., : self.pose_dim]
    out = _branch(self, "", x_pose, t, cond_pose, self.pose_dim, self.hidden, self.num_blocks)
    if not self.use_betas:
      return out
    out_betas = _branch(
      self,
      "_betas",
      x[..., self.pose_dim :],
      t,
      cond_betas if self.betas_cond_dim else None,
      self.betas_dim,
      self.hidden,
      self.num_blocks_betas,
    )
    return jnp.concatenate([out, out_betas], axis=-1)


# --- Exact fast path for repeated evaluation with a fixed condition ------------------------------
#
# LN(z) for z = [h, c] (sizes d and C, n = d + C) uses mu = (sum h + sum c)/n and
# var = (sum (h-mu)^2 + sum (c-mu)^2)/n, where sum (c-mu)^2 = C var_c + C (mean_c - mu)^2.
# Then Linear1(LN(z)) = (W_h (g_h h) + W_c (g_c c) - mu W g) / sigma + W b + bias, with
# W = [W_h; W_c] the kernel rows and g, b the LN scale/bias. Everything about c is a
# per-sample constant.


def encode_condition(params, cond, net: ScoreNet):
  """Per-block constants of the pose branch for a fixed condition.

  Args:
    params: ScoreNet variables (`{'params': ...}` or the inner dict).
    cond: [B, total_cond_dim] features (ignored / may be None when `cond_dim == 0`).
    net: the module (its config).

  Returns:
    A pytree: per block `wc` [B, hidden] (W_c (g_c c)), `sum_c` [B], `ssq_c` [B] (sum of squared
    deviations from the mean of c).
  """
  if net.use_betas:
    raise NotImplementedError("the cached path covers the pose-only network (the released one)")
  p = params.get("params", params)
  cond_pose, _ = net.split_condition(cond)
  cache = []
  for i in range(net.num_blocks):
    blk = p[f"blocks_{i}"]["block"]
    if cond_pose is None:
      cache.append(None)
      continue
    g_c = blk["layer_norm1"]["scale"][net.pose_dim :]
    w_c = blk["linear_layer1"]["kernel"][net.pose_dim :]
    mean_c = jnp.mean(cond_pose, axis=-1)
    cache.append(
      {
        "wc": (cond_pose * g_c) @ w_c,
        "sum_c": jnp.sum(cond_pose, axis=-1),
        "ssq_c": jnp.sum(jnp.square(cond_pose - mean_c[..., None]), axis=-1),
      }
    )
  return cache


def time_embedding(params, t, net: ScoreNet):
  """Per-timestep modulation of the pose branch: t [...] -> list of (scale, shift) [..., d]."""
  p = params.get("params", params)
  dense = lambda q, x: x @ q["kernel"] + q["bias"]
  tau = dense(
    p["time_mlp"]["3"], gelu(dense(p["time_mlp"]["1"], sinusoidal_embedding(t, net.pose_dim)))
  )
  out = []
  for i in range(net.num_blocks):
    ss = dense(p[f"blocks_{i}"]["mlp_1"], jax.nn.silu(tau))
    out.append(jnp.split(ss, 2, axis=-1))
  return out


def denoise_cached(params, x, t, cache, net: ScoreNet):
  """Same value as `net.apply(params, x, t, cond)` given `cache = encode_condition(...)`.

  Args:
    x: [B, pose_dim]; t: scalar timestep shared by the batch (or [B]); cache: from
      `encode_condition` for the same B.

  Returns:
    eps [B, pose_dim].
  """
  p = params.get("params", params)
  dense = lambda q, v: v @ q["kernel"] + q["bias"]
  d = net.pose_dim
  n = d + (net.cond_dim if cache[0] is not None else 0)
  h = dense(p["init_mlp"], x)
  for i, (scale, shift) in enumerate(time_embedding(params, t, net)):
    blk = p[f"blocks_{i}"]["block"]
    h = h * (1.0 + scale) + shift
    ln1, lin1 = blk["layer_norm1"], blk["linear_layer1"]
    g, b, w = ln1["scale"], ln1["bias"], lin1["kernel"]
    c = cache[i]
    if c is None:
      z = nn.LayerNorm(epsilon=LN_EPS).apply({"params": ln1}, h)
      y = dense(lin1, z)
    else:
      sum_h = jnp.sum(h, axis=-1)
      mu = (sum_h + c["sum_c"]) / n
      mean_h = sum_h / d
      n_c = n - d
      ssq = (
        jnp.sum(jnp.square(h - mean_h[:, None]), axis=-1)
        + d * jnp.square(mean_h - mu)
        + c["ssq_c"]
        + n_c * jnp.square(c["sum_c"] / n_c - mu)
      )
      inv_sigma = jax.lax.rsqrt(ssq / n + LN_EPS)
      wg = g @ w  # [hidden]
      y = (((h * g[:d]) @ w[:d] + c["wc"]) - mu[:, None] * wg) * inv_sigma[:, None]
      y = y + (b @ w + lin1["bias"])
    y = gelu(y)
    y = nn.LayerNorm(epsilon=LN_EPS).apply({"params": blk["layer_norm2"]}, y)
    h = h + gelu(dense(blk["linear_layer2"], y))
  return dense(p["final_mlp"], h)


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
