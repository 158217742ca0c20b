"""One trainer for every method: `train(config, workdir, task) -> TrainState`.

Data parallel over a 1-D device mesh ('data',): each batch is split along its first axis, and
`jax.jit` with `NamedSharding`s inserts the gradient all-reduce. Parameters, optimiser state and
EMA are replicated (`train.param_sharding='replicated'`, the default) or sharded along the same
axis (`'fsdp'`: every leaf of at least `FSDP_MIN_SIZE` elements is split along its largest axis
that the device count divides; XLA gathers it where it is used), which divides their memory by
the device count at the cost of an all-gather per use. The same code runs on 1 CPU, 8 GPUs or a
multi-host TPU pod (after `jax.distributed.initialize()`, done by `jhmr.launch`).

A run resumes from its newest checkpoint in `workdir/checkpoints` (step, parameters, optimiser,
EMA, RNG and data position), so a restarted run reaches the same parameters as an uninterrupted
one. SIGTERM saves a checkpoint at the next step boundary and raises `Preempted` (exit code 143).

Parameter groups (`Task.param_labels`): gradients are taken for the trainable leaves only; each
group has its own optimiser at `optimizer.group_learning_rates[group]`; 'frozen' leaves keep their
values and carry no optimiser state or EMA. `Task.initial_variables` starts from given weights
without compiling `init`.

Config fields used (see configs/common.py): seed, train.{steps, batch_size, log_every,
checkpoint_every, keep_checkpoints, eval_every, progress, sync_every_step, param_sharding,
fsdp_min_size},
optimizer.*, ema.{beta, update_after_step, update_every, inv_gamma, power, min_value}
(ema_pytorch.EMA's).
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
from jhmr.train.state import (
  FROZEN,
  TrainState,
  ema_update,
  make_optimizer,
  make_schedule,
  merge,
  partition,
)
from jhmr.train.task import Task


class Preempted(SystemExit):
  """Raised after the SIGTERM checkpoint is written; exits the program with code 143."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


def make_mesh() -> jax.sharding.Mesh:
  """All devices (of all processes) on one data-parallel axis named 'data'."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


PARAM_SHARDINGS = ("replicated", "fsdp")
FSDP_MIN_SIZE = 2**14
"""Leaves smaller than this many elements stay replicated under 'fsdp' (sharding them saves
little memory and costs a collective each)."""


def fsdp_spec(shape: tuple[int, ...], num_devices: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """The `PartitionSpec` of one leaf under 'fsdp': its largest axis divisible by `num_devices`
  over 'data' (the first such axis on ties), or replicated when the leaf is small or no axis
  divides."""
  if num_devices <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  axes = [i for i, n in enumerate(shape) if n % num_devices == 0]
  if not axes:
    return P()
  axis = max(axes, key=lambda i: (shape[i], -i))
  return P(*(("data" if i == axis else None) for i in range(len(shape))))


def state_shardings(
  abstract_state, mesh, param_sharding: str = "replicated", min_size: int = FSDP_MIN_SIZE
):
  """A `NamedSharding` per leaf of an abstract `TrainState` (or any pytree of shaped leaves)."""
  if param_sharding not in PARAM_SHARDINGS:
    raise ValueError(
      f"train.param_sharding must be one of {PARAM_SHARDINGS}, got {param_sharding!r}"
    )
  if param_sharding == "replicated":
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_state)
  n = mesh.devices.size
  return jax.tree.map(
    lambda a: NamedSharding(mesh, fsdp_spec(a.shape, n, min_size)), abstract_state
  )


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
  spec = task.batch_spec(tc.batch_size)
  seed_key = jax.random.PRNGKey(config.seed)
  init_key, state_rng = jax.random.split(seed_key)
  if task.initial_variables is not None:
    given = jax.device_get(task.initial_variables)  # host copies: the state gets its own buffers
    variables_shape = jax.eval_shape(lambda: given)
  else:
    variables_shape = jax.eval_shape(lambda k: dict(task.init(k, spec)), init_key)
  labels = None
  if task.param_labels is not None:
    labels = task.param_labels(variables_shape["params"])
    if not any(g != FROZEN for g in jax.tree.leaves(labels)):
      raise ValueError(f"task {task.name!r}: every parameter is labelled {FROZEN!r}")
    trainable_labels = jax.tree.map(lambda g: None if g == FROZEN else g, labels)
  tx = make_optimizer(config, None if labels is None else trainable_labels)
  schedule = make_schedule(config)

  def trainable(params):
    return params if labels is None else partition(params, labels)[0]

  def state_from(variables, rng) -> TrainState:
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      model_state=variables,
      opt_state=tx.init(trainable(params)),
      ema_params=trainable(params),
      rng=rng,
    )

  def init_state(key) -> TrainState:
    return state_from(task.init(key, spec), state_rng)

  abstract = jax.eval_shape(lambda: state_from(variables_shape, state_rng))
  shardings = state_shardings(
    abstract,
    mesh,
    tc.get("param_sharding", "replicated"),
    tc.get("fsdp_min_size", FSDP_MIN_SIZE),
  )
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )

  # Update step.
  ema = config.ema

  def update(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    if labels is None:
      train_params, frozen = state.params, None
    else:
      train_params, frozen = partition(state.params, labels)

    def loss_of_trainable(train_params):
      params = train_params if frozen is None else merge(train_params, frozen)
      return task.loss(params, state.model_state, batch, key)

    grad_fn = jax.value_and_grad(loss_of_trainable, has_aux=True)
    (loss, (metrics, model_state)), grads = grad_fn(train_params)
    updates, opt_state = tx.update(grads, state.opt_state, train_params)
    train_params = optax.apply_updates(train_params, updates)
    params = train_params if frozen is None else merge(train_params, frozen)
    step = state.step + 1
    ema_params = ema_update(  # ema-pytorch's EMA.update() after the optimiser step
      state.ema_params,
      train_params,
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
    compiler_options=dict(task.compiler_options) if task.compiler_options else None,
  )

  # Restore or initialise.
  manager = checkpoint.make_manager(
    f"{workdir}/checkpoints",
    keep=tc.keep_checkpoints,
    asynchronous=tc.get("async_checkpoints", False),
  )
  restored = checkpoint.restore(manager, abstract)
  if restored is None and task.initial_variables is not None:
    state = (
      jax.tree.map(  # placed from host copies; the leaves that are one array get one copy each
        lambda leaf, s: jax.device_put(np.array(leaf), s),
        state_from(given, jax.device_get(state_rng)),
        shardings,
      )
    )
  elif restored is None:
    state = jax.jit(init_state, out_shardings=shardings)(init_key)
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
          results = task.evaluate(state.averaged_params(), state.model_state, step)
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
