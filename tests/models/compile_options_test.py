"""`sd_compiler_options`: on CPU, SD convolutions leave YNNPACK, dots and reductions stay, and
the results agree."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.models import compile_options
from jhmr.models.sd_layers import ResnetBlock2D

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU options")


def _ynn_ops(compiled_text: str, op: str) -> int:
  """Instructions of kind `op` in the computations that YNNPACK fusions (`%ynn_fusion... =
  fusion(...), calls=%computation`) call, in an optimised HLO module's text."""
  lines = compiled_text.splitlines()
  called = set(re.findall(r"%ynn_fusion[\w.]* = .*calls=(%[\w.-]+)", compiled_text))
  count, inside = 0, False
  for line in lines:
    if line.startswith(("%", "ENTRY")) and line.rstrip().endswith("{"):
      inside = line.split(" ", 1)[0] in called
    elif inside and f" {op}(" in line:
      count += 1
  return count


def test_convolutions_leave_ynnpack_dots_and_reductions_stay():
  options = compile_options.sd_compiler_options()
  assert options == {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
    "LIBRARY_FUSION_TYPE_REDUCE"
  }
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((32, 64)), jnp.float32)
  block = ResnetBlock2D(64, use_time_embedding=False)
  variables = block.init(jax.random.key(0), x)

  def f(variables, x, w):  # two 3x3 convolutions, a 1x1 shortcut, and a dot
    return block.apply(variables, x), x.reshape(-1, 32) @ w

  default = jax.jit(f).lower(variables, x, w).compile()
  ours = jax.jit(f, compiler_options=options).lower(variables, x, w).compile()
  assert _ynn_ops(default.as_text(), "convolution") >= 2  # jaxlib's default: YNNPACK convs
  assert _ynn_ops(ours.as_text(), "convolution") == 0
  assert _ynn_ops(ours.as_text(), "dot") >= 1
  assert _ynn_ops(ours.as_text(), "reduce") >= 2  # GroupNorm's statistics stay in YNNPACK
  for a, b in zip(default(variables, x, w), ours(variables, x, w)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_an_option_this_jaxlib_rejects_is_left_out(monkeypatch):
  assert compile_options._accepted("xla_cpu_experimental_ynn_fusion_type", "")
  assert not compile_options._accepted("xla_no_such_option_for_jhmr", "1")
  monkeypatch.setattr(compile_options, "_accepted", lambda option, value: False)
  assert compile_options.sd_compiler_options() == {}  # a later jaxlib without the field
