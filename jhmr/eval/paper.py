"""ScoreHMR's evaluation protocol (research/scorehmr.md §5, §8, §10.10) and the paper's numbers.

* Joints come from ScoreHMR's 44-joint output: 25 OpenPose joints, then the 19 joints of the
  `SMPL_to_J19.pkl` vertex regressor (indices 25..43).
* Prediction and ground truth are both centred on joint 39 (J19's pelvis), then a subset is kept:
  14 joints [25..37, 43] for 3DPW-TEST, 3DPW-TEST-VIDEO and H36M multi-view; 17 joints (the 14 plus
  39, 41, 42) for Mannequin.
* MPJPE = mean L2 (x1000 for mm); PA-MPJPE = the same after a similarity Procrustes fit;
  acceleration error in mm/frame^2 on the same pelvis-centred joints over each full sequence, the
  number being the mean over all frames. Composed from `jhmr.eval.metrics`.
* EMDB-1 uses "all 24 SMPL joints" (paper); its evaluation code is not released. jhmr's EMDB-1
  rows (`emdb_joint_errors`, `emdb_acceleration_error`) take the 24 SMPL joints of the body model
  centred on the SMPL pelvis (joint 0): jhmr's choice, said in the table, not the paper's code.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jhmr.eval import metrics

NUM_OUTPUT_JOINTS = 44
"""25 OpenPose joints + 19 J19 joints."""
NUM_OPENPOSE = 25
PELVIS = 39
"""The pelvis of the 44-joint output (J19 joint 14)."""
JOINTS_14 = (*range(25, 38), 43)
"""12 limb joints, LSP neck (37), H36M head (43)."""
JOINTS_17 = (*JOINTS_14, 39, 41, 42)
"""The 14 plus pelvis, spine and jaw (Mannequin)."""
EMDB_JOINTS = tuple(range(24))
"""EMDB-1: the 24 SMPL joints (paper); not an index into the 44-joint output."""
SMPL_PELVIS = 0
"""The root of jhmr's EMDB-1 rows: SMPL joint 0."""
DATASET_JOINTS = {
  "3dpw": JOINTS_14,
  "3dpw_video": JOINTS_14,
  "h36m_multiview": JOINTS_14,
  "mannequin": JOINTS_17,
}
"""Joint subset of each released evaluation set (ScoreHMR's `datasets.yaml`)."""


def _select(joints44, joints):
  joints44 = jnp.asarray(joints44)
  if joints44.shape[-2] != NUM_OUTPUT_JOINTS or joints44.shape[-1] != 3:
    raise ValueError(f"expected [..., {NUM_OUTPUT_JOINTS}, 3] joints, got {joints44.shape}")
  centred = joints44 - joints44[..., PELVIS : PELVIS + 1, :]
  return centred[..., jnp.asarray(joints), :]


def protocol_joints(joints44, joints=JOINTS_14):
  """[..., 44, 3] -> [..., K, 3]: centred on the pelvis (39), then the subset `joints`."""
  return _select(joints44, joints)


def joint_errors(pred44, target44, joints=JOINTS_14) -> dict[str, jnp.ndarray]:
  """Per-sample MPJPE and PA-MPJPE in mm for metre-valued [..., 44, 3] joints.

  Returns {'mpjpe': [...], 'pa_mpjpe': [...]}.
  """
  pred, target = _select(pred44, joints), _select(target44, joints)
  return {
    "mpjpe": 1000.0 * metrics.mpjpe(pred, target),
    "pa_mpjpe": 1000.0 * metrics.pa_mpjpe(pred, target),
  }


def acceleration_error(pred44, target44, joints=JOINTS_14) -> jnp.ndarray:
  """[T, 44, 3] of one sequence (metres) -> [T-2] acceleration error in mm/frame^2."""
  return 1000.0 * metrics.acceleration_error(_select(pred44, joints), _select(target44, joints))


def _smpl24(joints):
  joints = jnp.asarray(joints)
  if joints.shape[-2] != len(EMDB_JOINTS) or joints.shape[-1] != 3:
    raise ValueError(f"expected [..., 24, 3] SMPL joints, got {joints.shape}")
  return joints - joints[..., SMPL_PELVIS : SMPL_PELVIS + 1, :]


