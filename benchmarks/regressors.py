"""ScoreHMR's image regressors at full size: parameter counts and CPU time, jhmr vs PyTorch.

  .venv/bin/python benchmarks/regressors.py [--models pare,hmr2,vitpose_h] [--repeats 3]
      [--batch 1] [--counts-only] [--no-pipeline]       (--models may add vitpose_b)

1. Parameter counts of every full-size model from `jax.eval_shape` (no memory is allocated),
   next to the originals' counts (research/regressors.md) and to the PyTorch reference's
   `sum(p.numel())`, built on torch's "meta" device (shapes only, also free).
2. Per-image forward time, batch `--batch`, float32: jhmr (`jax.jit`, compiled and warmed up
   first; the compile time is listed) vs the PyTorch reference with the same random weights,
   converted by jhmr's converters, so both compute the same function ("max rel diff" = the largest
   max|jhmr - torch| / max|torch| over the outputs). The two are timed in alternation in the same
   process (`torch.set_num_threads(2)`, XLA on all cores), median of `--repeats`; wall time and
   process CPU time (all threads) per image. Stages: PARE (ScoreHMR's HRNet-W32 feature extractor)
   at 224x224; HMR 2.0 (ViT-H + transformer head) on 256x256 crops (columns 32:224 -> 256x192);
   ViTPose-H / -B (classic head) at 256x192, heatmaps without the flip test (ScoreHMR's demo runs
   the flip test: twice the backbone work).
   PyTorch references are the test oracles: `tests/convert/hrnet_test.PoseHighResolutionNet` +
   `tests/convert/pare_test.TorchPareHead`, `tests/models/hmr2_test.TorchHMR2` (mmpose ViT +
   4D-Humans head, written from the architecture), transformers' `VitPoseForPoseEstimation`.
3. The whole image -> mesh call, if `jhmr/pipelines/image_to_mesh.py` exists (otherwise a note).

One model is built at a time and freed before the next; the peak resident memory of the process is
printed after each (ViT-H is 2.5 GB of float32 weights in each framework).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import block, free_gb, load, peak_rss_gb, print_table  # noqa: E402

from jhmr.models import vitpose as vp  # noqa: E402
from jhmr.models.hmr2 import HMR2, HMR2_FULL, hmr2_input  # noqa: E402
from jhmr.models.pare import Pare  # noqa: E402

MODELS = ("pare", "hmr2", "vitpose_h", "vitpose_b")
NAMES = {
  "pare": "PARE (HRNet-W32, ScoreHMR config)",
  "hmr2": "HMR 2.0 (ViT-H + head)",
  "vitpose_h": "ViTPose-H (classic head)",
  "vitpose_b": "ViTPose-B (classic head)",
}
# research/regressors.md §1, §2, §4: (backbone, head, total) of the original checkpoints.
ORIGINAL = {
  "pare": (31_409_752, 1_451_750, 32_861_502),
  "hmr2": (630_912_000, 39_547_037, 670_459_037),
  "vitpose_h": (630_912_000, 6_296_849, 637_208_849),
  "vitpose_b": (85_794_816, 89_994_513 - 85_794_816, 89_994_513),
}
VITPOSE_CONFIGS = {"vitpose_h": vp.VITPOSE_H, "vitpose_b": vp.VITPOSE_B}


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
# jhmr models


def jhmr_model(name: str):
  """(flax module, example input shape) of a full-size model."""
  if name == "pare":
    return Pare(), (224, 224)
  if name == "hmr2":
    return HMR2(HMR2_FULL), (256, 192)
  return vp.VitPose(VITPOSE_CONFIGS[name]), (256, 192)


def jhmr_counts(name: str) -> tuple[int, int, int]:
  model, (h, w) = jhmr_model(name)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, 3), jnp.float32))
  params = shapes["params"]
  return count(params["backbone"]), count(params["head"]), count(params)


# ----------------------------------------------------------------------------------------------
# PyTorch references (the test oracles)


def torch_reference(name: str):
  """The PyTorch module of `name`, default-initialised on the current torch device."""
  if name == "pare":
    import torch

    from jhmr.models.hrnet import HRNET_W32
    from tests.convert.hrnet_test import PoseHighResolutionNet
    from tests.convert.pare_test import TorchPareHead

    class TorchPare(torch.nn.Module):
      def __init__(self):
        super().__init__()
        self.backbone = PoseHighResolutionNet(HRNET_W32)
        self.head = TorchPareHead(HRNET_W32.out_channels)

      def forward(self, x):
        return self.head(self.backbone(x)[0])

    return TorchPare()
  if name == "hmr2":
    from tests.models.hmr2_test import TorchHMR2

    return TorchHMR2(HMR2_FULL)
  import transformers

  vit = VITPOSE_CONFIGS[name].vit
  backbone = transformers.VitPoseBackboneConfig(
    image_size=list(vit.img_size), patch_size=[vit.patch_size] * 2, hidden_size=vit.embed_dim,
    num_hidden_layers=vit.depth, num_attention_heads=vit.num_heads, mlp_ratio=int(vit.mlp_ratio),
    qkv_bias=vit.qkv_bias, layer_norm_eps=vit.layer_norm_eps, out_indices=[vit.depth],
  )  # fmt: skip
  config = transformers.VitPoseConfig(
    backbone_config=backbone, use_simple_decoder=False, num_labels=17
  )
  return transformers.VitPoseForPoseEstimation(config)


def torch_counts(name: str) -> tuple[int, int, int]:
  import torch

  with torch.device("meta"):
    ref = torch_reference(name)
  n = lambda prefix: sum(p.numel() for k, p in ref.named_parameters() if k.startswith(prefix))
  head = {"pare": "head.", "hmr2": "smpl_head."}.get(name, "head.")
  return n("backbone."), n(head), n("")


def randomized_reference(name: str, seed: int = 0):
  """The reference with random weights everywhere (norms, biases, position tables, running
  statistics and mean-init buffers too), in eval mode."""
  import torch

  torch.manual_seed(seed)
  ref = torch_reference(name)
  if name == "pare":
    from tests.convert.pare_test import randomize as randomize_head
    from tests.torch_reference import randomize_conv_bn

    randomize_conv_bn(ref.backbone, seed=1)
    randomize_head(ref.head, seed=2)
    return ref.eval()
  g = torch.Generator().manual_seed(seed + 1)
  randn = lambda t: torch.randn(t.shape, generator=g)
  with torch.no_grad():  # default init for the big matrices, perturbed norms / biases / tables
    for key, p in ref.named_parameters():
      if "norm" in key and key.endswith("weight"):
        p.copy_(1 + 0.1 * randn(p))
      elif key.endswith("bias"):
        p.copy_(0.1 * randn(p))
      elif "pos" in key:
        p.copy_(0.02 * randn(p))
    for key, b in ref.named_buffers():
      if key.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=g))
      elif key.endswith("running_mean") or key.startswith("smpl_head.init_"):
        b.copy_(0.1 * randn(b))
  return ref.eval()


def convert(name: str, ref):
  """jhmr variables from the reference's state dict, through jhmr's converters."""
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  if name == "pare":
    from jhmr.convert.pare import convert_pare

    return convert_pare(state)
  if name == "hmr2":
    from jhmr.convert.hmr2 import convert_hmr2

    return convert_hmr2(state, HMR2_FULL.head, HMR2_FULL.vit)
  from jhmr.convert.vitpose import convert_vitpose_hf

  return convert_vitpose_hf(state, VITPOSE_CONFIGS[name])


# ----------------------------------------------------------------------------------------------
# One stage: jhmr vs torch on the same input


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def stage_calls(name: str, batch: int):
  """(jhmr fn, jhmr args, torch fn, torch args, compare(jhmr_out, torch_out) -> {field: err})."""
  import torch

  ref = randomized_reference(name)
  variables = jax.device_put(convert(name, ref))
  model, (h, w) = jhmr_model(name)
  rng = np.random.default_rng(0)
  nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)

  if name == "pare":
    images = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
    fn = jax.jit(model.apply)

    def compare(ours, theirs):
      return {
        "part_logits": rel_err(ours.part_logits, nhwc(theirs["pred_segm_mask"])),
        "pose_feats": rel_err(ours.pose_feats, theirs["pose_feats"].numpy()),
        "cam_shape_feats": rel_err(ours.cam_shape_feats, theirs["cam_shape_feats"].numpy()),
        "pose_6d": rel_err(ours.pose_6d, theirs["pose"].numpy()),
        "betas": rel_err(ours.betas, theirs["shape"].numpy()),
        "cam": rel_err(ours.cam, theirs["cam"].numpy()),
      }

  elif name == "hmr2":
    images = rng.normal(size=(batch, 256, 256, 3)).astype(np.float32)  # square crops
    fn = jax.jit(lambda v, crops: model.apply(v, hmr2_input(crops)))

    def compare(ours, theirs):
      pose, rotmat, betas, cam = (t.numpy() for t in theirs)
      return {
        "pose_6d": rel_err(ours.pose_6d, pose),
        "rotmat": rel_err(ours.rotmat, rotmat),
        "betas": rel_err(ours.betas, betas),
        "cam": rel_err(ours.cam, cam),
      }

  else:
    images = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
    fn = jax.jit(model.apply)

    def compare(ours, theirs):
      return {"heatmaps": rel_err(ours, nhwc(theirs.heatmaps))}

  def torch_fn(x):
    with torch.inference_mode():
      return ref(x)

  return fn, (variables, jnp.asarray(images)), torch_fn, (nchw(images),), compare


def time_pair(calls, repeats: int) -> list[tuple[float, float]]:
  """Median (wall s, process CPU s) per call of each `(fn, args)`, timed in alternation."""
  wall = [[] for _ in calls]
  cpu = [[] for _ in calls]
  for _ in range(repeats):
    for i, (fn, args) in enumerate(calls):
      w0, c0 = time.perf_counter(), time.process_time()
      block(fn(*args))
      wall[i].append(time.perf_counter() - w0)
      cpu[i].append(time.process_time() - c0)
  return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def bench_stage(name: str, batch: int, repeats: int, keep: dict) -> tuple:
  """One row of the stage table; the jhmr variables are left in `keep[name]`."""
  t0 = time.perf_counter()
  fn, args, torch_fn, torch_args, compare = stage_calls(name, batch)
  keep[name] = args[0]
  build = time.perf_counter() - t0
  t0 = time.perf_counter()
  ours = block(fn(*args))
  compile_s = time.perf_counter() - t0
  theirs = torch_fn(*torch_args)  # warm-up of the reference
  errors = compare(ours, theirs)
  worst = max(errors, key=errors.get)
  block(fn(*args))
  del ours, theirs
  (tj, cj), (tt, ct) = time_pair([(fn, args), (torch_fn, torch_args)], repeats)
  print(
    f"# {name}: built + converted in {build:.0f} s, jhmr compile {compile_s:.1f} s, errors "
    + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    + f"; peak RSS {peak_rss_gb():.1f} GB; load {load()}",
    flush=True,
  )
  return (
    NAMES[name],
    tj / batch * 1e3,
    tt / batch * 1e3,
    f"{tt / tj:.2f}x",
    cj / batch * 1e3,
    ct / batch * 1e3,
    round(compile_s, 1),
    f"{errors[worst]:.1e} ({worst})",
  )


# ----------------------------------------------------------------------------------------------
# The whole image -> mesh call (jhmr only: there is no PyTorch ScoreHMR pipeline here)


def bench_pipeline(kept: dict, repeats: int) -> None:
  """`jhmr.pipelines.image_to_mesh.image_to_mesh` on one 640x480 image with one given person box:
  ViTPose-H (flip test) -> HMR 2.0 -> PARE -> ScoreHMR keypoint refinement (10 iterations) ->
  vertices, with the stages' converted random weights and a random ScoreHMR network (so the
  mesh means nothing; the work is the same). Also the refinement alone (all stage outputs given)."""
  from jhmr.pipelines import image_to_mesh as itm

  t0 = time.perf_counter()
  cfg = itm.OFFICIAL_CONFIGS
  net = cfg.score_net
  score = jax.jit(net.init)(
    jax.random.key(3), jnp.zeros((1, net.pose_dim)), jnp.zeros((1,), jnp.int32),
    jnp.zeros((1, net.cond_dim)),
  )  # fmt: skip
  feat_dim = cfg.pare.num_deconv_filters * 24
  stats = (np.zeros(feat_dim, np.float32), np.ones(feat_dim, np.float32))
  # as `random_image_models`: HMR 2.0's readouts zeroed and a mean camera in front of the lens,
  # so the random estimate is the mean body in view (random readouts can put it behind)
  hmr2_vars = jax.tree_util.tree_map_with_path(
    lambda path, x: jnp.zeros_like(x) if any("dec" in str(p) for p in path) else x, kept["hmr2"]
  )
  hmr2_vars["buffers"]["head"]["init_cam"] = jnp.array([0.9, 0.0, 0.0], jnp.float32)
  models = itm.ImageModels(
    vitpose=itm.Net(vp.VitPose(cfg.vitpose), kept["vitpose_h"]),
    hmr2=itm.Net(HMR2(cfg.hmr2), hmr2_vars),
    pare=itm.Net(cfg.pare, kept["pare"]),
    pare_stats=itm.pare_lib.FeatureStats(*stats),
    pare_size=cfg.pare_size,
    score_params=score,
    body_model=itm.load_body_model(),
    weights="random",
  )
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
  boxes = np.array([[220.0, 40.0, 420.0, 460.0]])
  build = time.perf_counter() - t0

  def whole():
    return itm.image_to_mesh(image, models, boxes=boxes)

  t0 = time.perf_counter()
  try:
    res = whole()
  except itm.InputError as e:  # e.g. random HMR 2.0 weights putting the person behind the camera
    print(f"\n# whole image -> mesh: failed on random weights: {e}")
    return
  first = time.perf_counter() - t0

  def refine_only():
    return itm.image_to_mesh(
      image, models, boxes=res.boxes, keypoints=res.keypoints, initial=res.initial,
      features=res.features,
    )  # fmt: skip

  refine_only()  # compiles nothing new (same shapes), warms up
  (tw, cw), (tr, cr) = time_pair([(whole, ()), (refine_only, ())], repeats)
  print(f"\n# whole image -> mesh (640x480 image, 1 person, random weights; setup {build:.0f} s, "
        f"vertices finite: {bool(np.isfinite(res.refined_vertices).all())}); load {load()}; "
        f"peak RSS {peak_rss_gb():.1f} GB", flush=True)  # fmt: skip
  print_table(
    ["call", "jhmr s/img", "jhmr cpu s/img", "first call s (compiles)"],
    [
      ("image_to_mesh (ViTPose-H flip, HMR 2.0, PARE, refinement)", tw, cw, round(first, 1)),
      ("  refinement only (keypoints, estimate, features given)", tr, cr, "-"),
    ],
  )


# ----------------------------------------------------------------------------------------------


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models", default="pare,hmr2,vitpose_h", help=f"any of {','.join(MODELS)} (comma-separated)"
  )
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--counts-only", action="store_true")
  parser.add_argument(
    "--no-pipeline", dest="pipeline", action="store_false", help="skip the image -> mesh call"
  )
  args = parser.parse_args()
  names = [m for m in args.models.split(",") if m]
  unknown = sorted(set(names) - set(MODELS))
  if unknown or args.repeats < 1 or args.batch < 1:
    parser.error(f"unknown models {unknown} (valid: {MODELS}) or repeats / batch < 1")

  import torch

  torch.set_num_threads(2)
  start = time.perf_counter()
  print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__}, {os.cpu_count()} cores; "
        f"load average {load()}; memory {free_gb()}", flush=True)  # fmt: skip

  rows = []
  for name in names:
    jb, jh, jt = jhmr_counts(name)
    tb, th, tt = torch_counts(name)
    ob, oh, ot = ORIGINAL[name]
    for part, j, t, o in (("backbone", jb, tb, ob), ("head", jh, th, oh), ("total", jt, tt, ot)):
      rows.append((NAMES[name], part, f"{j:,}", f"{t:,}", f"{o:,}", f"{j - o:+,}"))
  print("\n# Parameters (learnable; BatchNorm statistics and mean-init buffers not counted)")
  print_table(["model", "part", "jhmr", "torch reference", "original", "jhmr - original"], rows)
  if args.counts_only:
    return

  print(f"\n# Per-image forward, batch {args.batch}, float32, CPU; median of {args.repeats}")
  rows, kept = [], {}
  for name in names:
    rows.append(bench_stage(name, args.batch, args.repeats, kept))
    if name not in ("pare", "hmr2", "vitpose_h") or not args.pipeline:
      del kept[name]
    gc.collect()
  print_table(
    [
      "stage",
      "jhmr ms/img",
      "torch ms/img",
      "speed-up",
      "jhmr cpu ms/img",
      "torch cpu ms/img",
      "jhmr compile s",
      "max rel diff",
    ],
    rows,
  )

  if not args.pipeline:
    print("\n# whole image -> mesh: not run (--no-pipeline)")
  elif not os.path.exists(os.path.join(ROOT, "jhmr", "pipelines", "image_to_mesh.py")):
    print("\n# whole image -> mesh: skipped, jhmr/pipelines/image_to_mesh.py does not exist")
  elif {"pare", "hmr2", "vitpose_h"} - set(kept):
    print("\n# whole image -> mesh: skipped, it needs --models to include pare,hmr2,vitpose_h")
  else:
    bench_pipeline(kept, args.repeats)
  print(f"# total {time.perf_counter() - start:.0f} s; load average {load()}; "
        f"peak RSS {peak_rss_gb():.1f} GB", flush=True)  # fmt: skip


if __name__ == "__main__":
  main()
