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

Score model (`config.score_model`): a trained unconditional pose prior, the `score_model`
folder of a `configs/scorehmr.py:cmu_prior` run (motion capture, the one to use on real video);
'' trains a prior on the shipped demo poses into workdir/score_model (`config.prior`; enough for
the example clip, not for real video). Guidance (`config.task`): video (keypoints + temporal
smoothness per tracklet, the default), keypoints (every frame alone), multiview (the same
track id at the same frame in several cameras shares its body pose).

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
import scipy.optimize
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import synthesis
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.errors import InputError
from jhmr.geometry import cameras, rotations
from jhmr.guidance.losses import rot6d_pose
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import RefineResult, refine
from jhmr.io import estimates, joint_maps, keypoints, track_handling, tracks
from jhmr.io import results as results_lib
from jhmr.io import video as video_io
from jhmr.keys import KeySeq
from jhmr.models.score_net import ScoreNet
from jhmr.pipelines import refine_outputs
from jhmr.pipelines.scorehmr import refine_config_for
from jhmr.pipelines.stages import Stage
from jhmr.train import checkpoint, trainer
from jhmr.train.task import ArraySource
from jhmr.train.tasks import make_score_task

TASKS = ("video", "keypoints", "multiview")
TRACK_READERS = {
  "phalp": tracks.read_phalp,
  "scorehmr": tracks.read_scorehmr_tracks,
  "wham": estimates.read_wham,
  "gvhmr": estimates.read_gvhmr,
}
JOINT_SET = "openpose25"  # the keypoints guidance fits (ScoreHMR: BODY_25)


@dataclasses.dataclass(frozen=True)
class ViewInput:
  """One camera's files ('' = not given)."""

  tracks: str
  keypoints: str = ""
  video: str = ""


@dataclasses.dataclass(frozen=True)
class View:
  """One camera, read and prepared.

  Attributes:
    name: 'view<k>'.
    tracklets: `jhmr.io.tracks.Track`s (one per track and shot, gaps filled), keypoints
      [T, 25, 3] BODY_25 px.
    image_size: (W, H) px. focal_length: (fx, fy) px. camera_center: (cx, cy) px.
    frames: uint8 [F, H, W, 3] or None (no video given). fps: frames per second.
    source: the input files.
  """

  name: str
  tracklets: tuple
  image_size: tuple[int, int]
  focal_length: tuple[float, float]
  camera_center: tuple[float, float]
  frames: np.ndarray | None
  fps: float
  source: ViewInput


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


# -- inputs -------------------------------------------------------------------------------------


def _split(value: str) -> list[str]:
  return [v.strip() for v in str(value or "").split(",")] if str(value or "").strip() else []


def view_inputs(config, workdir) -> tuple[list[ViewInput], object | None]:
  """The cameras' files, and the generated example (`refine_example.ExampleFiles`) or None."""
  inputs = config.inputs
  given = {k: _split(inputs[k]) for k in ("tracks", "keypoints", "video")}
  if not given["tracks"]:
    if given["keypoints"] or given["video"]:
      raise InputError("config.inputs.tracks is required when keypoints or video are given")
    from jhmr.pipelines import refine_example  # noqa: PLC0415 (renders: only for the example)

    ex = config.example
    files = refine_example.make_example(
      pathlib.Path(workdir) / "example",
      body_model=config.body_model,
      num_people=ex.num_people,
      num_frames=ex.num_frames,
      image_size=tuple(ex.image_size),
      fps=ex.fps,
      keypoint_noise_px=ex.keypoint_noise_px,
      seed=config.seed,
    )
    return [ViewInput(str(files.tracks), str(files.openpose_dir), str(files.video))], files
  n = len(given["tracks"])
  for key in ("keypoints", "video"):
    if given[key] and len(given[key]) != n:
      raise InputError(
        f"config.inputs.{key} lists {len(given[key])} cameras, config.inputs.tracks {n}"
      )
  pad = lambda xs: xs or [""] * n  # noqa: E731
  return [
    ViewInput(*v) for v in zip(given["tracks"], pad(given["keypoints"]), pad(given["video"]))
  ], None


