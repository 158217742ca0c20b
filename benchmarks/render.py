"""Rasteriser throughput: images/s of `jhmr.render.rasterize` on the default body.

Usage:
  python benchmarks/render.py                       # 64x64 and 256x256, batch 8, default body
  python benchmarks/render.py --sizes 64 128 256 512 --batch 8 --repeats 10 --body anny-tiny

Reference, in the same process: a plain dense JAX z-buffer (every pixel against every face,
`lax.scan` over face chunks of 256, depth + silhouette only), the textbook way to rasterise
in an array language. It runs on batch 1 with fewer repeats and only up to --ref-max-size (it
is slow: H*W*F edge tests per image); the ratio compares images/s. Agreement of the two
silhouettes is printed as a sanity check.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import print_table, time_call  # noqa: E402

from jhmr.body import io as body_io  # noqa: E402
from jhmr.render import rasterize  # noqa: E402


@functools.partial(jax.jit, static_argnames=("image_size", "chunk"))
def dense_rasterize(vertices, faces, focal_length, camera_center, image_size, chunk=256):
  """Reference: [B, H*W] pixels x chunks of faces; returns (depth [B, H, W], mask [B, H, W])."""
  h, w = image_size
  xy = vertices[..., :2] / vertices[..., 2:] * focal_length + camera_center
  inv_z = 1.0 / vertices[..., 2]
  px = jnp.stack(jnp.meshgrid(jnp.arange(w) + 0.5, jnp.arange(h) + 0.5), -1).reshape(-1, 2)
  n = faces.shape[0]
  pad = (-n) % chunk
  faces_p = jnp.concatenate([faces, jnp.zeros((pad, 3), faces.dtype)]).reshape(-1, chunk, 3)
  live = (jnp.arange(n + pad) < n).reshape(-1, chunk)

  def step(zbuf, inputs):
    fc, lv = inputs
    t = xy[:, fc]  # [B, C, 3, 2]
    iz = inv_z[:, fc]  # [B, C, 3]

    def edge(a, b):
      return (b[..., None, 0] - a[..., None, 0]) * (px[:, 1] - a[..., None, 1]) - (
        b[..., None, 1] - a[..., None, 1]
      ) * (px[:, 0] - a[..., None, 0])

    w0 = edge(t[:, :, 1], t[:, :, 2])  # [B, C, P]
    w1 = edge(t[:, :, 2], t[:, :, 0])
    w2 = edge(t[:, :, 0], t[:, :, 1])
    area = w0 + w1 + w2
    inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0))
    inside &= (jnp.abs(area) > 1e-12) & lv[None, :, None]
    safe = jnp.where(jnp.abs(area) > 1e-12, area, 1.0)
    izp = (w0 * iz[..., 0:1] + w1 * iz[..., 1:2] + w2 * iz[..., 2:3]) / safe
    return jnp.maximum(zbuf, jnp.max(jnp.where(inside, izp, 0.0), axis=1)), None

  zbuf, _ = jax.lax.scan(step, jnp.zeros((vertices.shape[0], h * w)), (faces_p, live))
  mask = zbuf > 0
  depth = jnp.where(mask, 1.0 / jnp.where(mask, zbuf, 1.0), 0.0)
  return depth.reshape(-1, h, w), mask.reshape(-1, h, w)


def cpu_time_call(fn, *args, repeats: int = 5) -> float:
  """Median process CPU time (all threads) per call, in seconds: stabler than wall time on a
  shared machine; on CPU it measures work rather than latency."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.process_time()
    jax.block_until_ready(fn(*args))
    times.append(time.process_time() - start)
  return statistics.median(times)


def posed_batch(model, batch: int, seed: int = 0):
  """`batch` randomly posed bodies (small random joint rotations) in camera space, ~2.5 m away."""
  rng = np.random.default_rng(seed)
  body_pose = rng.normal(0.0, 0.25, (batch, 23, 3)).astype(np.float32)
  out = jax.jit(lambda m, bp: m(jnp.zeros((batch, m.num_betas)), bp, jnp.zeros((batch, 3))))(
    model, body_pose
  )
  v = np.asarray(out.vertices) * np.array([1.0, -1.0, -1.0], np.float32)  # face the camera
  v = v - v.mean(axis=1, keepdims=True) + np.array([0.0, 0.0, 2.5], np.float32)
  return jnp.asarray(v)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--ref-repeats", type=int, default=2)
  parser.add_argument("--body", default=None, help="None: default Anny body; 'anny-tiny'; path")
  parser.add_argument("--block-size", type=int, default=None, help="default: automatic")
  parser.add_argument("--no-reference", action="store_true")
  parser.add_argument("--ref-max-size", type=int, default=256, help="skip the reference above")
  args = parser.parse_args(argv)

  model = body_io.load_body_model(args.body)
  faces = jnp.asarray(model.faces)
  verts = posed_batch(model, args.batch)
  print(
    f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); body: "
    f"{model.num_vertices} vertices, {faces.shape[0]} faces; batch {args.batch}",
    flush=True,
  )
  rows = []
  for size in args.sizes:
    f = 1.4 * size
    c = jnp.array([size / 2, size / 2])
    fn = functools.partial(
      rasterize, faces=faces, focal_length=f, camera_center=c, image_size=(size, size),
      block_size=args.block_size,
    )  # fmt: skip
    t = time_call(lambda v, fn=fn: fn(v).depth, verts, repeats=args.repeats)
    ours = args.batch / t
    cpu = cpu_time_call(lambda v, fn=fn: fn(v).depth, verts, repeats=args.repeats)
    row = [f"{size}x{size}", args.batch, ours, 1000 * t / args.batch, 1000 * cpu / args.batch]
    if args.no_reference or size > args.ref_max_size:
      rows.append(row + ["-", "-", "-"])
      continue
    one = verts[:1]
    ref = functools.partial(dense_rasterize, faces=faces, focal_length=f, camera_center=c,
                            image_size=(size, size))  # fmt: skip
    t_ref = time_call(lambda v, ref=ref: ref(v)[0], one, repeats=args.ref_repeats, warmup=1)
    agree = float(jnp.mean(ref(one)[1] == fn(one).mask))
    rows.append(row + [1.0 / t_ref, ours * t_ref, f"{agree:.4f}"])
    print(f"  {size}x{size}: {ours:.1f} img/s (reference {1.0 / t_ref:.2f} img/s)", flush=True)
  print_table(
    ["image", "batch", "jhmr img/s", "ms/img", "cpu ms/img", "ref img/s", "ratio", "mask agree"],
    rows,
  )


if __name__ == "__main__":
  main()
