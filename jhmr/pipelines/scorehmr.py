"""The ScoreHMR main job: train the regressor, train the score model, refine, report.

`run(config, workdir)` = `train_models` then `evaluate`:
1. synthetic people (`jhmr.pipelines.people`): procedural or CMU poses, rendered crops, noisy
   BODY_25 detections; train / keypoint-fitting / multi-view / video sets, all from `config.seed`;
2. the HMR regressor (`jhmr.models.hmr`) trained on the crops (`jhmr.train`, workdir/regressor);
3. the image-conditioned score model (`jhmr.models.score_net`) trained on the true poses with the
   regressor's standardised features of the same crops (workdir/score_model);
4. ScoreHMR refinement (`jhmr.guidance.refine`) of the regressor's estimates for keypoint fitting,
   multi-view (4 views, multi-view guidance) and video (keypoints + temporal guidance), against the
   regressor and the optimisation baseline (`jhmr.guidance.smplify`);
5. workdir/results.md + results.csv, plots (PNG) and refined meshes (OBJ).
Training resumes from (or, when finished, reuses) the checkpoints in the workdir.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.eval import metrics
from jhmr.geometry import cameras, rotations
from jhmr.guidance import smplify
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import refine, task_config
from jhmr.models.hmr import HMR
from jhmr.models.score_net import ScoreNet
from jhmr.pipelines import people, scorehmr_report
from jhmr.train import trainer
from jhmr.train.task import ArraySource
from jhmr.train.tasks import make_hmr_task, make_score_task, predict

SYNTHETIC_SOURCES = ("procedural", "cmu")


def _trainer_config(config, section) -> ml_collections.ConfigDict:
  tc = ml_collections.ConfigDict(section.trainer.to_dict())
  tc.seed = config.seed
  return tc


def scene_spec(config) -> people.SceneSpec:
  d = config.data
  return people.SceneSpec(image_size=d.image_size, focal_length=d.focal_length)


def _poses(key, n, body_model, spec, config, split):
  if config.data.source == "procedural":
    return people.procedural_poses(key, n, body_model, spec)
  from jhmr.data import mocap

  train_subjects, test_subjects = mocap.cmu_subject_split(config.data.cmu_root)
  subjects = (train_subjects if split == "train" else test_subjects)[: config.data.cmu_subjects]
  motions = mocap.load_cmu(config.data.cmu_root, subjects, body_model)
  body_pose = np.concatenate([m.body_pose for m in motions.values()])
  return people.from_motion(key, body_pose, n, body_model, spec)


def build_data(config, body_model) -> dict:
  """The train / keypoints / multiview / video sets (dicts of numpy arrays; see `people`).

  Real sources (threedpw, emdb, h36m) are read by `jhmr.pipelines.real_data.load_sets`, which
  leaves out the sets a dataset cannot provide (`evaluate` skips them)."""
  d = config.data
  if d.source not in SYNTHETIC_SOURCES:
    from jhmr.pipelines import real_data  # reads TFDS builders: only for real sources

    return real_data.load_sets(config, body_model)
  spec = scene_spec(config)
  keys = jax.random.split(jax.random.PRNGKey(config.seed + 1000), 16)
  sets = {}
  for i, (name, n) in enumerate((("train", d.num_train), ("keypoints", d.num_test))):
    p = _poses(keys[3 * i], n, body_model, spec, config, "train" if name == "train" else "test")
    p.update(people.random_views(keys[3 * i + 1], n, spec))
    p = people.render(keys[3 * i + 2], body_model, people.pose_to_matrices(p), spec)
    sets[name] = people.detect(keys[8 + i], p, spec)
  # Multi-view: each person seen from num_views yaw angles spread over the training range.
  m, v = d.num_multiview, d.num_views
  p = _poses(keys[6], m, body_model, spec, config, "test")
  p = {k: np.repeat(np.asarray(x), v, axis=0) for k, x in p.items()}
  yaw = np.tile(np.linspace(-0.75, 0.75, v) * np.deg2rad(spec.yaw_deg), m)
  p.update(people.random_views(keys[7], m * v, spec, yaw=jnp.asarray(yaw, jnp.float32)))
  p = people.render(keys[10], body_model, people.pose_to_matrices(p), spec)
  sets["multiview"] = dict(people.detect(keys[11], p, spec), group=np.repeat(np.arange(m), v))
  # Video: each sequence interpolates between two poses with a slowly turning body.
  s, t = d.num_sequences, d.sequence_length
  ends = _poses(keys[12], 2 * s, body_model, spec, config, "test")
  w = np.linspace(0.0, 1.0, t)[None, :, None, None]
  pose = (1 - w) * np.asarray(ends["body_pose"][:s])[:, None] + w * np.asarray(
    ends["body_pose"][s:]
  )[:, None]
  p = {"body_pose": pose.reshape(s * t, 23, 3), "betas": np.repeat(ends["betas"][:s], t, axis=0)}
  yaw0 = np.asarray(jax.random.uniform(keys[13], (s, 1), minval=-0.5, maxval=0.5))
  yaw = (yaw0 + np.linspace(0.0, 0.5, t)[None]).reshape(-1) * np.deg2rad(spec.yaw_deg)
  pitch = np.repeat(np.asarray(jax.random.uniform(keys[13], (s,), minval=-0.2, maxval=0.2)), t)
  views = people.random_views(keys[14], s * t, spec, yaw=jnp.asarray(yaw, jnp.float32), pitch=pitch)
  views["cam"] = jnp.repeat(views["cam"][::t], t, axis=0)  # a steady camera per sequence
  p.update(views)
  p = people.render(keys[15], body_model, people.pose_to_matrices(p), spec)
  sets["video"] = dict(
    people.detect(keys[9], p, spec, temporal=False), group=np.repeat(np.arange(s), t)
  )
  return sets


def _hmr(config, body_model) -> HMR:
  r = config.regressor
  return HMR(
    depth=r.depth,
    width=r.width,
    num_betas=body_model.num_betas,
    hidden=r.hidden,
    dropout=r.dropout,
  )


def _score_net(config, feature_dim: int) -> ScoreNet:
  s = config.score
  return ScoreNet(
    cond_dim=feature_dim if s.conditional else 0, hidden=s.hidden, num_blocks=s.num_blocks
  )


def _hmr_examples(data, spec) -> ArraySource:
  half = spec.image_size / 2
  return ArraySource(
    {
      "image": people.normalise_images(data["image"]),
      "rotmat": np.asarray(data["rotmat"], np.float32),
      "betas": np.asarray(data["betas"], np.float32),
      "joints3d": np.asarray(data["joints3d"], np.float32),
      "keypoints2d": ((data["keypoints_2d"] - half) / half).astype(np.float32),
      "keypoint_conf": np.asarray(data["confidence"], np.float32),
    }
  )


def train_models(config, workdir, data=None, body_model=None) -> dict:
  """Trains (or restores) the regressor and the score model; returns what evaluation needs."""
  workdir = pathlib.Path(workdir)
  body_model = body_model or load_body_model(config.body_model)
  data = data or build_data(config, body_model)
  spec = scene_spec(config)
  hmr = _hmr(config, body_model)
  task = make_hmr_task(hmr, body_model, _hmr_examples(data["train"], spec))
  state = trainer.train(_trainer_config(config, config.regressor), workdir / "regressor", task)
  hmr_vars = {"params": state.params, **state.model_state}
  train_est = predict(hmr, hmr_vars, people.normalise_images(data["train"]["image"]))
  feats = np.asarray(train_est["features"])
  stats = {"mean": feats.mean(0), "std": feats.std(0) + 1e-6}
  net = _score_net(config, feats.shape[-1])
  source = ArraySource(
    {
      "pose6d": np.asarray(rotations.matrix_to_rot6d(data["train"]["rotmat"])).reshape(-1, 144),
      "features": ((feats - stats["mean"]) / stats["std"]).astype(np.float32),
    }
  )
  alphas = make_alphas_cumprod("cosine", 1000)
  score_task = make_score_task(net, source, alphas)
  score_state = trainer.train(
    _trainer_config(config, config.score), workdir / "score_model", score_task
  )
  return {
    "body_model": body_model,
    "data": data,
    "hmr": hmr,
    "hmr_vars": hmr_vars,
    "feature_stats": stats,
    "score_params": {"params": score_state.ema_params},
  }


def _estimate(models, split, spec):
  est = predict(models["hmr"], models["hmr_vars"], people.normalise_images(split["image"]))
  stats = models["feature_stats"]
  return {
    "rotmat": np.asarray(est["rotmat"]),
    "betas": np.asarray(est["betas"]),
    "cam_t": np.asarray(
      cameras.weak_perspective_to_translation(est["cam"], spec.focal_length, spec.image_size)
    ),
    "features": (np.asarray(est["features"]) - stats["mean"]) / stats["std"],
  }


@jax.jit
def _joint_errors(body_model, rotmat, betas, target):
  out = body_model.joints_only(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat")
  pred = out.joints - out.joints[:, :1]
  return {
    "mpjpe": 1000 * metrics.mpjpe(pred, target),
    "pa_mpjpe": 1000 * metrics.pa_mpjpe(pred, target),
    "per_joint": 1000 * jnp.linalg.norm(pred - target, axis=-1),
    "joints": pred,
  }


def _errors(body_model, rotmat, betas, split) -> dict:
  """Root-centred errors (mm) of the SMPL-24 joints against the split's ground truth."""
  target = jnp.asarray(split["joints3d"], jnp.float32)
  out = _joint_errors(body_model, jnp.asarray(rotmat), jnp.asarray(betas), target)
  return {k: np.asarray(v) for k, v in out.items()}


