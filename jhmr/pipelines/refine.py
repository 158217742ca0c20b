"""The refine program: ScoreHMR on the user's video or images, given keypoints and tracks.

Inputs (`config.inputs`; a comma-separated list in each field gives one camera per entry, with
frames synchronised, for multi-view guidance):
  tracks     initial estimates and track ids: a PHALP / 4D-Humans pickle (.pkl), ScoreHMR's
             `track_preds/<seq>` folder, WHAM's `wham_output.pkl` or GVHMR's `hmr4d_results.pt`
             (`tracks_format`: auto | phalp | scorehmr | wham | gvhmr; auto decides by name).
  keypoints  2D evidence: an OpenPose JSON folder (`*_keypoints.json`, BODY_25 or COCO-18) or a
             COCO keypoint-results JSON (`image_id` = frame index); each detection is matched to
             the track whose box it overlaps most (IoU >= `min_iou`, one to one per frame). ''
             keeps the keypoints in the tracks file (PHALP `extra_data`, ScoreHMR's JSON).
  video      the frames, for overlays: a video file or a folder of images ('' = grey frames).
  All empty (the default): `jhmr.pipelines.refine_example` generates a short clip of the free
  body in motion into workdir/example, with the files a user would bring (MP4, OpenPose JSON, a
  PHALP-layout pickle), and those files are the inputs.
Tracks are handled as ScoreHMR's video demo does (`config.tracks`: minimum length, confidence
threshold, shot splitting, gap filling by SLERP / linear interpolation).

Score model (`config.score_model`, read as `config.score_model_format`):
  jhmr      (the default) a trained jhmr score model's folder, e.g. the `score_model` folder of a
            `configs/scorehmr.py:cmu_prior` run (an unconditional motion-capture prior, the one
            to use on real video); '' trains a prior on the shipped demo poses into
            workdir/score_model (`config.prior`; enough for the example clip, not for real video).
  official  ScoreHMR's released `model-100.pt` (`jhmr.convert.scorehmr`), conditioned on PARE
            pose features.
A conditional score model needs `config.features` = dict(kind='pare', pare_checkpoint=PARE's
`pare_checkpoint.ckpt`, pare_stats=`pare_feat_stats.npz`) and the video (`config.inputs.video`):
each tracklet frame's box (interpolated on filled gaps) is cropped as ScoreHMR's video demo does
(the square of side max(w, h) on the box, 224 x 224, no padding), PARE runs on the crops in
batches (`jhmr.pipelines.image_to_mesh.run_pare`, compiled once) and its pose features,
standardised with the statistics, condition every row. A setting that is missing or does not
fit the score model is an InputError naming it.

Guidance (`config.task`): video (keypoints + temporal smoothness per tracklet, the default),
keypoints (every frame alone), multiview (the same track id at the same frame in several cameras
shares its body pose).

Outputs (per camera; in `workdir/view<k>/` when there are several): results.npz + results.json
(`jhmr.io.results`, with the guidance iterations), overlay.mp4 (input | initial | ScoreHMR),
overlay_<frame>.png, meshes/track<id>_<frame>.obj, track<id>.glb and track<id>.bvh (camera frame,
one per tracklet), summary.md (keypoint error before / after; errors against the truth for the
example). `python -m jhmr.viewer workdir/results.npz` shows them in a browser.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import synthesis
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.errors import InputError
from jhmr.geometry import cameras, rotations
from jhmr.guidance.losses import rot6d_pose
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import RefineResult, net_from_params, refine
from jhmr.io import results as results_lib
from jhmr.keys import KeySeq
from jhmr.models import pare as pare_lib
from jhmr.models.score_net import ScoreNet
from jhmr.pipelines import image_to_mesh, refine_outputs
from jhmr.pipelines.refine_inputs import JOINT_SET, View, load_view, split_list, view_inputs
from jhmr.pipelines.scorehmr import refine_config_for
from jhmr.pipelines.stages import Stage
from jhmr.train import checkpoint, trainer
from jhmr.train.task import ArraySource
from jhmr.train.tasks import make_score_task

TASKS = ("video", "keypoints", "multiview")
SCORE_FORMATS = ("jhmr", "official")
FEATURE_KINDS = ("none", "pare")


@dataclasses.dataclass(frozen=True)
class Rows:
  """The refined rows (one track at one frame of one camera), in Observation order: [R] arrays
  `view`, `track_id`, `frame`, `tracklet` (global tracklet index), `observed` (False: a filled
  gap)."""

  view: np.ndarray
  track_id: np.ndarray
  frame: np.ndarray
  tracklet: np.ndarray
  observed: np.ndarray


# -- refinement ---------------------------------------------------------------------------------


def _parts(views: list[View]) -> list[tuple[int, View, object, int]]:
  """(view index, view, tracklet, global tracklet index) in row order."""
  parts = []
  for v, view in enumerate(views):
    for tr in view.tracklets:
      parts.append((v, view, tr, len(parts)))
  return parts


def row_boxes(views: list[View]) -> np.ndarray:
  """The track box (x1, y1, x2, y2) px [R, 4] of every row, in Observation order (filled gaps:
  the interpolated box)."""
  return np.concatenate([np.asarray(tr.boxes, np.float64) for _, _, tr, _ in _parts(views)])


def rows_and_observation(
  views: list[View], task: str, body_model, features: np.ndarray | None = None
) -> tuple[Rows, Observation]:
  """Every tracklet frame of every camera as one Observation (groups per `task`); `features`
  [R, C] (rows in this order, `pare_features`) condition the score model."""
  parts = _parts(views)
  rows = Rows(
    view=np.concatenate([np.full(len(tr), v) for v, _, tr, _ in parts]),
    track_id=np.concatenate([np.full(len(tr), tr.track_id) for _, _, tr, _ in parts]),
    frame=np.concatenate([tr.frames for _, _, tr, _ in parts]),
    tracklet=np.concatenate([np.full(len(tr), k) for _, _, tr, k in parts]),
    observed=np.concatenate([tr.observed for _, _, tr, _ in parts]),
  )
  cat = lambda f: np.concatenate([getattr(tr, f) for _, _, tr, _ in parts])  # noqa: E731
  per_row = lambda f: np.concatenate(
    [np.tile(getattr(vw, f), (len(tr), 1)) for _, vw, tr, _ in parts]
  )  # noqa: E731
  if task == "video":
    group = rows.tracklet
  elif task == "keypoints":
    group = np.arange(len(rows.frame))
  else:
    _, group = np.unique(np.stack([rows.track_id, rows.frame], 1), axis=0, return_inverse=True)
  betas = cat("betas")
  nb = body_model.num_betas
  betas = np.pad(betas, ((0, 0), (0, max(0, nb - betas.shape[1]))))[:, :nb]
  pose = np.concatenate([cat("global_orient")[:, None], cat("body_pose")], 1)
  kp = cat("keypoints")
  obs = Observation.create(
    pose,
    betas,
    cat("translation"),
    kp[..., :2],
    kp[..., 2],
    image_size=per_row("image_size"),
    focal_length=per_row("focal_length"),
    camera_center=per_row("camera_center"),
    group=np.asarray(group).reshape(-1),
    body_model=body_model,
    pose_format="axis_angle",
    features=None if features is None else np.asarray(features, np.float32),
  )
  return rows, obs


def train_prior(config, workdir, body_model) -> dict:
  """An unconditional prior on the shipped demo poses seen from the generator's views (trained
  into workdir/score_model, resuming there)."""
  p = config.prior
  keys = KeySeq(config.seed).child("prior")
  spec = synthesis.SceneSpec(crop_size=64, focal_length=5000.0)
  body_pose = synthesis.PoseSource(p.poses).sample(keys("poses"), p.num_poses, body_model, spec)
  root, _ = synthesis.sample_views(keys.child("views"), p.num_poses, spec)
  rotmat = jnp.concatenate(
    [jnp.asarray(root)[:, None], rotations.axis_angle_to_matrix(body_pose)], 1
  )
  pose6d = np.asarray(rotations.matrix_to_rot6d(rotmat)).reshape(p.num_poses, -1)
  net = ScoreNet(cond_dim=0, hidden=p.hidden, num_blocks=p.num_blocks)
  task = make_score_task(
    net, ArraySource({"pose6d": pose6d.astype(np.float32)}), make_alphas_cumprod("cosine", 1000)
  )
  tc = ml_collections.ConfigDict(p.trainer.to_dict())  # the launcher's config is locked
  tc.seed = config.seed
  state = trainer.train(tc, pathlib.Path(workdir) / "score_model", task)
  return {"params": state.ema_params}


def _score_format(config) -> str:
  fmt = config.get("score_model_format", "jhmr")
  if fmt not in SCORE_FORMATS:
    raise InputError(
      f"unknown config.score_model_format {fmt!r}; valid: {', '.join(SCORE_FORMATS)}"
    )
  return fmt


def score_params(config, workdir, body_model) -> tuple[dict, str]:
  """(parameters, where from) of the score model (`config.score_model_format`)."""
  if _score_format(config) == "official":
    path = str(config.score_model or "")
    if not path or not pathlib.Path(path).is_file():
      raise InputError(
        "config.score_model_format='official' needs config.score_model = ScoreHMR's "
        f"model-100.pt; file {path!r} not found"
      )
    from jhmr.convert.scorehmr import load_checkpoint  # noqa: PLC0415 (torch-file reader)

    try:
      return load_checkpoint(path), path
    except InputError as e:
      raise InputError(f"config.score_model {path}: not a usable ScoreHMR checkpoint ({e})") from e
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(
        f"config.score_model {path}: not a ScoreHMR checkpoint ({type(e).__name__}: {e})"
      ) from e
  if config.score_model:
    params = checkpoint.restore_params(config.score_model)
    return params, str(config.score_model)
  return train_prior(config, workdir, body_model), "trained on the demo poses (config.prior)"


# -- image features (conditional score models) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureModel:
  """PARE and its feature statistics: ScoreHMR's conditioning features.

  Attributes:
    net: `image_to_mesh.Net` (the `Pare` module and its variables). stats: `FeatureStats`.
    size: the crop side (224 for the released PARE). jit: compile PARE (once: every batch has
      the same shape).
  """

  net: image_to_mesh.Net
  stats: pare_lib.FeatureStats
  size: int = pare_lib.INPUT_SIZE
  jit: bool = True

  @property
  def dim(self) -> int:
    return int(np.shape(self.stats.mean)[-1])


def _features_kind(config) -> str:
  kind = config.get("features", {}).get("kind", "none")
  if kind not in FEATURE_KINDS:
    raise InputError(f"unknown config.features.kind {kind!r}; valid: {', '.join(FEATURE_KINDS)}")
  return kind


def check_feature_settings(config) -> None:
  """InputError naming the setting when `config.features` / the score model format cannot work
  (checked before anything is read or trained): the official model needs kind='pare'; 'pare'
  needs both files and every camera's video (the generated example has one)."""
  kind, fmt = _features_kind(config), _score_format(config)
  if fmt == "official" and kind != "pare":
    raise InputError(
      "config.score_model_format='official' (ScoreHMR's model-100.pt) is conditioned on PARE "
      "features: set config.features.kind='pare' with config.features.pare_checkpoint and "
      "config.features.pare_stats"
    )
  if kind == "none":
    return
  files = (("pare_checkpoint", "pare_checkpoint.ckpt"), ("pare_stats", "pare_feat_stats.npz"))
  for name, what in files:
    path = str(config.features.get(name) or "")
    if not path:
      raise InputError(f"config.features.kind='pare' needs config.features.{name} ({what})")
    if not pathlib.Path(path).is_file():
      raise InputError(f"config.features.{name}: file {path!r} not found")
  tracks_given = split_list(config.inputs.tracks)
  videos = split_list(config.inputs.video)
  if tracks_given and (not videos or not all(videos)):
    raise InputError(
      "config.features.kind='pare' crops the frames: config.inputs.video is required "
      "(one video per camera)"
    )


