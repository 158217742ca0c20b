"""Benchmark rows (3DPW, EMDB, Human3.6M, SMART builders) -> `PersonExample`, converted on access.

`MappedSource(data_source, fn, indices)` is a random-access source (`len`, `[i]`) whose item i is
`fn(data_source[indices[i]])`: nothing of the split is copied; a row is read and converted when
it is asked for. The converters are pure functions of one builder row (a dict of numpy features,
as `builder.as_data_source()[split][i]` gives it), the body model and the crop size S:

  threedpw_example(row, body_model, size)                 `threedpw/frames` (and oc, pc, crowd)
  emdb_example(row, body_model, size)                     `emdb/emdb1`, `emdb/all`
  h36m_example(row, body_model, size, focal_length=5000)  `h36m/frames`, one view of `multiview`
  smart_example(row, size)                                `smart/<action>` (2D labels only)
  ski_pose_example(row, size)                             `ski_pose/frames` (2D labels only)

What each field is made of:

* image: the builder's crop (256 px 3DPW, 224 px EMDB / H36M) resized to S x S (PIL bilinear);
  crop_from_image: the builder's square box (`center`, side `scale` px; H36M: `200 * scale`)
  mapped onto the S x S crop (`jhmr.data.crops.crop_transform`).
* intrinsics: the dataset's own camera where the builder has one: 3DPW `cam_intrinsics`, EMDB
  `cam_intrinsics`. Human3.6M rows carry none (neither intrinsics nor a translation); the
  fallback is the crop camera of ScoreHMR / SPIN: focal `focal_length` px at crop size S with the
  principal point at the crop centre, i.e. full-image intrinsics with focal
  `focal_length * box / S` and principal point the box centre; image_size then is the frame size
  of the Human3.6M camera (`H36M_IMAGE_SIZE`), which the rows do not store either.
* keypoints_2d['openpose25']: the dataset's 2D keypoints in the BODY_25 slots they stand for
  (crop px, confidence 0 in every other slot): 3DPW's OpenPose COCO-18 detections
  (`COCO18_TO_BODY25`); H36M's OpenPose BODY_25 detections (`openpose`) where the row has any,
  else its SPIN-24 keypoints (`SPIN24_TO_BODY25`); EMDB has no detections: its 2D keypoints are the
  official SMPL joints projected with the real camera, put into the BODY_25 slots of the joint of
  the same name (`SMPL24_TO_BODY25`, an approximation: a SMPL joint is not exactly where OpenPose
  puts it), confidence 1. EMDB also keeps all 24 as keypoints_2d['smpl24'].
* global_orient (camera frame), body_pose, betas (padded with zeros / cut to the body model's
  `num_betas`): the ground-truth SMPL parameters (3DPW / EMDB `global_orient_cam`; H36M's pose is
  in the camera frame already).
* cam_t, joints_3d: the body model run on those parameters, placed with the dataset's world
  translation and extrinsics where it has them (3DPW, EMDB): `cam_t = R (J0 + transl) + t - J0`
  with (R, t) = `cam_extrinsics` (world -> camera) and J0 the body's root joint (SMPL rotates
  about it), so the body is where the dataset puts it. H36M has no translation: the body is
  placed so that its BODY_25 keypoints fit the row's 2D keypoints under a weak-perspective camera
  (`fit_crop_camera`, least squares weighted by confidence; the box of the body when fewer than
  two keypoints are confident), turned into a translation of the crop camera above.
* has_smpl, has_3d: 1 for 3DPW and EMDB; H36M's `has_smpl` for both (joints_3d are the SMPL joints
  of the fit; without a fit every SMPL label, cam_t and joints_3d are 0).
* joint_visibility: 1 where a ground-truth joint projects inside the crop; occlusion: none.
* group / frame: 3DPW (sequence, actor) and the frame index; EMDB the sequence and the frame
  index; H36M the person at one instant (subject, action, frame) and the view (the index of the
  camera in `H36M_CAMERAS`). Groups are stable 31-bit hashes of those names (`name_id`).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
from PIL import Image

from jhmr.data import crops
from jhmr.data.example import PersonExample
from jhmr.geometry import cameras

# OpenPose COCO-18 index -> BODY_25 index (BODY_25 adds MidHip at 8 and the feet at 19-24).
COCO18_TO_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# SPIN's 24 keypoints (LSP 14, then the extra joints) -> BODY_25, where a keypoint has one.
SPIN24_TO_BODY25 = {
  0: 11, 1: 10, 2: 9, 3: 12, 4: 13, 5: 14, 6: 4, 7: 3, 8: 2, 9: 5, 10: 6, 11: 7,
  19: 0, 20: 16, 21: 15, 22: 18, 23: 17,
}  # fmt: skip
# SMPL joint -> the BODY_25 keypoint of the same name (neck, shoulders, elbows, wrists, pelvis as
# MidHip, hips, knees, ankles).
SMPL24_TO_BODY25 = {
  12: 1, 17: 2, 19: 3, 21: 4, 16: 5, 18: 6, 20: 7, 0: 8, 2: 9, 5: 10, 8: 11, 1: 12, 4: 13, 7: 14,
}  # fmt: skip
# Ski-Pose's 17 H36M 2D joints -> BODY_25 (DAPA's `parse_data_from_ski.py`; no swap in 2D).
H36M17_TO_BODY25 = {
  4: 12, 5: 13, 6: 14, 1: 9, 2: 10, 3: 11, 8: 1, 11: 5, 12: 6, 13: 7, 14: 2, 15: 3, 16: 4,
}  # fmt: skip
NUM_BODY25 = 25
H36M_CAMERAS = ("54138969", "55011271", "58860488", "60457274")
# (width, height) of each Human3.6M camera's frames.
H36M_IMAGE_SIZE = {
  "54138969": (1000, 1002),
  "55011271": (1000, 1000),
  "58860488": (1000, 1000),
  "60457274": (1000, 1002),
}


class MappedSource:
  """Random access to `fn(data_source[indices[i]])`, converted when item i is read.

  Args:
    data_source: any random-access rows (`len`, `[i]`), e.g. a TFDS data source.
    fn: row -> example (e.g. `functools.partial(threedpw_example, body_model=..., size=...)`).
    indices: the rows of `data_source` in order (None: all of them); nothing is read here.
    group, frame: optional `[len]` ints that replace the examples' `group` / `frame` (a set
      that regroups rows, e.g. one group per video window, or one per example).
  """

  def __init__(
    self,
    data_source,
    fn: Callable,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    group: np.ndarray | None = None,
    frame: np.ndarray | None = None,
  ):
    self.data_source = data_source
    self.fn = fn
    n = len(data_source) if indices is None else len(indices)
    self.indices = None if indices is None else np.asarray(indices, np.int64).reshape(n)
    for name, value in (("group", group), ("frame", frame)):
      if value is not None and np.shape(value) != (n,):
        raise ValueError(f"MappedSource {name} must have shape ({n},), got {np.shape(value)}")
    self.group = None if group is None else np.asarray(group, np.int32)
    self.frame = None if frame is None else np.asarray(frame, np.int32)
    self._len = n

  def __len__(self) -> int:
    return self._len

  def _position(self, i) -> int:
    i = int(i)
    if not -self._len <= i < self._len:
      raise IndexError(f"index {i} out of range for a source of {self._len} examples")
    return i % self._len

  def row_index(self, i: int) -> int:
    """The `data_source` row of item i."""
    i = self._position(i)
    return i if self.indices is None else int(self.indices[i])

  def __getitem__(self, i) -> PersonExample:
    i = self._position(i)
    example = self.fn(self.data_source[self.row_index(i)])
    if self.group is not None:
      example = example.replace(group=self.group[i])
    if self.frame is not None:
      example = example.replace(frame=self.frame[i])
    return example

  def group_ids(self) -> np.ndarray | None:
    """`[len]` group of every item without reading a row, where the source was given them."""
    return self.group


def name_id(*parts) -> np.int32:
  """A stable 31-bit id of a name (`crc32` of the parts joined with '/')."""
  name = "/".join(_text(p) for p in parts)
  return np.int32(zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# -- geometry ------------------------------------------------------------------------------------


def fit_crop_camera(points, target, conf, image_size: int) -> np.ndarray:
  """Weak-perspective cam `[n, 3]` (s, tx, ty) fitting points `[n, K, 3]` (camera frame, x / y) to
  target `[n, K, 2]` crop px with weights conf `[n, K]`: (S / 2) s (X + t) + S / 2 = target.
  Examples with fewer than 2 confident points (or a fit with s <= 0) get the camera of the
  points' box (x1.2)."""
  half = image_size / 2
  xy, w = np.asarray(points, np.float64)[..., :2], np.asarray(conf, np.float64)
  uv = (np.asarray(target, np.float64) - half) / half  # = s (X + t)
  out = np.zeros((len(xy), 3), np.float32)
  for i in range(len(xy)):
    k = w[i] > 0
    if k.sum() >= 2:
      # Unknowns (s, s tx, s ty): u = s x + s tx, v = s y + s ty.
      a = np.zeros((2 * k.sum(), 3))
      a[0::2, 0], a[0::2, 1] = xy[i, k, 0], 1.0
      a[1::2, 0], a[1::2, 2] = xy[i, k, 1], 1.0
      sw = np.sqrt(np.repeat(w[i, k], 2))
      sol = np.linalg.lstsq(a * sw[:, None], uv[i, k].reshape(-1) * sw, rcond=None)[0]
      if sol[0] > 1e-6:
        out[i] = (sol[0], sol[1] / sol[0], sol[2] / sol[0])
        continue
    lo, hi = xy[i].min(0), xy[i].max(0)
    out[i] = (2.0 / (1.2 * max(hi - lo)), *(-(lo + hi) / 2))
  return out


