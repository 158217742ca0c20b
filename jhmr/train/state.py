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


def ema_decay(step, *, decay: float, start: int, power: float = 2.0 / 3.0):
  """ema-pytorch's decay at optimiser step `step` (1-based count of updates done).

  0 (copy the online weights) until `start` steps, then min(decay, 1 - (1 + k)^-power) with
  k = step - start - 1 (the warm-up of lucidrains/ema-pytorch, inv_gamma = 1).
  """
  k = jnp.maximum(step - start - 1, 0).astype(jnp.float32)
  warm = jnp.clip(1.0 - (1.0 + k) ** (-power), 0.0, decay)
  return jnp.where(step <= start, 0.0, warm)


def ema_update(ema_params, params, step, *, decay: float, every: int = 1, start: int = 0):
  """EMA of the parameters after optimiser step `step`; only every `every` steps it moves.

  ema <- d * ema + (1 - d) * params with d = `ema_decay(step)`; between updates ema is unchanged.
  `decay = 0` makes the EMA a copy of the online parameters.
  """
  d = ema_decay(step, decay=decay, start=start)
  due = (step % every) == 0
  return jax.tree.map(
    lambda e, p: jnp.where(due, d * e + (1.0 - d) * p, e).astype(e.dtype), ema_params, params
  )
