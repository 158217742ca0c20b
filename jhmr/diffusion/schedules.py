"""Noise schedules: betas and cumulative alphas, computed in float64 and returned as float32.

ScoreHMR uses the cosine schedule (T=1000, s=0.008, betas clipped at 0.999). Stable Diffusion uses
`scaled_linear` (sqrt-space linear between 0.00085 and 0.012); `linear` is the DDPM original.
"""

from __future__ import annotations

import math

import numpy as np


def cosine_betas(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
  """Cosine schedule (Nichol & Dhariwal 2021).

  alpha_bar(t) = cos^2(((t/T) + s)/(1 + s) * pi/2) / alpha_bar(0).

  Returns:
    betas [T] float64, with beta_t = 1 - alpha_bar(t+1)/alpha_bar(t) clipped to [0, max_beta].
  """
  x = np.linspace(0, num_timesteps, num_timesteps + 1, dtype=np.float64)
  alpha_bar = np.cos(((x / num_timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
  alpha_bar = alpha_bar / alpha_bar[0]
  return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
  """DDPM linear schedule; start/end are scaled by 1000/T as in the DDPM/ScoreHMR code. [T]."""
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(
  num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
):
  """Stable Diffusion's schedule: linear in sqrt(beta) (diffusers `scaled_linear`). [T]."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


SCHEDULES = {
  "cosine": cosine_betas,
  "linear": linear_betas,
  "scaled_linear": scaled_linear_betas,
}


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
  """Cumulative product of (1 - beta) in float64 -> float32 [T]."""
  return np.cumprod(1.0 - np.asarray(betas, np.float64)).astype(np.float32)


def make_alphas_cumprod(name: str, num_timesteps: int = 1000, **kwargs) -> np.ndarray:
  """`alphas_cumprod(SCHEDULES[name](num_timesteps, **kwargs))`; raises on unknown names."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown noise schedule {name!r}; valid: {sorted(SCHEDULES)}")
  return alphas_cumprod(SCHEDULES[name](num_timesteps, **kwargs))