def track_format(path: str, fmt: str = "auto") -> str:
  """The reader for `path`: `fmt`, or (auto) a folder -> scorehmr, .pt -> gvhmr, a .pkl whose
  name holds 'wham' -> wham, another .pkl -> phalp."""
  if fmt != "auto":
    if fmt not in TRACK_READERS:
      raise InputError(f"unknown tracks_format {fmt!r}; valid: auto, {', '.join(TRACK_READERS)}")
    return fmt
  p = pathlib.Path(path)
  if p.is_dir():
    return "scorehmr"
  if p.suffix == ".pt":
    return "gvhmr"
  if p.suffix == ".pkl":
    return "wham" if "wham" in p.name.lower() else "phalp"
  raise InputError(f"{path}: cannot tell the tracks format; set config.inputs.tracks_format")


def read_tracks(path: str, fmt: str = "auto") -> tracks.Tracks:
  """Tracks of one camera in BODY_25 (FileNotFoundError naming a missing file)."""
  if not pathlib.Path(path).exists():
    raise FileNotFoundError(f"tracks file {path!r} not found")
  fmt = track_format(path, fmt)
  if fmt in ("phalp", "scorehmr"):
    return TRACK_READERS[fmt](path, joint_set=JOINT_SET)
  return TRACK_READERS[fmt](path)


