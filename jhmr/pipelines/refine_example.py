"""The example input of `refine`: a short rendered clip of the free body with the files a user
would bring (OpenPose JSON keypoints and a PHALP / 4D-Humans tracking pickle).

Nothing is downloaded: the people are the package's body model (`jhmr.body.load_body_model`),
their motion comes from the synthetic-people generator (`jhmr.data.synthesis.PoseSource
.sequences`: a smooth blend between two recognisable poses per person), and the frames are
rendered with `jhmr.render`. `make_example(directory)` writes:

  video.mp4                 the clip, H.264, `fps` frames per second, `image_size` (W, H) px
  openpose/<frame>_keypoints.json
                            detector-like BODY_25 keypoints of every frame (OpenPose 1.3 layout,
                            `person_id` -1 as with OpenPose's tracking off); frame names
                            `000000`, `000001`, ...; a person with fewer than 4 confident
                            keypoints (fully occluded) is left out of that frame
  tracks.pkl                a PHALP-layout pickle (`jhmr.io.tracks.write_phalp`): one track per
                            person (ids 1, 2, ...) over every frame, keyed `000000.jpg`, ...,
                            `time` = frame index; `smpl` / `camera` hold "HMR 2.0-like" initial
                            estimates (the truth corrupted by `observations.corrupt_pose`: a
                            per-track bias plus independent per-frame jitter), `extra_data` the
                            same keypoints as the OpenPose files
  truth.npz                 the true parameters and projections (see `make_example`)
  manifest.json             the arguments; a rerun with the same arguments and all files present
                            returns at once

Camera (ScoreHMR / PHALP convention): R = I, OpenCV axes (x right, y down, z forward), principal
point at the image centre, focal length 5000 * max(H, W) / 256 px by default (PHALP's, so the
pickle's `camera` is the true translation of the truth). Units: metres and pixels; rotations are
axis-angle radians in the camera frame; `translation` is added to the body model's output.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.body import io as body_io
from jhmr.data import observations, synthesis
from jhmr.geometry import rotations
from jhmr.io import keypoints as keypoints_io
from jhmr.io import tracks as tracks_io
from jhmr.io import video as video_io
from jhmr.keys import KeySeq
from jhmr.render import rasterizer, shading

MANIFEST_VERSION = 1
PERSON_HEIGHT_FILL = 0.55  # a standing person spans about this fraction of the image height
FEET_LINE = 0.85  # the ground under the people is at this fraction of the image height
BODY_GREYS = (0.72, 0.55, 0.85, 0.62)  # one grey per person (cycled)
_FOOT_JOINTS = ("LAnkle", "RAnkle", "LBigToe", "RBigToe", "LSmallToe", "RSmallToe", "LHeel",
                "RHeel")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ExampleFiles:
  """The files of an example clip (see the module docstring).

  Attributes:
    video: the .mp4.
    openpose_dir: directory of `<frame>_keypoints.json`.
    tracks: the PHALP-layout `.pkl`.
    truth: the `.npz` of true parameters.
    image_size: (W, H) px, as passed to `make_example`.
    fps: frames per second.
    num_frames: frames in the clip.
  """

  video: pathlib.Path
  openpose_dir: pathlib.Path
  tracks: pathlib.Path
  truth: pathlib.Path
  image_size: tuple[int, int]
  fps: float
  num_frames: int


def _files(directory: pathlib.Path, image_size, fps, num_frames) -> ExampleFiles:
  return ExampleFiles(
    video=directory / "video.mp4",
    openpose_dir=directory / "openpose",
    tracks=directory / "tracks.pkl",
    truth=directory / "truth.npz",
    image_size=(int(image_size[0]), int(image_size[1])),
    fps=float(fps),
    num_frames=int(num_frames),
  )


def _scene(keys: KeySeq, model, num_people, num_frames, width, height, focal, spec):
  """True motion: poses, shapes, camera-frame root orientations and translations."""
  source = synthesis.PoseSource("demo_mix")
  body_pose = source.sequences(keys.child("poses"), num_people, num_frames, model, spec)
  betas = synthesis.sample_betas(keys("betas"), num_people, model, spec)
  # Upright people facing the camera, turning slowly (yaw sweeps over the clip).
  yaw0 = jax.random.uniform(keys("yaw"), (num_people, 2), minval=-0.6, maxval=0.6)
  w = np.linspace(0.0, 1.0, num_frames)[None]
  yaw = np.asarray(yaw0[:, :1]) * (1 - w) + np.asarray(yaw0[:, 1:]) * w
  root, _ = synthesis.sample_views(
    keys.child("views"), num_people * num_frames, spec, yaw=yaw.reshape(-1),
    pitch=np.zeros(num_people * num_frames),
  )  # fmt: skip
  root = root.reshape(num_people, num_frames, 3, 3)
  global_orient = np.asarray(rotations.matrix_to_axis_angle(jnp.asarray(root)), np.float32)
  # Depth: a standing person fills PERSON_HEIGHT_FILL of the height; people a little apart.
  depth0 = focal * 1.7 / (PERSON_HEIGHT_FILL * height)
  jitter = np.asarray(jax.random.uniform(keys("place"), (num_people, 3), minval=-1.0, maxval=1.0))
  depth = depth0 * (1.0 + 0.12 * np.arange(num_people) + 0.04 * jitter[:, 0])
  # Lateral walk (in image-width fractions from the centre): alternate people cross each other.
  side = np.where(np.arange(num_people) % 2 == 0, -1.0, 1.0)
  start = side * (0.22 + 0.05 * jitter[:, 1])
  end = -side * (0.12 + 0.05 * jitter[:, 2])
  u = start[:, None] * (1 - w) + end[:, None] * w  # [P, T]
  x = u * width * depth[:, None] / focal
  ground = (FEET_LINE - 0.5) * height * depth[:, None] / focal  # camera-frame y of the ground
  out = jax.jit(lambda m, b, bp, go: m.joints_only(b, bp, go, joint_set="openpose25"))(
    model, jnp.asarray(betas)[:, None], jnp.asarray(body_pose), jnp.asarray(global_orient)
  )
  names = model.joint_names("openpose25")
  feet = np.asarray(out.keypoints)[..., [names.index(n) for n in _FOOT_JOINTS], 1].max(-1)
  pelvis = np.asarray(out.joints)[..., 0, :]
  translation = np.stack(
    [x - pelvis[..., 0], ground - feet, depth[:, None] - pelvis[..., 2]], -1
  ).astype(np.float32)
  return {
    "global_orient": global_orient,
    "body_pose": np.asarray(body_pose, np.float32),
    "betas": np.asarray(betas, np.float32),
    "translation": translation,
  }


def _pose_batch(model, params, joint_set="openpose25", mesh=True):
  betas = jnp.broadcast_to(
    jnp.asarray(params["betas"])[..., None, :] if params["betas"].ndim == 2 else params["betas"],
    params["global_orient"].shape[:2] + (params["betas"].shape[-1],),
  )
  fn = model.__call__ if mesh else model.joints_only
  return fn(
    betas, params["body_pose"], params["global_orient"], params["translation"],
    joint_set=joint_set,
  )  # fmt: skip


def _render_frames(model, vertices, focal, width, height, chunk: int = 8):
  """vertices [P, T, V, 3] camera frame -> (frames uint8 [T, H, W, 3], owner [T, H, W] person
  index of each pixel (-1 background), depth [T, H, W])."""
  num_people, num_frames, num_vertices, _ = vertices.shape
  faces = np.asarray(model.faces)
  num_faces = faces.shape[0]
  all_faces = np.concatenate([faces + p * num_vertices for p in range(num_people)])
  centre = np.asarray([width / 2.0, height / 2.0], np.float32)
  greys = np.asarray([BODY_GREYS[p % len(BODY_GREYS)] for p in range(num_people)], np.float32)
  rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  sky = np.asarray([0.78, 0.84, 0.90], np.float32) * (1 - 0.3 * rows)
  floor = np.asarray([0.55, 0.50, 0.42], np.float32) * (0.8 + 0.3 * rows)
  background = np.where(rows < 0.5, sky, floor) * np.ones((1, width, 1), np.float32)

  @jax.jit
  def render(verts):
    frags = rasterizer.rasterize(
      verts, all_faces, focal, centre, (height, width), smooth_normals=True
    )
    owner = jnp.where(frags.mask, frags.face_ids // num_faces, -1)
    colour = jnp.asarray(greys)[jnp.maximum(owner, 0)][..., None] * jnp.ones(3)
    body = shading.shade(frags, colour)
    image = jnp.where(frags.mask[..., None], body, jnp.asarray(background))
    return jnp.round(image * 255).astype(jnp.uint8), owner, frags.depth

  scene = np.swapaxes(vertices, 0, 1).reshape(num_frames, num_people * num_vertices, 3)
  parts = []
  for start in range(0, num_frames, chunk):
    batch = scene[start : start + chunk]
    pad = chunk - len(batch)
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[-1:], pad, 0)])
    out = render(jnp.asarray(batch))
    parts.append([np.asarray(o)[: chunk - pad] for o in out])
  return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _detections(keys: KeySeq, kp3d, owner, depth, focal, width, height, noise_px, valid):
  """Detector-like BODY_25 keypoints [P, T, 25, 3] px from camera-frame keypoints [P, T, 25, 3],
  and the exact projections [P, T, 25, 2] and visibility [P, T, 25]."""
  num_people, num_frames, k, _ = kp3d.shape
  z = kp3d[..., 2]
  exact = kp3d[..., :2] / np.maximum(z, 1e-6)[..., None] * focal + np.asarray([width, height]) / 2
  inside = np.all((exact >= 0) & (exact < [width, height]), -1) & (z > 0)
  px = np.clip(np.floor(exact).astype(np.int64), 0, [width - 1, height - 1])
  t_index = np.arange(num_frames)[None, :, None]
  pixel_owner = owner[t_index, px[..., 1], px[..., 0]]
  pixel_depth = depth[t_index, px[..., 1], px[..., 0]]
  person = np.arange(num_people)[:, None, None]
  occluded = (pixel_owner >= 0) & (pixel_owner != person) & (pixel_depth < z)
  visible = inside & ~occluded & np.asarray(valid, bool)
  shape = (num_people, num_frames, k)
  conf = np.asarray(jax.random.uniform(keys("confidence"), shape, minval=0.5, maxval=1.0))
  low_conf = np.asarray(jax.random.uniform(keys("low_confidence"), shape, maxval=0.35))
  event = np.asarray(jax.random.uniform(keys("event"), shape))
  dropped = event < 0.04
  weak = (event >= 0.04) & (event < 0.08)
  scale = np.where(weak | occluded, 3.0, 1.0)[..., None]
  offset = noise_px * scale * np.asarray(jax.random.normal(keys("noise"), shape + (2,)))
  conf = np.where(weak | occluded, np.minimum(low_conf + 0.05, 0.39), conf)
  keep = inside & np.asarray(valid, bool) & ~dropped
  xy = exact + offset
  det = np.concatenate([xy, conf[..., None]], -1).astype(np.float32)
  det = np.where(keep[..., None], det, 0.0).astype(np.float32)
  return det, exact.astype(np.float32), visible


def _estimates(keys: KeySeq, model, truth, level: float, jitter: float):
  """'HMR 2.0-like' estimates: `corrupt_pose` with one draw per track (a bias shared by all
  frames), then an independent per-frame draw (jitter)."""
  params = {
    "global_orient": jnp.asarray(truth["global_orient"]),
    "body_pose": jnp.asarray(truth["body_pose"]),
    "betas": jnp.broadcast_to(
      jnp.asarray(truth["betas"])[:, None], truth["global_orient"].shape[:2] + (model.num_betas,)
    ),
    "transl": jnp.asarray(truth["translation"]),
  }
  num_people = params["global_orient"].shape[0]
  bias_keys = jax.random.split(keys("bias"), num_people)
  per_track = jax.vmap(  # the same key for every frame of a track: a constant error
    lambda k, p: jax.vmap(lambda q: observations.corrupt_pose(k, q, level))(p)
  )
  out = per_track(bias_keys, params)
  out = observations.corrupt_pose(keys("jitter"), out, jitter)
  return {
    "global_orient": np.asarray(out["global_orient"], np.float32),
    "body_pose": np.asarray(out["body_pose"], np.float32),
    "betas": np.asarray(out["betas"], np.float32),
    "translation": np.asarray(out["transl"], np.float32),
  }


def _crop_camera(translation, boxes, focal, width, height):
  """HMR2 crop camera (s, tx, ty) of a full-frame translation, inverting `cam_crop_to_full`
  (io_formats.md §5) for the square box of side max(w, h) around each box's centre."""
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  b = np.maximum(np.max(boxes[..., 2:] - boxes[..., :2], -1), 1.0)
  s = 2 * focal / (b * translation[..., 2])
  tx = translation[..., 0] - 2 * (centre[..., 0] - width / 2) / (b * s)
  ty = translation[..., 1] - 2 * (centre[..., 1] - height / 2) / (b * s)
  return np.stack([s, tx, ty], -1).astype(np.float32)


