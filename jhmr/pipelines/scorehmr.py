"""The ScoreHMR program: train an estimator and the score model, refine, compare, report.

Stages (`config.stage`, dispatched by `jhmr.launch` through `STAGES`):
  train     the initial estimator and the score model (workdir/regressor, workdir/score_model);
  evaluate  refinement of the test sets with the trained models (refused, naming what is
            missing, when the models are not in the workdir);
  all       train, then evaluate (the default).

Data (`build_sets`): every set is a `jhmr.data.example.PersonExample` source. Synthetic people come
from the one generator `jhmr.data.synthesis` (`config.data.source` = demo_mix | uniform | cmu);
real datasets (threedpw | emdb | h36m) from `jhmr.pipelines.real_data`.

Initial estimates (`config.estimate`):
  regressor  an HMR regressor (`jhmr.models.hmr`) trained on the crops with the training
             augmentations (`jhmr.data.augment`); the score model is conditioned on its
             standardised image features (the main job);
  corrupted  the ground truth corrupted like a regressor (`jhmr.data.observations.corrupt_pose`);
             the score model is an unconditional pose prior trained on camera-frame poses of the
             training motion (the `cmu_prior` benchmark: isolates the prior from the regressor).

Evaluation: keypoint fitting, multi-view (views of a person share the body pose) and video
(keypoints + temporal smoothness), each against the initial estimate and the optimisation
baseline for that task (`jhmr.guidance.smplify.fit`); workdir/results.md + results.csv, plots
(PNG) and meshes (OBJ). Randomness is drawn by name from one `jhmr.keys.KeySeq(config.seed)`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import augment, observations, synthesis
from jhmr.data import example as example_lib
from jhmr.data.example import BatchSource, PersonExample
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.eval import metrics
from jhmr.geometry import cameras, rotations
from jhmr.guidance import smplify
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import RefineConfig, refine, task_config
from jhmr.keys import KeySeq
from jhmr.models.hmr import HMR
from jhmr.models.score_net import ScoreNet
from jhmr.pipelines import scorehmr_report
from jhmr.pipelines.stages import Stage
from jhmr.train import trainer
from jhmr.train.task import ArraySource
from jhmr.train.tasks import make_hmr_task, make_score_task, predict

SYNTHETIC_SOURCES = synthesis.POSE_KINDS[:2] + ("cmu",)
REAL_SOURCES = ("threedpw", "emdb", "h36m")
ESTIMATES = ("regressor", "corrupted")
TASK_TITLES = {
  "keypoints": "keypoint fitting",
  "multiview": "multi-view",
  "video": "video",
}


@dataclasses.dataclass(frozen=True)
class ScoreHMRSets:
  """The program's data. Every set is a random-access source of unbatched `PersonExample`s
  (`len`, `[i]`); multi-view and video rows of one `group` are consecutive.

  Attributes:
    train: what the regressor and the conditional score model train on.
    keypoints, multiview, video: the test sets (multiview / video None when a dataset lacks them).
    prior_poses: `[N, 144]` 6D camera-frame poses for an unconditional prior (`corrupted`
      estimates), or None.
  """

  train: object
  keypoints: object
  multiview: object = None
  video: object = None
  prior_poses: np.ndarray | None = None

  def tasks(self) -> dict:
    """{task name: source} of the test sets that exist."""
    names = ("keypoints", "multiview", "video")
    return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclasses.dataclass(frozen=True)
class TrainedModels:
  """What evaluation needs. `hmr` / `hmr_variables` / `feature_stats` are None for `corrupted`
  estimates; `feature_stats` = (mean [C], std [C]) standardise the regressor's features."""

  body_model: object
  score_params: dict
  hmr: HMR | None = None
  hmr_variables: dict | None = None
  feature_stats: tuple[np.ndarray, np.ndarray] | None = None

  @property
  def conditional(self) -> bool:
    return self.feature_stats is not None


def _trainer_config(config, section) -> ml_collections.ConfigDict:
  tc = ml_collections.ConfigDict(section.trainer.to_dict())
  tc.seed = config.seed
  return tc


def scene_spec(config) -> synthesis.SceneSpec:
  d = config.data
  return synthesis.SceneSpec(crop_size=d.image_size, focal_length=d.focal_length)


def _pose_source(config, body_model, split: str) -> synthesis.PoseSource:
  d = config.data
  if d.source != "cmu":
    return synthesis.PoseSource(d.source)
  from jhmr.data import mocap  # noqa: PLC0415 (reads BVH files: only for the cmu source)

  train_subjects, test_subjects = mocap.cmu_subject_split(d.cmu_root)
  subjects = (train_subjects if split == "train" else test_subjects)[: d.cmu_subjects]
  motions = mocap.load_cmu(d.cmu_root, subjects, body_model, fps=d.cmu_fps)
  return synthesis.PoseSource.from_motions(motions.values())


