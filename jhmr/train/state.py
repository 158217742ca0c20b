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
  """step [] int32, params / model_state / opt_state / ema_params pytrees, rng [2] uint32.

  With `Task.param_labels`, `opt_state` and `ema_params` cover the trainable leaves only: the
  frozen ones are `None` there (`averaged_params()` fills them in from `params`).
  """

  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  ema_params: PyTree
  rng: jax.Array

  def averaged_params(self) -> PyTree:
    """The EMA parameters with every leaf: frozen leaves are taken from `params`."""
    return merge(self.ema_params, self.params)


def make_schedule(config, peak: float | None = None) -> optax.Schedule:
  """Learning-rate schedule from `config.optimizer`: constant | cosine | linear, with warm-up.

  Fields: learning_rate (the peak, unless `peak` is given: a parameter group's own peak with the
  same shape), schedule, warmup_steps, final_lr_fraction, and (for decays) `config.train.steps`.
  """
  opt = config.optimizer
  lr = opt.learning_rate if peak is None else peak
  warmup, steps = opt.get("warmup_steps", 0), config.train.steps
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


FROZEN = "frozen"
"""The parameter-group label of leaves the optimiser never updates (`Task.param_labels`)."""


def _base_optimizer(config, schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  if opt.name == "adam":
    return optax.adam(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999))
  if opt.name == "adamw":
    return optax.adamw(
      schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999), weight_decay=opt.weight_decay
    )
  if opt.name == "sgd":
    return optax.sgd(schedule, momentum=opt.get("momentum", 0.9))
  raise ValueError(f"unknown optimizer {opt.name!r}; valid: adam, adamw, sgd")


def group_learning_rates(config, groups) -> dict[str, float]:
  """Peak learning rate per trainable group: `optimizer.group_learning_rates[g]`, else
  `optimizer.learning_rate`. Raises ValueError for a configured group no parameter carries."""
  opt = config.optimizer
  configured = dict(opt.get("group_learning_rates", None) or {})
  unknown = sorted(set(configured) - set(groups))
  if unknown:
    raise ValueError(
      f"optimizer.group_learning_rates names {unknown}, which no parameter carries "
      f"(the task's groups: {sorted(groups)})"
    )
  return {g: float(configured.get(g, opt.learning_rate)) for g in groups}


def make_optimizer(config, labels: PyTree | None = None) -> optax.GradientTransformation:
  """Gradient-norm clipping followed by adam / adamw / sgd with the configured schedule.

  `labels` (a group name per parameter leaf, `Task.param_labels`) gives every group its own
  optimiser at its own peak rate (`group_learning_rates`, one schedule shape); the clipping norm
  is taken over all trainable gradients together. Leaves labelled `FROZEN` must be left out of
  the updated tree by the caller (see `partition`): here they would be zeroed, with no state.
  """
  opt = config.optimizer
  clip = opt.get("clip_norm", 0.0)
  if labels is None:
    tx = _base_optimizer(config, make_schedule(config))
  else:
    groups = sorted({g for g in jax.tree.leaves(labels) if g != FROZEN})
    rates = group_learning_rates(config, groups)
    transforms = {g: _base_optimizer(config, make_schedule(config, rates[g])) for g in groups}
    transforms[FROZEN] = optax.set_to_zero()
    tx = optax.multi_transform(transforms, labels)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def partition(params: PyTree, labels: PyTree) -> tuple[PyTree, PyTree]:
  """(trainable, frozen): `params` split by `labels`, each with `None` where the other has a
  leaf (`merge` undoes it)."""
  trainable = jax.tree.map(lambda p, g: None if g == FROZEN else p, params, labels)
  frozen = jax.tree.map(lambda p, g: p if g == FROZEN else None, params, labels)
  return trainable, frozen


def merge(a: PyTree, b: PyTree) -> PyTree:
  """The leaf of `a` where it has one, else the leaf of `b` (inverse of `partition`)."""
  return jax.tree.map(lambda x, y: y if x is None else x, a, b, is_leaf=lambda x: x is None)


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
