"""DDPM training pieces as pure functions: the epsilon-prediction loss and an EMA of parameters.

ScoreHMR trains with t ~ U{0..T-1}, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, and the mean squared
error between the predicted and the true eps over all samples that carry a label and all
dimensions (p2 weighting off). The EMA reproduces `ema_pytorch.EMA(beta=0.995, update_every=10)`
(version 0.8.3 semantics, lucidrains/ema-pytorch): the first update copies the online weights;
afterwards every `update_every`-th call copies them while `step <= update_after_step`, then moves
with decay min(beta, 1 - (1 + k)^(-power)), k = step - update_after_step.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
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


@flax.struct.dataclass
class EMAConfig:
  """ema-pytorch settings; ScoreHMR uses beta=0.995, update_every=10, the rest defaults."""

  beta: float = flax.struct.field(pytree_node=False, default=0.995)
  update_every: int = flax.struct.field(pytree_node=False, default=10)
  update_after_step: int = flax.struct.field(pytree_node=False, default=100)
  inv_gamma: float = flax.struct.field(pytree_node=False, default=1.0)
  power: float = flax.struct.field(pytree_node=False, default=2.0 / 3.0)
  min_value: float = flax.struct.field(pytree_node=False, default=0.0)


@flax.struct.dataclass
class EMAState:
  """The averaged parameters and the number of `ema_update` calls so far."""

  params: object
  step: jax.Array
  initted: jax.Array


def ema_init(params) -> EMAState:
  """A fresh EMA (not yet initialised: the first update copies the online weights)."""
  return EMAState(
    params=jax.tree.map(jnp.asarray, params),
    step=jnp.zeros((), jnp.int32),
    initted=jnp.zeros((), bool),
  )


def ema_decay(step, config: EMAConfig | None = None):
  """Decay used by an update at call index `step` (before increment); 0 during warm-up."""
  config = config or EMAConfig()
  epoch = jnp.maximum(jnp.asarray(step, jnp.float32) + 1 - config.update_after_step - 1, 0.0)
  value = 1.0 - (1.0 + epoch / config.inv_gamma) ** (-config.power)
  value = jnp.clip(value, config.min_value, config.beta)
  return jnp.where(epoch <= 0, 0.0, value)


def ema_update(state: EMAState, params, config: EMAConfig | None = None) -> EMAState:
  """One `EMA.update()` call with the current online `params`. Pure and jit-able."""
  config = config or EMAConfig()
  step = state.step
  due = (step % config.update_every) == 0
  copy = jnp.logical_not(state.initted) | (due & (step <= config.update_after_step))
  decay = ema_decay(step, config)
  move = due & jnp.logical_not(copy)

  def leaf(ema, online):
    online = jnp.asarray(online, ema.dtype)
    averaged = ema - (1.0 - decay).astype(ema.dtype) * (ema - online)
    return jnp.where(copy, online, jnp.where(move, averaged, ema))

  return EMAState(
    params=jax.tree.map(leaf, state.params, params),
    step=step + 1,
    initted=jnp.ones((), bool),
  )