def feature_model(config) -> FeatureModel | None:
  """The released PARE (`config.features.pare_checkpoint`) and statistics (`pare_stats`), or
  None for kind 'none'."""
  if _features_kind(config) == "none":
    return None
  from jhmr.convert.pare import load_pare_checkpoint  # noqa: PLC0415 (torch-file reader)

  f = config.features
  module = pare_lib.Pare()
  variables = image_to_mesh.load_model_file(
    "PARE checkpoint (config.features.pare_checkpoint)", f.pare_checkpoint,
    lambda p: load_pare_checkpoint(p, module),
  )  # fmt: skip
  stats = image_to_mesh.load_model_file(
    "PARE feature statistics (config.features.pare_stats)", f.pare_stats,
    pare_lib.load_feature_stats,
  )  # fmt: skip
  return FeatureModel(image_to_mesh.Net(module, variables), stats)


def pare_features(views: list[View], model: FeatureModel) -> np.ndarray:
  """Standardised PARE features [R, C] of every row, in Observation order.

  Per camera and frame, the boxes of the rows at that frame are cropped from the frame and run
  through `image_to_mesh.run_pare` as one batch, padded to the most people in any frame (one
  shape: PARE compiles once)."""
  parts = _parts(views)
  boxes = row_boxes(views)
  view_of = np.concatenate([np.full(len(tr), v) for v, _, tr, _ in parts])
  frame_of = np.concatenate([np.asarray(tr.frames) for _, _, tr, _ in parts])
  track_of = np.concatenate([np.full(len(tr), tr.track_id) for _, _, tr, _ in parts])
  keys = np.stack([view_of, frame_of], 1)
  batches = [np.flatnonzero((keys == k).all(1)) for k in np.unique(keys, axis=0)]
  width = max(len(b) for b in batches)
  out = np.zeros((len(boxes), model.dim), np.float32)
  logging.info("PARE features of %d rows (%d batches of %d)", len(boxes), len(batches), width)
  for idx in batches:
    view, frame = views[int(view_of[idx[0]])], int(frame_of[idx[0]])
    if view.frames is None:
      raise InputError(
        f"{view.source.tracks}: PARE features need the frames; give config.inputs.video"
      )
    if not 0 <= frame < len(view.frames):
      raise InputError(
        f"{view.source.video}: has {len(view.frames)} frames, the tracks use frame {frame}"
      )
    padded = boxes[np.concatenate([idx, np.full(width - len(idx), idx[-1])])]
    try:
      feats = image_to_mesh.run_pare(
        model.net, model.stats, view.frames[frame], padded, model.size, model.jit
      )
    except InputError as e:
      tids = ", ".join(str(int(t)) for t in track_of[idx])
      raise InputError(f"{view.source.video}: frame {frame}, tracks {tids}: {e}") from e
    out[idx] = feats[: len(idx)]
  return out


