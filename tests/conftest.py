"""Shared pytest fixtures.

The real data used by tests (CMU motion capture) lives outside the project at `../shared/data`
relative to the project root; `JHMR_SHARED_DATA` overrides that location.
"""

import os
import pathlib

import pytest
from absl import flags

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
  # grain's multiprocess workers read absl flags; pytest never parses them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """`../shared/data` (CMU BVH files etc.); tests needing it are skipped where it is absent."""
  path = pathlib.Path(os.environ.get("JHMR_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.skip(f"shared data not found at {path}")
  return path
