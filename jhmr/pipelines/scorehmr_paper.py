"""The ScoreHMR paper's evaluation protocol on the released files (research/scorehmr.md §5, §7, §8).

Per table row (`config.rows`, keys of `jhmr.eval.paper.PAPER_ROWS`):
  read the evaluation set and the HMR 2.0b cache (`jhmr.data.scorehmr_files`) -> initial estimate
  = HMR 2.0b's rotations, betas and full-image translation (f = 5000 px) -> PARE pose features of
  the 224 crops (`FeatureFn`; the converted PARE by default), standardised with
  `pare_feat_stats.npz` -> `jhmr.guidance.refine` with the converted official model (keypoint
  fitting: batches of `config.batch_size` rows; multi-view / video: one group per batch, as the
  paper's evals) -> the paper's metrics on the 44-joint output (`jhmr.eval.paper`) -> one table
  (workdir/paper_table.md, .csv) of ours next to the paper's numbers with the refinement time.

Keypoint guidance uses the 25 OpenPose detections of the set (`body_keypoints_2d`) in image
pixels; the image size (camera centre and the keypoint weight) is read from each image.
EMDB-1 rows (`keypoints_emdb`, `video_emdb`): the release has no EMDB-1 files, so they are
jhmr's protocol (`jhmr.pipelines.scorehmr_paper_emdb`): the `emdb` builder's EMDB-1 frames, the
converted ViTPose, HMR 2.0 and PARE in-process, the 24 SMPL joints; the table says so.
Numbers are not claimed until measured on the real files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import crops as crops_lib
from jhmr.data import scorehmr_files as files_lib
from jhmr.errors import InputError
from jhmr.eval import paper
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import refine
from jhmr.pipelines import scorehmr_paper_emdb as emdb_lib
from jhmr.pipelines.scorehmr import refine_config_for
from jhmr.pipelines.stages import Stage

FOCAL_LENGTH = 5000.0
CROP_SIZE = 224
ROW_SPECS = {
  # key: (refinement task, config.files entry of the set, of the HMR 2.0b cache, image dir)
  "keypoints_3dpw": ("keypoints", "threedpw", "cache_threedpw", "threedpw"),
  "multiview_h36m": ("multiview", "h36m_multiview", "cache_h36m_multiview", "h36m"),
  "multiview_mannequin": ("multiview", "mannequin", "cache_mannequin", "mannequin"),
  "video_3dpw": ("video", "threedpw_video", "cache_threedpw_video", "threedpw"),
}
ROW_JOINTS = {
  "keypoints_3dpw": paper.DATASET_JOINTS["3dpw"],
  "multiview_h36m": paper.DATASET_JOINTS["h36m_multiview"],
  "multiview_mannequin": paper.DATASET_JOINTS["mannequin"],
  "video_3dpw": paper.DATASET_JOINTS["3dpw_video"],
}


class FeatureFn(Protocol):
  """Normalised crops [B, 224, 224, 3] float32 -> raw (unstandardised) features [B, C]."""

  def __call__(self, crops: np.ndarray) -> np.ndarray: ...


def pare_feature_fn(checkpoint: str | pathlib.Path) -> FeatureFn:
  """ScoreHMR's conditioning: the converted official PARE's `pose_feats`, channel-major."""
  from jhmr.convert import pare as pare_convert
  from jhmr.models import pare as pare_lib

  model = pare_lib.Pare()
  variables = pare_convert.load_pare_checkpoint(checkpoint, model)
  apply = jax.jit(lambda v, x: pare_lib.features(model.apply(v, x)))
  return lambda crops: np.asarray(apply(variables, jnp.asarray(crops)))


def stand_in_feature_fn(dim: int = 3072, seed: int = 0) -> FeatureFn:
  """A fixed random projection of 8x8-pooled crops (tests and the `:tiny` config only)."""
  proj = np.random.default_rng(seed).normal(size=(8 * 8 * 3, dim)).astype(np.float32)

  def fn(crops):
    b = crops.shape[0]
    pooled = crops.reshape(b, 8, crops.shape[1] // 8, 8, crops.shape[2] // 8, 3).mean((2, 4))
    return pooled.reshape(b, -1) @ proj

  return fn


def _path(config, key: str) -> pathlib.Path:
  return pathlib.Path(config.data_dir) / config.files[key]


def _emdb_rows(config) -> list[str]:
  return [row for row in config.rows if row in emdb_lib.EMDB_ROWS]


def required_files(config) -> list[pathlib.Path]:
  """Every file the configured rows need (checked before any work)."""
  keys = ["stats", "j19"] + ([] if config.random_weights else ["checkpoint"])
  if config.features == "pare" or (_emdb_rows(config) and not config.random_weights):
    keys.append("pare")
  if _emdb_rows(config) and not config.random_weights:
    keys.append("vitpose")
  for row in config.rows:
    keys += list(ROW_SPECS[row][1:3]) if row in ROW_SPECS else []
  out = [_path(config, k) for k in dict.fromkeys(keys)]
  if _emdb_rows(config) and not config.random_weights:
    out.append(pathlib.Path(config.hmr2_checkpoint).expanduser())
  if config.body_model not in ("anny", "anny-tiny"):
    out.append(pathlib.Path(config.body_model))
  return out


def check_files(config) -> None:
  """FileNotFoundError naming the first missing file; InputError for an unknown row."""
  for row in config.rows:
    if row not in paper.PAPER_ROWS:
      raise InputError(f"unknown paper row {row!r}; valid: {', '.join(paper.PAPER_ROWS)}")
  for path in required_files(config):
    if not path.is_file():
      raise FileNotFoundError(
        f"{path}: missing (download ScoreHMR's data.zip / datasets.zip / cache.zip, see "
        "configs/scorehmr_paper.py)"
      )


def score_params(config, cond_dim: int):
  """The converted official model, or (config.random_weights) a randomly initialised one."""
  from jhmr.models.score_net import ScoreNet

  if not config.random_weights:
    from jhmr.convert import scorehmr as scorehmr_convert

    return scorehmr_convert.load_checkpoint(_path(config, "checkpoint"))
  net = ScoreNet(cond_dim=cond_dim, hidden=config.random_hidden, num_blocks=config.random_blocks)
  x, t, c = jnp.zeros((1, 144)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, cond_dim))
  return net.init(jax.random.key(config.seed), x, t, c)


def joints44(body_model, j19: np.ndarray, rotmat, betas) -> np.ndarray:
  """ScoreHMR's 44-joint output [B, 44, 3]: OpenPose-25 keypoints, then J19 @ vertices."""
  out = _posed(body_model, jnp.asarray(rotmat), jnp.asarray(betas))
  extra = jnp.einsum("kv,bvd->bkd", jnp.asarray(j19), out.vertices)
  return np.asarray(jnp.concatenate([out.keypoints, extra], axis=1))


