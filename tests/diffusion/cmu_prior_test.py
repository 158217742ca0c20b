"""Slow: a small prior trained on real CMU poses keeps the inversion -> sampling round trip exact.

.venv/bin/pytest tests/diffusion/cmu_prior_test.py -m slow -q
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from jhmr.diffusion.sampling import ddim_invert, ddim_sample, net_eps_fn
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.diffusion.training import diffusion_loss
from jhmr.geometry import rotations
from jhmr.models.score_net import ScoreNet

AB = make_alphas_cumprod("cosine")


@pytest.mark.slow
def test_cmu_trained_prior_round_trip(shared_data_dir):
  from jhmr.body import load_body_model
  from jhmr.data.mocap import load_cmu

  motions = load_cmu(
    shared_data_dir / "cmu_mocap", subjects=["01"], body_model=load_body_model("anny-tiny")
  )
  orient = jnp.concatenate([jnp.asarray(m.global_orient) for m in motions.values()])
  body = jnp.concatenate([jnp.asarray(m.body_pose) for m in motions.values()])
  pose = jnp.concatenate([orient[:, None], body], axis=1)
  x_all = jnp.reshape(rotations.matrix_to_rot6d(rotations.axis_angle_to_matrix(pose)), (-1, 144))
  assert x_all.shape[0] >= 300
  x_train, x_test = x_all[::2], x_all[1::2][:128]

  net = ScoreNet(cond_dim=0, hidden=128)
  params = jax.jit(net.init)(jax.random.key(0), x_train[:1], jnp.zeros((1,), jnp.int32))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3, b1=0.9, b2=0.99))
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, key):
    k_idx, k_loss = jax.random.split(key)
    x0 = x_train[jax.random.randint(k_idx, (64,), 0, x_train.shape[0])]
    loss_fn = lambda p: diffusion_loss(functools.partial(net.apply, p), k_loss, x0, AB)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(300):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
  assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:5]) / 5

  eps_fn = net_eps_fn(net.apply, params)
  x_t = ddim_invert(eps_fn, x_test, AB, t_start=50, step_size=2)
  x_back, _ = ddim_sample(eps_fn, x_t, AB, t_start=50, step_size=2)
  assert float(jnp.mean(jnp.abs(x_back - x_test))) < 1e-3
