"""What the refine program writes for one camera, from its `Results` (initial and refined).

overlay.mp4            H.264, per frame: input (with the keypoints) | initial | ScoreHMR
overlay_<frame>.png    the same panels for `outputs.png_frames` evenly spaced frames
meshes/track<id>_<frame>.obj   the refined meshes of those frames (camera frame, metres)
track<id>.glb, .bvh    each track's refined motion (camera frame; `jhmr.io.gltf`, `bvh_export`)
summary.md             per track: rows, keypoint reprojection error (px) before / after, and for
                       the generated example the 3D errors against its truth
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

from jhmr.body.posing import posed_vertices
from jhmr.eval import metrics
from jhmr.io import bvh_export, gltf
from jhmr.io import video as video_io
from jhmr.io.results import Results
from jhmr.render import mesh_io, overlay, people

BACKGROUND = 96  # grey of the frames when no video is given


def vertices(body_model, res: Results) -> np.ndarray:
  """[N, V, 3] camera-frame vertices of every row (metres)."""
  return posed_vertices(body_model, res.global_orient, res.body_pose, res.betas, res.cam_t)


def frame_slots(res: Results, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(rows [T, P], slot track ids [P]): the row of track slot p at each frame (-1: absent)."""
  ids = res.track_ids
  rows = np.full((len(frames), len(ids)), -1, np.int64)
  where = {int(f): i for i, f in enumerate(frames)}
  slot = {int(t): k for k, t in enumerate(ids)}
  for r, (t, f) in enumerate(zip(res.track_id, res.frame)):
    if int(f) in where:
      rows[where[int(f)], slot[int(t)]] = r
  return rows, ids


def render(
  body_model, res: Results, frames: np.ndarray, backgrounds, chunk: int = 8, verts=None
) -> np.ndarray:
  """The people of `res` over `backgrounds` [T, H, W, 3] uint8 at `frames` [T] -> uint8 images."""
  verts = vertices(body_model, res) if verts is None else verts  # [N, V, 3] camera frame
  rows, ids = frame_slots(res, frames)
  colors = people.person_colors(max(len(ids), 1))
  k = res.intrinsics[0]
  h, w = backgrounds.shape[1:3]
  out = []
  for s in range(0, len(frames), chunk):
    idx = rows[s : s + chunk]
    n = len(idx)
    pad = chunk - n  # every call has the same shapes: one compilation
    idx = np.pad(idx, ((0, pad), (0, 0)), constant_values=-1)
    bg = np.pad(backgrounds[s : s + chunk], ((0, pad), (0, 0), (0, 0), (0, 0)))
    images = people.render_people(
      jnp.asarray(verts[np.maximum(idx, 0)]),
      jnp.asarray(idx >= 0),
      body_model.faces,
      jnp.tile(jnp.asarray([[k[0, 0], k[1, 1]]], jnp.float32), (chunk, 1)),
      jnp.tile(jnp.asarray([[k[0, 2], k[1, 2]]], jnp.float32), (chunk, 1)),
      jnp.asarray(bg),
      jnp.asarray(colors),
      image_size=(h, w),
    )
    out.append(np.asarray(images)[:n])
  return np.concatenate(out)


def _with_keypoints(images: np.ndarray, res: Results, frames: np.ndarray) -> np.ndarray:
  kp = next(iter(res.keypoints_2d.values()), None)
  if kp is None:
    return images
  rows, _ = frame_slots(res, frames)
  out = images.copy()
  for t, row in enumerate(rows):
    for r in row[row >= 0]:
      out[t] = overlay.draw_keypoints(
        out[t], kp[r, :, :2], kp[r, :, 2], overlay.OPENPOSE25_EDGES, radius=2, line_width=1
      )
  return out


def reprojection_error(res: Results) -> np.ndarray:
  """[N] mean distance (px) between the detected keypoints and the projected model joints of the
  same set, over the keypoints with confidence > 0 (NaN for a row without any)."""
  name = next(iter(res.keypoints_2d))
  kp = res.keypoints_2d[name]
  x = np.einsum("nij,nkj->nki", res.intrinsics, res.joints[name])
  uv = x[..., :2] / x[..., 2:3]
  err = np.linalg.norm(uv - kp[..., :2], axis=-1)
  seen = kp[..., 2] > 0
  with np.errstate(invalid="ignore"):
    return np.where(seen.any(-1), (err * seen).sum(-1) / seen.sum(-1), np.nan)


def contiguous_runs(res: Results, track_id: int) -> list[np.ndarray]:
  """Row indices of a track, in frame order, split where frames are not consecutive."""
  rows = np.flatnonzero(res.track_id == track_id)
  rows = rows[np.argsort(res.frame[rows])]
  cuts = np.flatnonzero(np.diff(res.frame[rows]) != 1) + 1
  return np.split(rows, cuts)