def _observation(models, split, est, spec, *, keypoints=True) -> Observation:
  return Observation.create(
    est["rotmat"],
    est["betas"],
    est["cam_t"],
    split["keypoints_2d"] if keypoints else None,
    split["confidence"] if keypoints else None,
    image_size=(spec.image_size, spec.image_size),
    focal_length=spec.focal_length,
    features=est["features"] if _is_conditional(models) else None,
    group=split.get("group"),
    body_model=models["body_model"],
  )


def _refine(models, obs, task, overrides):
  config = task_config(task).replace(**dict(overrides))
  return refine(models["score_params"], obs, task=task, config=config)


def _is_conditional(models) -> bool:
  p = models["score_params"]["params"]
  return p["blocks_0"]["block"]["linear_layer1"]["kernel"].shape[0] > 144


def evaluate(config, workdir, models=None) -> dict:
  """Refines the test sets with ScoreHMR and writes the report; returns the results rows."""
  workdir = pathlib.Path(workdir)
  models = models or train_models(config, workdir)
  body_model, data, spec = models["body_model"], models["data"], scene_spec(config)
  rows, extras = [], {}

  # Keypoint fitting.
  split = data["keypoints"]
  est = _estimate(models, split, spec)
  initial = _errors(body_model, est["rotmat"], est["betas"], split)
  obs = _observation(models, split, est, spec)
  result = _refine(models, obs, "keypoints", config.refine.keypoints)
  refined = _errors(body_model, result.pose, result.betas, split)
  rows.append(scorehmr_report.row("keypoint fitting", "regressor", initial))
  base = smplify.fit(obs, config=smplify.SmplifyConfig(**config.baseline))
  base_errors = _errors(body_model, base.pose, base.betas, split)
  rows.append(scorehmr_report.row("keypoint fitting", "optimisation baseline", base_errors))
  rows.append(scorehmr_report.row("keypoint fitting", "ScoreHMR", refined))
  extras["keypoints"] = {"initial": initial, "refined": refined, "result": result, "est": est}

  # Multi-view and video; real datasets may lack either set (jhmr.pipelines.real_data).
  if "multiview" in data:
    _evaluate_multiview(config, models, data["multiview"], spec, rows)
  if "video" in data:
    _evaluate_video(config, models, data["video"], spec, rows)
  scorehmr_report.write(workdir, rows, extras, models, spec)
  return {"rows": rows}


