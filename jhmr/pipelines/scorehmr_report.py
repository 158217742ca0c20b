"""Results of the ScoreHMR job: Markdown + CSV table, plots (PNG) and meshes (OBJ)."""

from __future__ import annotations

import csv
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.render import export_obj, overlay_mesh, rasterize, save_png

COLUMNS = ("task", "method", "MPJPE (mm)", "PA-MPJPE (mm)", "Accel (mm/frame^2)", "N")


def row(task: str, method: str, errors: dict) -> dict:
  """One table row from per-sample errors ({'mpjpe', 'pa_mpjpe', optional 'accel'})."""
  accel = errors.get("accel")
  return {
    "task": task,
    "method": method,
    "MPJPE (mm)": float(np.mean(errors["mpjpe"])),
    "PA-MPJPE (mm)": float(np.mean(errors["pa_mpjpe"])),
    "Accel (mm/frame^2)": None if accel is None else float(np.mean(accel)),
    "N": int(np.size(errors["mpjpe"])),
  }


def _fmt(v) -> str:
  if v is None:
    return "-"
  return f"{v:.1f}" if isinstance(v, float) else str(v)


def write_table(workdir, rows) -> str:
  """workdir/results.md and results.csv; returns the Markdown."""
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
  markdown = "\n".join(lines) + "\n"
  (workdir / "results.md").write_text(markdown)
  with open(workdir / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return markdown


def _plots(workdir, extras, body_model, initial_name):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kp = extras["keypoints"]
  loss = np.asarray(kp["first"]["result"].keypoint_loss)  # [iters * steps, B]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot(np.arange(1, len(loss) + 1), loss.mean(axis=1))
  ax.set_xlabel("guided DDIM step")
  ax.set_ylabel("keypoint loss (mean over samples)")
  ax.set_yscale("log")
  ax.set_title("ScoreHMR keypoint fitting: error per iteration")
  fig.tight_layout()
  fig.savefig(workdir / "error_per_iteration.png", dpi=100)
  plt.close(fig)

  names = body_model.joint_names("smpl24")
  fig, ax = plt.subplots(figsize=(10, 3.5))
  x = np.arange(len(names))
  for offset, method, label in (
    (-0.27, "initial", initial_name),
    (0.0, "baseline", "optimisation baseline"),
    (0.27, "ScoreHMR", "ScoreHMR"),
  ):
    ax.bar(x + offset, kp[method]["per_joint"].mean(0), 0.27, label=label)
  ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel("error (mm, root-centred)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / "per_joint_error.png", dpi=100)
  plt.close(fig)


@functools.partial(jax.jit, static_argnames=("size",))
def _posed(body_model, rotmat, betas, cam_t, focal_length, center, size: int):
  out = body_model(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat")
  verts = out.vertices + cam_t[:, None]
  return verts, rasterize(verts, body_model.faces, focal_length, center, (size, size))


def _meshes_and_overlay(workdir, extras, models, count: int = 4):
  body_model = models.body_model
  first = extras["keypoints"]["first"]
  batch, est, result = first["batch"], first["estimate"], first["result"]
  n = min(count, len(batch.image))
  images = np.asarray(batch.image[:n])
  size = images.shape[1]
  k = batch.crop_projection[:n]
  focal, center = k[:, [0, 1], [0, 1]], k[:, :2, 2]
  (workdir / "meshes").mkdir(exist_ok=True)
  columns = [images]
  for name, rotmat, betas, cam_t in (
    ("initial", est.rotmat, est.betas, est.cam_t),
    ("scorehmr", result.pose, result.betas, result.cam_t),
  ):
    verts, frags = _posed(
      body_model,
      *(jnp.asarray(x[:n]) for x in (rotmat, betas, cam_t)),
      jnp.asarray(focal, jnp.float32),
      jnp.asarray(center, jnp.float32),
      size,
    )
    for i in range(n):
      export_obj(workdir / "meshes" / f"{name}_{i}.obj", np.asarray(verts[i]), body_model.faces)
    columns.append(np.asarray(overlay_mesh(images, frags, alpha=0.7)))
  grid = np.concatenate([np.concatenate([c[i] for c in columns], axis=1) for i in range(n)])
  zoom = max(1, 256 // size)
  save_png(workdir / "overlay.png", np.repeat(np.repeat(grid, zoom, 0), zoom, 1))


def write(workdir, rows, extras, models, initial_name: str = "regressor") -> None:
  """Writes the table, the plots, example overlays (input | initial | ScoreHMR) and meshes."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  print(write_table(workdir, rows))
  if "keypoints" in extras:
    _plots(workdir, extras, models.body_model, initial_name)
    _meshes_and_overlay(workdir, extras, models)
