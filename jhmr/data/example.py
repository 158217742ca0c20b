"""`PersonExample`: the one typed record of a person that crosses jhmr's rooms.

Every data source (the TFDS builders, the synthetic-people generator) yields it, the input
pipeline batches it (a leading `[B]` on every array) and the augmentations and training tasks
consume it. Units and frames are fixed here, once:

* Camera frame: OpenCV (x right, y down, z forward), metres; the full-image camera is a pinhole
  with intrinsics `intrinsics` and no rotation (the world *is* the camera frame).
* Crop: `image` is a square `S x S` crop of the full image; `crop_from_image` is the `[2, 3]`
  affine that maps full-image pixels to crop pixels (a similarity: scale, rotation, shift, and a
  horizontal mirror after a flip). `crop_projection` = that affine composed with the intrinsics
  projects camera-frame points straight to crop pixels.
* 2D keypoints are in crop pixels, `(x, y, confidence)`, one array per named joint set
  (`'openpose25'`, `'smpl24'`, `'coco18'`, ...). Confidence 0 means missing.
* SMPL-format parameters: axis-angle `global_orient` (camera frame) and `body_pose` (parent
  relative, 23 joints), `betas`, and `cam_t`, the translation added to the body model's output
  (`vertices_camera = body(betas, body_pose, global_orient).vertices + cam_t`).
* `joints_3d` are the 24 SMPL joints in the camera frame (metres, pelvis not subtracted).

Missing labels are zeros with their mask at 0 (`has_smpl`, `has_3d`), never absent fields, so
every example of a source has the same structure and batches stack.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.struct
import numpy as np

from jhmr.geometry import rotations


@flax.struct.dataclass
class PersonExample:
  """One person in one image (numpy or jax arrays; a batch adds a leading `[B]` everywhere).

  Attributes:
    image: `[S, S, 3]` uint8 RGB crop.
    crop_from_image: `[2, 3]` float32 affine, full-image pixels -> crop pixels.
    intrinsics: `[3, 3]` float32 full-image camera matrix (pixels).
    image_size: `[2]` float32 (width, height) of the full image in pixels.
    keypoints_2d: `{joint set: [K, 3]}` float32 `(x, y, confidence)` in crop pixels.
    global_orient: `[3]` float32 axis-angle of the root in the camera frame.
    body_pose: `[23, 3]` float32 axis-angle of the body joints (parent relative).
    betas: `[NB]` float32 shape coefficients.
    cam_t: `[3]` float32 camera-frame translation added to the body model's output (metres).
    joints_3d: `[24, 3]` float32 camera-frame SMPL joints (metres).
    joint_visibility: `[24]` float32, 1 where the joint is inside the crop and not occluded.
    occlusion: `[S, S]` bool, pixels covered by an occluder pasted by augmentation.
    has_smpl: `[]` float32, 1 when the SMPL parameters are ground truth.
    has_3d: `[]` float32, 1 when `joints_3d` is ground truth.
    group: `[]` int32, the person (multi-view) or sequence (video) the example belongs to.
    frame: `[]` int32, the view or frame index inside its group.
    synthetic: `[]` float32, 1 for a generated image (Diffusion-HPC's synthetic image-mesh pairs),
      0 for a real photograph; None (the default: no leaf, so batches built without it keep their
      structure) when the source does not say. A source that mixes both sets it on every example
      (`jhmr.train.hpc_finetune_task.MixedSource`).
  """

  image: np.ndarray
  crop_from_image: np.ndarray
  intrinsics: np.ndarray
  image_size: np.ndarray
  keypoints_2d: Mapping[str, np.ndarray]
  global_orient: np.ndarray
  body_pose: np.ndarray
  betas: np.ndarray
  cam_t: np.ndarray
  joints_3d: np.ndarray
  joint_visibility: np.ndarray
  occlusion: np.ndarray
  has_smpl: np.ndarray
  has_3d: np.ndarray
  group: np.ndarray
  frame: np.ndarray
  synthetic: np.ndarray | None = None

  @property
  def crop_size(self) -> int:
    """S, the side of the square crop in pixels."""
    return int(np.shape(self.image)[-2])

  @property
  def crop_projection(self) -> np.ndarray:
    """`[..., 3, 3]` crop pixels ~ crop_projection @ X_camera (homogeneous): the crop camera."""
    affine = np.asarray(self.crop_from_image, np.float64)
    bottom = np.broadcast_to([0.0, 0.0, 1.0], affine.shape[:-2] + (1, 3))
    return np.concatenate([affine, bottom], -2) @ np.asarray(self.intrinsics, np.float64)

  @property
  def crop_rotation(self) -> np.ndarray:
    """`[..., 3, 3]` rotation about the optical axis that the crop applies (identity without
    rotation augmentation); see `crop_rotation`."""
    return crop_rotation(np.asarray(self.crop_from_image, np.float64))

  def rotmat(self) -> np.ndarray:
    """`[..., 24, 3, 3]` rotation matrices, camera-frame global orientation first."""
    pose = np.concatenate([np.asarray(self.global_orient)[..., None, :], self.body_pose], -2)
    return np.asarray(rotations.axis_angle_to_matrix(pose))


def crop_rotation(crop_from_image, xp=np):
  """`[..., 3, 3]` in-plane rotation of crop affines `[..., 2, 3]` (identity without rotation);
  `crop_rotation @ R(global_orient)` is the root orientation seen in the crop when the principal
  point is the crop centre (SPIN's convention for rotated crops). `xp`: the array module (`np`,
  or `jax.numpy` inside a jitted loss)."""
  a, b = crop_from_image[..., 0, 0], crop_from_image[..., 1, 0]
  norm = xp.hypot(a, b)
  c, s = a / norm, b / norm
  zero, one = xp.zeros_like(c), xp.ones_like(c)
  rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
  return xp.stack([xp.stack(r, -1) for r in rows], -2)


def project_to_crop(example: PersonExample, points: np.ndarray) -> np.ndarray:
  """Camera-frame points `[..., N, 3]` -> crop pixels `[..., N, 2]` through the example's crop
  camera (`crop_projection`)."""
  proj = np.einsum("...ij,...nj->...ni", example.crop_projection, np.asarray(points, np.float64))
  return (proj[..., :2] / proj[..., 2:]).astype(np.float32)


def check_example(example: PersonExample) -> PersonExample:
  """Validates shapes and values of one (unbatched) example; raises ValueError naming the field.

  Returns the example with every array as numpy of the documented dtype.
  """
  out = {}
  size = np.shape(example.image)
  if len(size) != 3 or size[0] != size[1] or size[2] != 3:
    raise ValueError(f"PersonExample.image must be [S, S, 3], got {size}")
  s = size[0]
  shapes = {
    "crop_from_image": (2, 3),
    "intrinsics": (3, 3),
    "image_size": (2,),
    "global_orient": (3,),
    "body_pose": (23, 3),
    "cam_t": (3,),
    "joints_3d": (24, 3),
    "joint_visibility": (24,),
    "occlusion": (s, s),
    "has_smpl": (),
    "has_3d": (),
    "group": (),
    "frame": (),
  }
  if example.synthetic is not None:
    shapes["synthetic"] = ()
  for name, shape in shapes.items():
    value = np.asarray(getattr(example, name))
    if value.shape != shape:
      raise ValueError(f"PersonExample.{name} must have shape {shape}, got {value.shape}")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
      raise ValueError(f"PersonExample.{name} holds NaN or inf")
    out[name] = value
  betas = np.asarray(example.betas)
  if betas.ndim != 1:
    raise ValueError(f"PersonExample.betas must be [NB], got {betas.shape}")
  keypoints = {}
  for name, kp in example.keypoints_2d.items():
    kp = np.asarray(kp, np.float32)
    if kp.ndim != 2 or kp.shape[1] != 3:
      raise ValueError(f"PersonExample.keypoints_2d[{name!r}] must be [K, 3], got {kp.shape}")
    if not np.all(np.isfinite(kp[kp[:, 2] > 0])):
      raise ValueError(f"PersonExample.keypoints_2d[{name!r}] holds NaN/inf with confidence > 0")
    keypoints[name] = np.where(kp[:, 2:] > 0, kp, 0.0).astype(np.float32)
  floats = {k: np.asarray(v, np.float32) for k, v in out.items() if k not in ("group", "frame")}
  return PersonExample(
    image=np.asarray(example.image, np.uint8),
    keypoints_2d=keypoints,
    betas=betas.astype(np.float32),
    occlusion=out["occlusion"].astype(bool),
    group=out["group"].astype(np.int32),
    frame=out["frame"].astype(np.int32),
    **{k: v for k, v in floats.items() if k != "occlusion"},
  )


def stack(examples) -> PersonExample:
  """A batch (`[B]` leading axis) from a sequence of examples of one structure."""
  import jax  # noqa: PLC0415

  return jax.tree.map(lambda *xs: np.stack(xs), *examples)


def index(batch: PersonExample, i) -> PersonExample:
  """Example(s) `i` (an int, slice or index array) of a batch."""
  import jax  # noqa: PLC0415

  return jax.tree.map(lambda x: np.asarray(x)[i], batch)


def num_examples(batch: PersonExample) -> int:
  """B, the leading axis of a batch."""
  return int(np.shape(batch.image)[0])


class BatchSource:
  """A random-access source (`len`, `[i]`) over a `PersonExample` batch: item i is example i."""

  def __init__(self, batch: PersonExample):
    self.batch = batch

  def __len__(self) -> int:
    return num_examples(self.batch)

  def __getitem__(self, i) -> PersonExample:
    return index(self.batch, int(i))

  def rows(self, start: int, stop: int) -> PersonExample:
    """Examples [start, stop) as one batch."""
    return index(self.batch, slice(start, stop))


def read_rows(source, start: int, stop: int) -> PersonExample:
  """Examples [start, stop) of any random-access source as one batch."""
  if hasattr(source, "rows"):
    return source.rows(start, stop)
  return stack([source[i] for i in range(start, stop)])