def to_results(
  view_index: int, rows: Rows, pose_aa, betas, cam_t, obs: Observation, body_model, metadata,
  iterations=None,
) -> results_lib.Results:  # fmt: skip
  """The rows of one camera as a `Results` (pose_aa [R, 24, 3], betas [R, NB], cam_t [R, 3]);
  `iterations` = (pose_aa [R, I, 24, 3], cam_t [R, I, 3]) of a refinement."""
  sel = rows.view == view_index
  pose_aa, betas, cam_t = (np.asarray(x)[sel] for x in (pose_aa, betas, cam_t))
  out = body_model.joints_only(
    jnp.asarray(betas), jnp.asarray(pose_aa[:, 1:]), jnp.asarray(pose_aa[:, 0]),
    joint_set=JOINT_SET,
  )  # fmt: skip
  shift = cam_t[:, None]
  kp = np.concatenate(
    [np.asarray(obs.keypoints_2d)[sel], np.asarray(obs.confidence)[sel][..., None]], -1
  )
  extra = {}
  if iterations is not None:
    extra = dict(
      refinement_pose=np.asarray(iterations[0])[sel],
      refinement_cam_t=np.asarray(iterations[1])[sel],
    )
  return results_lib.Results(
    track_id=rows.track_id[sel],
    frame=rows.frame[sel],
    global_orient=pose_aa[:, 0],
    body_pose=pose_aa[:, 1:],
    betas=betas,
    cam_t=cam_t,
    intrinsics=np.asarray(cameras.intrinsics_matrix(obs.focal_length[sel], obs.camera_center[sel])),
    image_size=np.asarray(obs.image_size)[sel].astype(np.int32),
    joints={"smpl24": np.asarray(out.joints) + shift, JOINT_SET: np.asarray(out.keypoints) + shift},
    keypoints_2d={JOINT_SET: kp},
    metadata=metadata,
    **extra,
  )


