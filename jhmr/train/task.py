"""What one method brings to the shared trainer: a `Task` (init fn, loss fn, data, batch spec).

Every method (HMR regressor, ScoreHMR score model, DPMesh heads, ...) is trained by the same
`jhmr.train.trainer.train`; methods differ only in the `Task` they pass:

  init(key, batch) -> variables               {'params': ..., <other collections>: ...}
  loss(params, state, batch, key) -> (loss, (metrics, new_state))
  source                                      random-access examples: len() and [i] -> dict
  evaluate(params, state, step) -> metrics    optional periodic evaluation hook (EMA params)

`state` holds the non-trained collections (e.g. BatchNorm `batch_stats`), `{}` when there are none.
A batch is a dict of numpy arrays with a leading batch axis, stacked from `source` examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

PyTree = Any
Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
  """A trainable method. See the module docstring for the signatures."""

  name: str
  init: Callable[[Any, Batch], PyTree]
  loss: Callable[[PyTree, PyTree, Batch, Any], tuple[Any, tuple[dict, PyTree]]]
  source: Sequence[Mapping[str, np.ndarray]]
  evaluate: Callable[[PyTree, PyTree, int], dict] | None = None

  def __post_init__(self):
    if len(self.source) == 0:
      raise ValueError(f"task {self.name!r}: the data source is empty")

  def batch_spec(self, batch_size: int) -> dict:
    """Shapes and dtypes of one batch, `{key: np.ndarray of zeros [batch_size, ...]}`."""
    example = self.source[0]
    return {
      k: np.zeros((batch_size, *np.shape(v)), np.asarray(v).dtype) for k, v in example.items()
    }


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
