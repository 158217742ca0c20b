"""Diffusion-HPC's SMART PCK and Ski-Pose 3D evaluation of an HMR (research/diffusion_hpc.md §4,
§8.9), for the program's non-embedded path (`jhmr.pipelines.diffusion_hpc`).

Data: the TFDS builders `smart/<action>` (one config per action; its `test` split, the videos
after the few-shot training videos) and `ski_pose/frames` (its `test` split), prepared from the
raw files by `jhmr.pipelines.real_data.prepare`. Both yield 224 px crops; the HMR sees them as
they are, normalised as `config.finetune.image_normalisation` says ('imagenet': SPIN).

Metrics (`jhmr.eval.hpc_protocol`, as DAPA's `eval_diffusion.py`):
* SMART: SPIN's 24 ground-truth-set joints of the predicted body projected with focal 5000 into
  the crop (`crop_translation`, `project_to_crop`) against the builder's `part` [24, 3] (image
  px, moved into the crop with the row's `center` / `scale`); PCK@22.4 px per action
  (`pck_per_action`).
* Ski-Pose: `J_regressor_h36m` on the predicted neutral mesh against the builder's `joints3d`
  (legs swapped back), 16 pelvis-centred joints, MPJPE / PA-MPJPE in mm (`ski_errors`).

Body-model joints. SPIN's 24 ground-truth-set joints come from SPIN's `J_regressor_extra` and the
SMPL joints; jhmr's body models carry keypoint sets instead, so they are assembled from the
model's sets (`spin24_joints`): rows 0-13 (LSP: ankles, knees, hips, wrists, elbows, shoulders,
neck, head top) = `lsp14`; 14-18 (pelvis, thorax, spine, jaw, head) = `h36m17` Pelvis, Thorax,
Spine, NeckNose, Head; 19-23 (nose, eyes, ears) = `openpose25`. SMART's ground truth annotates
only rows with an OpenPose counterpart (0-12, 14, 19-23), so rows 13 and 15-18 never count. The
H36M regressor is the model's `h36m17` set as one vertex regressor
(`jhmr.eval.dpmesh_protocol.vertex_regressor`): for the paper's numbers that set must be
`J_regressor_h36m` (an official SMPL file carries no keypoint sets); the free body model's
stand-in makes numbers that are not comparable with the paper's.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.data import crops
from jhmr.data.smart import smart_dataset_builder as smart_builder
from jhmr.errors import InputError
from jhmr.eval import dpmesh_protocol, hpc_protocol
from jhmr.train.hpc_finetune_task import normalise_imagenet
from jhmr.train.tasks import normalise_images

SMART_ACTIONS = tuple(c.name for c in smart_builder.Builder.BUILDER_CONFIGS)
"""polevault, highjump, balancebeam, vault, unevenbars, diving."""
SKI_BUILDER = "ski_pose/frames"
BENCHMARKS = ("smart", "ski_pose")
NORMALISE = {"imagenet": normalise_imagenet, "jhmr": normalise_images}
SPIN24_SETS = ("lsp14", "h36m17", "openpose25")
H36M_ROWS = (0, 8, 7, 9, 10)
"""`h36m17` rows of SPIN's rows 14-18 (pelvis, thorax, spine, jaw, head)."""
OPENPOSE_ROWS = (0, 16, 15, 18, 17)
"""`openpose25` rows of SPIN's rows 19-23 (nose, left eye, right eye, left ear, right ear)."""


# ---------------------------------------------------------------------------------------------
# body-model joints


def require_joint_sets(body_model, names, what: str) -> None:
  """InputError naming the keypoint sets `names` that `body_model` lacks (needed for `what`)."""
  missing = [n for n in names if n not in body_model.available_joint_sets]
  if missing:
    raise InputError(
      f"{what} needs the body model's keypoint sets {', '.join(missing)}; it has "
      f"{body_model.available_joint_sets} (official SMPL files carry none: attach them with "
      "load_body_model(..., joint_sets=npz))"
    )


def spin24_joints(body_model, betas, rotmat) -> jnp.ndarray:
  """betas [B, NB], rotmat [B, 24, 3, 3] (root first) -> [B, 24, 3] SPIN's ground-truth-set
  joints (m, body frame without translation), assembled from the model's sets (module
  docstring)."""

  def keypoints(name):
    out = body_model.joints_only(
      betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set=name
    )
    return out.keypoints

  lsp, h36m, openpose = (keypoints(n) for n in SPIN24_SETS)
  return jnp.concatenate(
    [lsp, h36m[:, jnp.asarray(H36M_ROWS)], openpose[:, jnp.asarray(OPENPOSE_ROWS)]], axis=1
  )


