"""Synthetic people for the ScoreHMR main job: poses, rendered crops, noisy 2D detections.

Everything is generated from the free body model, so the default job needs no download:
* poses: a random mix of two `body_demo.DEMO_POSES` plus Gaussian joint noise (`procedural`), or
  frames of real motion (`from_motion`, e.g. CMU via `jhmr.data.mocap`);
* a ScoreHMR-style camera: R = I, focal length f, the body facing the camera (random yaw/pitch)
  and a weak-perspective crop camera (s, tx, ty) converted with `weak_perspective_to_translation`;
* a crop [S, S, 3]: the shaded body (random colour and light) on a random two-colour gradient;
* 2D keypoints (BODY_25) with detector-like noise from `jhmr.data.observations`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.data import observations
from jhmr.geometry import cameras, rotations
from jhmr.pipelines.body_demo import DEMO_POSES, pose_parameters
from jhmr.render import rasterizer, shading

_BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SceneSpec:
  """image_size px; focal_length px; cam scale s range; tx/ty std; yaw/pitch ranges (deg);
  joint noise std (rad); betas std; keypoint noise model."""

  image_size: int = 64
  focal_length: float = 5000.0
  scale_range: tuple[float, float] = (0.8, 1.0)
  shift_std: float = 0.05
  yaw_deg: float = 60.0
  pitch_deg: float = 10.0
  joint_std: float = 0.25
  betas_std: float = 0.8
  noise: observations.KeypointNoise = observations.KeypointNoise()


def _rot(axis: int, angle):
  c, s = jnp.cos(angle), jnp.sin(angle)
  z, o = jnp.zeros_like(angle), jnp.ones_like(angle)
  rows = {
    0: [[o, z, z], [z, c, -s], [z, s, c]],
    1: [[c, z, s], [z, o, z], [-s, z, c]],
  }[axis]
  return jnp.stack([jnp.stack(r, -1) for r in rows], -2)


def procedural_poses(key, n: int, body_model, spec: SceneSpec) -> dict:
  """n random poses: {'body_pose' [n, 23, 3] axis-angle, 'betas' [n, NB]} (root not included)."""
  names = tuple(sorted(DEMO_POSES))
  _, bank = pose_parameters(names, body_model.joint_names("smpl24"))
  k_pick, k_mix, k_noise, k_betas = jax.random.split(key, 4)
  pick = jax.random.randint(k_pick, (n, 2), 0, len(names))
  mix = jax.random.uniform(k_mix, (n, 1, 1))
  pose = mix * bank[pick[:, 0]] + (1 - mix) * bank[pick[:, 1]]
  pose = pose + spec.joint_std * jax.random.normal(k_noise, pose.shape)
  betas = spec.betas_std * jax.random.normal(k_betas, (n, body_model.num_betas))
  return {"body_pose": pose, "betas": betas}


def from_motion(key, body_pose, n: int, body_model, spec: SceneSpec) -> dict:
  """n frames drawn from a motion's body_pose [T, 23, 3] (e.g. CMU), with random shapes."""
  k_pick, k_betas = jax.random.split(key)
  idx = jax.random.randint(k_pick, (n,), 0, body_pose.shape[0])
  betas = spec.betas_std * jax.random.normal(k_betas, (n, body_model.num_betas))
  return {"body_pose": jnp.asarray(body_pose)[idx], "betas": betas}


def random_views(key, n: int, spec: SceneSpec, yaw=None, pitch=None) -> dict:
  """Root orientation and crop camera: {'global_orient' [n, 3, 3], 'cam' [n, 3]}.

  yaw / pitch [n] radians (about the body's vertical / side axis) are random unless given.
  """
  k_yaw, k_pitch, k_s, k_t = jax.random.split(key, 4)
  if yaw is None:
    yaw = jax.random.uniform(k_yaw, (n,), minval=-1.0, maxval=1.0) * np.deg2rad(spec.yaw_deg)
  if pitch is None:
    pitch = jax.random.uniform(k_pitch, (n,), minval=-1.0, maxval=1.0)
    pitch = pitch * np.deg2rad(spec.pitch_deg)
  root = jnp.asarray(_BODY_TO_CAMERA) @ _rot(0, pitch) @ _rot(1, yaw)
  s = jax.random.uniform(k_s, (n, 1), minval=spec.scale_range[0], maxval=spec.scale_range[1])
  t = spec.shift_std * jax.random.normal(k_t, (n, 2))
  return {"global_orient": root, "cam": jnp.concatenate([s, t], -1)}


