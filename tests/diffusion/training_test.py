"""Diffusion loss and EMA (against ema-pytorch itself as the oracle)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.diffusion.training import EMAConfig, diffusion_loss, ema_init, ema_update, q_sample

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


def test_ema_matches_ema_pytorch():
  torch = pytest.importorskip("torch")
  ema_pytorch = pytest.importorskip("ema_pytorch")
  torch.manual_seed(0)
  online = torch.nn.Linear(3, 2)
  ref = ema_pytorch.EMA(online, beta=0.995, update_every=10)
  to_tree = lambda m: {"w": m.weight.detach().numpy().copy(), "b": m.bias.detach().numpy().copy()}
  state = ema_init(to_tree(online))
  update = jax.jit(ema_update)
  rng = np.random.default_rng(0)
  for i in range(260):
    with torch.no_grad():
      online.weight.add_(torch.from_numpy(rng.normal(size=(2, 3)).astype(np.float32)))
      online.bias.add_(torch.from_numpy(rng.normal(size=2).astype(np.float32)))
    ref.update()
    state = update(state, to_tree(online))
    want = to_tree(ref.ema_model)
    np.testing.assert_allclose(state.params["w"], want["w"], rtol=1e-5, atol=1e-5, err_msg=f"{i}")
    np.testing.assert_allclose(state.params["b"], want["b"], rtol=1e-5, atol=1e-5, err_msg=f"{i}")
  assert int(state.step) == 260


def test_ema_config_is_static():
  cfg = EMAConfig(beta=0.9, update_every=1, update_after_step=0)
  state = ema_init({"a": jnp.zeros(2)})
  state = ema_update(state, {"a": jnp.ones(2)}, cfg)  # first call copies
  np.testing.assert_allclose(state.params["a"], 1.0)
  state = ema_update(state, {"a": jnp.zeros(2)}, cfg)  # step 1: epoch 1, decay 1-2^(-2/3)
  decay = 1 - 2 ** (-2 / 3)
  np.testing.assert_allclose(state.params["a"], decay, rtol=1e-6)
