"""The input pipeline: a random-access source -> per-process numpy batches (grain).

One pipeline for training and benchmarks (`make_iterator`):

* Order: one seeded global permutation of the source per epoch (grain `shuffle` over an endless
  `repeat`); global position `g` is the g-th example of that endless stream.
* Batches: global batch k holds positions `[k*B, (k+1)*B)`; process p of P reads only its
  contiguous rows `[p*L, (p+1)*L)` of it (`L = B / P`, see `global_position`). Concatenating the
  processes' rows of step k gives exactly the single-process batch k, for any process count.
* Transforms: `transform(example, rng) -> example`, applied per example before batching, in
  order. Transform t of the chain draws from `np.random.default_rng([seed, g, t])`, a generator
  tied to the global position, so the draws of position g are the same whatever the process,
  thread or worker count (and do not change when a transform is appended to the chain).
* Batching stacks any pytree of arrays (dicts, `jhmr.data.example.PersonExample`, ...) into the
  same structure with a leading `[L]` axis on every leaf.
* Checkpointable: `it.get_state()` is a small JSON-able dict; `set_state` on a fresh iterator
  (same arguments) continues with the next batch. The trainer saves it in every checkpoint.
* Parallelism: `num_threads` reader threads and `prefetch` batches of buffer in this process
  (grain `ReadOptions`); `worker_count > 0` moves reading and transforms into that many
  processes (grain `mp_prefetch`). Each thread or worker builds whole batches, so neither count
  changes a batch.

Why grain: `tfds.data_source` gives TensorFlow-free random access to `array_record` files
(`load_source`), and grain reads it deterministically and checkpointably (DESIGN.md).
`to_global` turns the per-process numpy batches into globally sharded `jax.Array`s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

Example = Any  # a pytree of arrays: a dict, a `PersonExample`, ...
Transform = Callable[[Example, np.random.Generator], Example]

_ENDLESS = 2**62  # local examples in the (endless) stream: far more than any run reads


def global_position(
  local_index: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> int:
  """The global stream position read as this process's `local_index`-th example.

  Local example i is row `i % L` of this process's step `i // L` (`L = batch_size /
  process_count`), i.e. global position `step * batch_size + process_index * L + row`.
  """
  local = local_batch_size(batch_size, process_count)
  step, row = divmod(local_index, local)
  return step * batch_size + process_index * local + row


def local_batch_size(batch_size: int, process_count: int) -> int:
  """`batch_size / process_count`; raises ValueError when it does not divide."""
  if batch_size < 1 or process_count < 1:
    raise ValueError(f"batch size ({batch_size}) and process count ({process_count}) must be >= 1")
  if batch_size % process_count:
    raise ValueError(f"batch size {batch_size} is not divisible by {process_count} processes")
  return batch_size // process_count


def apply_transforms(
  example: Example, transforms: Sequence[Transform], seed: int, position: int
) -> Example:
  """`transforms` in order on the example at global `position` (the pipeline's per-example step;
  transform t gets `np.random.default_rng([seed, position, t])`)."""
  for t, transform in enumerate(transforms):
    example = transform(example, np.random.default_rng([seed, position, t]))
  return example


class _Read:
  """Local example index -> transformed example (the pipeline's per-example map)."""

  def __init__(self, source, transforms, seed, batch_size, process_index, process_count):
    self.order = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    self.transforms = tuple(transforms)
    self.seed = seed
    self.args = (batch_size, process_index, process_count)

  def __call__(self, local_index: int) -> Example:
    position = global_position(local_index, *self.args)
    return apply_transforms(self.order[position], self.transforms, self.seed, position)


def make_iterator(
  source: Sequence[Example],
  batch_size: int,
  *,
  seed: int,
  transforms: Sequence[Transform] = (),
  process_index: int | None = None,
  process_count: int | None = None,
  num_threads: int = 2,
  prefetch: int = 4,
  worker_count: int = 0,
) -> grain.DatasetIterator:
  """An endless, checkpointable iterator over this process's rows of each global batch.

  Args:
    source: random-access examples (`len()` and `[i]`): `load_source(...)`, a list, an
      `ArraySource`, ...; every example (after the transforms) must have one pytree structure.
    batch_size: B, the global batch size (all processes together).
    seed: seed of the shuffle and of the transforms' generators (>= 0).
    transforms: per-example `transform(example, rng) -> example`, in order.
    process_index, process_count: this process's share (default: `jax.process_index()` of
      `jax.process_count()`).
    num_threads: reader threads in this process (0 reads in the calling thread).
    prefetch: batches buffered ahead by the reader threads.
    worker_count: > 0 reads and transforms in that many processes (grain `mp_prefetch`; the
      source and transforms are sent with cloudpickle); changes nothing in the batches.

  Returns:
    A grain `DatasetIterator`: `next(it)` is the next `[B / process_count, ...]` batch (same
    structure as one example); `it.get_state()` / `it.set_state(state)` checkpoint it.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local = local_batch_size(batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, {process_count})")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  if len(source) == 0:
    raise ValueError("the data source is empty")
  read = _Read(source, transforms, seed, batch_size, process_index, process_count)
  # Batched before `to_iter_dataset`: each thread (and each worker, which gets every
  # worker_count-th element) builds whole batches, so batches do not depend on either count.
  batches = grain.MapDataset.range(0, _ENDLESS).map(read).batch(local, drop_remainder=True)
  out = batches.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, 1))
  )
  if worker_count:
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; defaults outside absl.app
      flags.FLAGS.mark_as_parsed()
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(out)


def to_global(batch: Any, sharding: NamedSharding) -> Any:
  """This process's numpy batch (any pytree) -> global `jax.Array`s split along the batch axis
  by `sharding` (each process passes its own rows; see `make_iterator`)."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )


def load_source(
  name: str, split: str, data_dir: str | None = None, *, decode_images: bool = True
) -> Any:
  """A TFDS random-access source (`array_record` builds only), e.g. `load_source('threedpw/
  frames', 'test')`. `decode_images=False` leaves `image` features as encoded bytes."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 (only for TFDS sources)

  from jhmr.data import builders  # noqa: F401, PLC0415 (registers jhmr's builders with TFDS)

  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  return tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders)


def select(*keys: str) -> Transform:
  """A transform keeping only `keys` of a dict example (e.g. drop strings before batching)."""

  def transform(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    del rng
    return {k: example[k] for k in keys}

  return transform
