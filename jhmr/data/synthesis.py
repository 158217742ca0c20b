"""The synthetic-people generator: posed bodies, a crop camera, rendered crops, noisy detections.

One generator serves the ScoreHMR main job, the `synthetic` TFDS builder, the preview and the
benchmark config. Everything comes from the body model, so nothing is downloaded:

* poses (`PoseSource`): `demo_mix` (blends of recognisable poses plus joint noise,
  `jhmr.data.poses.demo_mix_poses`), `uniform` (joint angles uniform inside anatomical limits,
  `jhmr.data.poses.procedural_pose`) or `motion` (frames of real motion capture, e.g. CMU through
  `jhmr.data.mocap`, with their clip ids so video windows are consecutive frames);
* a ScoreHMR-style crop camera: R = I, focal length f, principal point at the crop centre (the
  full image *is* the crop: `crop_from_image` is the identity), the body facing the camera with
  a random yaw / pitch, placed by a weak-perspective crop camera (s, tx, ty) converted with
  `weak_perspective_to_translation`;
* a rendered crop `[S, S, 3]`: the shaded body (random colour and light) on a random background
  (`SceneSpec.background`: a two-colour gradient, or limb-wide stripes as scene clutter;
  `jhmr.render`);
* 2D keypoints: `openpose25` detections with detector-like noise (`jhmr.data.observations
  .KeypointNoise`, AR(1) along time for video) and exact `smpl24` projections.

`single_view_set`, `multiview_set` and `video_set` return `PersonExample` batches (numpy) whose
`group` / `frame` say which person or sequence a row belongs to. Every random draw takes its key
by name from a `jhmr.keys.KeySeq`, so no key is used twice.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.data import observations, poses
from jhmr.data.example import PersonExample
from jhmr.geometry import cameras, rotations
from jhmr.keys import KeySeq

# Body frame (Y up, facing +Z) -> camera frame (Y down, Z forward): the body faces the camera.
_BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0]).astype(np.float32)
POSE_KINDS = ("demo_mix", "uniform", "motion")
BACKGROUNDS = ("gradient", "stripes")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceneSpec:
  """What the generator draws (angles in degrees, lengths in metres, sizes in pixels).

  Attributes:
    crop_size: side S of the rendered square crop (= the full image).
    focal_length: focal length of the crop camera.
    scale_range: range of the weak-perspective scale s (the body spans about s * S pixels).
    shift_std: std of the weak-perspective shift (tx, ty), in units of half the crop.
    yaw_deg, pitch_deg: the view is uniform in +-yaw about the body's vertical axis and +-pitch
      about its side axis (0: the body faces the camera).
    betas_std: std of the drawn shape coefficients.
    joint_std: axis-angle noise (radians) of the `demo_mix` poses.
    noise: the 2D detector's error model.
    background: 'gradient' (a random two-colour linear gradient) or 'stripes' (two crossed
      sinusoidal gratings of random orientation, 2-8 cycles per crop, in three random colours:
      bars about as wide as a limb, a cluttered scene).
  """

  crop_size: int = 64
  focal_length: float = 5000.0
  scale_range: tuple[float, float] = (0.8, 1.0)
  shift_std: float = 0.05
  yaw_deg: float = 60.0
  pitch_deg: float = 10.0
  betas_std: float = 0.8
  joint_std: float = 0.25
  noise: observations.KeypointNoise = observations.KeypointNoise()
  background: str = "gradient"

  def __post_init__(self):
    if self.background not in BACKGROUNDS:
      raise ValueError(
        f"SceneSpec.background must be one of {BACKGROUNDS}, got {self.background!r}"
      )


@dataclasses.dataclass(frozen=True)
class PoseSource:
  """Where body poses come from.

  Attributes:
    kind: `demo_mix`, `uniform` or `motion`.
    body_pose: `[N, 23, 3]` axis-angle frames (`motion` only).
    clip: `[N]` int clip id of each frame (`motion` only; consecutive rows of one clip are
      consecutive frames).
  """

  kind: str = "demo_mix"
  body_pose: np.ndarray | None = None
  clip: np.ndarray | None = None

  def __post_init__(self):
    if self.kind not in POSE_KINDS:
      raise ValueError(f"unknown pose source {self.kind!r}; valid: {', '.join(POSE_KINDS)}")
    if self.kind == "motion" and (self.body_pose is None or len(self.body_pose) == 0):
      raise ValueError("a 'motion' pose source needs body_pose frames [N, 23, 3]")

  @classmethod
  def from_motions(cls, motions) -> PoseSource:
    """A `motion` source from `jhmr.data.mocap.Motion`s (e.g. the values of `load_cmu`)."""
    motions = list(motions)
    if not motions:
      raise ValueError("no motion to draw poses from")
    body = np.concatenate([np.asarray(m.body_pose, np.float32) for m in motions])
    clip = np.concatenate([np.full(m.num_frames, i, np.int32) for i, m in enumerate(motions)])
    return cls("motion", body, clip)

  def sample(self, key, n: int, body_model, spec: SceneSpec) -> np.ndarray:
    """`[n, 23, 3]` independent body poses."""
    if self.kind == "demo_mix":
      names = body_model.joint_names("smpl24")
      return np.asarray(poses.demo_mix_poses(key, n, names, spec.joint_std), np.float32)
    if self.kind == "uniform":
      return np.asarray(poses.procedural_pose(key, (n,))[1], np.float32)
    idx = jax.random.randint(key, (n,), 0, len(self.body_pose))
    return np.asarray(self.body_pose)[np.asarray(idx)]

  def sequences(self, keys: KeySeq, count: int, length: int, body_model, spec) -> np.ndarray:
    """`[count, length, 23, 3]` pose sequences: consecutive frames of one clip (`motion`), or a
    linear blend between two independent poses (procedural kinds)."""
    if self.kind != "motion":
      ends = self.sample(keys("ends"), 2 * count, body_model, spec)
      w = np.linspace(0.0, 1.0, length)[None, :, None, None]
      return ((1 - w) * ends[:count, None] + w * ends[count:, None]).astype(np.float32)
    clip = np.asarray(self.clip)
    starts = np.flatnonzero(clip[: len(clip) - length + 1] == clip[length - 1 :])
    if len(starts) == 0:
      raise ValueError(f"no motion clip has {length} consecutive frames")
    pick = np.asarray(jax.random.choice(keys("starts"), len(starts), (count,)))
    index = starts[pick][:, None] + np.arange(length)[None]
    return np.asarray(self.body_pose)[index]


def _axis_rotation(axis: int, angle):
  c, s = jnp.cos(angle), jnp.sin(angle)
  z, o = jnp.zeros_like(angle), jnp.ones_like(angle)
  rows = {
    0: [[o, z, z], [z, c, -s], [z, s, c]],
    1: [[c, z, s], [z, o, z], [-s, z, c]],
  }[axis]
  return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def sample_views(keys: KeySeq, n: int, spec: SceneSpec, *, yaw=None, pitch=None):
  """Root orientations `[n, 3, 3]` (camera frame) and crop cameras `[n, 3]` (s, tx, ty).

  `yaw` / `pitch` `[n]` (radians) are drawn, each from its own key, unless given.
  """
  if yaw is None:
    yaw = jax.random.uniform(keys("yaw"), (n,), minval=-1.0, maxval=1.0)
    yaw = yaw * np.deg2rad(spec.yaw_deg)
  if pitch is None:
    pitch = jax.random.uniform(keys("pitch"), (n,), minval=-1.0, maxval=1.0)
    pitch = pitch * np.deg2rad(spec.pitch_deg)
  yaw, pitch = jnp.asarray(yaw, jnp.float32), jnp.asarray(pitch, jnp.float32)
  root = jnp.asarray(_BODY_TO_CAMERA) @ _axis_rotation(0, pitch) @ _axis_rotation(1, yaw)
  lo, hi = spec.scale_range
  s = jax.random.uniform(keys("scale"), (n, 1), minval=lo, maxval=hi)
  t = spec.shift_std * jax.random.normal(keys("shift"), (n, 2))
  return np.asarray(root), np.asarray(jnp.concatenate([s, t], -1))


def sample_betas(key, n: int, body_model, spec: SceneSpec) -> np.ndarray:
  """`[n, NB]` shapes, N(0, betas_std^2)."""
  return np.asarray(spec.betas_std * jax.random.normal(key, (n, body_model.num_betas)))


def backgrounds(key, batch: int, size: int, kind: str = "gradient"):
  """Random backgrounds `[batch, size, size, 3]` in [0, 1] (`SceneSpec.background`)."""
  if kind == "gradient":
    c0, c1 = jnp.split(jax.random.uniform(key, (batch, 1, 1, 6)), 2, axis=-1)
    ramp = c0 + (c1 - c0) * jnp.linspace(0.0, 1.0, size)[None, :, None, None]  # down the rows
    return jnp.broadcast_to(ramp, (batch, size, size, 3))
  if kind != "stripes":
    raise ValueError(f"background must be one of {BACKGROUNDS}, got {kind!r}")
  k_color, k_angle, k_freq, k_phase = jax.random.split(key, 4)
  colors = jax.random.uniform(k_color, (batch, 3, 1, 1, 3))
  angle = jax.random.uniform(k_angle, (batch, 2, 1, 1), maxval=jnp.pi)
  cycles = jax.random.uniform(k_freq, (batch, 2, 1, 1), minval=2.0, maxval=8.0)
  phase = jax.random.uniform(k_phase, (batch, 2, 1, 1), maxval=2 * jnp.pi)
  v, u = jnp.meshgrid(*(jnp.linspace(0.0, 1.0, size),) * 2, indexing="ij")
  along = u * jnp.cos(angle) + v * jnp.sin(angle)
  w = (0.5 + 0.5 * jnp.sin(2 * jnp.pi * cycles * along + phase))[..., None]  # [B, 2, S, S, 1]
  first = colors[:, 0] + (colors[:, 1] - colors[:, 0]) * w[:, 0]
  return first + (colors[:, 2] - first) * 0.6 * w[:, 1]


@functools.partial(jax.jit, static_argnames=("size", "focal_length", "background"))
def _render_chunk(
  key, body_model, rotmat, betas, cam, size: int, focal_length: float, background="gradient"
):
  from jhmr.render import rasterizer, shading  # noqa: PLC0415 (render sits below data)

  out = body_model(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set="openpose25")
  cam_t = cameras.weak_perspective_to_translation(cam, focal_length, size)
  center = jnp.array([size / 2, size / 2], jnp.float32)
  frags = rasterizer.rasterize(
    out.vertices + cam_t[:, None], body_model.faces, focal_length, center, (size, size)
  )
  k_color, k_light, k_background = jax.random.split(key, 3)
  b = rotmat.shape[0]
  color = jax.random.uniform(k_color, (b, 1, 1, 3), minval=0.4, maxval=0.95)
  light = jnp.concatenate([jax.random.normal(k_light, (b, 2)) * 0.5, -jnp.ones((b, 1))], -1)
  body = shading.shade(frags, jnp.broadcast_to(color, (b, size, size, 3)), light)
  image = jnp.where(frags.mask[..., None], body, backgrounds(k_background, b, size, background))
  return {
    "image": jnp.round(image * 255).astype(jnp.uint8),
    "joints_3d": out.joints + cam_t[:, None],
    "keypoints_3d": out.keypoints + cam_t[:, None],
    "cam_t": cam_t,
  }


def _render(key, body_model, rotmat, betas, cam, spec: SceneSpec, chunk: int = 64) -> dict:
  """Renders in fixed-size chunks (one compiled shape) -> dict of numpy `[n, ...]`."""
  n, parts = rotmat.shape[0], []
  for i, start in enumerate(range(0, n, chunk)):
    args = [np.asarray(x[start : start + chunk]) for x in (rotmat, betas, cam)]
    pad = chunk - len(args[0])
    args = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x for x in args]
    part = _render_chunk(
      jax.random.fold_in(key, i), body_model, *args, spec.crop_size, spec.focal_length,
      spec.background,
    )  # fmt: skip
    parts.append({k: np.asarray(v[: chunk - pad]) for k, v in part.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@functools.partial(jax.jit, static_argnames=("swap_pairs", "size", "temporal"))
def _detect(key, keypoints_3d, focal_length, noise, swap_pairs, size: int, temporal: bool):
  lead = keypoints_3d.shape[:-2]
  camera = observations.Camera(
    rotation=jnp.broadcast_to(jnp.eye(3), lead + (3, 3)),
    translation=jnp.zeros(lead + (3,)),
    focal_length=jnp.full(lead + (2,), focal_length),
    principal_point=jnp.full(lead + (2,), size / 2),
    image_size=(size, size),
  )
  return observations.synthesize_keypoints(
    key, keypoints_3d, camera, noise, np.asarray(swap_pairs).reshape(-1, 2), temporal=temporal
  )


def make_people(
  keys: KeySeq,
  body_model,
  body_pose,
  betas,
  root,
  cam,
  spec: SceneSpec,
  *,
  group=None,
  frame=None,
  sequence_length: int = 0,
) -> PersonExample:
  """Renders and observes n posed people -> a `PersonExample` batch `[n]` (numpy).

  Args:
    keys: names used: `render`, `detect`.
    body_model: a `jhmr.body.BodyModel`.
    body_pose: `[n, 23, 3]` axis-angle; betas `[n, NB]`; root `[n, 3, 3]` camera-frame root
      orientation; cam `[n, 3]` weak-perspective crop camera (s, tx, ty).
    spec: the scene.
    group, frame: `[n]` ids (default: each row its own group, frame 0).
    sequence_length: > 0 when rows are `n / sequence_length` sequences of consecutive frames;
      the detector noise is then AR(1) along each sequence.
  """
  n, size, f = len(body_pose), spec.crop_size, spec.focal_length
  rotmat = np.concatenate(
    [np.asarray(root)[:, None], np.asarray(rotations.axis_angle_to_matrix(body_pose))], 1
  )
  rendered = _render(keys("render"), body_model, rotmat, np.asarray(betas), np.asarray(cam), spec)
  kp3d = rendered["keypoints_3d"]
  if sequence_length:  # time must lead for the AR(1) noise: [T, S, K, 3]
    kp3d = kp3d.reshape(-1, sequence_length, *kp3d.shape[1:]).swapaxes(0, 1)
  pairs = tuple(map(tuple, observations.left_right_pairs(body_model.joint_names("openpose25"))))
  temporal = bool(sequence_length)
  kp, conf = _detect(keys("detect"), jnp.asarray(kp3d), f, spec.noise, pairs, size, temporal)
  kp, conf = np.asarray(kp), np.asarray(conf)
  if sequence_length:
    kp, conf = kp.swapaxes(0, 1).reshape(n, -1, 2), conf.swapaxes(0, 1).reshape(n, -1)
  intrinsics = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)
  joints = rendered["joints_3d"]
  exact = joints[..., :2] / joints[..., 2:] * f + size / 2
  inside = np.all((exact >= 0) & (exact < size), -1) & (joints[..., 2] > 0)
  full_pose = np.asarray(rotations.matrix_to_axis_angle(jnp.asarray(rotmat)), np.float32)
  ones, zeros = np.ones(n, np.float32), np.zeros(n, np.int32)
  return PersonExample(
    image=rendered["image"],
    crop_from_image=np.broadcast_to(np.eye(2, 3, dtype=np.float32), (n, 2, 3)).copy(),
    intrinsics=np.broadcast_to(intrinsics, (n, 3, 3)).copy(),
    image_size=np.full((n, 2), size, np.float32),
    keypoints_2d={
      "openpose25": np.concatenate([kp, conf[..., None]], -1).astype(np.float32),
      "smpl24": np.concatenate([exact, inside[..., None]], -1).astype(np.float32),
    },
    global_orient=full_pose[:, 0],
    body_pose=full_pose[:, 1:],
    betas=np.asarray(betas, np.float32),
    cam_t=rendered["cam_t"].astype(np.float32),
    joints_3d=joints.astype(np.float32),
    joint_visibility=inside.astype(np.float32),
    occlusion=np.zeros((n, size, size), bool),
    has_smpl=ones,
    has_3d=ones,
    group=np.arange(n, dtype=np.int32) if group is None else np.asarray(group, np.int32),
    frame=zeros if frame is None else np.asarray(frame, np.int32),
  )


def single_view_set(keys: KeySeq, n: int, body_model, source: PoseSource, spec: SceneSpec):
  """n independent people, one view each."""
  body_pose = source.sample(keys("poses"), n, body_model, spec)
  root, cam = sample_views(keys.child("views"), n, spec)
  betas = sample_betas(keys("betas"), n, body_model, spec)
  return make_people(keys.child("people"), body_model, body_pose, betas, root, cam, spec)


def multiview_set(
  keys: KeySeq, people: int, views: int, body_model, source: PoseSource, spec: SceneSpec
):
  """`people` persons, each seen from `views` yaw angles spread evenly over +-0.75 yaw_deg (one
  pitch per person); rows of a person are consecutive (`group` = person, `frame` = view)."""
  body_pose = np.repeat(source.sample(keys("poses"), people, body_model, spec), views, 0)
  betas = np.repeat(sample_betas(keys("betas"), people, body_model, spec), views, 0)
  yaw = np.tile(np.linspace(-0.75, 0.75, views) * np.deg2rad(spec.yaw_deg), people)
  pitch = jax.random.uniform(keys("pitch"), (people,), minval=-1.0, maxval=1.0)
  pitch = np.repeat(np.asarray(pitch) * np.deg2rad(spec.pitch_deg), views)
  root, cam = sample_views(keys.child("views"), people * views, spec, yaw=yaw, pitch=pitch)
  group, frame = np.repeat(np.arange(people), views), np.tile(np.arange(views), people)
  return make_people(
    keys.child("people"), body_model, body_pose, betas, root, cam, spec, group=group, frame=frame
  )


def video_set(
  keys: KeySeq, sequences: int, length: int, body_model, source: PoseSource, spec: SceneSpec
):
  """`sequences` clips of `length` frames: poses from `source.sequences`, a body that turns
  slowly (yaw sweeps 0.5 yaw_deg over the clip from a random start, one pitch per clip) before a
  steady camera; rows of a clip are consecutive (`group` = clip, `frame` = time)."""
  body_pose = source.sequences(keys.child("poses"), sequences, length, body_model, spec)
  body_pose = body_pose.reshape(sequences * length, 23, 3)
  betas = np.repeat(sample_betas(keys("betas"), sequences, body_model, spec), length, 0)
  start = np.asarray(jax.random.uniform(keys("yaw"), (sequences, 1), minval=-0.5, maxval=0.5))
  yaw = (start + np.linspace(0.0, 0.5, length)[None]).reshape(-1) * np.deg2rad(spec.yaw_deg)
  pitch = jax.random.uniform(keys("pitch"), (sequences,), minval=-1.0, maxval=1.0)
  pitch = np.repeat(np.asarray(pitch) * np.deg2rad(spec.pitch_deg), length)
  root, cam = sample_views(keys.child("views"), sequences * length, spec, yaw=yaw, pitch=pitch)
  cam = np.repeat(cam[::length], length, 0)  # a steady camera per clip
  group, frame = np.repeat(np.arange(sequences), length), np.tile(np.arange(length), sequences)
  return make_people(
    keys.child("people"), body_model, body_pose, betas, root, cam, spec,
    group=group, frame=frame, sequence_length=length,
  )  # fmt: skip


def pose_6d(example: PersonExample) -> np.ndarray:
  """`[B, 144]` ScoreHMR 6D pose (global orientation first) of a batch."""
  rotmat = jnp.asarray(example.rotmat())
  return np.asarray(rotations.matrix_to_rot6d(rotmat)).reshape(len(rotmat), -1)
