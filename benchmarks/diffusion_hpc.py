"""Diffusion-HPC pieces: the VPoser v2 prior on held-out CMU subjects, and generation throughput.

  .venv/bin/python benchmarks/diffusion_hpc.py                      # both parts, CPU float32
  options: --parts vposer,generation --vposer-steps 2000 --components unet15,unet_depth,...
           --repeats 1 --threads 2

vposer: VPoser v2 (`jhmr.models.vposer.VPoser`, V02_05 size) trained through
  `jhmr.train.vposer_task` (V02_05's loss with the body-model mesh / joint terms on the free body
  model, Adam 1e-3, batch 128, no EMA) for `--vposer-steps` steps on the TRAINING subjects of
  `../shared/data/cmu_mocap` (`jhmr.data.mocap.cmu_subject_split`; the held-out subjects are 03,
  05, 12 and 135). Then on the held-out subjects:
  * reconstruction error: joints of decode(mu(pose)) vs joints of the pose, both through the body
    model with zero betas, identity root and hands (`vposer_task.body_model_fn`), MPJPE in mm over
    the 24 joints; next to it the error of answering the rest pose (a scale for the number);
  * hardness (Diffusion-HPC's score): ||z||^2 of ONE seeded sample z ~ q(z | pose) (key 0), tau 30.
    Easy / hard from the CMU trial descriptions of the held-out subjects (`index.csv`): easy = the
    trials described as walking ("walk", "walk on uneven terrain": subjects 03, 12, and 05_01);
    hard = modern dance (subject 05, "dance - ...": arabesques, jetes, pirouettes, a cartwheel-like
    start) and karate (subject 135, "martial arts / karate"). Histogram of the score in bins, the
    fraction above tau and the median per group.
generation: per-call times of every network in Diffusion-HPC's image chain at 512x512 (64x64
  latents), jhmr (jit, compiled ahead of the timed calls; compile time listed) vs diffusers /
  transformers (torch CPU, `--threads` intra-op threads) in the same process with the same random
  weights (the torch module is built with seed 0 and converted with jhmr's converter; "max |diff|"
  is the largest output difference): SD 1.5 U-Net with CFG (batch 2, 77 tokens), SD 2 depth U-Net
  (5 input channels, batch 2), SD VAE decode 64 -> 512 and encode 512 -> 64 (batch 1), CLIP ViT-L/14
  and OpenCLIP ViT-H/14 text towers (batch 2 = prompt + negative prompt). The U-Nets and the VAE
  take `--repeats` calls each with no warm-up call (minutes per call here; jhmr is compiled ahead,
  torch's first call is timed); the text towers one warm-up call, then the median of 3. The
  50-step call does not
  fit the 2-core CPU, so the seconds per image are COMPOSED from the measured calls (the scheduler
  arithmetic between U-Net calls is left out):
    text-to-image (SD 1.x, PNDM 50 steps, CFG 7.5) = CLIP-L + 50 x U-Net(SD 1.5, b2) + decode
    depth-to-image (strength 0.7: 36 steps)        = OpenCLIP-H + encode + 36 x U-Net(depth, b2)
                                                     + decode
    Diffusion-HPC image from a prompt               = the sum (HMR, Mask R-CNN and the depth
                                                     render are not counted). Paper: ~6 s on a GPU.
Every (part of a) component runs in its own subprocess, so memory is released in between.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import block, clip_text_config, print_table  # noqa: E402

CMU_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
CMU_ROOT = os.path.normpath(os.path.join(CMU_ROOT, "cmu_mocap"))
TAU = 30.0
HIST_EDGES = (0, 10, 20, 30, 40, 60, 80, 120, float("inf"))


# -- VPoser ---------------------------------------------------------------------------------------


def _trial_groups(root: str, held_out: list[str]) -> dict[str, str]:
  """'<folder>/<name>' -> 'easy' | 'hard' for the held-out trials that are either (index.csv)."""
  groups = {}
  with open(os.path.join(root, "index.csv"), newline="") as f:
    for row in csv.DictReader(f):
      if row["subject_folder"] not in held_out:
        continue
      name, desc = row["path"].removesuffix(".bvh"), row["description"].lower()
      if desc.startswith("walk"):
        groups[name] = "easy"
      elif desc.startswith("dance") or desc.startswith("martial arts"):
        groups[name] = "hard"
  return groups


def part_vposer(args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs.common import trainer_config
  from jhmr.body import load_body_model
  from jhmr.data.mocap import cmu_subject_split, load_cmu
  from jhmr.models.vposer import NUM_JOINTS, VPoser, hardness
  from jhmr.train import trainer
  from jhmr.train.vposer_task import body_model_fn, cmu_vposer_poses, make_vposer_task

  body = load_body_model()
  train_subjects, test_subjects = cmu_subject_split(CMU_ROOT)
  start = time.perf_counter()
  poses = cmu_vposer_poses(CMU_ROOT, "train", body_model=body)
  motions = load_cmu(CMU_ROOT, test_subjects, body)
  load_s = time.perf_counter() - start
  print(
    f"CMU: train subjects {train_subjects} ({len(poses)} poses), held-out {test_subjects} "
    f"({sum(len(m.body_pose) for m in motions.values())} poses); read + retarget {load_s:.0f} s",
    flush=True,
  )

  vposer = VPoser()
  config = trainer_config(steps=args.vposer_steps, batch_size=128, learning_rate=1e-3)
  config.seed = 0
  config.train.progress = False
  config.train.tensorboard = False
  config.train.checkpoint_every = args.vposer_steps
  config.ema.beta = 0.0
  task = make_vposer_task(vposer, poses, body_model=body)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    state = trainer.train(config, workdir, task)
    train_s = time.perf_counter() - start
  variables = {"params": state.params, **state.model_state}
  print(
    f"VPoser: {args.vposer_steps} steps of batch 128 in {train_s:.0f} s "
    f"({args.vposer_steps * 128 / len(poses):.1f} epochs; 2-core CPU, uptime load "
    f"{os.getloadavg()[0]:.1f})",
    flush=True,
  )

  joints_of = jax.jit(lambda rotmat: body_model_fn(body)(rotmat)[1])

  @jax.jit
  def reconstruct(variables, pose):
    mu, _ = vposer.apply(variables, pose, method=VPoser.encode)
    return vposer.apply(variables, mu, method=VPoser.decode)["pose_body_matrot"]

  from jhmr.geometry import rotations

  def mpjpe_mm(pose):  # [N, 63] -> per-pose mm
    errs = []
    for i in range(0, len(pose), 1024):
      x = jnp.asarray(pose[i : i + 1024])
      rec = joints_of(reconstruct(variables, x))
      truth = joints_of(rotations.axis_angle_to_matrix(x.reshape(-1, NUM_JOINTS, 3)))
      rest = joints_of(jnp.broadcast_to(jnp.eye(3), (len(x), NUM_JOINTS, 3, 3)))
      errs.append(
        np.stack(
          [
            np.asarray(jnp.linalg.norm(rec - truth, axis=-1).mean(-1)),
            np.asarray(jnp.linalg.norm(rest - truth, axis=-1).mean(-1)),
          ],
          -1,
        )
      )
    return 1000 * np.concatenate(errs)

  per_trial = {
    k: m.body_pose[:, :NUM_JOINTS].reshape(len(m.body_pose), -1) for k, m in motions.items()
  }
  rows = []
  for subject in test_subjects:
    x = np.concatenate([v for k, v in per_trial.items() if k.split("/")[0] == subject])
    err = mpjpe_mm(x.astype(np.float32))
    rows.append([subject, len(x), float(err[:, 0].mean()), float(err[:, 1].mean())])
  x_all = np.concatenate(list(per_trial.values())).astype(np.float32)
  err = mpjpe_mm(x_all)
  rows.append(["all held-out", len(x_all), float(err[:, 0].mean()), float(err[:, 1].mean())])
  sub = np.random.default_rng(0).choice(len(poses), min(len(poses), 20000), replace=False)
  err = mpjpe_mm(poses[sub])
  rows.append(["training subjects (20k sample)", len(sub), float(err[:, 0].mean()),
               float(err[:, 1].mean())])  # fmt: skip
  print("\nVPoser reconstruction (decode(mu)), MPJPE over 24 body-model joints, mm")
  print_table(["subjects", "poses", "VPoser mm", "rest pose mm"], rows)

  groups = _trial_groups(CMU_ROOT, test_subjects)
  key = jax.random.PRNGKey(0)
  scores = {}
  for group in ("easy", "hard"):
    x = np.concatenate([v for k, v in per_trial.items() if groups.get(k) == group])
    scores[group] = np.asarray(hardness(variables, jnp.asarray(x, jnp.float32), key))
  trials = {g: sorted(k for k, v in groups.items() if v == g) for g in ("easy", "hard")}
  print(f"\neasy trials: {', '.join(trials['easy'])}")
  print(f"hard trials: {', '.join(trials['hard'])}")
  print(f"\nHardness ||z||^2 of one sample (key 0), fraction of poses per bin (tau = {TAU:g})")
  header = ["group", "poses", "median", "> tau"]
  bins = [f"[{lo:g}, {hi:g})" for lo, hi in zip(HIST_EDGES[:-1], HIST_EDGES[1:])]
  rows = []
  for group, s in scores.items():
    hist, _ = np.histogram(s, bins=np.asarray(HIST_EDGES))
    frac = hist / len(s)
    rows.append([group, len(s), float(np.median(s)), f"{100 * np.mean(s > TAU):.1f}%"]
                + [f"{100 * f:.1f}%" for f in frac])  # fmt: skip
  print_table(header + bins, rows)


# -- generation throughput -------------------------------------------------------------------------

COMPONENTS = ("clip_l", "openclip_h", "unet15", "unet_depth", "vae_encode", "vae_decode")
LABELS = {
  "clip_l": "CLIP ViT-L/14 text (SD 1.x), 2 x 77 tokens",
  "openclip_h": "OpenCLIP ViT-H/14 text (SD 2), 2 x 77 tokens",
  "unet15": "SD 1.5 U-Net, 64x64 latent, batch 2 (CFG)",
  "unet_depth": "SD 2 depth U-Net, 64x64 latent + depth, batch 2 (CFG)",
  "vae_encode": "SD VAE encode 512x512 -> 64x64, batch 1",
  "vae_decode": "SD VAE decode 64x64 -> 512x512, batch 1",
}


def _build(component: str):
  """(torch module, jhmr apply fn(params, *inputs), jhmr params, numpy inputs (NHWC / ids),
  torch call(*inputs) -> numpy output in jhmr's layout)."""
  import diffusers
  import numpy as np
  import torch
  import transformers

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  to_t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
  nchw = lambda x: to_t(x.transpose(0, 3, 1, 2))
  nhwc = lambda y: y.numpy().transpose(0, 2, 3, 1)
  if component in ("clip_l", "openclip_h"):
    from jhmr.convert import clip_text as C
    from jhmr.models.clip_text import CLIPTextModel

    cfg = clip_text_config(component)
    ref = transformers.CLIPTextModel(cfg).eval()
    config = C.clip_text_config_from_transformers(ref.config.to_dict())
    params = C.convert_clip_text_state_dict(ref.state_dict(), config)
    ids = rng.integers(3, 49000, (2, 77))
    ids[:, -1] = config.eos_token_id
    model = CLIPTextModel(config)
    apply = lambda p, i: model.apply({"params": p}, i).last_hidden_state
    return (
      ref,
      apply,
      params,
      (ids.astype(np.int32),),
      lambda i: ref(to_t(i).long()).last_hidden_state.numpy(),
    )
  if component in ("unet15", "unet_depth"):
    from jhmr.convert import diffusers_unet as U
    from jhmr.models.unet import SD2_DEPTH_UNET, SD15_UNET, UNet

    if component == "unet15":
      ref = diffusers.UNet2DConditionModel(cross_attention_dim=768).eval()
      want, ctx_dim, channels = SD15_UNET, 768, 4
    else:
      ref = diffusers.UNet2DConditionModel(
        in_channels=5, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        use_linear_projection=True,
      ).eval()  # fmt: skip
      want, ctx_dim, channels = SD2_DEPTH_UNET, 1024, 5
    config = U.unet_config_from_diffusers(dict(ref.config))
    if config != want:
      raise SystemExit(f"{component}: converted config {config} is not {want}")
    params = U.convert_unet_state_dict(ref.state_dict(), config)
    x = rng.standard_normal((2, 64, 64, channels), dtype=np.float32)
    t = np.full((2,), 701.0, np.float32)
    ctx = rng.standard_normal((2, 77, ctx_dim), dtype=np.float32)
    model = UNet(config)

    def apply(p, x, t, c):
      out = model.apply({"params": p}, x, t, c)
      return getattr(out, "sample", out)  # an array unless intermediate outputs are asked for

    return (
      ref,
      apply,
      params,
      (x, t, ctx),
      lambda x, t, c: nhwc(ref(nchw(x), to_t(t), to_t(c)).sample),
    )
  from jhmr.convert import diffusers_vae as V
  from jhmr.models.vae import AutoencoderKL

  ref = diffusers.AutoencoderKL(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
  ).eval()  # fmt: skip
  config = V.vae_config_from_diffusers(dict(ref.config))
  params = V.convert_vae_state_dict(ref.state_dict(), config)
  model = AutoencoderKL(config)
  if component == "vae_decode":
    z = rng.standard_normal((1, 64, 64, 4), dtype=np.float32)
    apply = lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode)
    return ref, apply, params, (z,), lambda z: nhwc(ref.decode(nchw(z)).sample)
  x = rng.uniform(-1, 1, (1, 512, 512, 3)).astype(np.float32)
  apply = lambda p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode).mean
  return ref, apply, params, (x,), lambda x: nhwc(ref.encode(nchw(x)).latent_dist.mean)


def worker_generation(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  torch.set_num_threads(args.threads)
  ref, apply, params, inputs, call_ref = _build(args.worker)
  params = jax.tree.map(jnp.asarray, params)
  jinputs = tuple(jnp.asarray(x) for x in inputs)
  start = time.perf_counter()
  compiled = jax.jit(apply).lower(params, *jinputs).compile()
  compile_s = time.perf_counter() - start
  cheap = args.worker in ("clip_l", "openclip_h")  # seconds per call: warm up, median of 3
  if cheap:
    block(compiled(params, *jinputs))
    with torch.inference_mode():
      call_ref(*inputs)
  ours, theirs, diff = [], [], 0.0
  for _ in range(max(args.repeats, 3) if cheap else args.repeats):  # interleaved: same load
    start = time.perf_counter()
    out = np.asarray(block(compiled(params, *jinputs)))
    ours.append(time.perf_counter() - start)
    start = time.perf_counter()
    with torch.inference_mode():
      want = call_ref(*inputs)
    theirs.append(time.perf_counter() - start)
    diff = max(diff, float(np.abs(out - want).max()))
  return dict(
    jhmr=statistics.median(ours),
    torch=statistics.median(theirs),
    compile_s=compile_s,
    diff=diff,
    scale=float(np.abs(want).max()),
  )


def part_generation(args) -> None:
  results = {}
  for name in args.components.split(","):
    if name not in COMPONENTS:
      raise SystemExit(f"unknown component {name!r}; valid: {', '.join(COMPONENTS)}")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
      tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
      print(f"[{name}] failed: {tail}", file=sys.stderr, flush=True)
      continue
    results[name] = json.loads(lines[-1])
    print(f"[{name}] done in {time.perf_counter() - start:.0f} s: {results[name]}", flush=True)
  rows = [
    [LABELS[k], r["jhmr"], r["torch"], f"{r['torch'] / r['jhmr']:.2f}x", r["compile_s"],
     f"{r['diff']:.1e} (of {r['scale']:.2g})"]
    for k, r in results.items()
  ]  # fmt: skip
  print(
    f"\nPer call, float32 CPU, median of {args.repeats} (torch {args.threads} threads; jhmr "
    "compile excluded)"
  )
  print_table(
    ["network", "jhmr s", "torch s", "torch / jhmr", "jhmr compile s", "max |diff|"], rows
  )
  recipes = {
    "text-to-image, SD 1.x, 50 PNDM steps, CFG": {"clip_l": 1, "unet15": 50, "vae_decode": 1},
    "depth-to-image, SD 2 depth, strength 0.7 (36 steps), CFG": {
      "openclip_h": 1, "vae_encode": 1, "unet_depth": 36, "vae_decode": 1,
    },
  }  # fmt: skip
  recipes["Diffusion-HPC image from a prompt (both)"] = {
    k: sum(r.get(k, 0) for r in recipes.values()) for k in COMPONENTS
  }
  rows = []
  for label, counts in recipes.items():
    if not all(k in results for k, n in counts.items() if n):
      continue
    ours = sum(n * results[k]["jhmr"] for k, n in counts.items())
    theirs = sum(n * results[k]["torch"] for k, n in counts.items())
    rows.append([label, ours, theirs, f"{theirs / ours:.2f}x"])
  print("\nSeconds per 512x512 image, composed from the calls above (not a measured 50-step call)")
  print_table(["program", "jhmr s/image", "diffusers s/image", "torch / jhmr"], rows)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="vposer,generation")
  parser.add_argument("--vposer-steps", type=int, default=2000)
  parser.add_argument("--components", default=",".join(COMPONENTS))
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--worker", choices=COMPONENTS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker_generation(args)), flush=True)
    return
  print(f"uptime load average at start: {os.getloadavg()}", flush=True)
  for part in args.parts.split(","):
    {"vposer": part_vposer, "generation": part_generation}[part](args)
  print(f"uptime load average at end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
  main()