def world_translation_to_camera(root, transl, extrinsics) -> np.ndarray:
  """`cam_t` placing a body whose root joint (before translation) is `root` [3] where the world
  translation `transl` [3] and the world -> camera `extrinsics` [4, 4] put it:
  `R (root + transl) + t - root` (the root does not move when the body rotates about it)."""
  ext = np.asarray(extrinsics, np.float64)
  root = np.asarray(root, np.float64)
  return (ext[:3, :3] @ (root + np.asarray(transl, np.float64)) + ext[:3, 3] - root).astype(
    np.float32
  )


def _project(intrinsics, affine, points) -> tuple[np.ndarray, np.ndarray]:
  """Camera-frame points `[N, 3]` -> (crop px `[N, 2]`, depth `[N]`)."""
  proj = np.concatenate([affine, [[0.0, 0.0, 1.0]]]) @ np.asarray(intrinsics, np.float64)
  p = np.asarray(points, np.float64) @ proj.T
  z = p[:, 2]
  return p[:, :2] / np.where(np.abs(z) > 1e-9, z, 1e-9)[:, None], z


# -- body model ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="joint_set")
def _body(body_model, betas, body_pose, global_orient, joint_set=None):
  out = body_model.joints_only(betas, body_pose, global_orient, joint_set=joint_set)
  return out.joints, out.keypoints