def pose_to_matrices(people: dict) -> dict:
  """Adds 'rotmat' [n, 24, 3, 3] (global orient first) from 'global_orient' and 'body_pose'."""
  body = rotations.axis_angle_to_matrix(jnp.asarray(people["body_pose"]))
  rotmat = jnp.concatenate([people["global_orient"][:, None], body], axis=1)
  return dict(people, rotmat=rotmat)


def _render_chunk(key, body_model, rotmat, betas, cam, spec: SceneSpec):
  size = spec.image_size
  out = body_model(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set="openpose25")
  cam_t = cameras.weak_perspective_to_translation(cam, spec.focal_length, size)
  verts = out.vertices + cam_t[:, None]
  center = jnp.array([size / 2, size / 2], jnp.float32)
  frags = rasterizer.rasterize(verts, body_model.faces, spec.focal_length, center, (size, size))
  k_c, k_l, k_b = jax.random.split(key, 3)
  b = rotmat.shape[0]
  color = jax.random.uniform(k_c, (b, 1, 1, 3), minval=0.4, maxval=0.95)
  light = jnp.concatenate(
    [jax.random.normal(k_l, (b, 2)) * 0.5, -jnp.ones((b, 1))], axis=-1
  )  # towards the camera, jittered
  body = shading.shade(frags, jnp.broadcast_to(color, (b, size, size, 3)), light)
  c0, c1 = jnp.split(jax.random.uniform(k_b, (b, 1, 1, 6)), 2, axis=-1)
  ramp = jnp.linspace(0.0, 1.0, size)[None, :, None, None]
  background = c0 + (c1 - c0) * ramp
  image = jnp.where(frags.mask[..., None], body, background)
  keypoints = cameras.perspective_projection(
    out.keypoints, cam_t, spec.focal_length, jnp.broadcast_to(center, (b, 2))
  )
  return {
    "image": jnp.round(image * 255).astype(jnp.uint8),
    "joints3d": out.joints - out.joints[:, :1],
    "keypoints3d": out.keypoints + cam_t[:, None],
    "keypoints_px": keypoints,
    "cam_t": cam_t,
  }


_render_chunk_jit = jax.jit(_render_chunk, static_argnames=("spec",))


def render(key, body_model, people: dict, spec: SceneSpec, chunk: int = 64) -> dict:
  """Renders people ({'rotmat', 'betas', 'cam'}) -> adds image [n, S, S, 3] uint8, joints3d
  [n, 24, 3] root-centred (m), keypoints3d [n, K, 3] camera frame, keypoints_px [n, K, 2]
  exact pixels, cam_t [n, 3]."""
  fn = _render_chunk_jit
  n = people["rotmat"].shape[0]
  parts = []
  for i, start in enumerate(range(0, n, chunk)):
    sl = slice(start, start + chunk)
    rot, betas, cam = people["rotmat"][sl], people["betas"][sl], people["cam"][sl]
    pad = chunk - rot.shape[0]  # one compiled shape for every chunk
    padded = [jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]) for x in (rot, betas, cam)]
    part = fn(jax.random.fold_in(key, i), body_model, *padded, spec)
    parts.append(jax.tree.map(lambda x, m=chunk - pad: np.asarray(x[:m]), part))
  rendered = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  return dict(people, **rendered)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _synthesize(key, keypoints3d, camera, noise, temporal):
  return observations.synthesize_keypoints(key, keypoints3d, camera, noise, temporal=temporal)


def detect(key, people: dict, spec: SceneSpec, *, temporal: bool = False) -> dict:
  """Adds detector-like 'keypoints_2d' [n, K, 2] px and 'confidence' [n, K] to rendered people."""
  n = people["keypoints3d"].shape[0]
  size = spec.image_size
  camera = observations.Camera(
    rotation=jnp.broadcast_to(jnp.eye(3), (n, 3, 3)),
    translation=jnp.zeros((n, 3)),
    focal_length=jnp.full((n, 2), spec.focal_length),
    principal_point=jnp.full((n, 2), size / 2),
    image_size=(size, size),
  )
  kp, conf = _synthesize(key, jnp.asarray(people["keypoints3d"]), camera, spec.noise, temporal)
  return dict(people, keypoints_2d=np.asarray(kp), confidence=np.asarray(conf))


def normalise_images(images) -> np.ndarray:
  """uint8 [..., S, S, 3] -> float32 network input, roughly zero mean / unit variance."""
  return (np.asarray(images, np.float32) / 255.0 - 0.5) / 0.25
