"""What one method brings to the shared trainer: a `Task` (init fn, loss fn, data, batch spec).

Every method (HMR regressor, ScoreHMR score model, DPMesh heads, ...) is trained by the same
`jhmr.train.trainer.train`; methods differ only in the `Task` they pass:

  init(key, batch) -> variables               {'params': ..., <other collections>: ...}
  loss(params, state, batch, key) -> (loss, (metrics, new_state))
  source                                      random-access examples: len() and [i] -> example
  transforms                                  per-example `transform(example, rng) -> example`
  evaluate(params, state, step) -> metrics    optional periodic evaluation hook (EMA params)
  param_labels(params) -> labels              optional: a group name per parameter leaf; 'frozen'
                                              leaves are never updated and get no gradient or
                                              optimiser state; the other groups take their
                                              learning rates from `optimizer.group_learning_rates`
  initial_variables                           optional concrete starting variables: the trainer
                                              places them as they are instead of jitting `init`
                                              (an SD-size init compiles for minutes, and weights
                                              closed over by a jitted init become constants)
  compiler_options                            optional XLA options for the jitted training step
                                              (`jax.jit(..., compiler_options=...)`), e.g.
                                              `jhmr.models.compile_options.sd_compiler_options()`

`state` holds the non-trained collections (e.g. BatchNorm `batch_stats`), `{}` when there are none.
An example is a pytree of numpy arrays (a dict, a `jhmr.data.example.PersonExample`, ...); the
trainer reads `source` through `jhmr.data.pipeline` (seeded shuffle, `transforms`, batching), so a
batch is the transformed example's pytree with a leading batch axis on every leaf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jhmr.data.pipeline import Transform, apply_transforms

PyTree = Any
Batch = PyTree  # a transformed example with a leading batch axis on every leaf


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
  """A trainable method. See the module docstring for the signatures."""

  name: str
  init: Callable[[Any, Batch], PyTree]
  loss: Callable[[PyTree, PyTree, Batch, Any], tuple[Any, tuple[dict, PyTree]]]
  source: Sequence[PyTree]
  transforms: Sequence[Transform] = ()
  evaluate: Callable[[PyTree, PyTree, int], dict] | None = None
  param_labels: Callable[[PyTree], PyTree] | None = None
  initial_variables: PyTree | None = None
  compiler_options: Mapping[str, Any] | None = None

  def __post_init__(self):
    if len(self.source) == 0:
      raise ValueError(f"task {self.name!r}: the data source is empty")
    if self.initial_variables is not None and "params" not in self.initial_variables:
      raise ValueError(f"task {self.name!r}: initial_variables has no 'params' collection")

  def batch_spec(self, batch_size: int) -> PyTree:
    """A batch of zeros shaped like the pipeline's: `source[0]` after the transforms (with a
    fixed generator), every leaf a `np.ndarray [batch_size, ...]` of the leaf's dtype."""
    example = apply_transforms(self.source[0], self.transforms, seed=0, position=0)
    return jax.tree.map(
      lambda v: np.zeros((batch_size, *np.shape(v)), np.asarray(v).dtype), example
    )


class ArraySource:
  """A random-access source over a dict of equally long arrays: example i is `{k: v[i]}`."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    lengths = {k: len(v) for k, v in arrays.items()}
    if not lengths or len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource needs non-empty arrays of one length, got lengths {lengths}")
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    return {k: v[index] for k, v in self.arrays.items()}