def h36m_regressor(body_model) -> np.ndarray:
  """[17, V] vertex regressor of the model's `h36m17` set (its joint terms through
  `J_regressor`, as DAPA regresses the H36M joints from the mesh)."""
  require_joint_sets(body_model, ("h36m17",), "the Ski-Pose evaluation")
  js = body_model.joint_sets["h36m17"]
  ids, weights = np.asarray(js.vertex_ids), np.asarray(js.vertex_weights, np.float64)
  dense = np.zeros((ids.shape[0], body_model.num_vertices))
  np.add.at(dense, (np.arange(ids.shape[0])[:, None], ids), weights)
  return dpmesh_protocol.vertex_regressor(
    np.asarray(js.from_joints, np.float64), dense, np.asarray(body_model.J_regressor, np.float64)
  ).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# jitted prediction


@functools.partial(jax.jit, static_argnums=(0, 1))
def _smart_step(model, normalisation, variables, body_model, images):
  out = model.apply(variables, NORMALISE[normalisation](images), train=False)
  joints = spin24_joints(body_model, out["betas"], out["rotmat"])
  size = images.shape[1]
  return hpc_protocol.project_to_crop(joints, hpc_protocol.crop_translation(out["cam"], size=size),
                                      size=size)  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 1))
def _ski_step(model, normalisation, variables, body_model, regressor, images, gt):
  out = model.apply(variables, NORMALISE[normalisation](images), train=False)
  rotmat = out["rotmat"]
  vertices = body_model(out["betas"], rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat").vertices
  return hpc_protocol.ski_errors(vertices, gt, regressor)


def _check_normalisation(normalisation: str) -> None:
  if normalisation not in NORMALISE:
    raise InputError(
      f"image_normalisation must be one of {tuple(NORMALISE)}, got {normalisation!r}"
    )


def _batches(source, fields, batch_size: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """(valid count, {field: [batch_size, ...]}) over the rows of a data source in order, every
  short chunk padded by repeating its last row (one compiled program for every chunk and
  source)."""
  n = len(source)
  for start in range(0, n, batch_size):
    rows = [source[i] for i in range(start, min(start + batch_size, n))]
    keep = len(rows)
    rows += [rows[-1]] * (batch_size - keep)
    yield keep, {f: np.stack([np.asarray(r[f]) for r in rows]) for f in fields}


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# the two benchmarks


def smart_ground_truth(part, center, scale, size: int = hpc_protocol.CROP_SIZE) -> np.ndarray:
  """The builder's `part` [N, 24, 3] (image px, conf) with `center` [N, 2] and `scale` [N] (box
  side px) -> [N, 24, 3] in crop px (the map of the builder's crop), conf unchanged."""
  part = np.asarray(part, np.float32)
  xy = np.stack([
    crops.crop_points(p[:, :2], c, float(s), size)
    for p, c, s in zip(part, np.asarray(center), np.asarray(scale))
  ])  # fmt: skip
  return np.concatenate([xy, part[..., 2:]], -1).astype(np.float32)


def smart_predictions(hmr, variables, source, body_model, *, normalisation="imagenet",
                      batch_size=64) -> dict[str, np.ndarray]:  # fmt: skip
  """Over a `smart` data source (rows in order): {'pred_2d' [N, 24, 2] crop px, 'gt_2d' [N, 24,
  3] crop px + conf, 'action' [N] str}."""
  _check_normalisation(normalisation)
  require_joint_sets(body_model, SPIN24_SETS, "the SMART evaluation")
  pred, gt, actions = [], [], []
  fields = ("image", "part", "center", "scale", "action")
  for keep, b in _batches(source, fields, batch_size):
    uv = _smart_step(hmr, normalisation, variables, body_model, jnp.asarray(b["image"]))
    size = b["image"].shape[1]
    pred.append(np.asarray(uv[:keep]))
    gt.append(smart_ground_truth(b["part"][:keep], b["center"][:keep], b["scale"][:keep], size))
    actions += [_text(a) for a in b["action"][:keep]]
  if not pred:
    return {"pred_2d": np.zeros((0, 24, 2), np.float32),
            "gt_2d": np.zeros((0, 24, 3), np.float32), "action": np.zeros(0, str)}  # fmt: skip
  return {
    "pred_2d": np.concatenate(pred),
    "gt_2d": np.concatenate(gt),
    "action": np.asarray(actions),
  }


def smart_pck(pred_2d, gt_2d, actions) -> dict[str, dict[str, float]]:
  """{action: {'pck': PCK@ crop/10 px (%), 'count': images}} (`hpc_protocol.pck_per_action`;
  the threshold is a tenth of the crop side, 22.4 px at 224)."""
  gt_2d = np.asarray(gt_2d)
  actions = np.asarray(actions)
  threshold = hpc_protocol.PCK_THRESHOLD
  pcks = hpc_protocol.pck_per_action(pred_2d, gt_2d, actions, threshold) if len(actions) else {}
  return {a: {"pck": v, "count": int((actions == a).sum())} for a, v in pcks.items()}


def evaluate_smart(hmr, variables, sources: Mapping, body_model, *, normalisation="imagenet",
                   batch_size=64) -> dict[str, dict[str, float]]:  # fmt: skip
  """{action: {'pck', 'count'}} over `sources` {action: `smart/<action>` test data source};
  an action whose test split is empty is left out."""
  out = {}
  for source in sources.values():
    p = smart_predictions(hmr, variables, source, body_model, normalisation=normalisation,
                          batch_size=batch_size)  # fmt: skip
    out.update(smart_pck(p["pred_2d"], p["gt_2d"], p["action"]))
  return out


def evaluate_ski(hmr, variables, source, body_model, *, normalisation="imagenet",
                 batch_size=64) -> dict[str, float]:  # fmt: skip
  """{'mpjpe', 'pa_mpjpe' (mm, means over the samples), 'count'} over a `ski_pose` test data
  source (`hpc_protocol.ski_errors`, 16 joints)."""
  _check_normalisation(normalisation)
  regressor = jnp.asarray(h36m_regressor(body_model))
  errors = {"mpjpe": [], "pa_mpjpe": []}
  for keep, b in _batches(source, ("image", "joints3d"), batch_size):
    out = _ski_step(hmr, normalisation, variables, body_model, regressor, jnp.asarray(b["image"]),
                    jnp.asarray(b["joints3d"], jnp.float32))  # fmt: skip
    for k in errors:
      errors[k].append(np.asarray(out[k][:keep]))
  count = sum(len(e) for e in errors["mpjpe"])
  means = {k: float(np.concatenate(v).mean()) if count else float("nan") for k, v in errors.items()}
  return {**means, "count": count}


# ---------------------------------------------------------------------------------------------
# data and the program's stage


def enabled(section) -> bool:
  """A benchmark section (`config.evaluate.smart` / `.ski_pose`) runs when it names a folder."""
  return bool(section.get("manual_dir", "") or section.get("data_dir", ""))


def _prepare(name: str, section, key: str, workdir):
  from jhmr.pipelines import real_data  # noqa: PLC0415 (TFDS builders: only when evaluating)

  manual = section.get("manual_dir", "")
  if manual and not pathlib.Path(manual).expanduser().is_dir():
    raise InputError(f"config.evaluate.{key}.manual_dir {manual!r} does not exist")
  data_dir = section.get("data_dir", "") or pathlib.Path(workdir) / "tfds_eval"
  if section.get("data_dir", "") and not manual:
    if not pathlib.Path(data_dir).expanduser().is_dir():
      raise InputError(f"config.evaluate.{key}.data_dir {str(data_dir)!r} does not exist")
  try:
    return real_data.prepare(name, data_dir, manual or None)
  except FileNotFoundError as e:
    raise InputError(f"config.evaluate.{key}: {e}") from e


def load_benchmarks(evaluate_config, workdir) -> dict:
  """{'smart': {action: test data source}, 'ski_pose': test data source} of the enabled
  sections of `config.evaluate` (`smart`: manual_dir, data_dir, actions; `ski_pose`:
  manual_dir, data_dir), prepared on first use (data_dir '' = workdir/tfds_eval); a folder
  that does not exist raises InputError naming its config key. Run before training, so a bad
  path stops the job early."""
  out = {}
  smart = evaluate_config.get("smart", None)
  if smart is not None and enabled(smart):
    actions = tuple(smart.get("actions", SMART_ACTIONS))
    unknown = [a for a in actions if a not in SMART_ACTIONS]
    if unknown or not actions:
      raise InputError(
        f"config.evaluate.smart.actions must be among {SMART_ACTIONS}, got {actions}"
      )
    out["smart"] = {
      a: _prepare(f"smart/{a}", smart, "smart", workdir).as_data_source("test") for a in actions
    }
  ski = evaluate_config.get("ski_pose", None)
  if ski is not None and enabled(ski):
    out["ski_pose"] = _prepare(SKI_BUILDER, ski, "ski_pose", workdir).as_data_source("test")
  return out


def check_body_model(benchmarks: Mapping, body_model) -> None:
  """InputError when `body_model` lacks a keypoint set that `benchmarks` need (before training)."""
  if "smart" in benchmarks:
    require_joint_sets(body_model, SPIN24_SETS, "the SMART evaluation")
  if "ski_pose" in benchmarks:
    require_joint_sets(body_model, ("h36m17",), "the Ski-Pose evaluation")


def evaluate_models(models: Mapping, benchmarks: Mapping, body_model, *, normalisation="imagenet",
                    batch_size=64) -> dict:  # fmt: skip
  """{benchmark: {label: metrics}} for `models` {label: (hmr, variables)} on `benchmarks`
  (`load_benchmarks`)."""
  kw = {"normalisation": normalisation, "batch_size": batch_size}
  out = {}
  for label, (hmr, variables) in models.items():
    if "smart" in benchmarks:
      out.setdefault("smart", {})[label] = evaluate_smart(
        hmr, variables, benchmarks["smart"], body_model, **kw
      )
    if "ski_pose" in benchmarks:
      out.setdefault("ski_pose", {})[label] = evaluate_ski(
        hmr, variables, benchmarks["ski_pose"], body_model, **kw
      )
  return out


MODEL_LABELS = {
  "before": "starting HMR (before fine-tuning)",
  "after": "+ Diffusion-HPC fine-tuning (guides + generated pairs)",
}
REFERENCE_NOTE = (
  "Reference rows: the numbers of Diffusion-HPC's released checkpoints (its README, "
  "`jhmr.eval.hpc_protocol.REFERENCE`), not measured here; each was fine-tuned on that "
  "benchmark's own training data (pole vault's training videos; Ski-Pose's 8481 training rows), "
  "while this run fine-tuned on the user's guides."
)
BODY_NOTE = (
  "SPIN's 24 ground-truth-set joints are assembled from the body model's lsp14 / h36m17 / "
  "openpose25 keypoint sets, and the H36M regressor is its h36m17 set "
  "(jhmr.pipelines.diffusion_hpc_eval): with other than the official SMPL + J_regressor_h36m the "
  "numbers are not comparable with the paper's."
)


def report(results: Mapping, body_model_name) -> str:
  """Markdown tables (one per benchmark) of `evaluate_models` results with the reference rows."""
  ref = hpc_protocol.REFERENCE
  lines = []
  if "smart" in results:
    actions = sorted({a for per in results["smart"].values() for a in per})
    lines += [
      "## SMART: PCK@22.4 px (%, test videos of each action; images in brackets)",
      "",
      "| HMR | " + " | ".join(actions) + " |",
      "|---|" + "---|" * len(actions),
    ]
    for label, per in results["smart"].items():
      cells = [f"{per[a]['pck']:.2f} ({per[a]['count']})" if a in per else "-" for a in actions]
      lines.append(f"| {MODEL_LABELS.get(label, label)} | " + " | ".join(cells) + " |")
    cells = [f"{ref['smart_polevault_pck']:.2f}" if a == "polevault" else "-" for a in actions]
    lines += ["| reference: released checkpoint (not measured here) | " + " | ".join(cells) + " |",
              ""]  # fmt: skip
  if "ski_pose" in results:
    lines += [
      "## Ski-Pose: 16 H36M joints, test split",
      "",
      "| HMR | MPJPE (mm) | PA-MPJPE (mm) | images |",
      "|---|---|---|---|",
    ]
    for label, v in results["ski_pose"].items():
      lines.append(
        f"| {MODEL_LABELS.get(label, label)} | {v['mpjpe']:.2f} | {v['pa_mpjpe']:.2f} | "
        f"{v['count']} |"
      )
    lines += [
      f"| reference: released checkpoint, ski8481_real (not measured here) | {ref['ski_mpjpe']:.2f}"
      f" | {ref['ski_pa_mpjpe']:.2f} | 1716 |",
      "",
    ]
  if lines:
    lines += [
      REFERENCE_NOTE,
      "",
      f"Body model: {body_model_name or 'the default'}. {BODY_NOTE}",
      "",
    ]
  return "\n".join(lines)