def _betas(betas, num_betas: int) -> np.ndarray:
  betas = np.asarray(betas, np.float32).reshape(-1)
  out = np.zeros(num_betas, np.float32)
  n = min(num_betas, len(betas))
  out[:n] = betas[:n]
  return out


def body_points(body_model, betas, body_pose, global_orient, joint_set=None):
  """(joints [24, 3], keypoints [K, 3] or None) of the body, untranslated (numpy)."""
  joints, keypoints = _body(
    body_model,
    np.asarray(betas, np.float32),
    np.asarray(body_pose, np.float32).reshape(23, 3),
    np.asarray(global_orient, np.float32).reshape(3),
    joint_set=joint_set,
  )
  return np.asarray(joints), None if keypoints is None else np.asarray(keypoints)


# -- the example ---------------------------------------------------------------------------------


def resize_crop(image, size: int) -> np.ndarray:
  """A builder crop `[C, C, 3]` -> `[S, S, 3]` uint8 (PIL bilinear; unchanged when C == S)."""
  image = np.asarray(image, np.uint8)
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def map_keypoints(keypoints, mapping, num: int = NUM_BODY25) -> np.ndarray:
  """`[K, 2 or 3]` keypoints -> `[num, 3]` with row `mapping[k]` = keypoint k (`mapping` a
  sequence or {k: row}); confidence 1 where the input has none, 0 in unmapped rows."""
  keypoints = np.asarray(keypoints, np.float32)
  if keypoints.shape[-1] == 2:
    keypoints = np.concatenate([keypoints, np.ones_like(keypoints[:, :1])], -1)
  pairs = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
  src, dst = (list(x) for x in zip(*pairs))
  out = np.zeros((num, 3), np.float32)
  out[dst] = keypoints[src]
  return out


def image_to_crop(keypoints, affine) -> np.ndarray:
  """`[K, 3]` image px (x, y, conf) -> crop px; keypoints with confidence <= 0 become zeros."""
  kp = np.asarray(keypoints, np.float32)
  a = np.asarray(affine, np.float64)
  xy = kp[:, :2] @ a[:, :2].T + a[:, 2]
  out = np.concatenate([xy, kp[:, 2:]], -1).astype(np.float32)
  return np.where(out[:, 2:] > 0, out, 0.0).astype(np.float32)


def _example(
  *,
  image,
  size: int,
  affine,
  intrinsics,
  image_size_wh,
  keypoints_2d: dict,
  global_orient,
  body_pose,
  betas,
  cam_t,
  joints_3d,
  has_smpl: float,
  has_3d: float,
  group,
  frame,
) -> PersonExample:
  if has_3d > 0:
    uv, z = _project(intrinsics, affine, joints_3d)
    visible = (z > 0) & np.all((uv >= 0) & (uv < size), -1)
  else:
    visible = np.zeros(24, bool)
  return PersonExample(
    image=resize_crop(image, size),
    crop_from_image=np.asarray(affine, np.float32),
    intrinsics=np.asarray(intrinsics, np.float32),
    image_size=np.asarray(image_size_wh, np.float32),
    keypoints_2d={k: np.asarray(v, np.float32) for k, v in keypoints_2d.items()},
    global_orient=np.asarray(global_orient, np.float32).reshape(3),
    body_pose=np.asarray(body_pose, np.float32).reshape(23, 3),
    betas=np.asarray(betas, np.float32),
    cam_t=np.asarray(cam_t, np.float32),
    joints_3d=np.asarray(joints_3d, np.float32),
    joint_visibility=visible.astype(np.float32),
    occlusion=np.zeros((size, size), bool),
    has_smpl=np.float32(has_smpl),
    has_3d=np.float32(has_3d),
    group=np.int32(group),
    frame=np.int32(frame),
  )


def _placed_in_world(row, body_model):
  """(global_orient, body_pose, betas, cam_t, joints_3d) of a row with camera-frame orientation
  `global_orient_cam`, world `transl` and `cam_extrinsics` (3DPW, EMDB)."""
  betas = _betas(row["betas"], body_model.num_betas)
  orient = np.asarray(row["global_orient_cam"], np.float32)
  body_pose = np.asarray(row["body_pose"], np.float32).reshape(23, 3)
  joints, _ = body_points(body_model, betas, body_pose, orient)
  cam_t = world_translation_to_camera(joints[0], row["transl"], row["cam_extrinsics"])
  return orient, body_pose, betas, cam_t, joints + cam_t


def threedpw_example(row, body_model, size: int) -> PersonExample:
  """A `threedpw/frames` row -> `PersonExample` (module docstring)."""
  orient, body_pose, betas, cam_t, joints_3d = _placed_in_world(row, body_model)
  affine = crops.crop_transform(row["center"], float(row["scale"]), size)
  openpose = image_to_crop(map_keypoints(row["keypoints2d"], COCO18_TO_BODY25), affine)
  height, width = np.asarray(row["image_size"], np.float32)
  return _example(
    image=row["image"], size=size, affine=affine, intrinsics=row["cam_intrinsics"],
    image_size_wh=(width, height), keypoints_2d={"openpose25": openpose},
    global_orient=orient, body_pose=body_pose, betas=betas, cam_t=cam_t, joints_3d=joints_3d,
    has_smpl=1.0, has_3d=1.0, group=name_id(row["sequence"], int(row["actor"])),
    frame=int(row["frame_index"]),
  )  # fmt: skip


