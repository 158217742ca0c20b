"""Input for the trainer: a checkpointable grain iterator of per-process numpy batches.

Example order is one global, seeded permutation per epoch (grain `shuffle` over an infinite
`repeat`). Global batch k holds examples [k*B, (k+1)*B) of that order; process p reads only its
rows [p*L, (p+1)*L) of each global batch (L = B / process_count), so a run on N processes sees
exactly the batches of a single-process run. The iterator state (`get_state()`, a small dict) goes
into every checkpoint, so a resumed run continues with the next batch.
"""

from __future__ import annotations

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

_ENDLESS = 2**62


def make_iterator(
  source, global_batch: int, *, seed: int, process_index: int = 0, process_count: int = 1
):
  """grain DatasetIterator over this process's share of each global batch ({k: [L, ...]})."""
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
  local = global_batch // process_count
  order = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)

  def read(i):
    step, row = divmod(i, local)
    return order[step * global_batch + process_index * local + row]

  ds = grain.MapDataset.range(0, _ENDLESS).map(read).batch(local, drop_remainder=True)
  return iter(ds.to_iter_dataset())


def to_global(batch, sharding: NamedSharding):
  """This process's numpy batch -> global jax.Arrays sharded along the batch axis."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )
