"""DPMesh at full size: parameter counts, CPU forward / forward+backward, FSDP vs replicated.

  .venv/bin/python benchmarks/dpmesh.py                               # all parts, float32
  .venv/bin/python benchmarks/dpmesh.py --parts counts                # counts only (seconds)
  options: --parts counts,time,sharding  --cases fwd1,fwd8,train1,train8  --repeats 2 --warmup 1
           --compile-only (time part: compile from shapes, XLA memory only: what would not fit)
           --dtype float32|bfloat16 (bf16 compute, fp32 parameters)  --remat
           --xla-options jhmr|jaxlib (jit compiler options: DPMesh's, or jaxlib's default)
           --size full|half|tiny (time)  --shard-size full|half|tiny  --shard-devices 8
           --shard-per-device 1  --shardings replicated,fsdp,fsdp_trainable  --shard-timeout 1200
           --fsdp-min-size 16384 (the trainer's FSDP_MIN_SIZE; 0 shards every divisible leaf)

1. counts: full-size parameter counts from `jax.eval_shape` (no weights, no compile) per group
   (ControlNet, U-Net LoRA, fusion, joint prompt, regressor; frozen VAE encoder, U-Net, pose
   decoder) for the paper config (`DPMeshConfig()`) and the released one (Dense(2 -> 768) prompt,
   3-query regressor with a 32-D VPoser code, VPoser v1 decoder), trainable / frozen split by
   `jhmr.train.dpmesh_task.param_labels`, next to the paper's Table 5 (1426.3M total, 408.9M
   trainable). SD parts jhmr never builds (VAE decoder, CLIP ViT-L/14 text) are counted from
   jhmr's own ports so the total can be compared with the paper's (as is VPoser v1's encoder,
   which the released model loads but never calls).
2. time: the paper config at full size (256² crops, SD 1.5 U-Net + ControlNet) with random
   variables (`jhmr.models.dpmesh.random_variables`, no SD init compile) on the CPU, per image:
   "fwd" = inference (`train=False`), "train" = forward + backward w.r.t. the trainable
   parameters only (`param_labels`: the frozen VAE, U-Net base and codebook are a separate,
   non-differentiated argument, as in training) with `train=True` (joint dropout, dropout) and a
   stand-in loss (mean squares of pose, betas, translation and joint_img: DPMesh's losses minus
   the body model, whose cost is negligible next to the U-Net). Each case runs in a fresh
   subprocess: "RSS GB" is that process's peak resident memory (weights + activations +
   runtime); "arg / temp GB" are XLA's compiled sizes (`memory_analysis()`). Compiled first
   (`lower().compile()`, timed apart), then `--warmup` untimed calls and the median of `--repeats`
   timed ones; wall and process CPU seconds (all threads) per image.
3. sharding: the trainer's update step (`jhmr.train.trainer`: gradient w.r.t. the trainable part
   only, AdamW with clip 10, an EMA of the trainable part; stand-in loss) compiled, not run, for
   `--shard-devices` fake CPU devices (`--xla_force_host_platform_device_count`, set in a
   subprocess) with the batch (`--shard-per-device` per device) split over 'data' and the
   state placed by the trainer's `state_shardings`: 'replicated' (train.param_sharding's
   default), 'fsdp' (every leaf of >= `FSDP_MIN_SIZE` elements split along its largest axis
   divisible by the device count: trainable, AdamW, EMA and frozen alike, as the trainer) or
   'fsdp_trainable' (frozen U-Net / VAE / decoder replicated). Per-device argument / output /
   temp bytes from `memory_analysis()`; nothing is allocated. First, the state's bytes per
   device under each placement from the shapes alone (no compile). On the 2-core CPU under load
   the full-size 8-device compile can exceed `--shard-timeout`: use `--shard-size half|tiny`.

`--remat` builds `DPMesh(..., remat=True)`: the U-Net and ControlNet blocks under `nn.remat`
(activations recomputed in the backward pass), as `config.remat` does in `configs/dpmesh.py`.

The machine's load average and free memory are printed before and after each part.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import (  # noqa: E402
  cpu,
  free_gb,
  jit_compiler_options,
  load,
  peak_rss_gb,
  print_table,
)

PAPER_TOTAL, PAPER_TRAINABLE = 1_426_300_000, 408_900_000  # paper Table 5 ("DPMesh (Ours)")
RELEASED_AWL_WEIGHTS = 9  # AutomaticWeightedLoss(9) of the released code (research/dpmesh.md §12)
CASES = {"fwd1": ("fwd", 1), "fwd8": ("fwd", 8), "train1": ("train", 1), "train8": ("train", 8)}


def machine(tag: str) -> None:
  print(f"# {tag}: load average {load()}; CPU {cpu()}; memory {free_gb()}", flush=True)


def count(tree) -> int:
  import jax

  return sum(int(x.size) for x in jax.tree.leaves(tree))


def mega(n: int) -> str:
  return f"{n / 1e6:,.1f}M"


# ----------------------------------------------------------------------------------------------
# Configs


def model_config(size: str):
  """`DPMeshConfig` at 'full' (the paper), 'half' (every U-Net / ControlNet / fusion width
  halved, same structure) or 'tiny' (`DPMeshConfig.tiny()`)."""
  from jhmr.models.controlnet import ControlNetConfig
  from jhmr.models.dpmesh import DPMeshConfig
  from jhmr.models.dpmesh_backbone import DPMESH_PAPER

  if size == "full":
    return DPMeshConfig()
  if size == "tiny":
    return DPMeshConfig.tiny()
  if size != "half":
    raise ValueError(f"size must be full, half or tiny, got {size!r}")
  base = DPMESH_PAPER
  unet = dataclasses.replace(
    base.unet, block_out_channels=tuple(c // 2 for c in base.unet.block_out_channels)
  )
  controlnet = ControlNetConfig.from_unet(
    unet, conditioning_channels=30, conditioning_embedding_out_channels=None
  )
  fusion = base.fusion_channels // 2
  backbone = dataclasses.replace(base, unet=unet, controlnet=controlnet, fusion_channels=fusion)
  default = DPMeshConfig()
  regressor = dataclasses.replace(default.regressor, in_channels=fusion)
  return DPMeshConfig(backbone=backbone, regressor=regressor)


# ----------------------------------------------------------------------------------------------
# 1. Parameter counts


FROZEN_NAMES = {
  "pose_codebook": "pose codebook (VQ-VAE 48 x 2048)",
  "vposer": "VPoser v1 decoder",
}


def _group_rows(name: str, params, labels) -> list[list]:
  """Rows `[config, group, kind, count]` per group of a DPMesh params tree (shapes suffice)."""
  import jax

  from jhmr.models import dpmesh_backbone as bb

  groups = bb.parameter_counts(params["backbone"])
  rows = [
    [name, "ControlNet", "trainable", groups["controlnet"]],
    [name, "U-Net LoRA (rank 64)", "trainable", groups["unet_lora"]],
    [name, "fusion (outmodules)", "trainable", groups["fusion"]],
    [name, "joint prompt", "trainable", groups["prompt"]],
    [name, "regressor", "trainable", count(params["regressor"])],
  ]
  if "loss_weights" in params:
    rows.append([name, "automatic loss weights", "trainable", count(params["loss_weights"])])
  rows += [
    [name, "VAE encoder + quant_conv", "frozen", groups["vae"]],
    [name, "SD 1.5 U-Net base", "frozen", groups["unet"]],
  ]
  for key in sorted(set(params) - {"backbone", "regressor", "loss_weights"}):
    kinds = {g for g in jax.tree.leaves(labels[key])}
    kind = "frozen" if kinds == {"frozen"} else "trainable" if "frozen" not in kinds else "mixed"
    rows.append([name, FROZEN_NAMES.get(key, key), kind, count(params[key])])
  flat = list(zip(jax.tree.leaves(params), jax.tree.leaves(labels)))
  trainable = sum(int(p.size) for p, g in flat if g != "frozen")
  frozen = sum(int(p.size) for p, g in flat if g == "frozen")
  listed = sum(r[3] for r in rows if r[2] == "trainable")
  if listed != trainable:
    raise AssertionError(f"{name}: groups sum to {listed} trainable, param_labels to {trainable}")
  rows.append([name, "total trainable (param_labels)", "trainable", trainable])
  rows.append([name, "total frozen (param_labels)", "frozen", frozen])
  rows.append([name, "total built", "", trainable + frozen])
  return rows


def _released_params():
  """(params shapes, decoder note): the released DPMesh, whole if the config builds it, else the
  backbone + regressor (and VPoser v1's decoder if `jhmr` has it)."""
  import jax
  import jax.numpy as jnp

  from jhmr.models import dpmesh as dm
  from jhmr.models.dpmesh_backbone import DPMESH_RELEASED, DPMeshBackbone
  from jhmr.models.dpmesh_regressor import DPMESH_REGRESSOR_RELEASED, DPMeshRegressor

  make = getattr(dm.DPMeshConfig, "released", None)
  try:
    config = (
      make()
      if make
      else dm.DPMeshConfig(
        backbone=DPMESH_RELEASED, regressor=DPMESH_REGRESSOR_RELEASED, pose_decoder="vposer"
      )
    )
    shapes = dm._variable_shapes(dm.DPMesh(config))
    return dict(shapes["params"]), "whole model (`pose_decoder='vposer'`)"
  except (NotImplementedError, ValueError, TypeError) as err:
    note = f"pose decoder missing ({type(err).__name__}: {err})"
  backbone = DPMeshBackbone(DPMESH_RELEASED)
  bshapes = jax.eval_shape(backbone.init, jax.random.key(0), *backbone.dummy_inputs())
  regressor = DPMeshRegressor(DPMESH_REGRESSOR_RELEASED)
  feats = jnp.zeros((1, 8, 8, DPMESH_RELEASED.fusion_channels))
  rshapes = jax.eval_shape(regressor.init, jax.random.key(0), feats)
  return {"backbone": bshapes["params"], "regressor": rshapes["params"]}, note


def _vposer_v1_encoder_count() -> int | None:
  """Parameters of VPoser v1's encoder (BatchNorm scale/bias, fc1, fc2, mu, logvar), which the
  released DPMesh loads but never calls; None when `jhmr.models.vposer_v1` is absent."""
  try:
    from jhmr.models.vposer_v1 import VPOSER_V1
  except ImportError:
    return None
  import jax
  import jax.numpy as jnp

  v = VPOSER_V1
  full = jax.eval_shape(v.init, jax.random.key(0), jnp.zeros((1, v.num_joints * 3)))["params"]
  decode_init = functools.partial(v.init, method=type(v).decode)
  dec = jax.eval_shape(decode_init, jax.random.key(0), jnp.zeros((1, v.latent_dim)))["params"]
  return count(full) - count(dec)


def part_counts() -> None:
  import jax
  import jax.numpy as jnp

  from jhmr.models import dpmesh as dm
  from jhmr.models.clip_text import CLIP_VIT_L14_TEXT, CLIPTextModel
  from jhmr.models.vae import SD_VAE, AutoencoderKL
  from jhmr.train.dpmesh_task import TERMS, param_labels

  machine("counts, start")
  start = time.perf_counter()
  paper = dict(dm._variable_shapes(dm.DPMesh(dm.DPMeshConfig()))["params"])
  released, note = _released_params()
  released["loss_weights"] = jax.ShapeDtypeStruct((len(TERMS),), jnp.float32)  # RELEASED_WEIGHTS

  vae = jax.eval_shape(AutoencoderKL(SD_VAE).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  vae_decoder = count(vae["params"]) - count(paper["backbone"]["vae"])
  clip = CLIPTextModel(CLIP_VIT_L14_TEXT)
  clip_n = count(jax.eval_shape(clip.init, jax.random.key(0), *clip.dummy_inputs())["params"])
  not_built = {"(not built) VAE decoder + post_quant_conv": vae_decoder}
  not_built["(not built) CLIP ViT-L/14 text"] = clip_n
  vposer_encoder = _vposer_v1_encoder_count()
  if vposer_encoder is not None:
    not_built["(not built) VPoser v1 encoder (released: loaded, unused)"] = vposer_encoder

  rows = _group_rows("paper", paper, param_labels(paper))
  rows += _group_rows("released", released, param_labels(released))
  table = []
  for name, group, kind, n in rows:
    table.append([name, group, kind, f"{n:,}", mega(n)])
  for label, n in not_built.items():
    table.append(["both", label, "frozen", f"{n:,}", mega(n)])
  print(f"\nParameter counts (jax.eval_shape; released: {note})", flush=True)
  print_table(["config", "group", "kind", "parameters", "M"], table)

  def total(config: str, group: str) -> int:
    return next(r[3] for r in rows if r[0] == config and r[1].startswith(group))

  decoder = "" if "pose decoder missing" not in note else ", VPoser v1 missing"
  figures = [
    ("trainable, paper config", total("paper", "total trainable"), PAPER_TRAINABLE),
    ("trainable, released config", total("released", "total trainable"), PAPER_TRAINABLE),
    ("built + CLIP text, paper config", total("paper", "total built") + clip_n, PAPER_TOTAL),
    (
      f"built + CLIP text, released config{decoder}",
      total("released", "total built") + clip_n,
      PAPER_TOTAL,
    ),
  ]
  if vposer_encoder is not None and not decoder:  # the released module, as the paper counts it
    awl = RELEASED_AWL_WEIGHTS - count(released["loss_weights"])
    trainable = total("released", "total trainable") + awl
    module = total("released", "total built") + clip_n + vposer_encoder + awl
    figures.insert(2, (f"trainable, released, {RELEASED_AWL_WEIGHTS} AWL weights", trainable,
                       PAPER_TRAINABLE))  # fmt: skip
    figures.append(("released module: + VPoser v1 encoder, 9 AWL weights", module, PAPER_TOTAL))
  print("\nAgainst the paper's Table 5 (DPMesh: 1426.3M total, 408.9M trainable)", flush=True)
  print_table(
    ["figure", "jhmr", "jhmr (M)", "paper (M)", "jhmr - paper (M)"],
    [[f, f"{n:,}", mega(n), mega(ref), f"{(n - ref) / 1e6:+,.1f}"] for f, n, ref in figures],
  )
  print(f"# counts took {time.perf_counter() - start:.1f} s", flush=True)


# ----------------------------------------------------------------------------------------------
# 2. Forward / forward+backward on the CPU (worker)


def _inputs(batch: int, size: int, seed: int = 1):
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0, 1, (batch, size, size, 3)), jnp.float32)
  xy = rng.uniform(0.1 * size, 0.9 * size, (batch, 30, 2))
  keypoints = jnp.asarray(np.concatenate([xy, np.ones((batch, 30, 1))], -1), jnp.float32)
  focal = jnp.full((batch,), size * np.sqrt(2.0), jnp.float32)
  return images, keypoints, focal


def stand_in_loss(out):
  """Mean squares of the outputs DPMesh's losses read (pose, betas, translation, joints)."""
  import jax.numpy as jnp

  terms = (out.global_orient, out.body_pose, out.betas, out.translation, out.joint_img)
  return sum(jnp.mean(jnp.square(t.astype(jnp.float32))) for t in terms)


def training_loss(model):
  """`loss(trainable, frozen, images, keypoints, focal, key)` differentiable in `trainable`."""

  from jhmr.train.state import merge

  def loss(trainable, frozen, images, keypoints, focal, key):
    params = merge(trainable, frozen)
    out = model.apply(
      {"params": params}, images, keypoints, focal, train=True, rngs={"dropout": key}
    )
    return stand_in_loss(out)

  return loss


def _memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  names = ("argument", "output", "alias", "temp", "generated_code")
  return {n: getattr(stats, f"{n}_size_in_bytes", 0) / 1e9 for n in names}


def worker_time(args) -> dict:
  import jax
  import jax.numpy as jnp

  from jhmr.models.dpmesh import DPMesh, _variable_shapes, random_variables
  from jhmr.train.dpmesh_task import param_labels
  from jhmr.train.state import partition

  kind, batch = CASES[args.case]
  config = model_config(args.size)
  model = DPMesh(config, dtype=jnp.dtype(args.dtype), param_dtype=jnp.float32, remat=args.remat)
  if args.compile_only:  # shapes only: nothing is allocated, nothing runs
    params = _variable_shapes(model)["params"]
  else:
    params = random_variables(model)["params"]
  images, keypoints, focal = _inputs(batch, config.image_size)
  rss_weights = peak_rss_gb()
  if kind == "fwd":
    fn = jax.jit(
      lambda p, i, k, f: model.apply({"params": p}, i, k, f, train=False).body_pose,
      compiler_options=jit_compiler_options(args.xla_options),
    )
    call_args = (params, images, keypoints, focal)
  else:
    trainable, frozen = partition(params, param_labels(params))
    grad = jax.value_and_grad(training_loss(model))
    fn = jax.jit(grad, compiler_options=jit_compiler_options(args.xla_options))
    call_args = (trainable, frozen, images, keypoints, focal, jax.random.key(0))
  start = time.perf_counter()
  compiled = fn.lower(*call_args).compile()
  compile_s = time.perf_counter() - start
  memory = _memory(compiled)
  if args.compile_only:
    return dict(
      case=args.case,
      kind=kind,
      batch=batch,
      compile_s=compile_s,
      rss_gb=peak_rss_gb(),
      **{f"xla_{k}_gb": v for k, v in memory.items()},
    )
  walls, cpus = [], []
  for i in range(args.warmup + args.repeats):  # compiled already: warm-up is optional
    w, c = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(compiled(*call_args))
    if i >= args.warmup:
      walls.append(time.perf_counter() - w)
      cpus.append(time.process_time() - c)
  finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(out) if x is not None)
  return dict(
    case=args.case,
    kind=kind,
    batch=batch,
    wall=statistics.median(walls),
    cpu=statistics.median(cpus),
    compile_s=compile_s,
    rss_weights_gb=rss_weights,
    rss_gb=peak_rss_gb(),
    finite=finite,
    **{f"xla_{k}_gb": v for k, v in memory.items()},
  )


# ----------------------------------------------------------------------------------------------
# 3. FSDP vs replicated (worker, with fake devices)


def worker_shard(args) -> dict:
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from jhmr.models import dpmesh as dm
  from jhmr.train.dpmesh_task import param_labels
  from jhmr.train.state import partition
  from jhmr.train.trainer import make_mesh, state_shardings

  mesh = make_mesh()
  n = mesh.devices.size
  config = model_config(args.size)
  model = dm.DPMesh(config, dtype=jnp.dtype(args.dtype), param_dtype=jnp.float32)
  params = dict(dm._variable_shapes(model)["params"])
  trainable, frozen = partition(params, param_labels(params))
  tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(1e-4, weight_decay=1e-6))
  opt_state = jax.eval_shape(tx.init, trainable)
  loss = training_loss(model)

  def step(trainable, opt_state, ema, frozen, images, keypoints, focal, key):
    value, grads = jax.value_and_grad(loss)(trainable, frozen, images, keypoints, focal, key)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    ema = jax.tree.map(lambda e, p: 0.999 * e + 0.001 * p, ema, trainable)  # as the trainer's
    return trainable, opt_state, ema, value

  def place(tree, mode: str):
    shardings = state_shardings(tree, mesh, mode, args.fsdp_min_size)
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )

  trained_mode = "replicated" if args.sharding == "replicated" else "fsdp"
  frozen_mode = "fsdp" if args.sharding == "fsdp" else "replicated"
  a_train, a_opt, a_ema = (place(t, trained_mode) for t in (trainable, opt_state, trainable))
  a_frozen = place(frozen, frozen_mode)
  batch = n * args.shard_per_device
  data = NamedSharding(mesh, P("data"))
  images, keypoints, focal = (
    jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=data) for x in _inputs(batch, config.image_size)
  )
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, P()))
  shardings_of = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  out_shardings = (*map(shardings_of, (a_train, a_opt, a_ema)), NamedSharding(mesh, P()))
  jitted = jax.jit(
    step,
    out_shardings=out_shardings,
    donate_argnums=(0, 1, 2),
    compiler_options=jit_compiler_options(args.xla_options),
  )
  start = time.perf_counter()
  compiled = jitted.lower(a_train, a_opt, a_ema, a_frozen, images, keypoints, focal, key).compile()
  compile_s = time.perf_counter() - start

  def per_device(tree) -> float:
    total = 0
    for x in jax.tree.leaves(tree):
      shard = x.sharding.shard_shape(x.shape)
      total += jnp.dtype(x.dtype).itemsize * int(math.prod(shard))
    return total / 1e9

  leaves = jax.tree.leaves((a_train, a_opt, a_ema, a_frozen))
  return dict(
    sharding=args.sharding,
    size=args.size,
    devices=n,
    batch=batch,
    compile_s=compile_s,
    trained_gb=per_device((a_train, a_opt, a_ema)),
    frozen_gb=per_device(a_frozen),
    sharded_leaves=sum(1 for x in leaves if x.sharding.spec != P()),
    leaves=len(leaves),
    trainable=count(trainable),
    frozen=count(frozen),
    rss_gb=peak_rss_gb(),
    **{f"xla_{k}_gb": v for k, v in _memory(compiled).items()},
  )


# ----------------------------------------------------------------------------------------------
# Driver


def _run_worker(extra: list[str], args, env=None, timeout=None) -> dict | None:
  cmd = [sys.executable, os.path.abspath(__file__), "--dtype", args.dtype, *extra]
  cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
  cmd += ["--remat"] if args.remat else []
  cmd += ["--xla-options", args.xla_options]
  cmd += ["--compile-only"] if args.compile_only else []
  try:
    proc = subprocess.run(
      cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )
  except subprocess.TimeoutExpired:
    print(f"[{' '.join(extra)}] timed out after {timeout} s", file=sys.stderr, flush=True)
    return None
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-4:]
    status = f"exit {proc.returncode}" + (
      " (killed: out of memory?)" if proc.returncode < 0 else ""
    )
    print(f"[{' '.join(extra)}] failed, {status}: {' | '.join(tail)}", file=sys.stderr, flush=True)
    return None
  return json.loads(lines[-1])


def part_time(args) -> None:
  machine("time, start")
  rows = []
  for case in args.cases.split(","):
    if case not in CASES:
      raise SystemExit(f"unknown case {case!r}; valid: {', '.join(CASES)}")
    r = _run_worker(["--worker", "time", "--case", case, "--size", args.size], args)
    machine(f"time, after {case}")
    if r is None:
      rows.append([case, "failed", "", "", "", "", "", "", "", ""])
      continue
    b = r["batch"]
    if args.compile_only:
      r.update(wall=float("nan"), cpu=float("nan"), rss_weights_gb=float("nan"), finite=True)
    rows.append(
      [
        "forward (inference)" if r["kind"] == "fwd" else "forward+backward (trainable)",
        b,
        r["wall"] / b,
        r["cpu"] / b,
        r["compile_s"],
        r["rss_gb"],
        r["rss_weights_gb"],
        r.get("xla_argument_gb", float("nan")),
        r.get("xla_temp_gb", float("nan")),
        "yes" if r["finite"] else "NO",
      ]
    )
    print(json.dumps(r), flush=True)
  print(
    f"\nDPMesh paper config, {args.size} size, CPU, {args.dtype} compute / float32 parameters"
    + (", remat" if args.remat else "")
    + f", XLA options: {args.xla_options}"
    + (
      "; compiled from shapes only (--compile-only): XLA sizes, nothing run"
      if args.compile_only
      else f"; median of {args.repeats} call(s) after {args.warmup} warm-up call(s)"
    ),
    flush=True,
  )
  print_table(
    [
      "pass",
      "batch",
      "wall s/img",
      "cpu s/img",
      "compile s",
      "peak RSS GB",
      "RSS after weights GB",
      "XLA arg GB",
      "XLA temp GB",
      "finite",
    ],
    rows,
  )


def state_bytes(size: str, devices: int, min_size: int) -> list[list]:
  """Per-device GB of the training state under each placement, from shapes alone (no devices,
  no compile): the trainer's `fsdp_spec` decides which leaves split."""
  import jax
  import jax.numpy as jnp
  import optax

  from jhmr.models import dpmesh as dm
  from jhmr.train.dpmesh_task import param_labels
  from jhmr.train.state import partition
  from jhmr.train.trainer import fsdp_spec

  params = dict(dm._variable_shapes(dm.DPMesh(model_config(size)))["params"])
  trainable, frozen = partition(params, param_labels(params))
  tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(1e-4, weight_decay=1e-6))
  opt_state = jax.eval_shape(tx.init, trainable)

  def gb(tree, shard: bool) -> float:
    total = 0
    for x in jax.tree.leaves(tree):
      n = int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
      split = shard and any(a is not None for a in fsdp_spec(x.shape, devices, min_size))
      total += n // devices if split else n
    return total / 1e9

  rows = []
  for mode in ("replicated", "fsdp", "fsdp_trainable"):
    shard_trained, shard_frozen = mode != "replicated", mode == "fsdp"
    parts = [gb(trainable, shard_trained), gb(opt_state, shard_trained)]
    parts += [gb(trainable, shard_trained), gb(frozen, shard_frozen)]
    rows.append([mode, *parts, sum(parts)])
  return rows


def part_sharding(args) -> None:
  machine("sharding, start")
  print(
    f"\nTraining state per device, {args.shard_size} size, {args.shard_devices} devices "
    "(from shapes; GB)",
    flush=True,
  )
  print_table(
    ["parameters", "trainable", "AdamW state", "EMA", "frozen", "total"],
    state_bytes(args.shard_size, args.shard_devices, args.fsdp_min_size),
  )
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={args.shard_devices}"}
  env["JAX_PLATFORMS"] = "cpu"
  rows = []
  for mode in args.shardings.split(","):
    extra = ["--worker", "shard", "--sharding", mode, "--size", args.shard_size]
    extra += ["--shard-per-device", str(args.shard_per_device)]
    extra += ["--fsdp-min-size", str(args.fsdp_min_size)]
    r = _run_worker(extra, args, env=env, timeout=args.shard_timeout)
    machine(f"sharding, after {mode}")
    if r is None:
      rows.append([mode, "failed"] + [""] * 8)
      continue
    print(json.dumps(r), flush=True)
    total = r["xla_argument_gb"] + r["xla_output_gb"] - r["xla_alias_gb"] + r["xla_temp_gb"]
    rows.append(
      [
        mode,
        f"{r['sharded_leaves']}/{r['leaves']}",
        r["trained_gb"],
        r["frozen_gb"],
        r["xla_argument_gb"],
        r["xla_output_gb"] - r["xla_alias_gb"],
        r["xla_temp_gb"],
        total,
        r["compile_s"],
        r["rss_gb"],
      ]
    )
  print(
    f"\nOne DPMesh training step ({args.shard_size} size, {args.dtype} compute), "
    f"{args.shard_devices} CPU devices, batch {args.shard_devices * args.shard_per_device} "
    "(split over 'data'); per-device GB from memory_analysis()",
    flush=True,
  )
  print_table(
    [
      "parameters",
      "sharded leaves",
      "trainable + AdamW + EMA GB",
      "frozen GB",
      "XLA arg GB",
      "XLA out - alias GB",
      "XLA temp GB",
      "total GB",
      "compile s",
      "host RSS GB",
    ],
    rows,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="counts,time,sharding")
  parser.add_argument("--cases", default="fwd1,fwd8,train1,train8")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the compile")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--remat", action="store_true", help="nn.remat on U-Net blocks")
  parser.add_argument(
    "--xla-options",
    default="jhmr",
    choices=["jhmr", "jaxlib"],
    help="jit compiler options: jhmr's (DPMesh's jits: sd_compiler_options) or jaxlib's default",
  )
  parser.add_argument(
    "--compile-only", action="store_true", help="time part: XLA memory only, nothing runs"
  )
  parser.add_argument("--size", default="full", choices=["full", "half", "tiny"], help="time")
  parser.add_argument("--shard-size", default="full", choices=["full", "half", "tiny"])
  parser.add_argument("--shard-devices", type=int, default=8)
  parser.add_argument("--shard-per-device", type=int, default=1)
  parser.add_argument("--fsdp-min-size", type=int, default=2**14, help="trainer.FSDP_MIN_SIZE")
  parser.add_argument("--shardings", default="replicated,fsdp")
  parser.add_argument("--shard-timeout", type=int, default=1200, help="seconds per compile")
  parser.add_argument("--worker", choices=["time", "shard"], help=argparse.SUPPRESS)
  parser.add_argument("--case", help=argparse.SUPPRESS)
  parser.add_argument(
    "--sharding", choices=["replicated", "fsdp", "fsdp_trainable"], help=argparse.SUPPRESS
  )
  args = parser.parse_args()

  if args.worker:
    result = worker_time(args) if args.worker == "time" else worker_shard(args)
    print(json.dumps(result), flush=True)
    return
  start = time.perf_counter()
  parts = args.parts.split(",")
  if "counts" in parts:
    part_counts()
  if "time" in parts:
    part_time(args)
  if "sharding" in parts:
    part_sharding(args)
  machine(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
