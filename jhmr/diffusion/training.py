"""DDPM training pieces as pure functions: the forward diffusion and the epsilon-prediction loss.

ScoreHMR trains with t ~ U{0..T-1}, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, and the mean squared
error between the predicted and the true eps over all samples that carry a label and all
dimensions (p2 weighting off). The EMA of the parameters (ScoreHMR's `ema_pytorch.EMA`) is the
trainer's, `jhmr.train.state.ema_update`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def q_sample(x0, t, noise, alphas_cumprod):
  """Forward diffusion: x0 [B, D], t [B] int, noise [B, D] -> x_t [B, D]."""
  a = jnp.asarray(alphas_cumprod)[t][:, None]
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def diffusion_loss(eps_fn: Callable, key, x0, alphas_cumprod, *, cond=None, mask=None) -> jax.Array:
  """Epsilon-prediction L2 loss (a scalar).

  Args:
    eps_fn: `eps_fn(x_t [B, D], t [B], cond) -> eps_hat [B, D]` (e.g. a bound `ScoreNet.apply`).
    key: PRNG key for t and the noise.
    x0: [B, D] clean samples (6D poses).
    alphas_cumprod: [T] cumulative alphas.
    cond: optional [B, C] condition passed through to `eps_fn`.
    mask: optional [B] bool/float; samples with 0 are excluded from the mean (the official code
      drops samples without a pose label). An all-zero mask gives loss 0.

  Returns:
    mean over kept samples and all D dimensions of (eps_hat - eps)^2.
  """
  t_key, n_key = jax.random.split(key)
  num_timesteps = jnp.shape(alphas_cumprod)[0]
  t = jax.random.randint(t_key, x0.shape[:1], 0, num_timesteps)
  noise = jax.random.normal(n_key, x0.shape, x0.dtype)
  eps_hat = eps_fn(q_sample(x0, t, noise, alphas_cumprod), t, cond)
  per_sample = jnp.mean(jnp.square(eps_hat - noise), axis=-1)
  if mask is None:
    return jnp.mean(per_sample)
  mask = jnp.asarray(mask, per_sample.dtype)
  return jnp.sum(per_sample * mask) / jnp.maximum(jnp.sum(mask), 1.0)
