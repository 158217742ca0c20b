"""The refine program's inputs: the user's files per camera (tracks, keypoints, frames), read,
matched and prepared into `View`s (see `jhmr.pipelines.refine` for the settings)."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import scipy.optimize

from jhmr.errors import InputError
from jhmr.io import estimates, joint_maps, keypoints, track_handling, tracks
from jhmr.io import video as video_io

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


def split_list(value: str) -> list[str]:
  return [v.strip() for v in str(value or "").split(",")] if str(value or "").strip() else []


def view_inputs(config, workdir) -> tuple[list[ViewInput], object | None]:
  """The cameras' files, and the generated example (`refine_example.ExampleFiles`) or None."""
  inputs = config.inputs
  given = {k: split_list(inputs[k]) for k in ("tracks", "keypoints", "video")}
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