def emdb_example(row, body_model, size: int) -> PersonExample:
  """An `emdb/emdb1` or `emdb/all` row -> `PersonExample` (module docstring)."""
  orient, body_pose, betas, cam_t, joints_3d = _placed_in_world(row, body_model)
  affine = crops.crop_transform(row["center"], float(row["scale"]), size)
  smpl24 = image_to_crop(map_keypoints(row["keypoints2d"], range(24), 24), affine)
  openpose = image_to_crop(map_keypoints(row["keypoints2d"], SMPL24_TO_BODY25), affine)
  height, width = np.asarray(row["image_size"], np.float32)
  return _example(
    image=row["image"], size=size, affine=affine, intrinsics=row["cam_intrinsics"],
    image_size_wh=(width, height), keypoints_2d={"openpose25": openpose, "smpl24": smpl24},
    global_orient=orient, body_pose=body_pose, betas=betas, cam_t=cam_t, joints_3d=joints_3d,
    has_smpl=1.0, has_3d=1.0, group=name_id(row["sequence"]), frame=int(row["frame_index"]),
  )  # fmt: skip


def h36m_keypoints(row) -> np.ndarray:
  """`[25, 3]` BODY_25 keypoints of an H36M row in image px: its OpenPose detections where it has
  any, else its SPIN-24 keypoints in their BODY_25 slots."""
  openpose = np.asarray(row["openpose"], np.float32)
  if np.any(openpose[:, 2] > 0):
    return openpose
  return map_keypoints(row["keypoints2d"], SPIN24_TO_BODY25)


def h36m_intrinsics(center, box: float, size: int, focal_length: float) -> np.ndarray:
  """The fallback full-image camera of H36M rows: the crop camera (focal `focal_length` px at
  crop size S, principal point at the crop centre) seen from the full image."""
  f = focal_length * box / size
  return np.array([[f, 0.0, center[0]], [0.0, f, center[1]], [0.0, 0.0, 1.0]], np.float32)


def h36m_example(row, body_model, size: int, focal_length: float = 5000.0) -> PersonExample:
  """An `h36m/frames` row (or one view of `h36m/multiview`) -> `PersonExample` (module
  docstring: no camera in the data, the body is placed by a weak-perspective fit)."""
  center = np.asarray(row["center"], np.float64)
  box = 200.0 * float(row["scale"])
  affine = crops.crop_transform(center, box, size)
  intrinsics = h36m_intrinsics(center, box, size, focal_length)
  openpose = image_to_crop(h36m_keypoints(row), affine)
  camera = _text(row["camera"])
  if camera not in H36M_CAMERAS:
    raise ValueError(f"h36m: unknown camera {camera!r} (Human3.6M cameras: {H36M_CAMERAS})")
  has_smpl = 1.0 if float(row["has_smpl"]) > 0 else 0.0
  betas = _betas(row["betas"], body_model.num_betas) * has_smpl
  orient = np.asarray(row["global_orient"], np.float32) * has_smpl
  body_pose = np.asarray(row["body_pose"], np.float32).reshape(23, 3) * has_smpl
  cam_t, joints_3d = np.zeros(3, np.float32), np.zeros((24, 3), np.float32)
  if has_smpl:
    joints, keypoints = body_points(body_model, betas, body_pose, orient, "openpose25")
    cam = fit_crop_camera(keypoints[None], openpose[None, :, :2], openpose[None, :, 2], size)
    cam_t = np.asarray(
      cameras.weak_perspective_to_translation(cam[0], focal_length, size), np.float32
    )
    joints_3d = joints + cam_t
  return _example(
    image=row["image"], size=size, affine=affine, intrinsics=intrinsics,
    image_size_wh=H36M_IMAGE_SIZE[camera], keypoints_2d={"openpose25": openpose},
    global_orient=orient, body_pose=body_pose, betas=betas, cam_t=cam_t, joints_3d=joints_3d,
    has_smpl=has_smpl, has_3d=has_smpl,
    group=name_id(row["subject"], row["action"], int(row["frame"])),
    frame=H36M_CAMERAS.index(camera),
  )  # fmt: skip


