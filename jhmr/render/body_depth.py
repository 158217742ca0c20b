"""Body-depth conditioning for SD 2 depth-to-image (Diffusion-HPC, research/diffusion_hpc.md §1
steps 6-7, paper Eq. 3).

The chain, each step a pure jnp function (jit-able; image sizes are static):

  camera = spin_camera()                  # SPIN path: 224², f = 5000 px, c = (112, 112)
  camera = fov_camera((512, 512))         # full-image path (BEV): FoV 60° -> f = 443.4 px at 512
  depth, mask = render_body_depth(body_model, params, camera, image_size)  # metres, 0 = background
  d = invert_depth(depth, scaling="full_image" | "spin")  # 0-255 scale, then (max + 50 - d)·[d>0]
  d = mask_occlusions(d, occlusion_mask)  # Eq. 3: d ⊙ ((1 - m) ∩ (d > 0))
  cond = prepare_depth_for_sd(d, 64)      # bicubic to 64², per-image min-max to [-1, 1]

Conventions (OpenCV camera frame, as `jhmr.render.rasterizer`): x right, y down, +z forward;
depth is camera-space z in metres. The original renders with pyrender; its SPIN renderer flips x
of the translation and rotates the mesh 180° about x (OpenCV -> OpenGL), which is the identity on
the OpenCV-frame mesh `vertices + cam_t` rendered here. SPIN's weak-perspective camera
(s, tx, ty) becomes `cam_t = (tx, ty, 2·5000 / (224·s))`
(`jhmr.geometry.cameras.weak_perspective_to_translation`).

Depth scaling to 0-255 comes *before* the inversion (pitfall 1: on metric depth the +50 offset
swamps a ~1 m body and the map degenerates to a silhouette):
- 'full_image' (BEV, `api.py`): d·255 / max(d) per image: the farthest body point is 255.
- 'spin' (`hmr_utils.py`): foreground mapped linearly to [150, 210], near = 150, far = 210.
The inversion (max(d) + 50 - d)·[d > 0] then makes near = large, the farthest point 50 and the
background 0 (SPIN: near 110, far 50; full image: far 50, near 305 - 255·z_min/z_max). The
original then stores 8-bit images; this module keeps float (a sub-level difference).

Occlusion masking follows `api.py` (the only driver that masks): after the inversion, at full
resolution. `prepare_depth_for_sd` equals diffusers' `StableDiffusionDepth2ImgPipeline.
prepare_depth_map` on a given `depth_map` (PyTorch bicubic, a = -0.75, align_corners=False; min and
max over each whole map), except that a constant map gives -1 instead of NaN; it returns NHWC
`[B, h, w, 1]`, the layout of jhmr's latents (diffusers: NCHW `[B, 1, h, w]`).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jhmr.render.rasterizer import rasterize

SPIN_IMAGE_SIZE = 224
SPIN_FOCAL_LENGTH = 5000.0
FULL_IMAGE_FOV_DEG = 60.0
INVERSION_OFFSET = 50.0  # the farthest body point after the inversion
SPIN_DEPTH_RANGE = (150.0, 210.0)  # SPIN path: near, far on the 0-255 scale

Scaling = Literal["full_image", "spin"]


@struct.dataclass
class BodyParams:
  """Body-model parameters of B people in the camera frame (a batched `jhmr.data.PersonExample`
  has the same fields and works as well).

  Attributes:
    global_orient: [B, 3] axis-angle (rad), camera frame.
    body_pose: [B, 23, 3] axis-angle (rad), parent relative.
    betas: [B, NB] shape coefficients (NB <= the model's; zero-padded).
    cam_t: [B, 3] metres, added to the body model's output.
  """

  global_orient: jax.Array
  body_pose: jax.Array
  betas: jax.Array
  cam_t: jax.Array


@struct.dataclass
class PinholeCamera:
  """Intrinsics of the depth render (OpenCV pinhole, no rotation: the body is in camera frame).

  Attributes:
    focal_length: [] or [B] pixels (fx = fy).
    camera_center: [2] or [B, 2] principal point (cx, cy) in pixels.
  """

  focal_length: jax.Array
  camera_center: jax.Array


def _hw(image_size) -> tuple[int, int]:
  hw = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
  if len(hw) != 2 or min(hw) < 1:
    raise ValueError(f"image_size must be a positive int or (H, W), got {image_size}")
  return int(hw[0]), int(hw[1])


def spin_camera(
  image_size: int = SPIN_IMAGE_SIZE, focal_length: float = SPIN_FOCAL_LENGTH
) -> PinholeCamera:
  """SPIN's render camera: `image_size`² crop, f = 5000 px, principal point at the centre."""
  s = _hw(image_size)[0]
  return PinholeCamera(
    focal_length=jnp.float32(focal_length), camera_center=jnp.full((2,), s / 2.0, jnp.float32)
  )


def fov_focal_length(image_size, fov_deg: float = FULL_IMAGE_FOV_DEG) -> float:
  """Focal length (px) of a camera whose field of view across the larger image side is
  `fov_deg`: max(H, W) / 2 / tan(fov / 2) (BEV: 443.4 px at 512, FoV 60°)."""
  if not 0.0 < fov_deg < 180.0:
    raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
  return max(_hw(image_size)) / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def fov_camera(image_size, fov_deg: float = FULL_IMAGE_FOV_DEG) -> PinholeCamera:
  """Full-image (BEV) camera: FoV `fov_deg` across the larger side, principal point at the
  centre. `image_size`: int or (H, W)."""
  h, w = _hw(image_size)
  return PinholeCamera(
    focal_length=jnp.float32(fov_focal_length((h, w), fov_deg)),
    camera_center=jnp.asarray([w / 2.0, h / 2.0], jnp.float32),
  )


@functools.partial(jax.jit, static_argnames=("image_size",))
def render_body_depth(body_model, params, camera: PinholeCamera, image_size):
  """Camera-space depth of the posed bodies (no culling, as pyrender's default).

  Args:
    body_model: a `jhmr.body.BodyModel`.
    params: `BodyParams` (or any object with its fields), batch B.
    camera: `PinholeCamera` (`spin_camera()` / `fov_camera(image_size)`).
    image_size: static int or (H, W).

  Returns:
    depth [B, H, W] float32 metres (0 on background), mask [B, H, W] bool silhouette.
  """
  hw = _hw(image_size)
  out = body_model(params.betas, params.body_pose, params.global_orient, params.cam_t)
  if out.vertices.ndim != 3:
    raise ValueError(f"params must carry one batch axis [B], got vertices {out.vertices.shape}")
  frags = rasterize(out.vertices, body_model.faces, camera.focal_length, camera.camera_center, hw)
  return frags.depth, frags.mask


def _check_depth(depth, name="depth"):
  depth = jnp.asarray(depth)
  if depth.ndim != 3:
    raise ValueError(f"{name} must be [B, H, W], got shape {depth.shape}")
  if not jnp.issubdtype(depth.dtype, jnp.floating):
    depth = depth.astype(jnp.float32)
  return depth


def scale_depth(depth, scaling: Scaling = "full_image"):
  """Metric depth [B, H, W] (0 = background) -> the 0-255 scale of the original renders.

  'full_image': d·255 / max(d) (far = 255). 'spin': foreground mapped linearly to [150, 210]
  (near = 150, far = 210; a flat body maps to 150). Background stays 0; a map without
  foreground stays all 0.
  """
  depth = _check_depth(depth)
  fg = depth > 0
  big = jnp.finfo(depth.dtype).max
  hi = jnp.max(jnp.where(fg, depth, 0.0), axis=(1, 2), keepdims=True)
  if scaling == "full_image":
    scaled = depth * 255.0 / jnp.where(hi > 0, hi, 1.0)
  elif scaling == "spin":
    lo = jnp.min(jnp.where(fg, depth, big), axis=(1, 2), keepdims=True)
    span = hi - lo
    near, far = SPIN_DEPTH_RANGE
    unit = jnp.where(span > 0, (depth - lo) / jnp.where(span > 0, span, 1.0), 0.0)
    scaled = near + (far - near) * unit
  else:
    raise ValueError(f"scaling must be 'full_image' or 'spin', got {scaling!r}")
  return jnp.where(fg, scaled, 0.0)


def invert_depth(depth, scaling: Scaling | None = "full_image"):
  """Diffusion-HPC's inverse depth: `d' = (max(d) + 50 - d)·[d > 0]` on 0-255-scaled depth.

  Args:
    depth: [B, H, W] metric depth (0 = background), scaled first by `scale_depth(depth,
      scaling)`; `scaling=None` takes `depth` as already on the 0-255 scale.
    scaling: 'full_image' (BEV / FoV path), 'spin' (SPIN path) or None.

  Returns:
    [B, H, W] float: near = large, the farthest body point = 50, background = 0 (max per image).
  """
  d = _check_depth(depth) if scaling is None else scale_depth(depth, scaling)
  hi = jnp.max(d, axis=(1, 2), keepdims=True)
  return jnp.where(d > 0, hi + INVERSION_OFFSET - d, 0.0)


def mask_occlusions(depth, occlusion_mask):
  """Paper Eq. 3: `d* = d ⊙ ((1 - m) ∩ (d > 0))`: zero the depth under occluders.

  Args:
    depth: [B, H, W] depth map (any scale; background 0), e.g. `invert_depth`'s output.
    occlusion_mask: [B, H, W] bool, True where a non-person object covers the pixel (Mask R-CNN's
      non-person masks, at the depth map's resolution).

  Returns:
    [B, H, W], same dtype as `depth`.
  """
  depth = _check_depth(depth)
  m = jnp.asarray(occlusion_mask)
  if m.shape != depth.shape:
    raise ValueError(
      f"occlusion_mask must have the depth map's shape {tuple(depth.shape)} ([B, H, W]), "
      f"got {tuple(m.shape)}"
    )
  if m.dtype != jnp.bool_:
    raise ValueError(
      f"occlusion_mask must be bool (True = occluded), got dtype {m.dtype}; pass `mask > 0`"
    )
  return jnp.where(~m & (depth > 0), depth, jnp.zeros((), depth.dtype))


def _cubic(t, a=-0.75):
  """PyTorch's cubic convolution weights for offsets t-1, t, 1-t, 2-t (t in [0, 1))."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` interpolation matrix equal to torch `interpolate(mode='bicubic',
  align_corners=False)` along one axis (no antialiasing, indices clamped at the border)."""
  scale = n_in / n_out
  src = (np.arange(n_out) + 0.5) * scale - 0.5
  i0 = np.floor(src).astype(np.int64)
  w = _cubic(src - i0)
  m = np.zeros((n_out, n_in), np.float64)
  for k in range(4):
    idx = np.clip(i0 - 1 + k, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, k])
  return m.astype(np.float32)


def prepare_depth_for_sd(depth, latent_size=64):
  """SD 2 depth conditioning: bicubic resize to the latent size, per-image min-max to [-1, 1].

  Equal to diffusers' `StableDiffusionDepth2ImgPipeline.prepare_depth_map(image, depth_map, ...)`
  for a given `depth_map` (latent size = image size // 8; 64 at 512²), in NHWC.

  Args:
    depth: [B, H, W] (larger = nearer, e.g. `invert_depth`'s output).
    latent_size: int or (h, w), static.

  Returns:
    [B, h, w, 1] float32 in [-1, 1] (a constant map gives -1, where diffusers gives NaN).
  """
  depth = _check_depth(depth)
  h, w = _hw(latent_size)
  rows = jnp.asarray(bicubic_matrix(depth.shape[1], h))
  cols = jnp.asarray(bicubic_matrix(depth.shape[2], w))
  d = jnp.einsum("yh,bhw,xw->byx", rows, depth.astype(jnp.float32), cols)
  lo = d.min(axis=(1, 2), keepdims=True)
  span = d.max(axis=(1, 2), keepdims=True) - lo
  return (2.0 * (d - lo) / jnp.where(span > 0, span, 1.0) - 1.0)[..., None]
