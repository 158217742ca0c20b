"""Stable Diffusion 1.5 U-Net forward: jhmr (JAX) vs diffusers (PyTorch) on the same machine.

  .venv/bin/python benchmarks/sd_unet.py                       # CPU, float32, vs diffusers
  .venv/bin/python benchmarks/sd_unet.py --dtype bfloat16      # GPU (bf16; diffusers if present)
  options: --cases 32x1,32x8,64x1 (latent size x batch) --repeats 3 --tokens 77 --no-reference
           --attention auto|xla|chunked|cudnn --peak-tflops 989 --interleave
           --ynn-fusion-types jaxlib|none|INDIVIDUAL_DOT (CPU: XLA's YNNPACK kernels for jhmr's
           jit only; default jhmr's, as DPMesh's jits: jhmr.models.compile_options)

Full-size SD 1.5 U-Net (859.5M parameters) with random weights, one denoiser call per
iteration (t = 1, as DPMesh; 77 context tokens of width 768). DPMesh's size is a 32x32 latent
(256x256 crops); SD's own is 64x64 (512x512). Each (framework, case) runs in a fresh subprocess,
so the peak RSS column is that framework's alone (weights + activations + runtime); with
`--interleave` (CPU) both run in one process and their calls alternate, so a load that drifts
during the run hits both alike (the fair comparison on a shared machine). jhmr's
compile time is reported separately and not in the per-call time. FLOPs come from XLA's cost
analysis of the same forward (attention lowered unchunked so the count is exact); model-FLOPs
utilisation (MFU) = images/s x FLOPs/image / the device's peak (H100/H200 bf16 dense:
989 TFLOP/s; set --peak-tflops for others).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
  cpu,
  jit_compiler_options,
  load,
  print_table,
  time_call,
  time_interleaved,
)

PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0}}


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def _random_params(shapes, dtype, seed=0):
  """Random weights with sane scales (kernels ~ N(0, 1/fan_in), norms 1, biases 0)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "scale":
      return jnp.ones(s.shape, dtype)
    if name == "bias":
      return jnp.zeros(s.shape, dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    w = rng.standard_normal(s.shape, dtype=np.float32) / np.sqrt(fan_in)
    return jnp.asarray(w, dtype)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def build_jhmr(args):
  """(compiled forward, its arguments, info: flops, compile_s, device) for one case."""
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jhmr.models.unet import SD15_UNET, UNet

  dtype = jnp.dtype(args.dtype)
  model = UNet(SD15_UNET, attention_implementation=args.attention, dtype=dtype, param_dtype=dtype)
  rng = np.random.default_rng(1)
  b, s = args.batch, args.size
  x = jnp.asarray(rng.standard_normal((b, s, s, 4), dtype=np.float32), dtype)
  t = jnp.ones((b,), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((b, args.tokens, 768), dtype=np.float32), dtype)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]
  params = _random_params(shapes, dtype)

  exact = UNet(SD15_UNET, attention_implementation="xla", dtype=dtype, param_dtype=dtype)
  apply_exact = jax.jit(lambda p, x, t, c: exact.apply({"params": p}, x, t, c))
  flops = apply_exact.lower(params, x, t, ctx).cost_analysis()["flops"]

  apply = jax.jit(
    lambda p, x, t, c: model.apply({"params": p}, x, t, c),
    compiler_options=jit_compiler_options(args.ynn_fusion_types),
  )
  start = time.perf_counter()
  compiled = apply.lower(params, x, t, ctx).compile()
  compile_s = time.perf_counter() - start
  device = jax.devices()[0]
  info = dict(
    compile_s=compile_s, flops=float(flops), device=f"{device.platform}:{device.device_kind}"
  )
  return compiled, (params, x, t, ctx), info


def worker_jhmr(args) -> dict:
  import jax
  import jax.numpy as jnp

  compiled, inputs, info = build_jhmr(args)
  seconds = time_call(compiled, *inputs, repeats=args.repeats, warmup=1)
  out = compiled(*inputs)
  stats = jax.devices()[0].memory_stats() or {}
  return dict(
    info,
    seconds=seconds,
    peak_rss_gb=_peak_rss_gb(),
    device_peak_gb=stats.get("peak_bytes_in_use", 0) / 1e9,
    finite=bool(jnp.isfinite(out.astype(jnp.float32)).all()),
  )


def build_diffusers(args):
  """(forward call, device) of diffusers' U-Net for one case."""
  import numpy as np
  import torch
  from diffusers import UNet2DConditionModel

  device = "cuda" if torch.cuda.is_available() else "cpu"
  if args.reference_device == "gpu" and device != "cuda":
    raise SystemExit("jhmr ran on a GPU but this torch has no CUDA: no like-for-like reference")
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  model = UNet2DConditionModel(cross_attention_dim=768).eval().to(device, dtype)
  rng = np.random.default_rng(1)
  b, s = args.batch, args.size
  x = torch.from_numpy(rng.standard_normal((b, 4, s, s), dtype=np.float32)).to(device, dtype)
  t = torch.ones((b,), device=device)
  ctx = torch.from_numpy(rng.standard_normal((b, args.tokens, 768), dtype=np.float32))
  ctx = ctx.to(device, dtype)

  def call():
    with torch.inference_mode():
      out = model(x, t, ctx).sample
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  return call, device


