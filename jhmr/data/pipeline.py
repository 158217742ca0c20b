"""Input pipeline: TFDS `array_record` data source -> per-host numpy batches, with grain.

Why grain (and not tf.data or a hand-written loader):
* TF-free: `tfds.data_source` gives random access to `array_record` files as numpy, and grain
  reads it without TensorFlow (the runtime has no TF dependency; DESIGN.md).
* Deterministic: the global order is a seeded permutation per epoch, and every augmentation gets
  its own `np.random.Generator` derived from (seed, element index), so a batch depends only on
  the seed and the step, not on thread or worker counts.
* Checkpointable: the iterator state is a small dict (`get_state()` / `set_state()`), saved by
  the trainer next to the model, so a resumed run continues with the next batch.
* Multi-host: each process reads a disjoint, strided share of the global order
  (`shard_index = jax.process_index()` by default), so `process_count` hosts together read
  exactly the examples a single host would, each batch is per-host.

Transforms are callables `transform(example: dict, rng: np.random.Generator) -> dict` (see
`jhmr.data.augment`), applied per example before batching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
  """How to read a data source.

  Attributes:
    batch_size: examples per batch on this host.
    seed: seed of the shuffle and of the per-example augmentation generators.
    shuffle: shuffle globally (a new permutation every epoch).
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a last, smaller batch.
    num_threads: grain reader threads (keep small on small machines).
    prefetch: grain prefetch buffer (elements).
    worker_count: >0 moves reading and transforms into that many processes (grain mp_prefetch).
  """

  batch_size: int
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  drop_remainder: bool = True
  num_threads: int = 2
  prefetch: int = 8
  worker_count: int = 0


def load_source(
  name: str, split: str, data_dir: str | None = None, *, decode_images: bool = True
) -> Any:
  """A TFDS random-access source (`array_record` builds only), e.g. `load_source('threedpw/
  frames', 'test')`. `decode_images=False` leaves `image` features as encoded bytes."""
  from jhmr.data import builders  # noqa: F401, PLC0415 (registers jhmr's builders with TFDS)

  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  return tfds.data_source(name, split=split, data_dir=data_dir, decoders=decoders)


def make_dataset(
  source: Any,
  config: LoaderConfig,
  transforms: Sequence[Transform] = (),
  *,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> grain.IterDataset:
  """The batched, sharded, augmented grain dataset over `source` (any random-access sequence of
  example dicts). Iterate it with `iter(...)`; the iterator has `get_state()`/`set_state()`.

  Args:
    source: e.g. `load_source(...)` or a list of dicts.
    config: see `LoaderConfig`.
    transforms: per-example transforms, in order.
    shard_index, shard_count: this host's share (default: `jax.process_index()` of
      `jax.process_count()`).
  """
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} outside [0, {shard_count})")
  if len(source) < shard_count:
    raise ValueError(f"{len(source)} examples cannot be shared by {shard_count} hosts")
  ds = grain.MapDataset.source(source)
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  ds = ds.repeat(config.num_epochs)
  ds = ds[shard_index::shard_count]
  for i, transform in enumerate(transforms):
    ds = ds.random_map(transform, seed=config.seed * 1000 + i + 1)
  ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
  out = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch)
  )
  if config.worker_count:
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
  return out


def select(*keys: str) -> Transform:
  """A transform keeping only `keys` (e.g. drop strings before batching for the device)."""

  def transform(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    del rng
    return {k: example[k] for k in keys}

  return transform