def smart_example(
  row, size: int, num_betas: int = 10, focal_length: float = 5000.0
) -> PersonExample:
  """A `smart/<action>` row -> `PersonExample` with 2D labels only: SMART has no SMPL fits and no
  3D (has_smpl = has_3d = 0, parameters zero), no camera (the nominal crop camera of
  `h36m_intrinsics`) and no stored image size (`image_size` = 0, unknown). Keypoints: its
  OpenPose BODY_25 joints (confidence 0/1); group = the video, frame = the frame index."""
  center = np.asarray(row["center"], np.float64)
  box = float(row["scale"])  # px
  affine = crops.crop_transform(center, box, size)
  openpose = image_to_crop(np.asarray(row["keypoints2d"], np.float32), affine)
  return _example(
    image=row["image"], size=size, affine=affine,
    intrinsics=h36m_intrinsics(center, box, size, focal_length), image_size_wh=(0.0, 0.0),
    keypoints_2d={"openpose25": openpose}, global_orient=np.zeros(3), body_pose=np.zeros((23, 3)),
    betas=np.zeros(num_betas), cam_t=np.zeros(3), joints_3d=np.zeros((24, 3)), has_smpl=0.0,
    has_3d=0.0, group=name_id(row["video"]), frame=int(row["frame_index"]),
  )  # fmt: skip


def ski_pose_example(
  row, size: int, num_betas: int = 10, focal_length: float = 5000.0
) -> PersonExample:
  """A `ski_pose/frames` row -> `PersonExample` with 2D labels only, like `smart_example`: its
  H36M 3D joints (`joints3d`) are not SMPL joints and stay in the row (`jhmr.eval.hpc_protocol`).
  Keypoints: the 13 OpenPose BODY_25 joints DAPA makes of the 2D labels; group = (seq, cam),
  frame = the frame number."""
  center = np.asarray(row["center"], np.float64)
  box = float(row["scale"])  # px
  affine = crops.crop_transform(center, box, size)
  openpose = map_keypoints(np.asarray(row["keypoints2d"], np.float32), H36M17_TO_BODY25)
  return _example(
    image=row["image"], size=size, affine=affine,
    intrinsics=h36m_intrinsics(center, box, size, focal_length), image_size_wh=(256.0, 256.0),
    keypoints_2d={"openpose25": image_to_crop(openpose, affine)}, global_orient=np.zeros(3),
    body_pose=np.zeros((23, 3)), betas=np.zeros(num_betas), cam_t=np.zeros(3),
    joints_3d=np.zeros((24, 3)), has_smpl=0.0, has_3d=0.0,
    group=name_id(int(row["seq"]), int(row["cam"])), frame=int(row["frame"]),
  )  # fmt: skip


# -- sets of rows --------------------------------------------------------------------------------


def video_windows(sequence, frame_index, length: int) -> list[np.ndarray]:
  """Every window of `length` consecutive frames (frame index + 1 each) of one sequence, as row
  index arrays in frame order; runs are cut into windows from their start, a run's remainder
  shorter than `length` is left out."""
  sequence, frame_index = np.asarray(sequence), np.asarray(frame_index)
  if length < 1:
    raise ValueError(f"window length must be >= 1, got {length}")
  order = np.lexsort((frame_index, sequence))
  windows, run = [], []
  for cur in order:
    prev = run[-1] if run else None
    if prev is None or sequence[cur] != sequence[prev] or frame_index[cur] != frame_index[prev] + 1:
      run = []
    run.append(cur)
    if len(run) == length:
      windows.append(np.array(run))
      run = []
  return windows


def view_groups(person, view, num_views: int) -> list[np.ndarray]:
  """Row index arrays of the persons (`person` keys) seen in exactly `num_views` rows, views
  sorted by `view`, persons sorted by key (the grouping of the `h36m/multiview` builder)."""
  groups: dict = {}
  for i, key in enumerate(person):
    groups.setdefault(key, []).append(i)
  view = np.asarray(view)
  out = []
  for key in sorted(groups):
    rows = groups[key]
    if len(rows) == num_views:
      out.append(np.array(sorted(rows, key=lambda r: view[r])))
  return out
