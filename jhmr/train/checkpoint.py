"""Orbax checkpoints of a `TrainState` plus the input iterator position.

Each checkpoint is one step directory holding the state pytree (`StandardSave`) and the grain
iterator state (`JsonSave`). orbax writes into a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact; `max_to_keep` prunes old ones.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


def make_manager(directory, *, keep: int = 2, asynchronous: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager under `directory` (created) keeping the `keep` newest checkpoints."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous
  )
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, state, data_state: dict) -> None:
  """Starts saving `state` (at `state.step`) and the iterator state; does not wait for the write."""
  step = int(jax.device_get(state.step))
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
  manager.save(step, args=args, force=True)


def restore(manager: ocp.CheckpointManager, abstract_state):
  """(state, data_state) of the newest checkpoint, or None when there is none.

  `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings (from `jax.eval_shape`),
  so optimiser NamedTuples and the device layout are rebuilt exactly.
  """
  step = manager.latest_step()
  if step is None:
    return None
  args = ocp.args.Composite(
    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
  )
  restored = manager.restore(step, args=args)
  return restored.state, restored.data