def _detections(path: str) -> dict[int, np.ndarray]:
  """frame index -> BODY_25 detections [P, 25, 3] px from an OpenPose folder / COCO JSON."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"keypoints file or folder {path!r} not found")
  if p.is_dir():
    frames = keypoints.read_openpose(p)
    kp = joint_maps.convert(frames.keypoints, frames.joint_set, JOINT_SET)
    return {
      int(f): np.asarray(kp[i, : frames.num_people[i]], np.float32)
      for i, f in enumerate(frames.frame_index)
    }
  coco = keypoints.read_coco_results(p)
  kp = np.asarray(joint_maps.convert(coco.keypoints, "coco17", JOINT_SET), np.float32)
  out: dict[int, list] = {}
  for image_id, person in zip(coco.image_id, kp):
    out.setdefault(int(image_id), []).append(person)
  return {f: np.stack(people) for f, people in out.items()}


def _keypoint_box(kp: np.ndarray) -> np.ndarray:
  """(x1, y1, x2, y2) of the detected points [K, 3] (NaN when none)."""
  seen = kp[kp[:, 2] > 0, :2]
  if not len(seen):
    return np.full(4, np.nan, np.float32)
  return np.concatenate([seen.min(0), seen.max(0)])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU [A, B] of boxes (x1, y1, x2, y2) [A, 4] and [B, 4]; 0 where either is NaN."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), -1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None] - inter
  iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
  return np.nan_to_num(iou, nan=0.0)


def attach_keypoints(track_list, detections: dict[int, np.ndarray], min_iou: float = 0.3):
  """Tracks with their keypoints replaced by the matched detections (Hungarian matching of track
  boxes to detection boxes per frame, IoU >= `min_iou`; unmatched frames get none)."""
  new_kp = {t.track_id: np.zeros_like(t.keypoints) for t in track_list}
  frames = sorted({int(f) for t in track_list for f in t.frames})
  for f in frames:
    people = detections.get(f)
    if people is None or not len(people):
      continue
    here = [(t, int(np.flatnonzero(t.frames == f)[0])) for t in track_list if f in t.frames]
    track_boxes = np.stack([t.boxes[i] for t, i in here])
    det_boxes = np.stack([_keypoint_box(p) for p in people])
    iou = box_iou(track_boxes, det_boxes)
    for r, c in zip(*scipy.optimize.linear_sum_assignment(-iou)):
      if iou[r, c] >= min_iou:
        t, i = here[r]
        new_kp[t.track_id][i] = people[c]
  return [dataclasses.replace(t, keypoints=new_kp[t.track_id]) for t in track_list]


def load_view(index: int, source: ViewInput, config) -> View:
  """Reads one camera's files and prepares its tracklets (`config.tracks`, `config.camera`).

  A file that cannot be used raises `InputError` naming it (the readers' ValueErrors become
  one, so the launcher prints them as one line)."""
  try:
    return _load_view(index, source, config)
  except InputError:
    raise
  except ValueError as e:
    raise InputError(str(e)) from e


def _load_view(index: int, source: ViewInput, config) -> View:
  read = read_tracks(source.tracks, config.inputs.tracks_format)
  track_list = list(read)
  if not track_list:
    raise InputError(f"{source.tracks}: no tracks")
  if source.keypoints:
    track_list = attach_keypoints(track_list, _detections(source.keypoints), config.inputs.min_iou)
    read = dataclasses.replace(read, tracks=tuple(track_list))
  t = config.tracks
  tracklets = track_handling.prepare_tracks(
    read, t.min_length, t.max_tracks, t.min_confidence, t.min_shot_length
  )
  if not tracklets:
    lengths = {tr.track_id: len(tr) for tr in track_list}
    raise InputError(
      f"{source.tracks}: no track is longer than config.tracks.min_length={t.min_length} frames "
      f"with a shot longer than min_shot_length={t.min_shot_length} (track lengths: {lengths})"
    )
  frames, fps = None, float(config.inputs.fps or 30.0)
  if source.video:
    frames, read_fps = video_io.read_video_or_images(source.video)
    fps = float(config.inputs.fps or read_fps or 30.0)
    size = (frames.shape[2], frames.shape[1])
  elif read.image_size is not None:
    size = (read.image_size[1], read.image_size[0])
  elif config.camera.image_size:
    size = tuple(int(s) for s in config.camera.image_size)
  else:
    raise InputError(
      f"{source.tracks}: the image size is unknown; give config.inputs.video or "
      "config.camera.image_size=(W, H)"
    )
  focal = float(config.camera.focal_length or (read.focal_length or 0))
  if not focal > 0:
    raise InputError(
      f"{source.tracks}: the focal length is unknown; set config.camera.focal_length"
    )
  return View(
    name=f"view{index}",
    tracklets=tuple(tracklets),
    image_size=(int(size[0]), int(size[1])),
    focal_length=(focal, focal),
    camera_center=(size[0] / 2.0, size[1] / 2.0),
    frames=frames,
    fps=fps,
    source=source,
  )


# -- refinement ---------------------------------------------------------------------------------


def rows_and_observation(views: list[View], task: str, body_model) -> tuple[Rows, Observation]:
  """Every tracklet frame of every camera as one Observation (groups per `task`)."""
  parts = []
  k = 0
  for v, view in enumerate(views):
    for tr in view.tracklets:
      parts.append((v, view, tr, k))
      k += 1
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


def score_params(config, workdir, body_model) -> tuple[dict, str]:
  """(parameters, where from) of the unconditional score model."""
  if config.score_model:
    params = checkpoint.restore_params(config.score_model)
    return params, str(config.score_model)
  return train_prior(config, workdir, body_model), "trained on the demo poses (config.prior)"


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


def refine_views(
  config, views: list[View], params, body_model
) -> tuple[Rows, Observation, RefineResult]:
  """Builds the observation of every camera and refines it with `config.task`'s guidance."""
  if config.task not in TASKS:
    raise InputError(f"unknown config.task {config.task!r}; valid: {', '.join(TASKS)}")
  if config.task == "multiview" and len(views) < 2:
    raise InputError("config.task='multiview' needs >= 2 cameras (comma-separated inputs)")
  rows, obs = rows_and_observation(views, config.task, body_model)
  refine_config = refine_config_for(config.task, config.refine[config.task])
  logging.info("refining %d rows (%s guidance)", len(rows.frame), config.task)
  result = refine(params, obs, task=config.task, config=refine_config)
  return rows, obs, result


def run(config, workdir) -> dict:
  """Reads the inputs (or makes the example), refines, writes every output; returns
  {'views': [output folder per camera], 'summary': {...}}."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  body_model = load_body_model(config.body_model)
  sources, example = view_inputs(config, workdir)
  views = [load_view(i, s, config) for i, s in enumerate(sources)]
  params, prior_source = score_params(config, workdir, body_model)
  rows, obs, result = refine_views(config, views, params, body_model)

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
