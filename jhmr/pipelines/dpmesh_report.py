"""Results of the DPMesh program: workdir/results.md (accuracy, NKR ablation, codebook) and
results.csv (the accuracy rows), both written atomically."""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from jhmr.io.files import atomic_path

COLUMNS = (
  "test set",
  "method",
  "MPJPE (mm)",
  "PA-MPJPE (mm)",
  "MPJPE visible (mm)",
  "MPJPE invisible (mm)",
  "invisible joints (%)",
  "N",
)


def row(test: str, method: str, errors: dict) -> dict:
  """One table row from per-sample errors ({'mpjpe', 'pa_mpjpe', 'mpjpe_visible',
  'mpjpe_invisible' (NaN where a sample has no such joint: averaged over the others),
  'invisible_share' (fraction of its joints that are invisible)})."""
  invisible = errors["mpjpe_invisible"]

  def mean(x):
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None

  return {
    "test set": test,
    "method": method,
    "MPJPE (mm)": mean(errors["mpjpe"]),
    "PA-MPJPE (mm)": mean(errors["pa_mpjpe"]),
    "MPJPE visible (mm)": mean(errors["mpjpe_visible"]),
    "MPJPE invisible (mm)": mean(invisible),
    "invisible joints (%)": float(abs(100 * np.mean(errors["invisible_share"]))),
    "N": int(np.size(errors["mpjpe"])),
  }


def _fmt(v) -> str:
  if v is None:
    return "-"
  return f"{v:.1f}" if isinstance(v, float) else str(v)


def table(rows, columns=COLUMNS) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def _codebook_table(figures: dict) -> str:
  return (
    "| poses | codebook | held-out poses | reconstruction MPJPE (mm) | rotation L1 | usage (%) "
    "| perplexity |\n|---|---|---|---|---|---|---|\n"
    f"| {figures['poses']} | {figures['tokens']} tokens x {figures['codebook_size']} entries "
    f"| {figures['held_out']} | {figures['mpjpe_mm']:.1f} | {figures['rotmat_l1']:.4f} "
    f"| {100 * figures['usage']:.1f} | {figures['perplexity']:.1f} |\n"
  )


def write(workdir, rows, codebook: dict | None, config) -> str:
  """results.md + results.csv in `workdir`; returns the Markdown."""
  workdir = pathlib.Path(workdir)
  parts = [
    f"# DPMesh ({config.model}) on {config.data.source} data\n",
    "Errors of the 24 SMPL joints, each skeleton centred on its pelvis (mm). Input keypoints: "
    "PoseFix-noised" + (", occluded joints missing" if config.hide_occluded else "") + ". "
    "Visible / invisible: the joint is inside the crop and not covered by an occluder (invisible "
    "averages over the samples that have one). The HMR regressor sees the image only; DPMesh "
    "sees the image and the 2D joints.\n",
    table(rows),
  ]
  nkr = [r for r in rows if "NKR" in r["method"]]
  if nkr:
    parts += ["\n## NKR ablation (noisy keypoints)\n", table(nkr, COLUMNS[:4] + ("N",))]
  if codebook is not None:
    parts += ["\n## Pose codebook (held-out poses)\n", _codebook_table(codebook)]
  markdown = "\n".join(parts)
  with atomic_path(workdir / "results.md") as tmp:
    pathlib.Path(tmp).write_text(markdown)
  with atomic_path(workdir / "results.csv") as tmp, open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return markdown