def _evaluate_multiview(config, models, split, spec, rows):
  """Multi-view consistency guidance over the views of each person (split['group'])."""
  body_model = models["body_model"]
  est = _estimate(models, split, spec)
  initial = _errors(body_model, est["rotmat"], est["betas"], split)
  obs = _observation(models, split, est, spec, keypoints=False)
  result = _refine(models, obs, "multiview", config.refine.multiview)
  refined = _errors(body_model, result.pose, result.betas, split)
  rows.append(scorehmr_report.row("multi-view", "regressor", initial))
  rows.append(scorehmr_report.row("multi-view", "ScoreHMR", refined))


def _evaluate_video(config, models, split, spec, rows):
  """Keypoints + temporal smoothness over each sequence (equal-length groups)."""
  body_model = models["body_model"]
  est = _estimate(models, split, spec)
  result = _refine(models, _observation(models, split, est, spec), "video", config.refine.video)
  s = len(np.unique(split["group"]))
  t = len(split["group"]) // s
  for method, rotmat, betas in (
    ("regressor", est["rotmat"], est["betas"]),
    ("ScoreHMR", result.pose, result.betas),
  ):
    err = _errors(body_model, rotmat, betas, split)
    pred = err["joints"].reshape(s, t, 24, 3)
    target = np.asarray(split["joints3d"]).reshape(s, t, 24, 3)
    err["accel"] = 1000 * np.asarray(metrics.acceleration_error(pred, target))
    rows.append(scorehmr_report.row("video", method, err))


def run(config, workdir) -> dict:
  """The whole job (module docstring); returns {'rows': [...]} as written to results.csv."""
  logging.info("ScoreHMR job in %s", workdir)
  return evaluate(config, workdir, train_models(config, workdir))
