"""The diffusion loss and forward diffusion (the EMA is tested in tests/train/ema_test.py)."""

import jax
import numpy as np

from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.diffusion.training import diffusion_loss, q_sample

AB = make_alphas_cumprod("cosine")


def test_loss_matches_manual_computation():
  x0 = jax.random.normal(jax.random.key(0), (6, 5))
  eps_fn = lambda x, t, c: 0.5 * x + 1e-3 * t[:, None]
  key = jax.random.key(1)
  t_key, n_key = jax.random.split(key)
  t = jax.random.randint(t_key, (6,), 0, 1000)
  noise = jax.random.normal(n_key, x0.shape)
  xt = np.sqrt(AB[t])[:, None] * x0 + np.sqrt(1 - AB[t])[:, None] * noise
  per = np.mean((0.5 * xt + 1e-3 * np.asarray(t)[:, None] - noise) ** 2, axis=-1)
  np.testing.assert_allclose(diffusion_loss(eps_fn, key, x0, AB), per.mean(), rtol=1e-5)
  mask = np.array([1, 0, 1, 1, 0, 0], bool)
  got = diffusion_loss(eps_fn, key, x0, AB, mask=mask)
  np.testing.assert_allclose(got, per[mask].mean(), rtol=1e-5)
  assert float(diffusion_loss(eps_fn, key, x0, AB, mask=np.zeros(6))) == 0.0
  np.testing.assert_allclose(q_sample(x0, t, noise, AB), xt, rtol=1e-5, atol=1e-6)
