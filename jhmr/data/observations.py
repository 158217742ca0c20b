"""Synthetic observations of a known body: cameras, detector-like 2D keypoints, noisy poses.

Everything is pure JAX (jit- and vmap-able) and deterministic for a `jax.random` key:

* `Camera` (OpenCV pinhole, as `jhmr.geometry.cameras`: x right, y down, z forward; world ->
  camera by `rotation`, `translation`) and `look_at`.
* `random_camera(key, target, spec)`: a camera on a sphere around the person, looking at it, with
  focal length, distance, azimuth, elevation, roll and aim jitter drawn from `CameraSpec`.
* `multiview_rig(key, target, num_views, spec)`: V cameras spread evenly in azimuth around the
  person (leading axis V).
* `synthesize_keypoints(key, keypoints3d, camera, noise)`: projection + the detector error model
  `KeypointNoise` (Gaussian pixel noise scaled with person size, outliers, left/right swaps,
  missing joints with confidence 0, joints outside the image dropped). With `temporal=True` the
  leading axis is time and the Gaussian part is an AR(1) process (video clips).
* `corrupt_pose(key, params, level)`: what a regressor (HMR/PARE/HMR2) gets wrong, per
  `PoseCorruption`: per-joint rotation noise growing along the kinematic chain, global
  orientation error, shape (betas) noise, and depth-along-the-ray / translation error.
* `to_camera_frame(...)`: SMPL global orientation and translation seen from a camera.

World axes are SMPL's (Y up; the rest body faces +Z, left = +X).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jhmr.geometry import cameras, rotations

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


@struct.dataclass
class Camera:
  """A pinhole camera (leading batch axes allowed on every array).

  Attributes:
    rotation: `[..., 3, 3]` world -> camera rotation.
    translation: `[..., 3]` world -> camera translation (`x_cam = R x + t`).
    focal_length: `[..., 2]` (fx, fy) in pixels.
    principal_point: `[..., 2]` (cx, cy) in pixels.
    image_size: (height, width) in pixels (static).
  """

  rotation: jnp.ndarray
  translation: jnp.ndarray
  focal_length: jnp.ndarray
  principal_point: jnp.ndarray
  image_size: tuple[int, int] = struct.field(pytree_node=False, default=(256, 256))

  @property
  def position(self) -> jnp.ndarray:
    """`[..., 3]` camera centre in world coordinates (`-R^T t`)."""
    return -jnp.einsum("...ji,...j->...i", self.rotation, self.translation)

  def to_camera(self, points: jnp.ndarray) -> jnp.ndarray:
    """World points `[..., N, 3]` -> camera coordinates `[..., N, 3]`."""
    return jnp.einsum("...ij,...nj->...ni", self.rotation, points) + self.translation[..., None, :]

  def project(self, points: jnp.ndarray) -> jnp.ndarray:
    """World points `[..., N, 3]` -> pixels `[..., N, 2]`."""
    return cameras.perspective_projection(
      points, self.translation, self.focal_length, self.principal_point, self.rotation
    )


def look_at(eye: jnp.ndarray, target: jnp.ndarray, up=(0.0, 1.0, 0.0)):
  """World -> camera `(rotation [..., 3, 3], translation [..., 3])` of an OpenCV camera at `eye`
  looking at `target` with image 'up' (-y) along the world `up` direction."""
  eye, target = jnp.asarray(eye), jnp.asarray(target)
  forward = target - eye
  forward = forward / jnp.linalg.norm(forward, axis=-1, keepdims=True)
  right = jnp.cross(forward, jnp.broadcast_to(jnp.asarray(up, eye.dtype), forward.shape))
  right = right / jnp.linalg.norm(right, axis=-1, keepdims=True)
  down = jnp.cross(forward, right)
  rotation = jnp.stack([right, down, forward], axis=-2)
  return rotation, -jnp.einsum("...ij,...j->...i", rotation, eye)


@struct.dataclass
class CameraSpec:
  """Distribution of random cameras around a person (angles in degrees, lengths in metres).

  Attributes:
    image_size: (height, width) in pixels.
    focal_range: focal length range in units of the image's larger side (1.0 ~ 53 deg FOV).
    distance_range: camera-to-target distance range.
    azimuth_range: horizontal angle range around the person; 0 is in front (+Z side).
    elevation_range: camera height angle range (positive = looking down).
    roll_std: std of the roll about the viewing axis.
    aim_std: std of the aim point's offset from the target (per axis).
    principal_std: std of the principal point's offset from the image centre, in pixels.

  A pytree (only `image_size` is static): one compiled function serves every spec of a size.
  """

  image_size: tuple[int, int] = struct.field(pytree_node=False, default=(256, 256))
  focal_range: tuple[float, float] = (1.0, 2.0)
  distance_range: tuple[float, float] = (3.0, 6.0)
  azimuth_range: tuple[float, float] = (-180.0, 180.0)
  elevation_range: tuple[float, float] = (-10.0, 30.0)
  roll_std: float = 3.0
  aim_std: float = 0.05
  principal_std: float = 0.0


def _uniform(key, shape, bounds) -> jnp.ndarray:
  return jax.random.uniform(key, shape, minval=bounds[0], maxval=bounds[1])


def _probability(p) -> jnp.ndarray:
  return jnp.asarray(p, jnp.float32)


def _camera_on_sphere(key, target, azimuth_deg, spec: CameraSpec) -> Camera:
  shape = azimuth_deg.shape
  k_dist, k_elev, k_focal, k_roll, k_aim, k_pp = jax.random.split(key, 6)
  target = jnp.asarray(target, jnp.float32)
  distance = _uniform(k_dist, shape, spec.distance_range)
  elevation = jnp.radians(_uniform(k_elev, shape, spec.elevation_range))
  azimuth = jnp.radians(azimuth_deg)
  direction = jnp.stack(
    [
      jnp.sin(azimuth) * jnp.cos(elevation),
      jnp.sin(elevation),
      jnp.cos(azimuth) * jnp.cos(elevation),
    ],
    axis=-1,
  )
  aim = target + spec.aim_std * jax.random.normal(k_aim, shape + (3,))
  rotation, _ = look_at(target + distance[..., None] * direction, aim)
  roll = jnp.radians(spec.roll_std) * jax.random.normal(k_roll, shape)
  roll_matrix = rotations.axis_angle_to_matrix(roll[..., None] * jnp.array([0.0, 0.0, 1.0]))
  rotation = roll_matrix @ rotation
  eye = target + distance[..., None] * direction
  translation = -jnp.einsum("...ij,...j->...i", rotation, eye)
  height, width = spec.image_size
  focal = float(max(height, width)) * _uniform(k_focal, shape, spec.focal_range)
  center = jnp.array([width / 2.0, height / 2.0]) + spec.principal_std * jax.random.normal(
    k_pp, shape + (2,)
  )
  return Camera(rotation, translation, jnp.stack([focal, focal], -1), center, spec.image_size)


def random_camera(key: jax.Array, target: jnp.ndarray, spec: CameraSpec | None = None) -> Camera:
  """One random camera looking at `target` `[3]` (e.g. the pelvis); see `CameraSpec`."""
  spec = CameraSpec() if spec is None else spec
  k_az, key = jax.random.split(key)
  azimuth = _uniform(k_az, (), spec.azimuth_range)
  return _camera_on_sphere(key, target, azimuth, spec)


def multiview_rig(
  key: jax.Array, target: jnp.ndarray, num_views: int, spec: CameraSpec | None = None
) -> Camera:
  """`num_views` cameras around `target`, evenly spaced in azimuth from a random start (each
  jittered by up to a quarter of the spacing); arrays get a leading axis V."""
  spec = CameraSpec() if spec is None else spec
  k_start, k_jitter, key = jax.random.split(key, 3)
  spacing = 360.0 / num_views
  start = _uniform(k_start, (), spec.azimuth_range)
  jitter = _uniform(k_jitter, (num_views,), (-spacing / 4, spacing / 4))
  azimuth = start + spacing * jnp.arange(num_views) + jitter
  return _camera_on_sphere(key, target, azimuth, spec)


@struct.dataclass
class KeypointNoise:
  """Detector-like 2D keypoint errors (sizes relative to the person's 2D bounding-box side).

  Attributes:
    sigma: std of the Gaussian pixel noise, as a fraction of the person size (0.01 on a 200 px
      person is 2 px).
    outlier_prob: per-joint chance of a gross error (the joint lands elsewhere).
    outlier_sigma: std of the gross error, as a fraction of the person size.
    swap_prob: per left/right pair chance that the detector swaps the two joints.
    missing_prob: per-joint chance that the joint is not detected (confidence 0, position 0).
    temporal_rho: AR(1) coefficient of the Gaussian noise along time (`temporal=True` only); the
      marginal std stays `sigma`.
    conf_range: confidence of good detections, uniform in this range; the confidence drops by
      `conf_drop` times the error in units of sigma (clipped to [0.05, 1]).
    conf_drop: see conf_range.
    drop_outside: joints projecting outside the image get confidence 0 (joints behind the
      camera always do).

  A pytree: its numbers may be traced (one compiled function serves every noise setting).
  """

  sigma: float = 0.01
  outlier_prob: float = 0.03
  outlier_sigma: float = 0.25
  swap_prob: float = 0.02
  missing_prob: float = 0.05
  temporal_rho: float = 0.5
  conf_range: tuple[float, float] = (0.6, 1.0)
  conf_drop: float = 0.05
  drop_outside: bool = True

  @classmethod
  def none(cls) -> KeypointNoise:
    """Exact projections, confidence 1 inside the image."""
    return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, (1.0, 1.0), 0.0)


def left_right_pairs(names: Sequence[str]) -> np.ndarray:
  """`[P, 2]` indices of left/right joint pairs found by name (`left_x`/`right_x`, `lX`/`rX`,
  `LeftX`/`RightX`, `x_L`/`x_R`, ...)."""
  index = {n: i for i, n in enumerate(names)}
  rules = (("left", "right"), ("Left", "Right"), ("l", "r"), ("L", "R"))
  pairs = set()
  for name, i in index.items():
    for left, right in rules:
      mates = []
      if name.startswith(left):
        mates.append(right + name[len(left) :])
      if name.endswith(left):
        mates.append(name[: -len(left)] + right)
      for mate in mates:
        if mate != name and mate in index:
          pairs.add((min(i, index[mate]), max(i, index[mate])))
  return np.asarray(sorted(pairs), np.int32).reshape(-1, 2)


def _swap(points: jnp.ndarray, pairs: np.ndarray, swap: jnp.ndarray) -> jnp.ndarray:
  """Swaps `points[..., a]` and `points[..., b]` for each pair `(a, b)` where `swap[..., p]`."""
  if len(pairs) == 0:
    return points
  a, b = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
  pa, pb = points[..., a, :], points[..., b, :]
  s = swap[..., None]
  return points.at[..., a, :].set(jnp.where(s, pb, pa)).at[..., b, :].set(jnp.where(s, pa, pb))


def _ar1(key, shape, rho: float) -> jnp.ndarray:
  """Unit-variance AR(1) noise `[T, ...]` along the leading axis."""
  eps = jax.random.normal(key, shape)
  scale = jnp.sqrt(1.0 - rho**2)

  def step(prev, e):
    cur = rho * prev + scale * e
    return cur, cur

  _, rest = jax.lax.scan(step, eps[0], eps[1:])
  return jnp.concatenate([eps[:1], rest], axis=0)


def person_size(kp2d: jnp.ndarray, valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """`[...]` larger side of the 2D bounding box of keypoints `[..., K, 2]` (valid ones only)."""
  valid = jnp.ones(kp2d.shape[:-1], bool) if valid is None else valid
  big = jnp.finfo(kp2d.dtype).max
  lo = jnp.min(jnp.where(valid[..., None], kp2d, big), axis=-2)
  hi = jnp.max(jnp.where(valid[..., None], kp2d, -big), axis=-2)
  return jnp.maximum(jnp.max(hi - lo, axis=-1), 1.0) * jnp.any(valid, axis=-1)


def synthesize_keypoints(
  key: jax.Array,
  keypoints3d: jnp.ndarray,
  camera: Camera,
  noise: KeypointNoise | None = None,
  swap_pairs: np.ndarray | None = None,
  *,
  temporal: bool = False,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Projects world keypoints and corrupts them like a 2D detector (see `KeypointNoise`).

  Args:
    key: PRNG key.
    keypoints3d: `[..., K, 3]` world keypoints; leading axes broadcast against the camera's
      (e.g. `[K, 3]` with a rig of V cameras gives V views).
    camera: a `Camera` (any leading axes).
    noise: the error model (default `KeypointNoise()`).
    swap_pairs: `[P, 2]` left/right joint pairs for swaps (`left_right_pairs(names)`); None: no
      swaps.
    temporal: the leading axis is time (a video clip): Gaussian noise is AR(1) along it.

  Returns:
    `kp2d [..., K, 2]` pixels (0 where missing) and `conf [..., K]` in [0, 1].
  """
  noise = KeypointNoise() if noise is None else noise
  exact = camera.project(keypoints3d)
  depth = camera.to_camera(keypoints3d)[..., 2]
  shape = exact.shape[:-1]
  height, width = camera.image_size
  visible = depth > 1e-3
  inside = (exact[..., 0] >= 0) & (exact[..., 0] < width)
  inside &= (exact[..., 1] >= 0) & (exact[..., 1] < height)
  visible &= inside | ~jnp.asarray(noise.drop_outside)
  size = person_size(exact, depth > 1e-3)[..., None, None]
  k_gauss, k_out, k_outpos, k_swap, k_miss, k_conf = jax.random.split(key, 6)
  if temporal:
    gauss = _ar1(k_gauss, shape + (2,), noise.temporal_rho)
  else:
    gauss = jax.random.normal(k_gauss, shape + (2,))
  is_outlier = jax.random.bernoulli(k_out, _probability(noise.outlier_prob), shape)
  offset = jnp.where(
    is_outlier[..., None],
    noise.outlier_sigma * jax.random.normal(k_outpos, shape + (2,)),
    noise.sigma * gauss,
  )
  kp2d = exact + size * offset
  if swap_pairs is not None and len(swap_pairs):
    pairs = np.asarray(swap_pairs)
    swap = jax.random.bernoulli(k_swap, _probability(noise.swap_prob), shape[:-1] + (len(pairs),))
    kp2d = _swap(kp2d, pairs, swap)
  error = jnp.linalg.norm(offset, axis=-1) / jnp.maximum(noise.sigma, 1e-6)
  conf = _uniform(k_conf, shape, noise.conf_range) - noise.conf_drop * jnp.where(
    is_outlier, 10.0, error
  )
  conf = jnp.clip(conf, 0.05, 1.0)
  detected = visible & ~jax.random.bernoulli(k_miss, _probability(noise.missing_prob), shape)
  conf = jnp.where(detected, conf, 0.0)
  kp2d = jnp.where(detected[..., None], kp2d, 0.0)
  return kp2d, conf


@dataclasses.dataclass(frozen=True)
class PoseCorruption:
  """Regressor-like errors of SMPL parameters at `level=1` (angles in degrees, metres).

  Attributes:
    joint_deg: rotation noise std of the joints one step below the root.
    chain_growth: the std grows by this fraction per further step down the kinematic chain
      (std_j = joint_deg * (1 + chain_growth * (depth_j - 1))): wrists and ankles err most.
    global_orient_deg: std of the global orientation error.
    betas_std: std of the additive betas noise.
    depth_log_std: std of log(depth scale): the translation is scaled along the camera ray
      (`transl * exp(N(0, s))`), which keeps the projection but moves the body in depth.
    transl_std: std of the additive x/y translation error.
  """

  joint_deg: float = 6.0
  chain_growth: float = 0.2
  global_orient_deg: float = 6.0
  betas_std: float = 0.3
  depth_log_std: float = 0.1
  transl_std: float = 0.02


def chain_depths(parents: Sequence[int] = SMPL_PARENTS) -> np.ndarray:
  """`[J]` number of steps from the root (root 0)."""
  depth = np.zeros(len(parents), np.int32)
  for j, p in enumerate(parents):
    depth[j] = 0 if p < 0 else depth[p] + 1
  return depth


def _perturb(key, axis_angle: jnp.ndarray, std_rad) -> jnp.ndarray:
  """Right-multiplies rotations `[..., 3]` by random rotations with per-axis std `std_rad`."""
  delta = std_rad * jax.random.normal(key, axis_angle.shape)
  q = _quaternion_product(
    rotations.axis_angle_to_quaternion(axis_angle), rotations.axis_angle_to_quaternion(delta)
  )
  return rotations.quaternion_to_axis_angle(q)


def _quaternion_product(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Hamilton product of wxyz quaternions `[..., 4]` (the rotation `a` after `b`)."""
  aw, av = a[..., :1], a[..., 1:]
  bw, bv = b[..., :1], b[..., 1:]
  w = aw * bw - jnp.sum(av * bv, axis=-1, keepdims=True)
  return jnp.concatenate([w, aw * bv + bw * av + jnp.cross(av, bv)], axis=-1)


def corrupt_pose(
  key: jax.Array,
  params: Mapping[str, jnp.ndarray],
  level: float | jnp.ndarray = 1.0,
  spec: PoseCorruption | None = None,
) -> dict[str, jnp.ndarray]:
  """Regressor-like corruption of true SMPL parameters (`PoseCorruption`, scaled by `level`).

  Args:
    key: PRNG key.
    params: axis-angle parameters, any of `global_orient [..., 3]`, `body_pose [..., 23, 3]`,
      `betas [..., B]`, `transl [..., 3]` (camera frame, for the depth error); other keys pass
      through unchanged.
    level: noise scale (0 returns the input; may be a traced scalar or broadcast `[...]`).
    spec: the error model.

  Returns:
    A dict with the same keys.
  """
  spec = PoseCorruption() if spec is None else spec
  out = dict(params)
  level = jnp.asarray(level, jnp.float32)
  keys = dict(
    zip(("global_orient", "body_pose", "betas", "depth", "transl"), jax.random.split(key, 5))
  )

  def lvl(extra_dims: int) -> jnp.ndarray:
    """`level` with `extra_dims` trailing axes, to broadcast against a parameter."""
    return level.reshape(level.shape + (1,) * extra_dims)

  if "global_orient" in params:
    std = jnp.radians(spec.global_orient_deg) * lvl(1)
    out["global_orient"] = _perturb(
      keys["global_orient"], jnp.asarray(params["global_orient"]), std
    )
  if "body_pose" in params:
    depth = chain_depths()[1:]
    per_joint = spec.joint_deg * (1.0 + spec.chain_growth * (depth - 1))
    std = jnp.radians(jnp.asarray(per_joint, jnp.float32))[:, None] * lvl(2)
    out["body_pose"] = _perturb(keys["body_pose"], jnp.asarray(params["body_pose"]), std)
  if "betas" in params:
    betas = jnp.asarray(params["betas"])
    noise = spec.betas_std * jax.random.normal(keys["betas"], betas.shape)
    out["betas"] = betas + lvl(1) * noise
  if "transl" in params:
    transl = jnp.asarray(params["transl"])
    log_scale = spec.depth_log_std * jax.random.normal(keys["depth"], transl.shape[:-1])
    xy = spec.transl_std * jax.random.normal(keys["transl"], transl.shape[:-1] + (2,))
    scaled = transl * jnp.exp(lvl(0) * log_scale)[..., None]
    out["transl"] = scaled + lvl(1) * jnp.concatenate([xy, jnp.zeros_like(xy[..., :1])], -1)
  return out


def to_camera_frame(
  camera: Camera, global_orient: jnp.ndarray, transl: jnp.ndarray, pelvis_rest: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """World SMPL root (`global_orient [..., 3]`, `transl [..., 3]`) -> the same body in the
  camera frame. `pelvis_rest [3]` is the body model's rest pelvis joint (SMPL rotates about it
  before adding `transl`), so the result depends on the shape only through it."""
  orient = rotations.matrix_to_axis_angle(
    camera.rotation @ rotations.axis_angle_to_matrix(global_orient)
  )
  pelvis = jnp.einsum("...ij,...j->...i", camera.rotation, pelvis_rest + transl)
  return orient, pelvis + camera.translation - pelvis_rest
