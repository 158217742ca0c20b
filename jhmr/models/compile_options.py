"""XLA compiler options for the jits that run the Stable Diffusion convolution stack.

On CPU, jaxlib (0.10) hands dots, convolutions and reductions to its YNNPACK kernels by
default. For SD's 3x3 convolutions XLA's other CPU convolution is faster: 1.2-1.7x forward and
forward + backward at the U-Net's 32x32 and 16x16 levels (e.g. 32x32x960 -> 320 at batch 8: 194
vs 113 ms forward) on a 2-core AMD EPYC (Zen 5), `benchmarks/xla_cpu_conv.py`
(benchmarks/README.md). `sd_compiler_options` turns YNNPACK off for convolutions only: dots and
reductions stay (without them SD's 32x32 attention is ~40% slower). It applies to one `jax.jit`
at a time (`jax.jit(..., compiler_options=...)`), so no other computation in the process changes.

jhmr passes it to DPMesh's jits (training through `Task.compiler_options`, `jhmr.dpmesh.predict`)
and to the U-Net benchmarks. Other programs keep jaxlib's default: the option changes a result's
last bits, and their documented figures were measured without it.
"""

from __future__ import annotations

import functools

import jax

# XLA's DebugOptions field (experimental, hence the probe below) and the value that keeps
# YNNPACK for dots and reductions: jaxlib 0.10's default without INDIVIDUAL_CONVOLUTION.
YNN_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
_NO_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"


@functools.cache
def _accepted(option: str, value: str) -> bool:
  """Whether this jaxlib compiles with `option=value` (an unknown option is an error)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(0.0).compile()
  except Exception:  # noqa: BLE001 (jaxlib raises XlaRuntimeError or ValueError by version)
    return False
  return True


def sd_compiler_options() -> dict[str, str]:
  """`compiler_options` for a `jax.jit` over SD-style convolutions: on CPU, YNNPACK for dots
  and reductions but not convolutions; `{}` on other backends, or where this jaxlib does not know
  the option."""
  if jax.default_backend() != "cpu" or not _accepted(YNN_FUSION_TYPES, _NO_CONVOLUTIONS):
    return {}
  return {YNN_FUSION_TYPES: _NO_CONVOLUTIONS}