@jax.jit
def _posed(body_model, rotmat, betas):
  return body_model(
    betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set="openpose25"
  )


def emdb_models(config, body_model):
  """The EMDB-1 rows' networks: the released ViTPose, HMR 2.0, PARE and ScoreHMR, or (config.
  random_weights) tiny random ones (`image_to_mesh.random_image_models`)."""
  from jhmr.pipelines import image_to_mesh as itm  # noqa: PLC0415 (the three image networks)

  if config.random_weights:
    return itm.random_image_models(itm.TINY_CONFIGS, config.seed, body_model)
  models = itm.load_image_models(
    vitpose=_path(config, "vitpose"), hmr2=pathlib.Path(config.hmr2_checkpoint).expanduser(),
    pare=_path(config, "pare"), pare_stats=_path(config, "stats"),
    score_hmr=_path(config, "checkpoint"), body_model="anny-tiny",
  )  # fmt: skip
  return dataclasses.replace(models, body_model=body_model)  # the program's (joint sets and all)


class _Images:
  def __init__(self, root: pathlib.Path):
    self.root, self.cache = root, {}

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.cache:
      path = self.root / name
      if not path.is_file():
        raise FileNotFoundError(f"{path}: image missing (config.image_dirs)")
      self.cache = {name: crops_lib.read_image(path)}  # consecutive rows share frames
    return self.cache[name]


def _features(eval_set, rows, images: _Images, feature_fn: FeatureFn, stats):
  crops, sizes = [], []
  for i in rows:
    image = images(str(eval_set.imgname[i]))
    crops.append(crops_lib.crop_for_pare(image, eval_set.boxes[i], CROP_SIZE))
    sizes.append((image.shape[1], image.shape[0]))
  feats = np.asarray(feature_fn(np.stack(crops)), np.float32)
  mean, std = stats
  return (feats - mean) / std, np.asarray(sizes, np.float32)


def _batches(eval_set, task: str, batch_size: int):
  if task == "keypoints":
    n = len(eval_set)
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
  return eval_set.groups()


