"""Shared pytest fixtures, and strict reference libraries for CI.

The real data used by tests (CMU motion capture) lives outside the project at `../shared/data`
relative to the project root; `JHMR_SHARED_DATA` overrides that location.

Tests that compare a port with its reference library (`REFERENCES`, the test extras) skip through
`pytest.importorskip` where it is missing. With `JHMR_REQUIRE_REFERENCES=1` (set by `.ci/run`) a
missing one stops the run before collection, and a skip for a failed import of one is reported as
a failure (a collection error at module level): the equivalence tests are the proof of the ports.
"""

import gc
import importlib.util
import os
import pathlib
import re

import pytest
from absl import flags

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

# The reference libraries of the `[test]` extras (import names); `.ci/run` imports each of them.
REFERENCES = (
  "torch",
  "smplx",
  "diffusers",
  "transformers",
  "ema_pytorch",
  "tensorflow",
  "safetensors",
  "selenium",
  "nbclient",
  "ipykernel",
  "pytorch_fid",  # installed with --no-deps (README): its own FID Inception blocks
  "cleanfid",  # installed with --no-deps (README): its FID / KID functions
  "cv2",
)
# The real browser of the viewer test (Debian's packages chromium and chromium-driver); the test
# skips without it, and with JHMR_REQUIRE_REFERENCES=1 its absence stops the run.
BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver")
REQUIRE_REFERENCES = os.environ.get("JHMR_REQUIRE_REFERENCES", "") == "1"


def pytest_configure(config):
  # grain's multiprocess workers read absl flags; pytest never parses them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  if REQUIRE_REFERENCES:
    missing = [name for name in REFERENCES if importlib.util.find_spec(name) is None]
    if missing:
      raise pytest.UsageError(
        f"JHMR_REQUIRE_REFERENCES=1 but reference libraries are not installed: {', '.join(missing)}"
        ' (pip install -e ".[test]")'
      )
    absent = [path for path in BROWSER if not os.access(path, os.X_OK)]
    if absent:
      raise pytest.UsageError(
        f"JHMR_REQUIRE_REFERENCES=1 but the viewer's browser test lacks {', '.join(absent)} "
        "(apt-get install chromium chromium-driver)"
      )


def _fail_reference_skip(report):
  """With JHMR_REQUIRE_REFERENCES=1, turns an importorskip skip of a reference into a failure."""
  if not (REQUIRE_REFERENCES and report.skipped and isinstance(report.longrepr, tuple)):
    return
  message = report.longrepr[2]
  match = re.search(r"could not import '([\w.]+)'", message)
  if match and match.group(1).split(".")[0] in REFERENCES:
    report.outcome = "failed"
    report.longrepr = f"{message}\nJHMR_REQUIRE_REFERENCES=1: the reference library is required"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
  report = yield
  _fail_reference_skip(report)
  return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  report = yield
  _fail_reference_skip(report)
  return report


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """`../shared/data` (CMU BVH files etc.); tests needing it are skipped where it is absent."""
  path = pathlib.Path(os.environ.get("JHMR_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    pytest.skip(f"shared data not found at {path}")
  return path


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module.

  Every XLA CPU executable holds a few memory mappings (its JIT-compiled code) until it is freed,
  and JAX's caches keep every executable of the process alive. The whole suite compiles tens of
  thousands of them (op-by-op dispatch compiles one per primitive and shape), which reached
  Linux's default limit of 65,530 mappings per process (`vm.max_map_count`) near the end of the
  run: the next compilation then crashed with a segmentation fault inside XLA.
  """
  yield
  import jax  # noqa: PLC0415

  jax.clear_caches()
  gc.collect()
