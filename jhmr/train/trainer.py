"""One trainer for every method: `train(config, workdir, task) -> TrainState`.

Data parallel over a 1-D device mesh ('data',): parameters, optimiser state and EMA are replicated,
each batch is split along its first axis, and `jax.jit` with `NamedSharding`s inserts the gradient
all-reduce. The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod (after
`jax.distributed.initialize()`, done by `jhmr.launch`). A run resumes from its newest checkpoint in
`workdir/checkpoints` (step, parameters, optimiser, EMA, RNG and data position), so a restarted run
reaches the same parameters as an uninterrupted one. SIGTERM saves a checkpoint at the next step
boundary and raises `Preempted` (exit code 143).

Config fields used (see configs/common.py): seed, train.{steps, batch_size, log_every,
checkpoint_every, keep_checkpoints, eval_every, progress, sync_every_step}, optimizer.*,
ema.{beta, update_after_step, update_every, inv_gamma, power, min_value} (ema_pytorch.EMA's).
"""

from __future__ import annotations

import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jhmr.data import pipeline
from jhmr.train import checkpoint
from jhmr.train.metrics import MetricWriter
from jhmr.train.state import TrainState, ema_update, make_optimizer, make_schedule
from jhmr.train.task import Task


class Preempted(SystemExit):
  """Raised after the SIGTERM checkpoint is written; exits the program with code 143."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


def make_mesh() -> jax.sharding.Mesh:
  """All devices (of all processes) on one data-parallel axis named 'data'."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


class _SigtermFlag:
  """Context manager: records SIGTERM instead of dying (main thread only; else a no-op)."""

  def __enter__(self):
    self.raised, self._previous = False, None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      pass
    return self

  def _handle(self, signum, frame):
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir, task: Task, *, writer=None) -> TrainState:
  """Trains `task` for `config.train.steps` steps (resuming in `workdir`); returns the state."""
  tc = config.train
  process_index, process_count = jax.process_index(), jax.process_count()

  # Mesh.
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))
  if tc.batch_size % jax.device_count():
    raise ValueError(f"batch size {tc.batch_size} not divisible by {jax.device_count()} devices")

  # Input.
  batches = pipeline.make_iterator(
    task.source,
    tc.batch_size,
    seed=config.seed,
    transforms=task.transforms,
    process_index=process_index,
    process_count=process_count,
    num_threads=tc.get("data_threads", 2),
    prefetch=tc.get("data_prefetch", 4),
    worker_count=tc.get("data_workers", 0),
  )

  # Model and optimiser, shapes first (jax.eval_shape), then initialised straight into place.
  tx = make_optimizer(config)
  schedule = make_schedule(config)
  spec = task.batch_spec(tc.batch_size)

  def init_state(key) -> TrainState:
    init_key, rng = jax.random.split(key)
    variables = dict(task.init(init_key, spec))
    params = variables.pop("params")
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=tx.init(params),
      ema_params=params,
      rng=rng,
    )

  seed_key = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init_state, seed_key)
  shardings = jax.tree.map(lambda _: replicated, abstract)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )

  # Update step.
  ema = config.ema

  def update(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ema_params = ema_update(  # ema-pytorch's EMA.update() after the optimiser step
      state.ema_params,
      params,
      state.step,
      beta=ema.beta,
      update_after_step=ema.update_after_step,
      update_every=ema.update_every,
      inv_gamma=ema.inv_gamma,
      power=ema.power,
      min_value=ema.min_value,
    )
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    new = state.replace(
      step=step, params=params, model_state=model_state, opt_state=opt_state, ema_params=ema_params
    )
    return new, metrics

  update = jax.jit(
    update,
    in_shardings=(shardings, data_sharding),
    out_shardings=(shardings, replicated),
    donate_argnums=0,
  )

  # Restore or initialise.
  manager = checkpoint.make_manager(
    f"{workdir}/checkpoints",
    keep=tc.keep_checkpoints,
    asynchronous=tc.get("async_checkpoints", False),
  )
  restored = checkpoint.restore(manager, abstract)
  if restored is None:
    state = jax.jit(init_state, out_shardings=shardings)(seed_key)
  else:
    state, data_state = restored
    batches.set_state(data_state)
  start = int(jax.device_get(state.step))

  # Loop.
  own_writer = writer is None
  if own_writer:
    writer = MetricWriter(
      workdir, just_logging=process_index > 0, tensorboard=tc.get("tensorboard", True)
    )
  sync = tc.get("sync_every_step", True) or jax.default_backend() == "cpu"
  progress = None
  if tc.get("progress", True) and process_index == 0 and start < tc.steps:
    import tqdm

    progress = tqdm.tqdm(total=tc.steps, initial=start, desc=task.name, unit="step", smoothing=0.1)
  history, t_log = [], time.perf_counter()
  with manager, _SigtermFlag() as sigterm:
    for step in range(start + 1, tc.steps + 1):
      batch = pipeline.to_global(next(batches), data_sharding)
      state, metrics = update(state, batch)
      if sync:  # CPU collectives deadlock without it (research/jax_stack.md section 4)
        jax.block_until_ready(metrics["loss"])
      history.append(metrics)
      if progress is not None:
        progress.update(1)
      if step % tc.log_every == 0 or step == tc.steps:
        scalars = {k: float(np.mean([jax.device_get(m[k]) for m in history])) for k in history[0]}
        elapsed = time.perf_counter() - t_log
        scalars["steps_per_s"] = len(history) / elapsed
        scalars["examples_per_s"] = len(history) * tc.batch_size / elapsed
        writer.write_scalars(step, scalars)
        if progress is not None:
          progress.set_postfix(loss=f"{scalars['loss']:.4g}")
        history, t_log = [], time.perf_counter()
      stop = sigterm.raised
      if process_count > 1:
        stop = bool(multihost_utils.process_allgather(np.asarray(stop)).any())
      if stop or step % tc.checkpoint_every == 0 or step == tc.steps:
        checkpoint.save(manager, state, batches.get_state())
      if tc.get("eval_every", 0) and task.evaluate is not None:
        if step % tc.eval_every == 0 or step == tc.steps:
          results = task.evaluate(state.ema_params, state.model_state, step)
          writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
      if stop:
        manager.wait_until_finished()
        writer.flush()
        raise Preempted(step)
    manager.wait_until_finished()
  batches.close()  # stops the reader threads / worker processes
  if progress is not None:
    progress.close()
  if own_writer:
    writer.close()
  return state
