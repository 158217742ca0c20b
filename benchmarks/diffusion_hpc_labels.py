"""Diffusion-HPC's embedded job: how close are the generated pairs' labels to the guides' truth,
and what would true labels give?

  .venv/bin/python benchmarks/diffusion_hpc_labels.py --workdir runs/hpc --seed 0
  options: --vposer-weights 0,100,1000 (the fit's VPoser prior, generate.fit_vposer_weight)
           --oracle (also fine-tune and evaluate with the guides' TRUE bodies as the labels)
           --no-guides-finetuned (skip the rows of generate.estimator='guides_finetuned')

Needs a finished default-job workdir of the same seed (`python -m jhmr.launch --config
configs/diffusion_hpc.py --workdir runs/hpc --config.seed=0`): its easy HMR, VPoser and guides.

Labels: the pairs' labels (augmentation 0: an HMR's estimate of each guide, fitted to its 2D
keypoints or not, as the job makes them) against the guides' true 3D joints (MPJPE, PA-MPJPE,
mm; the method never sees these), and the labels' VPoser hardness (median ||z||^2; the true
poses' median is printed first). Estimators: the easy HMR (generate.estimator='start'), with the
fit at each VPoser-prior weight; and the HMR fine-tuned on the guides alone (the workdir's
finetune_guides_only, generate.estimator='guides_finetuned').

Oracle (--oracle): a diagnostic, not the method. The workdir is copied to <workdir>_oracle
without its generated pairs and their fine-tunings; the pairs are generated again with an
estimator that returns each guide's TRUE body (fit off), then fine-tuned and evaluated as the
job does (the guides-alone run is reused). Its results.md bounds what better labels can give
in this setting.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu, load  # noqa: E402


class TruthEstimator:
  """`Estimator`'s contract, answering each guide image with that guide's true body."""

  def __init__(self, truth, image_size: int, focal: float):
    import numpy as np

    from jhmr.geometry import cameras, rotations

    self._index = {np.asarray(im).tobytes(): i for i, im in enumerate(truth.image)}
    aa = np.concatenate([np.asarray(truth.global_orient)[:, None], truth.body_pose], 1)
    self._rotmat = np.asarray(rotations.axis_angle_to_matrix(aa), np.float32)
    self._betas = np.asarray(truth.betas, np.float32)
    # the guide image is the crop, centred on the principal point
    cam = cameras.translation_to_weak_perspective(truth.cam_t, focal, image_size)
    self._cam = np.asarray(cam, np.float32)

  def __call__(self, images):
    import numpy as np

    rows = [self._index[np.asarray(im).tobytes()] for im in images]
    return {"rotmat": self._rotmat[rows], "betas": self._betas[rows], "cam": self._cam[rows]}


def label_errors(comps, guides, settings, truth):
  """(MPJPE, PA-MPJPE (mm), median hardness) of the labels of augmentation 0."""
  import jax.numpy as jnp
  import numpy as np

  from jhmr.eval import metrics
  from jhmr.pipelines import diffusion_hpc_generate as gen

  ids = list(range(len(truth.image)))
  s = settings.copy_and_resolve_references()
  s.num_augmentations = 1
  out, _ = gen.generate_batch(s, comps, ids, guides)
  order = np.argsort(out["guide_index"])
  joints = jnp.asarray(out["joints_3d"][order])
  true = jnp.asarray(truth.joints_3d)[out["guide_index"][order]]
  pa = 1000 * float(np.mean(metrics.pa_mpjpe(joints, true)))
  mp = 1000 * float(np.mean(metrics.mpjpe(joints, true, root=0)))
  return mp, pa, float(np.median(out["hardness"]))


def print_label_rows(name, comps, guides, settings, truth, vposer_weights) -> None:
  """The rows of one estimator: its estimate as it is, then fitted at each VPoser weight."""
  s = settings.copy_and_resolve_references()
  s.fit_keypoints = False
  mp, pa, h = label_errors(comps, guides, s, truth)
  print(f"| {name}, no fit | {mp:.1f} | {pa:.1f} | {h:.1f} |")
  for w in vposer_weights:
    s.fit_keypoints, s.fit_vposer_weight = True, w
    mp, pa, h = label_errors(comps, guides, s, truth)
    print(f"| {name}, keypoint fit, fit_vposer_weight {w:g} | {mp:.1f} | {pa:.1f} | {h:.1f} |")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--vposer-weights", default="0,100,1000")
  ap.add_argument("--oracle", action="store_true")
  ap.add_argument("--no-guides-finetuned", dest="guides_finetuned", action="store_false")
  args = ap.parse_args()

  import jax
  import numpy as np

  from configs import diffusion_hpc as hpc_config
  from jhmr.models import vposer as vposer_lib
  from jhmr.pipelines import diffusion_hpc as hpc
  from jhmr.pipelines import diffusion_hpc_generate as gen

  workdir = pathlib.Path(args.workdir)
  if not (workdir / hpc.GUIDES_FILE).is_file() or not (workdir / "hmr_easy").is_dir():
    raise SystemExit(f"{workdir} is not a finished default-job workdir (guides.npz, hmr_easy/)")
  config = hpc_config.get_config()
  config.seed = args.seed
  ctx = hpc._context(config, workdir)
  g = config.generate
  truth = hpc.domain_set(ctx, "guides")
  guides = gen.load_guides(workdir / hpc.GUIDES_FILE, g.image_size, g.prompts)
  vp, vp_vars = hpc.vposer_model(ctx)
  hmr, variables = hpc.baseline_hmr(ctx)
  estimator = gen.Estimator(hmr, variables, config.data.image_size, "jhmr")
  comps = gen.Components(estimator, vp, vp_vars, ctx.body_model)
  print(f"# {cpu()}; load average {load()}; workdir {workdir}, seed {args.seed}")

  true_pose = vposer_lib.vposer_input(np.asarray(truth.body_pose))
  key = jax.random.key(args.seed)
  true_hardness = np.median(np.asarray(vposer_lib.hardness(vp_vars, true_pose, key, model=vp)))
  print(f"guides' true poses: VPoser hardness median {true_hardness:.1f}\n")
  print("| labels (augmentation 0) | MPJPE vs guide truth (mm) | PA-MPJPE (mm) | hardness median |")
  print("|---|---|---|---|")
  weights = [float(x) for x in args.vposer_weights.split(",")]
  print_label_rows("easy HMR estimate", comps, guides, g, truth, weights)
  if args.guides_finetuned:
    _, tuned = hpc.finetune(ctx, workdir, synthetic_half="guides_only")
    adapted = gen.Components(
      gen.Estimator(hmr, tuned, config.data.image_size, "jhmr"), vp, vp_vars, ctx.body_model
    )
    print_label_rows("guides-only fine-tuned HMR estimate", adapted, guides, g, truth, weights)

  if args.oracle:
    focal = gen.image_focal(g, g.image_size)
    oracle = gen.Components(TruthEstimator(truth, g.image_size, focal), vp, vp_vars, ctx.body_model)
    s = g.copy_and_resolve_references()
    s.fit_keypoints = False
    _, pa, _ = label_errors(oracle, guides, s, truth)
    if pa > 1.0:  # the estimator's camera round trip must give the truth back
      raise SystemExit(f"oracle labels are {pa:.2f} mm PA-MPJPE from the truth: camera mismatch")
    target = pathlib.Path(f"{workdir}_oracle")
    if not target.exists():
      skip = ("generated", "tfds", "finetune", "finetune_labelled_guides", "results.*", "*.png")
      shutil.copytree(workdir, target, ignore=shutil.ignore_patterns(*skip, "generate_counts*"))
    # the truth stands in for the estimate: no fit, and no estimator of the job's own
    config.generate.update(fit_keypoints=False, estimator="start")
    hpc.generate(config, target, components=oracle)
    hpc.finetune(config, target)
    hpc.evaluate(config, target)
    print(f"\noracle labels ({target}/results.md):\n")
    print((target / "results.md").read_text())


if __name__ == "__main__":
  main()
