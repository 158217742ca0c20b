"""Orbax checkpoints of a `TrainState` plus the input iterator position.

Each checkpoint is one step directory holding the state pytree (`StandardSave`) and the grain
iterator state (`JsonSave`). orbax writes into a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact; `max_to_keep` prunes old ones.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from jhmr.errors import InputError
from jhmr.train.state import merge


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


def restore_params(directory, field: str = "ema_params") -> dict:
  """`{'params': <field of the newest checkpoint's state>}` under `directory` (a trainer workdir,
  e.g. `runs/x/score_model`, or its `checkpoints/` folder), restored without knowing the model:
  orbax rebuilds the saved tree as host arrays.

  Raises:
    FileNotFoundError: no checkpoint there. InputError: it cannot be read. KeyError: the state
    has no `field`.
  """
  directory = pathlib.Path(directory).expanduser().absolute()
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {str(directory)!r} not found")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  with manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {str(directory)!r}")
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many kinds for bad bytes
      problem = (str(e).strip().splitlines() or [type(e).__name__])[-1]
      raise InputError(
        f"checkpoint {str(directory)!r} step {step} cannot be read (truncated or corrupt?): "
        f"{type(e).__name__}: {problem}"
      ) from None
  state = restored.state
  if field not in state:
    raise KeyError(
      f"checkpoint {str(directory)!r} step {step} has no {field!r} (has {sorted(state)})"
    )
  params = state[field]
  if field == "ema_params" and "params" in state:  # frozen leaves (Task.param_labels) are None
    params = merge(params, state["params"])
  return {"params": jax.tree.map(np.asarray, params)}