def _aa(rotmat) -> np.ndarray:
  return np.asarray(rotations.matrix_to_axis_angle(jnp.asarray(rotmat)))


def guidance_iterations(obs: Observation, result: RefineResult) -> tuple[np.ndarray, np.ndarray]:
  """(pose axis-angle [R, I, 24, 3], cam_t [R, I, 3]): the initial estimate, then the estimate
  after each guidance iteration (I = num_iters + 1)."""
  per_iter = np.moveaxis(_aa(rot6d_pose(result.pose_6d_per_iter)), 0, 1)
  pose = np.concatenate([_aa(obs.init_pose)[:, None], per_iter], 1)
  cam = np.concatenate(
    [np.asarray(obs.init_cam_t)[:, None], np.moveaxis(np.asarray(result.cam_t_per_iter), 0, 1)], 1
  )
  return pose, cam


def check_conditioning(params, pare: FeatureModel | None) -> ScoreNet:
  """The score network of `params`, after checking that `pare` fits it (InputError naming
  config.features otherwise)."""
  net = net_from_params(params)
  if net.cond_dim and pare is None:
    raise InputError(
      f"the score model is conditioned on image features ({net.cond_dim}): set "
      "config.features.kind='pare' with config.features.pare_checkpoint and pare_stats"
    )
  if not net.cond_dim and pare is not None:
    raise InputError(
      "the score model is unconditional: set config.features.kind='none' (or give a "
      "conditional model, e.g. config.score_model_format='official')"
    )
  if pare is not None and pare.dim != net.cond_dim:
    raise InputError(
      f"config.features: PARE features have {pare.dim} dimensions, the score model is "
      f"conditioned on {net.cond_dim}"
    )
  return net


