"""SD 3x3 convolutions on CPU: XLA with YNNPACK (jaxlib's default) vs without (jhmr's
`sd_compiler_options`, DPMesh's jits) vs torch (oneDNN), forward and forward + backward.

  .venv/bin/python benchmarks/xla_cpu_conv.py                 # SD 1.5 shapes at DPMesh's size
  options: --cases B:HW:CIN:COUT,... --repeats 7 --no-reference

Each case is one `jax.lax.conv_general_dilated` (NHWC, 3x3, stride 1, 'same') in its own jit;
forward + backward is the gradient of `sum(conv(x, w)**2)` with respect to x and w. torch runs
`conv2d` (NCHW) on the same values with its threads set to the machine's cores. Both frameworks
run in this process, calls alternating (`time_interleaved`), median over `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu, load, print_table, time_interleaved  # noqa: E402

# (batch, image side, input channels, output channels): SD 1.5 U-Net convolutions at DPMesh's
# 32x32 latent: the 32x32 level (the up path's resnets take 640 and 960 channels) and the 16x16
# level. The 8x8 and 4x4 levels run as one matmul on CPU (`sd_layers.Conv3x3`), not as these.
CASES = "8:32:320:320,8:32:640:320,8:32:960:320,8:16:640:640,8:16:1920:640,1:32:320:320"


def _parse(cases: str) -> list[tuple[int, int, int, int]]:
  return [tuple(int(v) for v in c.split(":")) for c in cases.split(",")]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default=CASES, help="batch:side:c_in:c_out, comma list")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--no-reference", action="store_true", help="skip torch")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jhmr.models.compile_options import sd_compiler_options

  ours = sd_compiler_options()
  if not ours:
    raise SystemExit("sd_compiler_options() is empty here (not CPU, or an unknown option)")
  torch = None
  if not args.no_reference:
    import torch

    torch.set_num_threads(os.cpu_count())

  def conv(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  grad = jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1))
  print(
    f"3x3 convolutions, float32, median of {args.repeats} (ms); jhmr's XLA options: {ours}",
    flush=True,
  )
  print(f"# CPU {cpu()}; load average {load()} before", flush=True)
  rows = []
  rng = np.random.default_rng(0)
  for b, side, cin, cout in _parse(args.cases):
    x = rng.standard_normal((b, side, side, cin), dtype=np.float32)
    w = (rng.standard_normal((3, 3, cin, cout), dtype=np.float32) / np.sqrt(9 * cin)).astype(
      np.float32
    )
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    for kind, fn in (("forward", conv), ("forward+backward", grad)):
      calls = [
        (jax.jit(fn).lower(xj, wj).compile(), (xj, wj)),
        (jax.jit(fn, compiler_options=ours).lower(xj, wj).compile(), (xj, wj)),
      ]
      if torch is not None:
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
        if kind == "forward":

          def ref(xt=xt, wt=wt):
            with torch.no_grad():
              return torch.nn.functional.conv2d(xt, wt, padding=1)
        else:
          xt.requires_grad_(True)
          wt.requires_grad_(True)

          def ref(xt=xt, wt=wt):
            return torch.autograd.grad(
              (torch.nn.functional.conv2d(xt, wt, padding=1) ** 2).sum(), (xt, wt)
            )

        calls.append((ref, ()))
      seconds = time_interleaved(calls, repeats=args.repeats, warmup=1)
      ms = [1000 * s for s in seconds]
      rows.append(
        [
          f"{b}x{side}x{side}x{cin} -> {cout}",
          kind,
          ms[0],
          ms[1],
          f"{ms[0] / ms[1]:.2f}x",
          ms[2] if torch is not None else "n/a",
          f"{ms[2] / ms[1]:.2f}x" if torch is not None else "n/a",
        ]
      )
  print_table(
    [
      "input -> C_out",
      "pass",
      "XLA + YNNPACK ms",
      "XLA, jhmr's options ms",
      "speed-up",
      "torch ms",
      "jhmr vs torch",
    ],
    rows,
  )
  print(f"# load average {load()} after", flush=True)


if __name__ == "__main__":
  main()