def build_sets(config, body_model, keys: KeySeq) -> ScoreHMRSets:
  """The train and test sets of `config.data.source` (module docstring)."""
  d = config.data
  if d.source in REAL_SOURCES:
    from jhmr.pipelines import real_data  # noqa: PLC0415 (TFDS builders: real sources only)

    return real_data.load_sets(config, body_model, keys.child("real"))
  if d.source not in SYNTHETIC_SOURCES:
    valid = ", ".join(SYNTHETIC_SOURCES + REAL_SOURCES)
    raise ValueError(f"unknown data.source {d.source!r}; valid: {valid}")
  spec = scene_spec(config)
  train_source = _pose_source(config, body_model, "train")
  test_source = _pose_source(config, body_model, "test")
  sets = dict(
    keypoints=synthesis.single_view_set(
      keys.child("keypoints"), d.num_test, body_model, test_source, spec
    ),
    multiview=synthesis.multiview_set(
      keys.child("multiview"), d.num_multiview, d.num_views, body_model, test_source, spec
    ),
    video=synthesis.video_set(
      keys.child("video"), d.num_sequences, d.sequence_length, body_model, test_source, spec
    ),
  )
  if config.estimate == "regressor":
    train = synthesis.single_view_set(
      keys.child("train"), d.num_train, body_model, train_source, spec
    )
    return ScoreHMRSets(train=BatchSource(train), **{k: BatchSource(v) for k, v in sets.items()})
  # An unconditional prior needs poses only: many camera-frame poses, nothing rendered.
  poses_keys = keys.child("prior")
  body_pose = train_source.sample(poses_keys("poses"), d.num_prior, body_model, spec)
  root, _ = synthesis.sample_views(poses_keys.child("views"), d.num_prior, spec)
  rotmat = jnp.concatenate(
    [jnp.asarray(root)[:, None], rotations.axis_angle_to_matrix(body_pose)], 1
  )
  prior = np.asarray(rotations.matrix_to_rot6d(rotmat)).reshape(d.num_prior, -1)
  return ScoreHMRSets(
    train=None, prior_poses=prior.astype(np.float32), **{k: BatchSource(v) for k, v in sets.items()}
  )


def group_ids(source) -> np.ndarray:
  """`[N]` group of every example, without decoding images where the source can tell."""
  ids = source.group_ids() if hasattr(source, "group_ids") else None
  if ids is not None:
    return np.asarray(ids)
  if hasattr(source, "batch"):
    return np.asarray(source.batch.group)
  return np.asarray([int(source[i].group) for i in range(len(source))])


def group_chunks(source, max_rows: int) -> Iterator[PersonExample]:
  """Batches of whole groups (consecutive rows with one `group`), at most `max_rows` rows each
  unless a single group is larger."""
  n = len(source)
  groups = group_ids(source)
  starts = list(np.flatnonzero(np.diff(groups)) + 1) + [n]
  begin = 0
  while begin < n:
    stop = next(s for s in starts if s > begin)
    for s in starts:
      if stop < s <= begin + max_rows:
        stop = s
    yield example_lib.read_rows(source, begin, stop)
    begin = stop


def _hmr(config, body_model) -> HMR:
  r = config.regressor
  return HMR(
    depth=r.depth, width=r.width, num_betas=body_model.num_betas, hidden=r.hidden,
    dropout=r.dropout,
  )  # fmt: skip


def _score_net(config, feature_dim: int) -> ScoreNet:
  s = config.score
  return ScoreNet(cond_dim=feature_dim, hidden=s.hidden, num_blocks=s.num_blocks)


def train_transforms(config, body_model) -> tuple:
  """The regressor's training augmentations (`config.augment`, `jhmr.data.augment`)."""
  return (augment.default_train_transforms(body_model, **config.augment),)


def _score_training_pairs(hmr, variables, source, batch_size: int = 256):
  """(regressor features [N, C], true 6D poses [N, 144]) of a source, read once in chunks."""
  features, poses = [], []
  for start in range(0, len(source), batch_size):
    rows = example_lib.read_rows(source, start, min(start + batch_size, len(source)))
    features.append(np.asarray(predict(hmr, variables, rows.image, batch_size)["features"]))
    poses.append(synthesis.pose_6d(rows))
  return np.concatenate(features), np.concatenate(poses)