def make_example(
  directory,
  *,
  body_model: str | None = None,
  num_people: int = 2,
  num_frames: int = 48,
  image_size: tuple[int, int] = (320, 240),
  fps: float = 24.0,
  keypoint_noise_px: float = 3.0,
  estimate_level: float = 1.0,
  estimate_jitter: float = 0.5,
  focal_length: float | None = None,
  seed: int = 0,
) -> ExampleFiles:
  """Writes (or finds) the example clip in `directory` (see the module docstring).

  Args:
    directory: output directory (created).
    body_model: `load_body_model` name or path (None: the free default body; 'anny-tiny' for
      tests).
    num_people: people in the clip (one track each); they walk sideways, alternate people in
      opposite directions (so two people cross and may occlude each other), turning slowly.
    num_frames: frames in the clip.
    image_size: (W, H) px.
    fps: frame rate of the video.
    keypoint_noise_px: std (px) of the keypoint noise (3x for occluded / weak keypoints).
    estimate_level: `corrupt_pose` level of the per-track error of the initial estimates.
    estimate_jitter: `corrupt_pose` level of their independent per-frame error.
    focal_length: render focal (px); None: PHALP's 5000 * max(H, W) / 256. Otherwise the
      pickle's `camera` is the estimate's translation with depth scaled by PHALP focal / focal.
    seed: everything is deterministic from it (`jhmr.keys.KeySeq`).

  Detections: the projected `openpose25` keypoints plus Gaussian noise, confidences uniform in
  [0.5, 1]; per joint 4% are dropped (0, 0, 0) and 4% are weak (confidence < 0.4, 3x noise);
  keypoints hidden by another person are weak too; keypoints outside the image, or not defined
  by the body model, are (0, 0, 0).

  `truth.npz` (P people, T frames, person p = track id p + 1): `global_orient` [P, T, 3],
  `body_pose` [P, T, 23, 3], `betas` [P, NB], `translation` [P, T, 3] (true, for
  `focal_length`); `estimate_global_orient`, `estimate_body_pose`, `estimate_betas` [P, T, NB],
  `estimate_translation` (the pickle's, for `focal_length`); `joints_smpl24` [P, T, 24, 3] true
  posed joints (camera frame, metres, translation included); `keypoints_2d` [P, T, 25, 2] exact
  BODY_25 projections px; `visible` [P, T, 25] bool (in the image, defined, not hidden by
  another person); `detections` [P, T, 25, 3] (what the files hold); `boxes` [P, T, 4] xyxy px;
  `track_ids` [P]; `focal_length`, `image_size` (H, W), `fps`; `frame_names` [T].
  """
  directory = pathlib.Path(directory)
  width, height = (int(v) for v in image_size)
  files = _files(directory, (width, height), fps, num_frames)
  manifest = {
    "version": MANIFEST_VERSION,
    "body_model": None if body_model is None else str(body_model),
    "num_people": int(num_people),
    "num_frames": int(num_frames),
    "image_size": [width, height],
    "fps": float(fps),
    "keypoint_noise_px": float(keypoint_noise_px),
    "estimate_level": float(estimate_level),
    "estimate_jitter": float(estimate_jitter),
    "focal_length": None if focal_length is None else float(focal_length),
    "seed": int(seed),
  }
  manifest_path = directory / "manifest.json"
  outputs = (files.video, files.tracks, files.truth)
  if manifest_path.exists() and all(p.exists() for p in outputs) and files.openpose_dir.is_dir():
    try:
      if json.loads(manifest_path.read_text()) == manifest:
        return files
    except ValueError:
      pass
  if num_people < 1 or num_frames < 2 or min(width, height) < 8:
    raise ValueError("need num_people >= 1, num_frames >= 2 and an image of at least 8x8 px")
  if manifest_path.exists():
    manifest_path.unlink()  # stale: the files are rewritten below
  directory.mkdir(parents=True, exist_ok=True)

  keys = KeySeq(seed)
  model = body_io.load_body_model(body_model)
  phalp_focal = tracks_io.PHALP_FOCAL * max(width, height) / tracks_io.PHALP_RENDER_RES
  focal = phalp_focal if focal_length is None else float(focal_length)
  spec = synthesis.SceneSpec(joint_std=0.1, betas_std=0.8)
  truth = _scene(keys.child("scene"), model, num_people, num_frames, width, height, focal, spec)

  posed = jax.jit(_pose_batch, static_argnames=("joint_set", "mesh"))(model, truth)
  vertices = np.asarray(posed.vertices)
  kp3d = np.asarray(posed.keypoints)
  frames, owner, depth = _render_frames(model, vertices, focal, width, height)
  valid = np.asarray(model.joint_sets["openpose25"].valid, bool)
  det, exact, visible = _detections(
    keys.child("detect"), kp3d, owner, depth, focal, width, height, keypoint_noise_px, valid
  )
  proj = vertices[..., :2] / vertices[..., 2:] * focal + np.asarray([width, height]) / 2
  boxes = np.concatenate([proj.min(-2), proj.max(-2)], -1)
  boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)

  est = _estimates(keys.child("estimate"), model, truth, estimate_level, estimate_jitter)
  est_kp = np.asarray(jax.jit(_pose_batch, static_argnames=("joint_set", "mesh"))(
    model, est, mesh=False).keypoints)  # fmt: skip
  est_proj = est_kp[..., :2] / est_kp[..., 2:] * focal + np.asarray([width, height]) / 2

  frame_names = [f"{t:06d}" for t in range(num_frames)]
  track_ids = np.arange(1, num_people + 1)
  tracks = tracks_io.Tracks(
    tracks=tuple(
      tracks_io.Track(
        track_id=int(track_ids[p]),
        frames=np.arange(num_frames, dtype=np.int64),
        boxes=boxes[p],
        keypoints=det[p],
        global_orient=est["global_orient"][p],
        body_pose=est["body_pose"][p],
        betas=est["betas"][p, :, :10],
        translation=est["translation"][p],
        crop_camera=_crop_camera(est["translation"][p], boxes[p], focal, width, height),
        shots=np.zeros(num_frames, np.int64),
        observed=np.ones(num_frames, bool),
      )
      for p in range(num_people)
    ),
    frame_names=tuple(f"{n}.jpg" for n in frame_names),
    image_size=(height, width),
    focal_length=focal,
    source="phalp",
  )
  confident = (det[..., 2] >= 0.4).sum(-1) >= 4  # [P, T]: the detector reports the person
  people = [det[confident[:, t], t] for t in range(num_frames)]

  video_io.write_mp4(files.video, frames, fps)
  keypoints_io.write_openpose(files.openpose_dir, people, frame_names)
  tracks_io.write_phalp(
    files.tracks, tracks, joints_2d={int(track_ids[p]): est_proj[p] for p in range(num_people)}
  )
  np.savez_compressed(
    files.truth,
    **truth,
    **{f"estimate_{k}": v for k, v in est.items()},
    joints_smpl24=np.asarray(posed.joints, np.float32),
    keypoints_2d=exact,
    visible=visible,
    detections=det,
    boxes=boxes,
    track_ids=track_ids,
    focal_length=np.float32(focal),
    image_size=np.asarray([height, width]),
    fps=np.float32(fps),
    frame_names=np.asarray(frame_names),
  )
  manifest_path.write_text(json.dumps(manifest, indent=1))
  return files
