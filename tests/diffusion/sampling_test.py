"""DDIM grid, scan loops and the inversion -> sampling round trip (random and trained nets)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jhmr.diffusion.ddim import ddim_step, predict_x0
from jhmr.diffusion.sampling import (
  ddim_invert,
  ddim_sample,
  inversion_pairs,
  net_eps_fn,
  sampling_pairs,
  timesteps,
)
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.diffusion.training import diffusion_loss
from jhmr.models.score_net import ScoreNet

AB = make_alphas_cumprod("cosine")


def test_grid():
  assert timesteps(50, 2).tolist() == list(range(0, 51, 2))
  src, dst = inversion_pairs(50, 2)
  assert (src[0], dst[0], src[-1], dst[-1], len(src)) == (0, 2, 48, 50, 25)
  src, dst = sampling_pairs(50, 2)
  assert (src[0], dst[0], src[-1], dst[-1], len(src)) == (50, 48, 2, 0, 25)
  # The official validation sampler (start 999, step 50) really starts at 950.
  assert sampling_pairs(999, 50)[0][0] == 950
  with pytest.raises(ValueError, match="step_size"):
    timesteps(10, 0)


def test_scan_equals_python_loop():
  w = jax.random.normal(jax.random.key(0), (8, 8)) * 0.3
  eps_fn = lambda x, t: jnp.tanh(x @ w + 0.01 * t)
  x = jax.random.normal(jax.random.key(1), (3, 8))
  want = x
  for t, s in zip(*sampling_pairs(20, 4)):
    eps = eps_fn(want, t)
    x0 = predict_x0(want, eps, AB[t])
    want = ddim_step(x0, eps, AB[s])
  got, last_x0 = ddim_sample(eps_fn, x, AB, t_start=20, step_size=4)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(last_x0, x0, atol=1e-6)


def _round_trip_error(net, params, x, cond=None, t_start=50, step_size=2):
  eps_fn = net_eps_fn(net.apply, params, cond)

  @jax.jit
  def run(x):
    xt = ddim_invert(eps_fn, x, AB, t_start=t_start, step_size=step_size)
    return ddim_sample(eps_fn, xt, AB, t_start=t_start, step_size=step_size)

  x_back, _ = run(x)
  return float(jnp.mean(jnp.abs(x_back - x)))


def _poses(key, n, spread=0.3):
  """Synthetic pose-like vectors: low-rank spread about a fixed pose plus small full-rank noise."""

  k1, k2 = jax.random.split(key)
  mean = jax.random.uniform(jax.random.key(7), (144,), minval=-0.8, maxval=0.8)
  basis = jax.random.normal(jax.random.key(8), (6, 144)) / np.sqrt(6)
  return (
    mean + spread * jax.random.normal(k1, (n, 6)) @ basis + 0.05 * jax.random.normal(k2, (n, 144))
  )


def test_round_trip_random_network():
  net = ScoreNet(cond_dim=32, hidden=64)
  x = jax.random.uniform(jax.random.key(1), (16, 144), minval=-1, maxval=1)
  c = jax.random.normal(jax.random.key(2), (16, 32))
  params = jax.jit(net.init)(jax.random.key(0), x, jnp.zeros((16,), jnp.int32), c)
  assert _round_trip_error(net, params, x, c) < 1e-3


@pytest.fixture(scope="module")
def trained():
  """A tiny unconditional prior trained for 200 steps on synthetic poses."""
  net = ScoreNet(cond_dim=0, hidden=64, num_blocks=2)
  params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 144)), jnp.zeros((1,), jnp.int32))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3, b1=0.9, b2=0.99))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, key):
    k1, k2 = jax.random.split(key)
    x0 = _poses(k1, 64)
    loss_fn = lambda p: diffusion_loss(functools.partial(net.apply, p), k2, x0, AB)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(200):
    params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i))
    losses.append(float(loss))
  return net, params, losses


def test_training_reduces_loss(trained):
  _, _, losses = trained
  assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])


def test_round_trip_trained_network(trained):
  net, params, _ = trained
  x = _poses(jax.random.key(3), 32)
  assert _round_trip_error(net, params, x) < 1e-3


def test_trained_prior_denoises_towards_data(trained):
  """A sample noised to t=100 and denoised lands closer to the data manifold than it started."""
  net, params, _ = trained
  x0 = _poses(jax.random.key(4), 64)
  noise = jax.random.normal(jax.random.key(5), x0.shape)
  xt = jnp.sqrt(AB[100]) * x0 + jnp.sqrt(1 - AB[100]) * noise
  _, x0_hat = ddim_sample(net_eps_fn(net.apply, params), xt, AB, t_start=100, step_size=10)
  mean = jax.random.uniform(jax.random.key(7), (144,), minval=-0.8, maxval=0.8)
  basis = jax.random.normal(jax.random.key(8), (6, 144)) / np.sqrt(6)
  q, _ = np.linalg.qr(np.asarray(basis).T)  # orthonormal basis of the data subspace

  def off_manifold(x):
    r = np.asarray(x - mean)
    return np.linalg.norm(r - r @ q @ q.T, axis=-1).mean()

  assert off_manifold(x0_hat) < 0.7 * off_manifold(xt / jnp.sqrt(AB[100]))