def refine_views(
  config, views: list[View], params, body_model, pare: FeatureModel | None = None
) -> tuple[Rows, Observation, RefineResult]:
  """Builds the observation of every camera (with `pare`'s features when the score model is
  conditional) and refines it with `config.task`'s guidance."""
  if config.task not in TASKS:
    raise InputError(f"unknown config.task {config.task!r}; valid: {', '.join(TASKS)}")
  if config.task == "multiview" and len(views) < 2:
    raise InputError("config.task='multiview' needs >= 2 cameras (comma-separated inputs)")
  check_conditioning(params, pare)
  features = None if pare is None else pare_features(views, pare)
  rows, obs = rows_and_observation(views, config.task, body_model, features)
  refine_config = refine_config_for(config.task, config.refine[config.task])
  logging.info("refining %d rows (%s guidance)", len(rows.frame), config.task)
  result = refine(params, obs, task=config.task, config=refine_config)
  return rows, obs, result


def run(config, workdir, *, score=None, pare: FeatureModel | None = None) -> dict:
  """Reads the inputs (or makes the example), refines, writes every output; returns
  {'views': [output folder per camera], 'summary': {...}}.

  `score` = (params, description) and `pare` (a `FeatureModel`) replace the models named by
  `config.score_model` / `config.features` (tests, notebooks)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if pare is None:
    check_feature_settings(config)
  body_model = load_body_model(config.body_model)
  sources, example = view_inputs(config, workdir)
  views = [load_view(i, s, config) for i, s in enumerate(sources)]
  params, prior_source = score if score is not None else score_params(config, workdir, body_model)
  if pare is None:
    pare = feature_model(config)
  rows, obs, result = refine_views(config, views, params, body_model, pare)

  init_aa = _aa(obs.init_pose)
  iters_aa, iters_cam = guidance_iterations(obs, result)
  out_dirs, summary = [], {}
  for v, view in enumerate(views):
    out = workdir if len(views) == 1 else workdir / view.name
    out.mkdir(parents=True, exist_ok=True)
    metadata = results_lib.make_metadata(
      "refine",
      config=config.to_dict(),
      body_model=config.body_model,
      frames=str(pathlib.Path(view.source.video).absolute()) if view.source.video else "",
      fps=view.fps,
      task=config.task,
      score_model=prior_source,
      inputs=dataclasses.asdict(view.source),
    )
    refined = to_results(
      v, rows, _aa(result.pose), result.betas, result.cam_t, obs, body_model, metadata,
      iterations=(iters_aa, iters_cam),
    )  # fmt: skip
    initial = to_results(
      v, rows, init_aa, obs.init_betas, obs.init_cam_t, obs, body_model,
      dict(metadata, note="initial estimates"),
    )  # fmt: skip
    results_lib.save_results(out / "results.npz", refined)
    summary[view.name] = refine_outputs.write_all(
      out, view, initial, refined, body_model, config.outputs, example=example
    )
    out_dirs.append(out)
  print(f"refine: wrote results, overlays, meshes, GLB and BVH to {', '.join(map(str, out_dirs))}")
  return {"views": out_dirs, "summary": summary}


STAGES = {"all": Stage(run)}
