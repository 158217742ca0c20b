"""Deterministic DDIM maths (eta = 0), shared by ScoreHMR and the Stable Diffusion schedulers.

With alpha_bar the cumulative product of (1 - beta):
  x0_hat = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
  x_s    = sqrt(alpha_bar_s) * x0_hat + sqrt(1 - alpha_bar_s) * eps
The same step moves towards noise (s > t, DDIM inversion) or towards data (s < t, sampling).
"""

from __future__ import annotations

import jax.numpy as jnp


def predict_x0(x_t, eps, alpha_bar_t):
  """One-step clean estimate from the noise prediction. Shapes broadcast; returns x_t's shape."""
  return (x_t - jnp.sqrt(1.0 - alpha_bar_t) * eps) / jnp.sqrt(alpha_bar_t)


def predict_eps(x_t, x0, alpha_bar_t):
  """Noise implied by a clean estimate x0 at x_t (inverse of `predict_x0`)."""
  return (x_t - jnp.sqrt(alpha_bar_t) * x0) / jnp.sqrt(1.0 - alpha_bar_t)


def ddim_step(x0, eps, alpha_bar_next):
  """Deterministic DDIM update: re-noise the clean estimate x0 with eps to level alpha_bar_next."""
  return jnp.sqrt(alpha_bar_next) * x0 + jnp.sqrt(1.0 - alpha_bar_next) * eps
