"""Synthetic observations of a posed body: cameras, noisy 2D keypoints and rendered person crops.

`observe(key, body_model, global_orient, body_pose, transl, spec)` takes a world-frame pose
sequence `[T, ...]` (one frame, or a video clip), draws a shape, `spec.num_views` cameras around
the person (`jhmr.data.observations`), detector-like 2D keypoints of `spec.joint_set` per view,
and, with `spec.crop_size`, a shaded render of the body on a random background, cropped around
the person (`jhmr.render`). It returns the full SMPL-format ground truth with it. Pure JAX and
deterministic for a key; jit it with `spec` static.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jhmr.data import observations as obs


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """What `observe` synthesises.

  Attributes:
    num_views: cameras around the person (a multi-view rig when > 1).
    joint_set: keypoint set of the body model (`openpose25`, `coco17`, ...).
    crop_size: side of the rendered square person crop; 0 renders nothing.
    crop_expand: crop side = this x the larger side of the body's 2D bounding box.
    num_betas: how many shape coefficients to draw (at most the model's).
    betas_std: std of the drawn shape coefficients.
    camera: camera distribution (full-frame image size, focal lengths, distances, ...).
    noise: 2D keypoint error model (Gaussian part AR(1) over the frames of a clip).
  """

  num_views: int = 1
  joint_set: str = "openpose25"
  crop_size: int = 0
  crop_expand: float = 1.2
  num_betas: int = 10
  betas_std: float = 1.0
  camera: obs.CameraSpec = obs.CameraSpec(image_size=(1000, 1000), focal_range=(1.0, 2.0))
  noise: obs.KeypointNoise = obs.KeypointNoise()


def _background(key, size: int) -> jnp.ndarray:
  """`[size, size, 3]` float in [0, 1]: a smooth random colour field plus a gradient."""
  k_field, k_grad, k_base = jax.random.split(key, 3)
  coarse = jax.random.uniform(k_field, (6, 6, 3))
  field = jax.image.resize(coarse, (size, size, 3), "bilinear")
  ramp = jnp.linspace(-0.5, 0.5, size)
  direction = jax.random.normal(k_grad, (2,))
  grad = ramp[:, None, None] * direction[0] + ramp[None, :, None] * direction[1]
  base = jax.random.uniform(k_base, (3,))
  return jnp.clip(0.5 * field + 0.5 * base + 0.3 * grad, 0.0, 1.0)


def _render_crops(key, body_model, vertices_cam, focal, center, crop_center, crop_scale, size):
  """Shaded crops `[B, size, size, 3]` uint8 of camera-space meshes `[B, V, 3]`."""
  from jhmr import render  # noqa: PLC0415 (render sits below data; imported when rendering)

  ratio = size / crop_scale  # [B]
  crop_focal = focal * ratio[:, None]
  crop_pp = (center - crop_center) * ratio[:, None] + size / 2
  fragments = render.rasterize(vertices_cam, body_model.faces, crop_focal, crop_pp, (size, size))
  batch = vertices_cam.shape[0]
  k_color, k_light, k_bg = jax.random.split(key, 3)
  color = jax.random.uniform(k_color, (batch, 1, 1, 3), minval=0.3, maxval=0.95)
  light = jax.random.normal(k_light, (batch, 3)) + jnp.array([0.0, -0.5, -1.5])
  shaded = render.shade(fragments, jnp.broadcast_to(color, (batch, size, size, 3)), light)
  backgrounds = jax.vmap(lambda k: _background(k, size))(jax.random.split(k_bg, batch))
  image = jnp.where(fragments.mask[..., None], shaded, backgrounds)
  return jnp.round(image * 255).astype(jnp.uint8)


def observe(key, body_model, global_orient, body_pose, transl, spec: SceneSpec) -> dict:
  """Synthetic observations of one person over `T` frames from `V = spec.num_views` cameras.

  Args:
    key: PRNG key.
    body_model: a `jhmr.body.BodyModel`.
    global_orient: `[T, 3]` world axis-angle (SMPL world: Y up).
    body_pose: `[T, 23, 3]` axis-angle.
    transl: `[T, 3]` world translation.
    spec: see `SceneSpec` (static).

  Returns:
    dict of arrays: `betas [spec.num_betas]`; world ground truth `global_orient [T,3]`, `body_pose
    [T,23,3]`, `transl [T,3]`, `joints3d [T,24,3]`, `keypoints3d [T,K,3]`; cameras
    `cam_rotation [V,3,3]`, `cam_translation [V,3]`, `focal_length [V,2]`, `principal_point
    [V,2]`; per view `global_orient_cam [T,V,3]`, `transl_cam [T,V,3]`, `keypoints2d [T,V,K,3]`
    (noisy x, y, conf in full-image pixels), `keypoints2d_true [T,V,K,2]`, crop box `center
    [T,V,2]`, `scale [T,V]`, `keypoints2d_crop [T,V,K,3]` (noisy, crop pixels) and, with
    `spec.crop_size = S`, `image [T,V,S,S,3]` uint8.
  """
  k_betas, k_cam, k_kp, k_render = jax.random.split(key, 4)
  num_frames = global_orient.shape[0]
  if spec.num_betas > body_model.num_betas:
    raise ValueError(f"spec.num_betas {spec.num_betas} > the model's {body_model.num_betas}")
  betas = spec.betas_std * jax.random.normal(k_betas, (spec.num_betas,))
  out = body_model(
    jnp.broadcast_to(betas, (num_frames, betas.shape[0])),
    body_pose,
    global_orient,
    transl,
    joint_set=spec.joint_set,
  )
  target = jnp.mean(out.joints[:, 0], axis=0)
  cams = obs.multiview_rig(k_cam, target, spec.num_views, spec.camera)
  per_view = jax.tree.map(lambda x: x[None], cams)  # [1, V, ...] against [T, 1, ...]
  pairs = obs.left_right_pairs(body_model.joint_names(spec.joint_set))
  keypoints3d = out.keypoints[:, None]
  kp2d, conf = obs.synthesize_keypoints(
    k_kp, keypoints3d, per_view, spec.noise, tuple(map(tuple, pairs)), temporal=True
  )
  exact = per_view.project(keypoints3d)  # [T, V, K, 2]
  vertices2d = per_view.project(out.vertices[:, None])  # [T, V, N, 2]
  lo, hi = vertices2d.min(axis=-2), vertices2d.max(axis=-2)
  center = (lo + hi) / 2
  scale = jnp.max(hi - lo, axis=-1) * spec.crop_expand
  pelvis_rest = body_model.joints_only(betas, jnp.zeros((23, 3)), jnp.zeros(3)).joints[0]
  orient_cam, transl_cam = obs.to_camera_frame(
    per_view, global_orient[:, None], transl[:, None], pelvis_rest
  )
  crop_size = spec.crop_size or 256
  ratio = (crop_size / scale)[..., None]
  kp_crop = jnp.where(
    conf[..., None] > 0, (kp2d - center[..., None, :]) * ratio[..., None] + crop_size / 2, 0.0
  )
  result = {
    "betas": betas,
    "global_orient": global_orient,
    "body_pose": body_pose,
    "transl": transl,
    "joints3d": out.joints,
    "keypoints3d": out.keypoints,
    "cam_rotation": cams.rotation,
    "cam_translation": cams.translation,
    "focal_length": cams.focal_length,
    "principal_point": cams.principal_point,
    "global_orient_cam": orient_cam,
    "transl_cam": transl_cam,
    "keypoints2d": jnp.concatenate([kp2d, conf[..., None]], axis=-1),
    "keypoints2d_true": exact,
    "center": center,
    "scale": scale,
    "keypoints2d_crop": jnp.concatenate([kp_crop, conf[..., None]], axis=-1),
  }
  if spec.crop_size:
    vertices_cam = per_view.to_camera(out.vertices[:, None])  # [T, V, N, 3]
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    focal = jnp.broadcast_to(cams.focal_length, (num_frames,) + cams.focal_length.shape)
    pp = jnp.broadcast_to(cams.principal_point, focal.shape)
    images = _render_crops(
      k_render, body_model, flat(vertices_cam), flat(focal), flat(pp), flat(center), flat(scale),
      spec.crop_size,
    )  # fmt: skip
    result["image"] = images.reshape(center.shape[:2] + images.shape[1:])
  return result
