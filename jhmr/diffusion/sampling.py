"""Deterministic DDIM sampling and inversion as `jax.lax.scan` loops over a static timestep grid.

ScoreHMR's grid is {0, step, 2 step, ..., t_start} (t_start=50, step=2 by default). Inversion walks
it upwards starting from a clean pose treated as level 0 (the network is first evaluated at t=0);
sampling walks it downwards and ends at level 0 (alpha_bar_0 ~ 0.99996, not 1). Along with the
final x, sampling returns the x0 predicted at the last step, which is what ScoreHMR outputs.
`eps_fn(x, t)` takes x [B, D] and a scalar int32 t.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.diffusion.ddim import ddim_step, predict_x0


def timesteps(t_start: int, step_size: int) -> np.ndarray:
  """The DDIM grid [0, step, ..., <= t_start] as int32 (static, from Python ints)."""
  if step_size < 1 or t_start < step_size:
    raise ValueError(f"need 1 <= step_size <= t_start, got t_start={t_start}, step={step_size}")
  return np.arange(0, t_start + 1, step_size, dtype=np.int32)


def inversion_pairs(t_start: int, step_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(from, to) timesteps of the inversion steps: (0, s), (s, 2s), ..., upwards."""
  grid = timesteps(t_start, step_size)
  return grid[:-1], grid[1:]


def sampling_pairs(t_start: int, step_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(from, to) timesteps of the sampling steps: (t*, t*-s), ..., (s, 0), downwards."""
  grid = timesteps(t_start, step_size)[::-1]
  return grid[:-1], grid[1:]


def _step(eps_fn, alphas_cumprod, clip_x0):
  def body(x, pair):
    t, t_next = pair
    eps = eps_fn(x, t)
    x0 = predict_x0(x, eps, alphas_cumprod[t])
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
    return ddim_step(x0, eps, alphas_cumprod[t_next]), x0

  return body


def ddim_invert(eps_fn: Callable, x, alphas_cumprod, *, t_start: int = 50, step_size: int = 2):
  """DDIM inversion of a clean x [B, D] (treated as level 0) to level t_start. Returns [B, D]."""
  src, dst = inversion_pairs(t_start, step_size)
  ab = jnp.asarray(alphas_cumprod)
  x, _ = jax.lax.scan(_step(eps_fn, ab, False), x, (jnp.asarray(src), jnp.asarray(dst)))
  return x


def ddim_sample(
  eps_fn: Callable,
  x,
  alphas_cumprod,
  *,
  t_start: int = 50,
  step_size: int = 2,
  clip_x0: bool = False,
):
  """Deterministic DDIM from level t_start down to level 0.

  Args:
    eps_fn: noise prediction `eps_fn(x [B, D], t scalar int32) -> [B, D]`.
    x: [B, D] sample at level t_start (noise, or an inverted pose).
    alphas_cumprod: [T].
    clip_x0: clip each x0 estimate to [-1, 1] (vanilla sampling; guided refinement does not).

  Returns:
    (x at level 0 [B, D], x0 predicted at the last step [B, D]).
  """
  src, dst = sampling_pairs(t_start, step_size)
  ab = jnp.asarray(alphas_cumprod)
  x, x0s = jax.lax.scan(_step(eps_fn, ab, clip_x0), x, (jnp.asarray(src), jnp.asarray(dst)))
  return x, x0s[-1]


def net_eps_fn(apply_fn: Callable, params, cond=None) -> Callable:
  """Adapts `apply_fn(params, x [B, D], t [B], cond)` (e.g. `ScoreNet.apply`) to `eps_fn(x, t)`."""

  def eps_fn(x, t):
    return apply_fn(params, x, jnp.full(x.shape[:-1], t, jnp.int32), cond)

  return eps_fn
