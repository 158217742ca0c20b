"""Helpers for testing the TFDS builders of `jhmr.data` (used by tests/data; no runtime use).

`build(builder_class, config, data_dir, manual_dir)` builds TF-free (`array_record`) and
returns the builder; `builder_test_case(...)` makes a `tfds.testing.DatasetBuilderTestCase`
class (TensorFlow needed, imported lazily) for one config of a builder.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds


def build(builder_class, config: str, data_dir: str | os.PathLike, manual_dir=None):
  """Builds `config` of `builder_class` as array_record into `data_dir`."""
  builder = builder_class(config=config, data_dir=str(data_dir), file_format="array_record")
  download_config = tfds.download.DownloadConfig(
    manual_dir=str(manual_dir) if manual_dir is not None else None
  )
  builder.download_and_prepare(download_config=download_config)
  return builder


def builder_test_case(builder_class, config: str, splits: dict[str, int], example_dir: str):
  """A `DatasetBuilderTestCase` subclass checking `splits` sizes of `config` on `example_dir`."""
  return type(
    f"{builder_class.name}_{config}_test",
    (tfds.testing.DatasetBuilderTestCase,),
    {
      "DATASET_CLASS": builder_class,
      "EXAMPLE_DIR": str(example_dir),
      "BUILDER_CONFIG_NAMES_TO_TEST": [config],
      "SPLITS": dict(splits),
    },
  )


def text(value) -> str:
  """A decoded `tfds.features.Text` value (bytes or str) as str."""
  return value.decode() if isinstance(value, bytes) else str(value)