def emdb_joint_errors(pred24, target24) -> dict[str, jnp.ndarray]:
  """Per-sample MPJPE and PA-MPJPE in mm of metre-valued [..., 24, 3] SMPL joints, both centred
  on the pelvis (jhmr's EMDB-1 rows; module docstring)."""
  pred, target = _smpl24(pred24), _smpl24(target24)
  return {
    "mpjpe": 1000.0 * metrics.mpjpe(pred, target),
    "pa_mpjpe": 1000.0 * metrics.pa_mpjpe(pred, target),
  }


def emdb_acceleration_error(pred24, target24) -> jnp.ndarray:
  """[T, 24, 3] SMPL joints of one sequence (metres) -> [T-2] acceleration error, mm/frame^2,
  pelvis-centred."""
  return 1000.0 * metrics.acceleration_error(_smpl24(pred24), _smpl24(target24))


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One row of the paper's headline table (§8): errors in mm (accel in mm/frame^2).

  `metrics` names the columns; `hmr2b` and `scorehmr` hold the paper's numbers in that order.
  """

  key: str
  setting: str
  dataset: str
  metrics: tuple[str, ...]
  hmr2b: tuple[float, ...]
  scorehmr: tuple[float, ...]


PAPER_TABLE: tuple[PaperRow, ...] = (
  PaperRow("keypoints_3dpw", "keypoint fitting", "3DPW", ("pa_mpjpe",), (54.3,), (51.1,)),
  PaperRow("keypoints_emdb", "keypoint fitting", "EMDB-1", ("pa_mpjpe",), (78.7,), (76.6,)),
  PaperRow(
    "multiview_h36m", "multi-view", "H36M", ("mpjpe", "pa_mpjpe"), (52.8, 35.6), (44.7, 29.0)
  ),
  PaperRow(
    "multiview_mannequin",
    "multi-view",
    "Mannequin",
    ("mpjpe", "pa_mpjpe"),
    (156.0, 90.1),
    (148.3, 79.1),
  ),
  PaperRow("video_3dpw", "video", "3DPW", ("pa_mpjpe", "accel"), (54.3, 17.3), (50.5, 11.1)),
  PaperRow("video_emdb", "video", "EMDB-1", ("pa_mpjpe", "accel"), (78.7, 23.7), (75.3, 11.9)),
)
"""ScoreHMR paper, from HMR 2.0b initial estimates ("b": PARE features, EFT fits — the release)."""
PAPER_ROWS = {row.key: row for row in PAPER_TABLE}
PAPER_RUNTIMES = {
  "video_3dpw": "35K frames in 14 min (whole 3DPW test set, temporal fitting)",
  "multiview_mannequin": "20K frames in 1.5 min (whole Mannequin set)",
}
"""The paper's refinement speed claims (GPU not stated)."""
TABLE_COLUMNS = (
  "setting",
  "dataset",
  "metric",
  "paper HMR 2.0b",
  "paper ScoreHMR",
  "ours HMR 2.0b",
  "ours ScoreHMR",
  "frames",
  "refine s",
  "frames/s",
  "paper speed",
)
"""Columns of the reproduced table (`jhmr.pipelines.scorehmr_paper`)."""


def table_rows(key: str, ours_initial: dict, ours_refined: dict, frames: int, seconds: float):
  """The table lines of one paper row: one per metric, ours next to the paper's numbers.

  `ours_*` map metric name -> number (mm); returns a list of dicts keyed by `TABLE_COLUMNS`.
  """
  paper = PAPER_ROWS[key]
  out = []
  for i, metric in enumerate(paper.metrics):
    out.append(
      {
        "setting": paper.setting,
        "dataset": paper.dataset,
        "metric": metric,
        "paper HMR 2.0b": paper.hmr2b[i],
        "paper ScoreHMR": paper.scorehmr[i],
        "ours HMR 2.0b": float(ours_initial[metric]),
        "ours ScoreHMR": float(ours_refined[metric]),
        "frames": int(frames),
        "refine s": float(seconds),
        "frames/s": float(frames / seconds) if seconds > 0 else float("nan"),
        "paper speed": PAPER_RUNTIMES.get(key, ""),
      }
    )
  return out


def format_markdown(rows) -> str:
  """Rows of `table_rows` -> a markdown table with `TABLE_COLUMNS`."""

  def cell(v):
    return f"{v:.1f}" if isinstance(v, float) and np.isfinite(v) else str(v)

  lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
  lines += ["| " + " | ".join(cell(r[c]) for c in TABLE_COLUMNS) + " |" for r in rows]
  return "\n".join(lines) + "\n"
