"""Training state, optimiser and EMA, as pure functions over pytrees.

The whole training state is one `TrainState` pytree, so one orbax checkpoint restores a run
exactly: step, parameters, non-trained collections, optimiser moments, EMA parameters and the RNG.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """step [] int32, params / model_state / opt_state / ema_params pytrees, rng [2] uint32."""

  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  ema_params: PyTree
  rng: jax.Array


def make_schedule(config) -> optax.Schedule:
  """Learning-rate schedule from `config.optimizer`: constant | cosine | linear, with warm-up.

  Fields: learning_rate, schedule, warmup_steps, and (for decays) `config.train.steps`.
  """
  opt = config.optimizer
  lr, warmup, steps = opt.learning_rate, opt.get("warmup_steps", 0), config.train.steps
  decay_steps = max(steps - warmup, 1)
  if opt.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=opt.get("final_lr_fraction", 0.0))
  elif opt.schedule == "linear":
    main = optax.linear_schedule(lr, lr * opt.get("final_lr_fraction", 0.0), decay_steps)
  else:
    raise ValueError(f"unknown schedule {opt.schedule!r}; valid: constant, cosine, linear")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
  """Gradient-norm clipping followed by adam / adamw / sgd with the configured schedule."""
  opt = config.optimizer
  schedule = make_schedule(config)
  if opt.name == "adam":
    tx = optax.adam(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999))
  elif opt.name == "adamw":
    tx = optax.adamw(
      schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), weight_decay=opt.weight_decay
    )
  elif opt.name == "sgd":
    tx = optax.sgd(schedule, momentum=opt.get("momentum", 0.9))
  else:
    raise ValueError(f"unknown optimizer {opt.name!r}; valid: adam, adamw, sgd")
  clip = opt.get("clip_norm", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def ema_decay(
  step,
  *,
  beta: float = 0.995,
  update_after_step: int = 100,
  inv_gamma: float = 1.0,
  power: float = 2.0 / 3.0,
  min_value: float = 0.0,
):
  """ema-pytorch's `EMA.get_current_decay()` for the update with index `step` (0-based).

  With epoch = step - update_after_step (ema-pytorch's `EMA.step - update_after_step - 1`, its
  counter being already incremented): 0 while epoch <= 0, else
  clamp(1 - (1 + epoch / inv_gamma)^-power, min_value, beta). float32.
  """
  epoch = jnp.maximum(jnp.asarray(step, jnp.float32) - update_after_step, 0.0)
  value = jnp.clip(1.0 - (1.0 + epoch / inv_gamma) ** (-power), min_value, beta)
  return jnp.where(epoch <= 0, 0.0, value)


def ema_update(
  ema_params,
  params,
  step,
  *,
  beta: float = 0.995,
  update_after_step: int = 100,
  update_every: int = 10,
  inv_gamma: float = 1.0,
  power: float = 2.0 / 3.0,
  min_value: float = 0.0,
):
  """One `ema_pytorch.EMA.update()` (version 0.8.3) with the online `params`; pure and jit-able.

  `step` is the number of earlier updates (ema-pytorch's `EMA.step` on entering `update()`); the
  trainer calls this once per optimiser step with the step count before that optimiser step, as
  ScoreHMR calls `ema.update()` after every `opt.step()`. The keywords are ema-pytorch's:
    - step 0 copies the online weights (ema-pytorch's first call, `initted` False);
    - otherwise only every `update_every`-th step (step % update_every == 0) does anything: it
      copies while step <= update_after_step, and afterwards moves
      ema <- ema + (1 - d) * (params - ema) with d = `ema_decay(step, ...)`;
    - beta = 1 freezes the average after the warm-up copies (ema-pytorch's `is_frozen`).
  One exception: beta = 0 turns the EMA off, the result is `params` at every step (ema-pytorch
  would copy only every `update_every`-th step).
  """
  if beta == 0:
    return params
  d = ema_decay(
    step,
    beta=beta,
    update_after_step=update_after_step,
    inv_gamma=inv_gamma,
    power=power,
    min_value=min_value,
  )
  due = (step % update_every) == 0
  copy = (step == 0) | (due & (step <= update_after_step))
  move = due & (step > update_after_step) & (beta != 1)

  def leaf(e, p):
    p = jnp.asarray(p, e.dtype)
    moved = e + (1.0 - d).astype(e.dtype) * (p - e)
    return jnp.where(copy, p, jnp.where(move, moved, e))

  return jax.tree.map(leaf, ema_params, params)