def worker_diffusers(args) -> dict:
  import torch

  call, device = build_diffusers(args)
  seconds = time_call(call, repeats=args.repeats, warmup=1)
  return dict(
    seconds=seconds,
    peak_rss_gb=_peak_rss_gb(),
    device_peak_gb=torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else 0.0,
    device=device,
    finite=bool(torch.isfinite(call()).all()),
  )


def _run_worker(framework: str, case: tuple[int, int], args, device="cpu") -> dict | None:
  size, batch = case
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--worker",
    framework,
    "--size",
    str(size),
    "--batch",
    str(batch),
    "--dtype",
    args.dtype,
    "--repeats",
    str(args.repeats),
    "--tokens",
    str(args.tokens),
    "--attention",
    args.attention,
    "--reference-device",
    device,
  ]
  if args.ynn_fusion_types is not None:
    cmd += ["--ynn-fusion-types", args.ynn_fusion_types]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    print(f"[{framework} {size}x{size} b{batch}] failed: {' | '.join(tail)}", file=sys.stderr)
    return None
  return json.loads(lines[-1])


def interleaved(case: tuple[int, int], args) -> tuple[dict, dict]:
  """Both frameworks in this process, their calls timed in alternation (`time_interleaved`):
  on a shared machine both see the same load. RSS is the process's, not per framework."""
  size, batch = case
  worker_args = argparse.Namespace(
    **{**vars(args), "size": size, "batch": batch, "reference_device": "cpu"}
  )
  ours_fn, ours_inputs, info = build_jhmr(worker_args)
  ref_fn, device = build_diffusers(worker_args)
  if device != "cpu":
    raise SystemExit("--interleave compares CPU runs; drop it on a GPU machine")
  ours_s, ref_s = time_interleaved(
    [(ours_fn, ours_inputs), (ref_fn, ())], repeats=args.repeats, warmup=1
  )
  rss = _peak_rss_gb()
  ours = dict(info, seconds=ours_s, peak_rss_gb=rss, device_peak_gb=0.0)
  return ours, dict(seconds=ref_s, peak_rss_gb=rss)


def _peak_for(device: str, dtype: str, override: float | None) -> float | None:
  if override:
    return override
  for name, table in PEAK_TFLOPS.items():
    if name in device and dtype in table:
      return table[dtype]
  return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="32x1,32x8,64x1", help="latent-size x batch, comma list")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--tokens", type=int, default=77)
  parser.add_argument("--attention", default="auto", choices=["auto", "xla", "chunked", "cudnn"])
  parser.add_argument("--no-reference", action="store_true", help="skip diffusers")
  parser.add_argument("--peak-tflops", type=float, default=None)
  parser.add_argument(
    "--interleave",
    action="store_true",
    help="CPU: both frameworks in one process, calls alternating (fair under a drifting load)",
  )
  parser.add_argument(
    "--ynn-fusion-types",
    default=None,
    help="CPU: XLA's YNNPACK kernels for jhmr's jit ('jaxlib': jaxlib's default, 'none', or "
    "e.g. INDIVIDUAL_DOT); default: jhmr's (sd_compiler_options: no YNNPACK convolutions)",
  )
  parser.add_argument("--worker", choices=["jhmr", "diffusers"], help=argparse.SUPPRESS)
  parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--reference-device", default="cpu", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    result = (worker_jhmr if args.worker == "jhmr" else worker_diffusers)(args)
    print(json.dumps(result), flush=True)
    return

  cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
  print(
    f"SD 1.5 U-Net forward, {args.dtype}, attention={args.attention}, {args.tokens} tokens, "
    f"median of {args.repeats}"
    + (", interleaved in one process (RSS: the process's)" if args.interleave else "")
    + f", jhmr's XLA options: {jit_compiler_options(args.ynn_fusion_types) or 'jaxlib default'}",
    flush=True,
  )
  print(f"# CPU {cpu()}; load average {load()} before", flush=True)
  rows = []
  for case in cases:
    size, batch = case
    if args.interleave:
      ours, ref = interleaved(case, args)
    else:
      ours = _run_worker("jhmr", case, args)
      if ours is None:
        continue
      platform = "gpu" if ours["device"].startswith(("gpu", "cuda")) else "cpu"
      ref = None if args.no_reference else _run_worker("diffusers", case, args, platform)
    per_image = ours["flops"] / batch
    images_s = batch / ours["seconds"]
    peak = _peak_for(ours["device"], args.dtype, args.peak_tflops)
    mfu = f"{100 * images_s * per_image / (peak * 1e12):.1f}%" if peak else "n/a"
    rows.append(
      [
        f"{size}x{size}",
        batch,
        ours["device"],
        ours["seconds"],
        ref["seconds"] if ref else "n/a",
        f"{ref['seconds'] / ours['seconds']:.2f}x" if ref else "n/a",
        images_s,
        per_image / 1e9,
        mfu,
        ours["peak_rss_gb"],
        ref["peak_rss_gb"] if ref else "n/a",
        ours["device_peak_gb"],
        ours["compile_s"],
      ]
    )
  print_table(
    [
      "latent",
      "batch",
      "device",
      "jhmr s/call",
      "diffusers s/call",
      "speed-up",
      "jhmr img/s",
      "GFLOP/img",
      "MFU",
      "jhmr RSS GB",
      "diffusers RSS GB",
      "jhmr dev GB",
      "jhmr compile s",
    ],
    rows,
  )
  print(f"# load average {load()} after", flush=True)


if __name__ == "__main__":
  main()