def train_models(config, workdir, sets: ScoreHMRSets, body_model) -> TrainedModels:
  """Trains (or restores: training resumes from the workdir's checkpoints) the estimator and the
  score model."""
  workdir = pathlib.Path(workdir)
  alphas = make_alphas_cumprod("cosine", 1000)
  if config.estimate == "corrupted":
    net = _score_net(config, 0)
    task = make_score_task(net, ArraySource({"pose6d": sets.prior_poses}), alphas)
    state = trainer.train(_trainer_config(config, config.score), workdir / "score_model", task)
    return TrainedModels(body_model=body_model, score_params={"params": state.ema_params})
  hmr = _hmr(config, body_model)
  task = make_hmr_task(hmr, body_model, sets.train, transforms=train_transforms(config, body_model))
  state = trainer.train(_trainer_config(config, config.regressor), workdir / "regressor", task)
  hmr_vars = {"params": state.ema_params, **state.model_state}
  features, pose6d = _score_training_pairs(hmr, hmr_vars, sets.train)
  stats = (features.mean(0), features.std(0) + 1e-6)
  net = _score_net(config, features.shape[-1])
  source = ArraySource(
    {"pose6d": pose6d, "features": ((features - stats[0]) / stats[1]).astype(np.float32)}
  )
  score_task = make_score_task(net, source, alphas)
  score_state = trainer.train(
    _trainer_config(config, config.score), workdir / "score_model", score_task
  )
  return TrainedModels(
    body_model=body_model,
    score_params={"params": score_state.ema_params},
    hmr=hmr,
    hmr_variables=hmr_vars,
    feature_stats=stats,
  )


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Initial estimates of a batch: rotmat [B, 24, 3, 3], betas [B, NB], cam_t [B, 3] (crop
  camera frame), features [B, C] standardised or None."""

  rotmat: np.ndarray
  betas: np.ndarray
  cam_t: np.ndarray
  features: np.ndarray | None


def crop_camera(batch: PersonExample) -> tuple[np.ndarray, np.ndarray]:
  """(focal [B, 2], principal point [B, 2]) of the crop camera (crops without rotation)."""
  k = batch.crop_projection
  return k[:, [0, 1], [0, 1]].astype(np.float32), k[:, :2, 2].astype(np.float32)


def estimate(models: TrainedModels, batch: PersonExample, key=None, level: float = 1.0) -> Estimate:
  """The initial estimate of a batch: the regressor's, or (no regressor) the ground truth
  corrupted with `key` (`observations.corrupt_pose`)."""
  if models.hmr is None:
    truth = {
      "global_orient": jnp.asarray(batch.global_orient),
      "body_pose": jnp.asarray(batch.body_pose),
      "betas": jnp.asarray(batch.betas),
      "transl": jnp.asarray(batch.joints_3d[:, 0]),  # corrupt the pelvis position
    }
    bad = observations.corrupt_pose(key, truth, level)
    pose = jnp.concatenate([bad["global_orient"][:, None], bad["body_pose"]], 1)
    cam_t = np.asarray(batch.cam_t) + np.asarray(bad["transl"] - truth["transl"])
    return Estimate(
      np.asarray(rotations.axis_angle_to_matrix(pose)), np.asarray(bad["betas"]), cam_t, None
    )
  est = predict(models.hmr, models.hmr_variables, batch.image)
  focal, _ = crop_camera(batch)
  size = batch.image.shape[-2]
  cam_t = cameras.weak_perspective_to_translation(jnp.asarray(est["cam"]), focal[:, 0], size)
  mean, std = models.feature_stats
  return Estimate(
    np.asarray(est["rotmat"]),
    np.asarray(est["betas"]),
    np.asarray(cam_t),
    (np.asarray(est["features"]) - mean) / std,
  )


def observation(models, batch: PersonExample, est: Estimate, *, keypoints=True) -> Observation:
  """What `refine` / the baseline fit for a batch (keypoints in crop pixels)."""
  focal, center = crop_camera(batch)
  kp = batch.keypoints_2d["openpose25"]
  size = batch.image.shape[-2]
  return Observation.create(
    est.rotmat,
    est.betas,
    est.cam_t,
    kp[..., :2] if keypoints else None,
    kp[..., 2] if keypoints else None,
    image_size=(size, size),
    focal_length=focal,
    camera_center=center,
    features=est.features if models.conditional else None,
    group=batch.group,
    body_model=models.body_model,
  )


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


def errors(body_model, rotmat, betas, batch: PersonExample) -> dict:
  """Root-centred errors (mm) of the 24 SMPL joints against the batch's ground truth."""
  target = jnp.asarray(batch.joints_3d - batch.joints_3d[:, :1], jnp.float32)
  out = _joint_errors(body_model, jnp.asarray(rotmat), jnp.asarray(betas), target)
  return {k: np.asarray(v) for k, v in out.items()}


def _video_accel(err: dict, batch: PersonExample) -> np.ndarray:
  """Acceleration error (mm/frame^2) per clip of equal length (`group`)."""
  groups = np.asarray(batch.group)
  s = len(np.unique(groups))
  t = len(groups) // s
  pred = err["joints"].reshape(s, t, 24, 3)
  target = np.asarray(batch.joints_3d - batch.joints_3d[:, :1]).reshape(s, t, 24, 3)
  return 1000 * np.asarray(metrics.acceleration_error(pred, target))


