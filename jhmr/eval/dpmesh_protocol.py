"""DPMesh's evaluation protocol (research/dpmesh.md §15, §16, §19.10): subsets, metrics, table.

Subsets (`SUBSETS`; DPMesh `dataloader/PW3D.py`), each a list of people to evaluate:

  3dpw        test split, the people of `3DPW_latest_test.json`;
  3dpw-oc     test split, the people of `3DPW_oc.json` (person-object occlusion, from 3DOH);
  3dpw-pc     test split, the people of `3DPW_pc.json` (person-person occlusion, from ROMP);
  3dpw-crowd  validation split, every person of the sequences courtyard_hug_00 and
              courtyard_dancing_00 (DPMesh feeds HigherHRNet detections there; the `threedpw`
              builder carries only the official OpenPose ones).

The subset JSONs (from JOTR, https://github.com/xljh0520/JOTR) go into the `threedpw` manual_dir
next to `sequenceFiles/`. They are COCO-style: `images` entries carry `id`, `sequence` and
`file_name` (`image_%05d.jpg`, possibly prefixed by the sequence folder), `annotations` entries
one person each with `image_id` (and, in the 3DPW-style files, `person_id` = the 3DPW actor; when
absent every actor of the image is kept, as the `threedpw/oc|pc` builder configs do). DPMesh
evaluates one row per annotation, so an image without annotations contributes nothing; a file
without an `annotations` list selects every actor of its `images`.

Rows to select from are `threedpw/frames` (or `oc`, `pc`, `crowd`) examples: mappings with
`sequence`, `image_file` (or `frame_index`) and `actor`. `select_subset` returns the indices of the
rows that belong to a subset.

Metrics (`evaluate`; DPMesh `PW3D.evaluate` / `evaluate_occ`), per sample, in mm for metre input:

* 17 H36M joints = `h36m_regressor` [17, V] @ mesh, for prediction and GT alike (DPMesh:
  `J_regressor_h36m_correct.npy`, H36M order Pelvis, RHip, RKnee, RAnkle, LHip, LKnee, LAnkle,
  Torso, Neck, Nose, Head_top, LShoulder, LElbow, LWrist, RShoulder, RElbow, RWrist).
* Both centred on the H36M pelvis (joint 0), then the 14 joints `H36M_EVAL_JOINTS` kept.
  MPJPE = mean L2; PA-MPJPE = the same after a similarity Procrustes fit on the 14 joints.
* MPVPE: both meshes centred at "SMPL-30 joint 0", which in DPMesh (`common/utils/smpl.py`) is
  row 0 of the **neutral** SMPL `J_regressor` (the pelvis) applied to the mesh - not the H36M
  pelvis. Pass it as `smpl_regressor` ([V] or the whole [24, V]; row 0 is used).
* Visible / invisible split (`evaluate_occ`): a joint is visible when its input 2D detection has
  confidence > 0.05 and lies inside the input crop (DPMesh's `joints_mask`, mapped SMPL-30 ->
  H36M by joint name). Joints the detector does not have are invisible: the H36M Head_top has no
  OpenPose / COCO counterpart, so it is **always** invisible in DPMesh's split; the Neck is the
  OpenPose neck (COCO: the shoulders' midpoint, confidence = their product). `visible_joints`
  builds this mask. Visible MPJPE = mean over the visible of the 14 joints; visible PA-MPJPE uses
  the Procrustes fit on all 14 joints, then the mean over the visible ones (as DPMesh does). A
  sample without visible (or invisible) joints gives NaN there (DPMesh divides by zero);
  `summarize` averages over the samples where the value is defined.

Body models. DPMesh's GT meshes are the **gendered** official SMPL models with `trans`; its
predictions the neutral one. With the user's official SMPL files: GT from the gendered models
(the row's `gender`), `h36m_regressor` = `J_regressor_h36m_correct.npy` (attach it to a model as
the `h36m17` joint set with `load_body_model(..., joint_sets=npz)`, or pass the array directly),
`smpl_regressor` = the neutral model's `J_regressor`. Without them the free body model
(`jhmr/body/assets`, no gender) stands in: its `h36m17` joint set is turned into a vertex regressor
by `vertex_regressor` (joint terms through its `J_regressor`, as DPMesh regresses every joint from
the posed mesh), and `smpl_regressor` = its `J_regressor`. Those numbers are not comparable with
the paper's; `format_table` says which body model made the GT meshes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np

from jhmr.errors import InputError
from jhmr.eval import metrics
from jhmr.geometry.procrustes import similarity_procrustes

NUM_H36M_JOINTS = 17
H36M_JOINT_NAMES = (
  "Pelvis", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Torso", "Neck", "Nose",
  "Head_top", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow", "R_Wrist",
)  # fmt: skip
"""DPMesh's H36M joint order (`PW3D.h36m_joints_name`)."""
H36M_ROOT = 0
"""The H36M pelvis."""
H36M_EVAL_JOINTS = (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
"""The 14 evaluated joints: hips, knees, ankles, Neck, Head_top, shoulders, elbows, wrists."""
CONF_THRESHOLD = 0.05
"""Input keypoints with confidence <= this are invalid (DPMesh `conf_thr`)."""
CROWD_SEQUENCES = ("courtyard_hug_00", "courtyard_dancing_00")
"""3DPW-Crowd: these validation sequences (same as the `threedpw` builder's `crowd` config)."""

# Input-keypoint index of each of the 14 eval joints (None: the detector has no such joint).
# OpenPose COCO-18 = 3DPW `poses2d` order: Nose, Neck, RSho, RElb, RWri, LSho, LElb, LWri, RHip,
# RKnee, RAnk, LHip, LKnee, LAnk, REye, LEye, REar, LEar.
_FROM_OPENPOSE18 = (8, 9, 10, 11, 12, 13, 1, None, 5, 6, 7, 2, 3, 4)
# COCO-17 (HigherHRNet): Nose, LEye, REye, LEar, REar, LSho, RSho, LElb, RElb, LWri, RWri, LHip,
# RHip, LKnee, RKnee, LAnk, RAnk; the Neck ("neck") is added from the shoulders 5 and 6.
_FROM_COCO17 = (12, 14, 16, 11, 13, 15, "neck", None, 5, 7, 9, 6, 8, 10)
KEYPOINT_LAYOUTS = {"openpose18": _FROM_OPENPOSE18, "coco17": _FROM_COCO17}


@dataclasses.dataclass(frozen=True)
class Subset:
  """How a DPMesh subset selects rows: a JSON file in manual_dir, or sequences of a split."""

  name: str
  split: str
  file: str | None = None
  sequences: tuple[str, ...] | None = None
  builder_config: str = "frames"
  keypoints: str = "OpenPose"


SUBSETS = {
  "3dpw": Subset("3dpw", "test", file="3DPW_latest_test.json", builder_config="frames"),
  "3dpw-oc": Subset("3dpw-oc", "test", file="3DPW_oc.json", builder_config="oc"),
  "3dpw-pc": Subset("3dpw-pc", "test", file="3DPW_pc.json", builder_config="pc"),
  "3dpw-crowd": Subset(
    "3dpw-crowd",
    "validation",
    sequences=CROWD_SEQUENCES,
    builder_config="crowd",
    keypoints="HigherHRNet in DPMesh; the builder's OpenPose here",
  ),
}
"""DPMesh's four 3DPW subsets (`PW3D.py`)."""


@dataclasses.dataclass(frozen=True)
class SubsetKeys:
  """The people of a subset JSON: (sequence, image file) -> actors (None: every actor)."""

  people: Mapping[tuple[str, str], frozenset[int] | None]

  def __contains__(self, key) -> bool:
    sequence, image_file, actor = key
    actors = self.people.get((sequence, image_file), ())
    return actors is None or actor in actors

  def __len__(self) -> int:
    return len(self.people)


def read_subset_json(path: str | os.PathLike) -> SubsetKeys:
  """The people listed by a COCO-style 3DPW subset JSON (module docstring); InputError if bad."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(
      f"{path}: subset file not found; put the JOTR/DPMesh file {path.name} into the threedpw "
      "manual_dir (https://github.com/xljh0520/JOTR)"
    )
  try:
    data = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: not a readable JSON file ({e})") from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise InputError(f"{path}: expected a COCO-style object with an 'images' list")
  images = {}
  for i, im in enumerate(data["images"]):
    try:
      seq, name = im["sequence"], im["file_name"]
      if not isinstance(seq, str) or not isinstance(name, str):
        raise TypeError("sequence and file_name must be strings")
      images[im.get("id", i)] = (seq, pathlib.PurePosixPath(name.replace("\\", "/")).name)
    except (KeyError, TypeError) as e:
      raise InputError(
        f"{path}: images[{i}] needs string 'sequence' and 'file_name' ({e!r})"
      ) from None
  annotations = data.get("annotations")
  if annotations is None:
    return SubsetKeys({key: None for key in images.values()})
  if not isinstance(annotations, list):
    raise InputError(f"{path}: 'annotations' must be a list")
  people: dict[tuple[str, str], set[int] | None] = {}
  for i, ann in enumerate(annotations):
    if not isinstance(ann, dict) or "image_id" not in ann:
      raise InputError(f"{path}: annotations[{i}] has no 'image_id'")
    if ann["image_id"] not in images:
      raise InputError(
        f"{path}: annotations[{i}] refers to image_id {ann['image_id']!r}, not listed"
      )
    key = images[ann["image_id"]]
    pid = ann.get("person_id")
    if pid is None:
      people[key] = None
    elif people.get(key, set()) is not None:
      try:
        people.setdefault(key, set()).add(int(pid))
      except (TypeError, ValueError):
        raise InputError(f"{path}: annotations[{i}] person_id {pid!r} is not an integer") from None
  return SubsetKeys({k: (None if v is None else frozenset(v)) for k, v in people.items()})


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode()
  if isinstance(value, np.ndarray):
    return _text(value.item())
  return str(value)


def _image_file(row) -> str:
  if "image_file" in row:
    return pathlib.PurePosixPath(_text(row["image_file"])).name
  return f"image_{int(row['frame_index']):05d}.jpg"


def select_subset(rows: Iterable[Mapping], name: str, manual_dir=None) -> np.ndarray:
  """Indices of the `rows` (builder examples of the subset's split) that belong to subset `name`.

  `manual_dir` holds the subset JSON (not needed for 3dpw-crowd). Rows need `sequence`,
  `image_file` (or `frame_index`) and, for JSONs with `person_id`, `actor`.
  """
  if name not in SUBSETS:
    raise InputError(f"unknown DPMesh subset {name!r}; expected one of {sorted(SUBSETS)}")
  subset = SUBSETS[name]
  rows = list(rows)
  if subset.sequences is not None:
    keep = [i for i, r in enumerate(rows) if _text(r["sequence"]) in subset.sequences]
    return np.asarray(keep, np.int64)
  if manual_dir is None:
    raise InputError(f"subset {name}: give the threedpw manual_dir holding {subset.file}")
  keys = read_subset_json(pathlib.Path(manual_dir) / subset.file)
  keep = [
    i
    for i, r in enumerate(rows)
    if (_text(r["sequence"]), _image_file(r), int(r.get("actor", -1))) in keys
  ]
  return np.asarray(keep, np.int64)


def visible_joints(keypoints, layout: str = "openpose18", crop_size=None, threshold=CONF_THRESHOLD):
  """Input 2D keypoints [..., K, 3] (x, y, conf) -> [..., 14] bool visibility of the eval joints.

  Visible = confidence > `threshold` and, when `crop_size` (pixels of the square crop the
  keypoints are given in, e.g. the builder's `keypoints2d_crop`) is set, 0 <= x, y < crop_size.
  `layout`: 'openpose18' (3DPW `poses2d`) or 'coco17' (HigherHRNet). Head_top is never visible.
  """
  if layout not in KEYPOINT_LAYOUTS:
    raise ValueError(f"unknown keypoint layout {layout!r}; expected {sorted(KEYPOINT_LAYOUTS)}")
  kp = np.asarray(keypoints, np.float64)
  need = 18 if layout == "openpose18" else 17
  if kp.ndim < 2 or kp.shape[-2] != need or kp.shape[-1] != 3:
    raise ValueError(f"expected [..., {need}, 3] {layout} keypoints, got shape {kp.shape}")
  cols = []
  for src in KEYPOINT_LAYOUTS[layout]:
    if src is None:
      cols.append(np.zeros(kp.shape[:-2], bool))
      continue
    if src == "neck":
      point = 0.5 * (kp[..., 5, :2] + kp[..., 6, :2])
      conf = kp[..., 5, 2] * kp[..., 6, 2]
    else:
      point, conf = kp[..., src, :2], kp[..., src, 2]
    ok = conf > threshold
    if crop_size is not None:
      ok &= np.all((point >= 0) & (point < crop_size), axis=-1)
    cols.append(ok)
  return np.stack(cols, axis=-1)


def vertex_regressor(from_joints, from_vertices, j_regressor) -> np.ndarray:
  """A joint set's keypoints (`from_joints` [K, 24] . joints + `from_vertices` [K, V] . vertices)
  as one [K, V] vertex regressor, the joints taken as `j_regressor` [24, V] @ mesh."""
  return np.asarray(from_joints) @ np.asarray(j_regressor) + np.asarray(from_vertices)


def _regress(regressor, vertices):
  return jnp.einsum("kv,...vd->...kd", jnp.asarray(regressor, vertices.dtype), vertices)


def _visible_mean(errors, mask):
  m = jnp.asarray(mask, errors.dtype)
  count = jnp.sum(m, axis=-1)
  return jnp.where(count > 0, jnp.sum(errors * m, axis=-1) / jnp.maximum(count, 1.0), jnp.nan)


def evaluate(pred_vertices, gt_vertices, h36m_regressor, visible=None, *, smpl_regressor):
  """DPMesh's per-sample errors in mm for metre-valued meshes (module docstring).

  Args:
    pred_vertices, gt_vertices: [..., V, 3] meshes (camera frame, metres).
    h36m_regressor: [17, V] H36M joint regressor.
    visible: optional [..., 14] (eval joints) or [..., 17] (H36M order) bool input visibility.
    smpl_regressor: [V] or [24, V] (row 0 used): the SMPL pelvis regressor that centres the
      meshes for MPVPE ("SMPL-30 joint 0").

  Returns:
    {'mpjpe', 'pa_mpjpe', 'mpvpe'} [...] and, with `visible`, 'mpjpe_visible',
    'mpjpe_invisible', 'pa_mpjpe_visible', 'pa_mpjpe_invisible' (NaN where no such joint).
  """
  pred = jnp.asarray(pred_vertices, jnp.float32)
  gt = jnp.asarray(gt_vertices, jnp.float32)
  if pred.shape != gt.shape or pred.ndim < 2 or pred.shape[-1] != 3:
    raise ValueError(f"expected matching [..., V, 3] meshes, got {pred.shape} and {gt.shape}")
  reg = np.asarray(h36m_regressor)
  if reg.shape != (NUM_H36M_JOINTS, pred.shape[-2]):
    raise ValueError(f"h36m_regressor must be [17, {pred.shape[-2]}], got {reg.shape}")
  root = np.asarray(smpl_regressor)
  root = root[0] if root.ndim == 2 else root
  if root.shape != (pred.shape[-2],):
    raise ValueError(f"smpl_regressor must be [V] or [24, V] with V = {pred.shape[-2]}")
  idx = jnp.asarray(H36M_EVAL_JOINTS)

  def eval_joints(mesh):
    joints = metrics.center_on_root(_regress(reg, mesh), H36M_ROOT)
    return joints[..., idx, :]

  pj, gj = eval_joints(pred), eval_joints(gt)
  err = metrics.point_errors(pj, gj)
  aligned = similarity_procrustes(pj, gj)
  pa_err = metrics.point_errors(aligned, gj)
  root_of = lambda mesh: jnp.einsum("v,...vd->...d", jnp.asarray(root, mesh.dtype), mesh)
  out = {
    "mpjpe": 1000.0 * jnp.mean(err, axis=-1),
    "pa_mpjpe": 1000.0 * jnp.mean(pa_err, axis=-1),
    "mpvpe": 1000.0 * metrics.pve(pred, gt, root_pred=root_of(pred), root_target=root_of(gt)),
  }
  if visible is not None:
    vis = np.asarray(visible, bool)
    if vis.shape[-1] == NUM_H36M_JOINTS:
      vis = vis[..., list(H36M_EVAL_JOINTS)]
    if vis.shape[-1] != len(H36M_EVAL_JOINTS):
      raise ValueError(f"visible must be [..., 14] or [..., 17], got shape {vis.shape}")
    for key, e in (("mpjpe", err), ("pa_mpjpe", pa_err)):
      out[f"{key}_visible"] = 1000.0 * _visible_mean(e, vis)
      out[f"{key}_invisible"] = 1000.0 * _visible_mean(e, ~vis)
  return out


def summarize(per_sample: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Per-sample results (one dict or concatenated batches) -> the mean of each metric over the
  samples where it is defined, and 'n' = the number of samples."""
  out = {}
  for key, values in per_sample.items():
    values = np.asarray(values, np.float64).reshape(-1)
    out.setdefault("n", len(values))
    finite = values[np.isfinite(values)]
    out[key] = float(finite.mean()) if len(finite) else float("nan")
  return out


BODY_MODEL_NOTES = {
  "smpl_gendered": "GT meshes: the user's official SMPL models, gendered as 3DPW says (DPMesh's "
  "protocol).",
  "smpl_neutral": "GT meshes: the user's official neutral SMPL model (DPMesh uses the gendered "
  "ones: not the paper's protocol).",
  "free": "GT meshes: the free body model (jhmr/body/assets, no gender, not SMPL; its h36m17 "
  "set stands in for J_regressor_h36m_correct): not comparable with the paper's numbers.",
}
"""Table notes for the body model that produced the GT meshes."""
TABLE_COLUMNS = (
  "subset",
  "n",
  "mpjpe",
  "pa_mpjpe",
  "mpvpe",
  "mpjpe_visible",
  "mpjpe_invisible",
  "pa_mpjpe_visible",
  "pa_mpjpe_invisible",
)


def format_table(rows: Iterable[Mapping], body_model_note: str) -> str:
  """Rows ({'subset': name, **summarize(...)}) -> a markdown table (mm) and the GT body model.

  `body_model_note` is a key of `BODY_MODEL_NOTES` or free text; it is printed under the table.
  Columns a row lacks (e.g. the visible split) are shown as '-'.
  """
  note = BODY_MODEL_NOTES.get(body_model_note, body_model_note)
  if not note:
    raise ValueError("format_table needs a body_model_note saying which model made the GT meshes")

  def cell(v):
    if v is None:
      return "-"
    if isinstance(v, float | np.floating):
      return f"{v:.1f}" if np.isfinite(v) else "-"
    return str(v)

  lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
  lines += ["| " + " | ".join(cell(r.get(c)) for c in TABLE_COLUMNS) + " |" for r in rows]
  lines += ["", f"Errors in mm; H36M 14 joints, pelvis root; MPVPE at the SMPL pelvis. {note}"]
  return "\n".join(lines) + "\n"
