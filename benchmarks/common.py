"""Shared timing helpers for `benchmarks/*.py` (timeit-style: warm-up, then median of N).

Usage:
  t = time_call(jitted_fn, *args, repeats=10)  # seconds per call, median
  print_table(["batch", "jhmr", "ref", "ratio"], rows)

`time_call` blocks on every output, so JAX's asynchronous dispatch is included in the time, and
works for any callable (torch too: torch on CPU is synchronous).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


def load() -> str:
  """The 1 / 5 / 15-minute load averages, "1.23 4.56 7.89"."""
  return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def free_gb() -> str:
  """Total and available memory as `free -g` reports them ('unknown' without `free`)."""
  try:
    out = subprocess.run(["free", "-g"], capture_output=True, text=True, check=True).stdout
    mem = out.splitlines()[1].split()
    return f"total {mem[1]} GB, available {mem[-1]} GB"
  except (OSError, subprocess.CalledProcessError, IndexError):
    return "unknown"


def cpu() -> str:
  """The CPU as `lscpu` names it, "AMD EPYC (family 26, model 2), 2 cores, avx512", or
  'unknown' (CPU speeds differ several-fold between machines of one kind: say which ran)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
  get = lambda key: fields.get(key, "?").strip()
  flags = get("Flags").split()
  vector = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
  return (
    f"{get('Model name')} (family {get('CPU family')}, model {get('Model')}), "
    f"{os.cpu_count()} cores, {vector}"
  )


def clip_text_config(name: str):
  """The transformers `CLIPTextConfig` of a Stable Diffusion text encoder, for random weights:
  'clip_l' (CLIP ViT-L/14 text, SD 1.x: 768 wide, 12 layers) or 'openclip_h' (OpenCLIP
  ViT-H/14 text, SD 2: 1024 wide, 23 layers as SD 2 uses it)."""
  import transformers

  if name == "clip_l":
    return transformers.CLIPTextConfig(
      hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
      projection_dim=768, hidden_act="quick_gelu",
    )  # fmt: skip
  if name == "openclip_h":
    return transformers.CLIPTextConfig(
      hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
      projection_dim=512, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip
  raise ValueError(f"unknown CLIP text config {name!r}: 'clip_l' or 'openclip_h'")


def peak_rss_gb() -> float:
  """This process's peak resident memory in GiB (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def jit_compiler_options(spec: str | None) -> dict | None:
  """`jax.jit` compiler options for a benchmark's jhmr jit: None or 'jhmr' (what DPMesh's jits
  use: `jhmr.models.compile_options.sd_compiler_options`), 'jaxlib' (jaxlib's default), 'none'
  (no YNNPACK kernels) or a comma list of XLA `LibraryFusionType`s without their prefix (e.g.
  'INDIVIDUAL_DOT': YNNPACK for dots only)."""
  from jhmr.models.compile_options import YNN_FUSION_TYPES, sd_compiler_options

  if spec in (None, "jhmr"):
    return sd_compiler_options() or None
  if spec == "jaxlib":
    return None
  names = [] if spec == "none" else spec.split(",")
  return {YNN_FUSION_TYPES: ",".join(f"LIBRARY_FUSION_TYPE_{n.strip().upper()}" for n in names)}


def block(out: Any) -> Any:
  """Waits for every JAX array in `out` (any pytree); other leaves pass through."""
  import jax

  return jax.block_until_ready(out)


def time_call(
  fn: Callable[..., Any], *args: Any, repeats: int = 10, warmup: int = 2, number: int = 1
) -> float:
  """Median wall time in seconds of `fn(*args)` over `repeats` runs of `number` calls each.

  `warmup` calls run first (and pay for compilation); every call's output is blocked on.
  """
  if repeats < 1 or number < 1:
    raise ValueError(f"repeats and number must be >= 1, got {repeats}, {number}")
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(number):
      block(fn(*args))
    times.append((time.perf_counter() - start) / number)
  return statistics.median(times)


def time_interleaved(
  calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], *, repeats: int = 10, warmup: int = 2
) -> list[float]:
  """Median seconds per call of several `(fn, args)`, timed in alternation (a, b, a, b, ...).

  On a shared machine the load drifts; interleaving exposes every candidate to the same load,
  which makes their ratio far more stable than timing one after the other.
  """
  for fn, args in calls:
    for _ in range(warmup):
      block(fn(*args))
  times: list[list[float]] = [[] for _ in calls]
  for _ in range(repeats):
    for i, (fn, args) in enumerate(calls):
      start = time.perf_counter()
      block(fn(*args))
      times[i].append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def throughput(seconds_per_call: float, batch: int) -> float:
  """Samples per second for a call that processes `batch` samples."""
  return batch / seconds_per_call


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table; floats are printed with 3 significant digits (or as integers if large)."""

  def cell(v: Any) -> str:
    if isinstance(v, float):
      return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)

  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """Prints `format_table(header, rows)`."""
  print(format_table(header, rows), flush=True)