_LOSS_WEIGHTS = ("keypoint_weight", "multiview_weight", "temporal_weight")


def refine_config_for(task: str, overrides) -> RefineConfig:
  """The official settings of `task` with `overrides` (RefineConfig fields, plus the guidance
  weights `keypoint_weight` / `multiview_weight` / `temporal_weight`)."""
  overrides = dict(overrides)
  base = task_config(task)
  weights = {k: overrides.pop(k) for k in _LOSS_WEIGHTS if k in overrides}
  if weights:
    overrides["loss"] = dataclasses.replace(base.loss, **weights)
  return base.replace(**overrides)


def evaluate_task(config, models: TrainedModels, task: str, source, keys: KeySeq) -> dict:
  """Initial / baseline / ScoreHMR errors on one test set, in group-aligned chunks.

  Returns {method: {metric: per-sample array}} plus 'first' (the first chunk's batch, estimate
  and ScoreHMR result, for the report)."""
  refine_config = refine_config_for(task, config.refine[task])
  baseline_config = smplify.SmplifyConfig(**config.baseline)
  methods = {"initial": [], "baseline": [], "ScoreHMR": []}
  first = None
  for i, batch in enumerate(group_chunks(source, config.eval_batch)):
    est = estimate(models, batch, keys(f"estimate/{i}"))
    obs_fit = observation(models, batch, est)
    obs = (
      obs_fit
      if refine_config.loss.uses_keypoints
      else observation(models, batch, est, keypoints=False)
    )
    result = refine(models.score_params, obs, task=task, config=refine_config)
    base = smplify.fit(obs_fit, task=task, config=baseline_config)
    for name, rotmat, betas in (
      ("initial", est.rotmat, est.betas),
      ("baseline", base.pose, base.betas),
      ("ScoreHMR", result.pose, result.betas),
    ):
      err = errors(models.body_model, rotmat, betas, batch)
      if task == "video":
        err["accel"] = _video_accel(err, batch)
      methods[name].append(err)
    if first is None:
      first = {"batch": batch, "estimate": est, "result": result}
  out = {m: jax.tree.map(lambda *xs: np.concatenate(xs), *parts) for m, parts in methods.items()}
  return dict(out, first=first)


def evaluate(config, workdir, models: TrainedModels, sets: ScoreHMRSets, keys: KeySeq) -> dict:
  """Refines every test set and writes the report; returns {'rows': [...]} (results.csv)."""
  workdir = pathlib.Path(workdir)
  initial_name = "regressor" if models.hmr is not None else "initial estimate"
  rows, extras = [], {}
  for task, source in sets.tasks().items():
    if task not in config.eval_tasks:
      continue
    logging.info("evaluating %s on %d examples", task, len(source))
    res = evaluate_task(config, models, task, source, keys.child(task))
    title = TASK_TITLES[task]
    if task == "multiview":
      title += f" ({np.bincount(group_ids(source)).max()} views)"
    for method, label in (
      ("initial", initial_name),
      ("baseline", "optimisation baseline"),
      ("ScoreHMR", "ScoreHMR"),
    ):
      rows.append(scorehmr_report.row(title, label, res[method]))
    extras[task] = res
  scorehmr_report.write(workdir, rows, extras, models, initial_name)
  return {"rows": rows}


def trained_model_dirs(config) -> tuple[str, ...]:
  """The workdir checkpoints that stage `evaluate` needs."""
  parts = ("score_model",) + (("regressor",) if config.estimate == "regressor" else ())
  return tuple(f"{p}/checkpoints" for p in parts)


def _setup(config):
  if config.estimate not in ESTIMATES:
    raise ValueError(f"unknown config.estimate {config.estimate!r}; valid: {', '.join(ESTIMATES)}")
  body_model = load_body_model(config.body_model)
  keys = KeySeq(config.seed)
  sets = build_sets(config, body_model, keys.child("data"))
  return body_model, keys, sets


def train(config, workdir) -> TrainedModels:
  """Stage `train`: the estimator and the score model."""
  body_model, _, sets = _setup(config)
  return train_models(config, workdir, sets, body_model)


def run(config, workdir) -> dict:
  """Stages `all` and `evaluate` (finished trainings are restored, not repeated): the report."""
  logging.info("ScoreHMR program in %s", workdir)
  body_model, keys, sets = _setup(config)
  models = train_models(config, workdir, sets, body_model)
  return evaluate(config, workdir, models, sets, keys.child("evaluate"))


STAGES = {
  "all": Stage(run),
  "train": Stage(train),
  "evaluate": Stage(run, needs=trained_model_dirs, made_by="train"),
}
