"""ScoreHMR refinement speed: frames/s of `jhmr.refine` against the official PyTorch code's.

  .venv/bin/python benchmarks/scorehmr.py --frames 256 --batch 256        # CPU or GPU

`refine` with the full-size network (11.3M parameters, 3072-D features, random weights like the
anchor) and the default body model, official keypoint-fitting settings, early stopping off;
frames/s over --batch frames. Anchor: the official PyTorch code on the 2-core CI CPU, 2.2
frames/s at batch 64-256 (shared/research/official_scorehmr_cpu_bench.md).

Accuracy is not measured here: it is a config run through the shared trainer and evaluation,
  python -m jhmr.launch --config configs/scorehmr.py:cmu_prior --workdir runs/cmu_prior
(benchmarks/README.md, "ScoreHMR refinement").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from common import print_table, time_call  # noqa: E402

from jhmr.body import load_body_model  # noqa: E402
from jhmr.guidance import Observation, refine, task_config  # noqa: E402
from jhmr.models.score_net import ScoreNet, count_params  # noqa: E402

ANCHOR_FPS = 2.2  # official PyTorch, 2 CPU threads, B = 64..256


# -- speed --------------------------------------------------------------------------------------


def speed(bm, frames: int, batch: int, repeats: int):
  net = ScoreNet()  # released configuration: 3072-D PARE features, 11,307,024 parameters
  x = jnp.zeros((1, 144))
  params = jax.jit(net.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32), jnp.zeros((1, 3072)))
  config = task_config("keypoints").replace(early_stopping=False, net=net)
  k = jax.random.split(jax.random.key(7), 6)
  aa = 0.3 * jax.random.normal(k[0], (batch, 24, 3))
  betas = 0.5 * jax.random.normal(k[1], (batch, bm.num_betas))
  cam_t = jnp.concatenate(
    [0.1 * jax.random.normal(k[2], (batch, 2)), 20 + jax.random.uniform(k[3], (batch, 1)) * 5], -1
  )
  pts = bm.joints_only(betas, aa[:, 1:], aa[:, 0], cam_t, joint_set="openpose25").keypoints
  kp = 5000 * pts[..., :2] / pts[..., 2:] + 500 + 15 * jax.random.normal(k[4], pts[..., :2].shape)
  obs = Observation.create(
    aa,
    betas,
    cam_t,
    kp,
    jax.random.uniform(k[5], kp.shape[:2]),
    image_size=(1000, 1000),
    features=jax.random.normal(k[0], (batch, 3072)),
    pose_format="axis_angle",
    body_model=bm,
  )
  t0 = time.time()
  jax.block_until_ready(refine(params, obs, config=config))
  compile_s = time.time() - t0
  per_call = time_call(lambda: refine(params, obs, config=config), repeats=repeats, warmup=0)
  calls = -(-frames // batch)
  fps = batch / per_call
  return {
    "device": jax.devices()[0].device_kind,
    "batch": batch,
    "frames": calls * batch,
    "s_per_batch": per_call,
    "frames_per_s": fps,
    "first_call_s": compile_s,
    "total_s": calls * per_call,
    "params": count_params(params),
    "net_evals_per_frame": 2 * config.num_iters * config.steps_per_iter,
    "body_passes_per_frame": config.num_iters * config.steps_per_iter,
  }


# -- main ---------------------------------------------------------------------------------------


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--body-model", default=None, help="None: the default Anny model; 'anny-tiny'")
  p.add_argument("--frames", type=int, default=256, help="frames refined in all")
  p.add_argument("--batch", type=int, default=256, help="frames per refine call")
  p.add_argument("--repeats", type=int, default=2)
  a = p.parse_args()
  bm = load_body_model(a.body_model)
  print(f"device: {jax.devices()[0].device_kind}; body model: {bm.num_vertices} vertices")
  r = speed(bm, a.frames, a.batch, a.repeats)
  print("\nSpeed: refine, keypoint fitting, official settings, early stopping off")
  print_table(
    [
      "device",
      "batch",
      "s/batch",
      "frames/s",
      "vs official CPU (2.2/s)",
      "first call s",
      "net evals/frame",
      "body passes/frame",
    ],
    [
      (
        r["device"],
        r["batch"],
        r["s_per_batch"],
        r["frames_per_s"],
        r["frames_per_s"] / ANCHOR_FPS,
        r["first_call_s"],
        r["net_evals_per_frame"],
        r["body_passes_per_frame"],
      )
    ],
  )
  print(f"{r['frames']} frames: {r['total_s']:.1f} s ({r['params']} network parameters)")


if __name__ == "__main__":
  main()