def run_row(key, config, body_model, j19, params, stats, feature_fn) -> dict:
  """One paper row: {'initial': {metric: mm}, 'refined': {...}, 'frames', 'seconds'}."""
  task, set_key, cache_key, image_key = ROW_SPECS[key]
  set_path, cache_path = _path(config, set_key), _path(config, cache_key)
  read = files_lib.read_eval_npz if set_path.suffix == ".npz" else files_lib.read_eval_groups
  eval_set, preds = read(set_path), files_lib.read_hmr2_cache(cache_path)
  files_lib.check_aligned(cache_path, eval_set, preds)
  images = _Images(pathlib.Path(config.image_dirs[image_key]))
  refine_config = refine_config_for(task, config.refine[task])
  joints = ROW_JOINTS[key]
  errors = {"initial": [], "refined": []}
  accel = {"initial": [], "refined": []}
  seconds, frames = 0.0, 0
  batches = _batches(eval_set, task, config.batch_size)[: config.max_batches or None]
  for rows in batches:
    feats, sizes = _features(eval_set, rows, images, feature_fn, stats)
    kp = eval_set.keypoints_2d[rows, : paper.NUM_OPENPOSE]
    obs = Observation.create(
      preds.rotmat[rows],
      preds.betas[rows],
      preds.cam_t[rows],
      kp if task != "multiview" else None,
      image_size=sizes,
      focal_length=FOCAL_LENGTH,
      features=feats,
      group=eval_set.group[rows],
      body_model=body_model,
    )
    start = time.perf_counter()
    result = jax.block_until_ready(refine(params, obs, task=task, config=refine_config))
    seconds += time.perf_counter() - start
    frames += len(rows)
    target = eval_set.keypoints_3d[rows, :, :3]
    for name, rotmat, betas in (
      ("initial", preds.rotmat[rows], preds.betas[rows]),
      ("refined", result.pose, result.betas),
    ):
      pred = joints44(body_model, j19, rotmat, betas)
      errors[name].append(
        {k: np.asarray(v) for k, v in paper.joint_errors(pred, target, joints).items()}
      )
      if task == "video" and len(rows) >= 3:
        accel[name].append(np.asarray(paper.acceleration_error(pred, target, joints)))
  out = {"frames": frames, "seconds": seconds}
  for name in ("initial", "refined"):
    means = {
      m: float(np.mean(np.concatenate([e[m] for e in errors[name]]))) for m in ("mpjpe", "pa_mpjpe")
    }
    if task == "video":
      means["accel"] = float(np.mean(np.concatenate(accel[name]))) if accel[name] else float("nan")
    out[name] = means
  return out


def use_example(config, workdir, body_model) -> None:
  """Writes the self-check's example files (`scorehmr_paper_example`) under workdir/example and
  points `config.data_dir` and `config.image_dirs` at them."""
  from jhmr.pipelines import scorehmr_paper_example  # noqa: PLC0415 (renders: example only)

  if not config.random_weights or config.features != "stand_in":
    raise InputError("config.example needs random_weights=True and features='stand_in'")
  e = config.example
  dirs = scorehmr_paper_example.write_example(
    pathlib.Path(workdir) / "example", body_model, seed=config.seed, people=e.people,
    clips=e.clips, clip_length=e.clip_length, views=e.views,
  )  # fmt: skip
  config.data_dir = str(dirs["data_dir"])
  for name in ("threedpw", "h36m", "mannequin"):
    config.image_dirs[name] = str(dirs[name])


def run(config, workdir, feature_fn: FeatureFn | None = None) -> dict:
  """All configured rows -> workdir/paper_table.{md,csv}, results.json; returns {'rows': [...]}."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  example = config.get("example", None) is not None and config.example.enabled
  body_model = None
  if example:
    body_model = load_body_model(config.body_model, joint_sets=config.joint_sets or None)
    use_example(config, workdir, body_model)
  check_files(config)
  if body_model is None:
    body_model = load_body_model(config.body_model, joint_sets=config.joint_sets or None)
  j19 = files_lib.read_j19_regressor(_path(config, "j19"), body_model.num_vertices)
  from jhmr.models.pare import load_feature_stats

  stats = load_feature_stats(_path(config, "stats"))
  if feature_fn is None:
    feature_fn = (
      pare_feature_fn(_path(config, "pare"))
      if config.features == "pare"
      else stand_in_feature_fn(len(stats.mean), config.seed)
    )
  params = score_params(config, len(stats.mean))
  lines, results, notes = [], {}, []
  image_models = emdb_models(config, body_model) if _emdb_rows(config) else None
  for key in config.rows:
    logging.info("paper row %s", key)
    if key in emdb_lib.EMDB_ROWS:
      res = emdb_lib.run_emdb_row(key, config, body_model, image_models, workdir)
      notes.append(
        f"{key}: jhmr's EMDB-1 protocol (jhmr.pipelines.scorehmr_paper_emdb), not the paper's "
        f"unreleased code; ground truth posed with {', '.join(res['gt_models'])}."
      )
    else:
      res = run_row(key, config, body_model, j19, params, stats, feature_fn)
    results[key] = res
    lines += paper.table_rows(key, res["initial"], res["refined"], res["frames"], res["seconds"])
  if example:
    notes.append(
      "EXAMPLE FILES: synthetic people of the free body written in the released layouts "
      "(jhmr.pipelines.scorehmr_paper_example), not ScoreHMR's data: a self-check of the "
      "protocol, not the paper's table."
    )
  if config.random_weights:
    notes.append("RANDOM WEIGHTS: these numbers measure nothing (config.random_weights).")
  (workdir / "paper_table.md").write_text(
    "# ScoreHMR paper protocol\n\nNot claimed until measured on the released files.\n\n"
    + paper.format_markdown(lines)
    + "".join(f"\n- {n}" for n in notes)
    + ("\n" if notes else "")
  )
  with open(workdir / "paper_table.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=paper.TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(lines)
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  return {"rows": lines, "results": results}


STAGES: dict[str, Stage] = {"all": Stage(run)}