def export_tracks(out: pathlib.Path, body_model, res: Results, fps: float) -> list[pathlib.Path]:
  """track<id>[_<first frame>].glb and .bvh of every track's contiguous runs (camera frame)."""
  written = []
  for tid in res.track_ids:
    runs = contiguous_runs(res, int(tid))
    for rows in runs:
      stem = f"track{int(tid)}" + (f"_{int(res.frame[rows[0]]):06d}" if len(runs) > 1 else "")
      args = (
        body_model, res.betas[rows].mean(0), res.global_orient[rows], res.body_pose[rows],
        res.cam_t[rows], fps,
      )  # fmt: skip
      gltf.export_glb(out / f"{stem}.glb", *args, frame="opencv", name=stem)
      bvh_export.export_bvh(out / f"{stem}.bvh", *args)
      written += [out / f"{stem}.glb", out / f"{stem}.bvh"]
  return written


def write_all(out, view, initial: Results, refined: Results, body_model, outputs, example=None):
  """Writes every output of one camera (module docstring) into `out`; returns the summary."""
  out = pathlib.Path(out)
  frames = np.arange(int(refined.frame.min()), int(refined.frame.max()) + 1)
  w, h = view.image_size
  if view.frames is not None:
    backgrounds = view.frames[np.clip(frames, 0, len(view.frames) - 1)]
  else:
    backgrounds = np.full((len(frames), h, w, 3), BACKGROUND, np.uint8)
  refined_verts = vertices(body_model, refined)  # for the overlay and the OBJ meshes
  panels = [
    _with_keypoints(backgrounds, refined, frames),
    render(body_model, initial, frames, backgrounds),
    render(body_model, refined, frames, backgrounds, verts=refined_verts),
  ]
  video = np.concatenate(panels, axis=2)
  if outputs.video:
    video_io.write_mp4(out / "overlay.mp4", video, fps=view.fps)
  picks = np.unique(np.linspace(0, len(frames) - 1, outputs.png_frames).round().astype(int))
  for t in picks:
    overlay.save_png(out / f"overlay_{int(frames[t]):06d}.png", video[t])
    for r in np.flatnonzero(refined.frame == frames[t]):
      name = f"track{int(refined.track_id[r])}_{int(frames[t]):06d}.obj"
      mesh_io.export_obj(out / "meshes" / name, refined_verts[r], body_model.faces)
  export_tracks(out, body_model, refined, view.fps)
  summary = summarize(initial, refined, example)
  (out / "summary.md").write_text(summary_markdown(summary))
  return summary


def summarize(initial: Results, refined: Results, example=None) -> dict:
  """{track id: {rows, keypoint_px (initial, ScoreHMR), and with the example's truth mpjpe /
  pa_mpjpe (mm) and accel (mm/frame^2) (initial, ScoreHMR)}}."""
  before, after = reprojection_error(initial), reprojection_error(refined)
  truth = _truth_joints(example, refined) if example is not None else None
  summary = {}
  for tid in refined.track_ids:
    sel = refined.track_id == tid
    row = {
      "rows": int(sel.sum()),
      "keypoint_px": (float(np.nanmean(before[sel])), float(np.nanmean(after[sel]))),
    }
    if truth is not None:
      target = truth[sel] - truth[sel][:, :1]
      errs = []
      for res in (initial, refined):
        pred = res.joints["smpl24"][sel] - res.joints["smpl24"][sel][:, :1]
        errs.append(
          {
            "mpjpe": 1000 * float(np.mean(metrics.mpjpe(pred, target))),
            "pa_mpjpe": 1000 * float(np.mean(metrics.pa_mpjpe(pred, target))),
            "accel": 1000 * float(np.mean(metrics.acceleration_error(pred[None], target[None]))),
          }
        )
      for key in errs[0]:
        row[key] = (errs[0][key], errs[1][key])
    summary[int(tid)] = row
  return summary


def _truth_joints(example, res: Results) -> np.ndarray | None:
  """[N, 24, 3] true SMPL joints of the rows (camera frame, metres) from the example's truth."""
  with np.load(example.truth, allow_pickle=False) as z:
    joints, track_ids = z["joints_smpl24"], z["track_ids"]  # [P, T, 24, 3], [P]
  person = {int(t): p for p, t in enumerate(track_ids)}
  return joints[[person[int(t)] for t in res.track_id], res.frame]


def summary_markdown(summary: dict) -> str:
  """The summary as a Markdown table (initial -> ScoreHMR)."""
  keys = [
    k for k in ("keypoint_px", "mpjpe", "pa_mpjpe", "accel") if k in next(iter(summary.values()))
  ]
  titles = {
    "keypoint_px": "keypoint error (px)",
    "mpjpe": "MPJPE (mm)",
    "pa_mpjpe": "PA-MPJPE (mm)",
    "accel": "accel. error (mm/frame²)",
  }
  lines = [
    "| track | frames | " + " | ".join(titles[k] for k in keys) + " |",
    "|---|---|" + "---|" * len(keys),
  ]
  for tid, row in summary.items():
    cells = [f"{row[k][0]:.1f} → {row[k][1]:.1f}" for k in keys]
    lines.append(f"| {tid} | {row['rows']} | " + " | ".join(cells) + " |")
  return "Initial estimate → ScoreHMR, per track.\n\n" + "\n".join(lines) + "\n"
