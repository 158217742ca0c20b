"""`threedpw`: 3D Poses in the Wild (von Marcard et al. 2018) from the official sequence files.

What to download (registration required): https://virtualhumans.mpi-inf.mpg.de/3DPW/ ->
`sequenceFiles.zip` and `imageFiles.zip`; for the occlusion subsets also the JOTR/DPMesh JSON
files `3DPW_oc.json` (3DPW-OC, person-object occlusion, from 3DOH) and `3DPW_pc.json` (3DPW-PC,
person-person occlusion, from ROMP) (https://github.com/xljh0520/JOTR). manual_dir layout:

  <manual_dir>/sequenceFiles/{train,validation,test}/<sequence>.pkl
  <manual_dir>/imageFiles/<sequence>/image_%05d.jpg
  <manual_dir>/3DPW_oc.json, 3DPW_pc.json        (only for the oc / pc configs)

The sequence files are latin-1 pickles of dicts with numpy arrays; they are read with the
restricted unpickler of `jhmr.body.io` (numpy arrays and plain containers only). The keys read
are the ones of the official files (A actors, N image frames; names as the files spell them,
which in two places differ from the 3DPW readme's list: the files say `genders` and `poses2d`
where the readme says `gender` and `poses2D`): `sequence` str, `betas` [A] x (>=10,), `poses`
[A] x (N,72) (world axis-angle), `trans` [A] x (N,3), `jointPositions` [A] x (N,72),
`poses2d` [A] x (N,3,18) (OpenPose COCO-18: x, y, conf), `campose_valid` [A] x (N,),
`genders` [A] x 'm'/'f', `cam_poses` (N,4,4) (world -> camera), `cam_intrinsics` (3,3),
`img_frame_ids` (N,) (indices into the 60 Hz arrays `poses_60Hz` / `trans_60Hz`, not image
numbers: frame t is `image_{t:05d}.jpg`). Other keys (`poses_60Hz`, `trans_60Hz`,
`betas_clothed`, `v_template_clothed`, `texture_maps`) are not read. A missing key raises
`raw.RawDataError` naming the file and the key.

Configs:
  frames: one example per (frame, actor) with a valid camera pose and a 2D detection, with a
    256 px JPEG crop (square box of the confident 2D keypoints, x1.2); splits train /
    validation / test.
  video: one example per (sequence, actor): all frames as arrays [T, ...] (no images; the
    image file names instead), with the campose_valid mask; splits train / validation / test.
  oc, pc: `frames` restricted to the (sequence, image file) pairs listed in 3DPW_oc.json /
    3DPW_pc.json (their `images` entries' `sequence` and `file_name`), split `test`.
  crowd: 3DPW-Crowd as DPMesh uses it: `frames` of the validation sequences
    courtyard_hug_00 and courtyard_dancing_00, split `validation`. The 2D keypoints are the
    official OpenPose ones; DPMesh's HigherHRNet detections
    (3DPW_validation_crowd_hhrnet_result.json) are not read.

Frame features: image [256,256,3] (JPEG), sequence, image_file, frame_index (int32), actor
(int32), gender ('m'/'f'), betas [10], global_orient [3] and body_pose [23,3] (world),
transl [3] (world), global_orient_cam [3] (camera frame: R_cam @ R_world), cam_extrinsics
[4,4], cam_intrinsics [3,3], joints3d [24,3] (world, from jointPositions), keypoints2d [18,3]
(image pixels), keypoints2d_crop [18,3] (crop pixels), center [2], scale (box side, px),
image_size [2] (H, W of the original image).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from jhmr.data import crops, raw

CROWD_SEQUENCES = ("courtyard_hug_00", "courtyard_dancing_00")
SPLITS = ("train", "validation", "test")
_NAME = "threedpw"


@dataclasses.dataclass
class ThreedpwConfig(tfds.core.BuilderConfig):
  """`kind` is frames or video; `subset` is '', 'oc', 'pc' or 'crowd'."""

  kind: str = "frames"
  subset: str = ""
  crop_size: int = 256
  expand: float = 1.2


@dataclasses.dataclass(frozen=True)
class Track:
  """One actor of one sequence (arrays over the sequence's N frames)."""

  sequence: str
  actor: int
  gender: str
  betas: np.ndarray  # [10]
  poses: np.ndarray  # [N, 72]
  trans: np.ndarray  # [N, 3]
  joints: np.ndarray  # [N, 24, 3]
  poses2d: np.ndarray  # [N, 18, 3]
  valid: np.ndarray  # [N] bool
  cam_poses: np.ndarray  # [N, 4, 4]
  intrinsics: np.ndarray  # [3, 3]
  frame_ids: np.ndarray  # [N] int, indices into the 60 Hz arrays (not image numbers)


def read_sequence(path: pathlib.Path) -> list[Track]:
  """The tracks (one per actor) of an official 3DPW sequence file."""
  data = raw.load_pickle(path)
  get = lambda key: raw.field(data, key, path)
  sequence = str(get("sequence"))
  cam_poses = raw.check(get("cam_poses"), (None, 4, 4), path, "cam_poses")
  n = len(cam_poses)
  intrinsics = raw.check(get("cam_intrinsics"), (3, 3), path, "cam_intrinsics")
  frame_ids = raw.check(get("img_frame_ids"), (n,), path, "img_frame_ids", np.int64)
  actors = get("poses")
  if not isinstance(actors, list | tuple) or not actors:
    raise raw.RawDataError(f"{path}: poses must be a non-empty list (one array per actor)")
  tracks = []
  for a in range(len(actors)):

    def at(key, shape, dtype=np.float32, a=a):
      return raw.check(_actor(get(key), a, path, key), shape, path, f"{key}[{a}]", dtype)

    poses2d = at("poses2d", (n, 3, 18)).transpose(0, 2, 1)
    tracks.append(
      Track(
        sequence=sequence,
        actor=a,
        gender=_gender(_actor(get("genders"), a, path, "genders"), path, a),
        betas=at("betas", (None,))[:10],
        poses=at("poses", (n, 72)),
        trans=at("trans", (n, 3)),
        joints=at("jointPositions", (n, 72)).reshape(n, 24, 3),
        poses2d=poses2d,
        valid=at("campose_valid", (n,), bool),
        cam_poses=cam_poses,
        intrinsics=intrinsics,
        frame_ids=frame_ids,
      )
    )
  return tracks


def _actor(values, a: int, path, key: str):
  if not isinstance(values, list | tuple) or a >= len(values):
    raise raw.RawDataError(f"{path}: {key} must be a list with one entry per actor")
  return values[a]


def _gender(value, path, a: int) -> str:
  gender = str(value)
  if gender not in ("m", "f"):
    raise raw.RawDataError(f"{path}: genders[{a}] is {gender!r}, expected 'm' or 'f'")
  return gender


def _image_file(t: int) -> str:
  """The image of frame t (the official image files are numbered by frame, from 0)."""
  return f"image_{t:05d}.jpg"


def _camera_orient(pose72: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
  world = Rotation.from_rotvec(pose72[:3])
  return (Rotation.from_matrix(extrinsics[:3, :3]) * world).as_rotvec().astype(np.float32)


def _subset_frames(root: pathlib.Path, subset: str) -> set[tuple[str, str]]:
  path = raw.require(root, f"3DPW_{subset}.json", f"{_NAME}/{subset}")
  data = raw.load_json(path)
  images = raw.field(data, "images", path)
  try:
    return {(str(im["sequence"]), pathlib.Path(im["file_name"]).name) for im in images}
  except (KeyError, TypeError) as e:
    raise raw.RawDataError(
      f"{path}: images entries need 'sequence' and 'file_name' ({e})"
    ) from None


class Builder(tfds.core.GeneratorBasedBuilder):
  """3DPW (see the module docstring)."""

  name = _NAME
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": "Reads the official `genders` key; frame t is image_{t:05d}.jpg (img_frame_ids "
    "index the 60 Hz arrays).",
  }
  BUILDER_CONFIGS = [
    ThreedpwConfig(name="frames", description="Per-frame examples with 256 px crops."),
    ThreedpwConfig(name="video", description="Per-sequence, per-actor tracks.", kind="video"),
    ThreedpwConfig(name="oc", description="3DPW-OC (person-object occlusion).", subset="oc"),
    ThreedpwConfig(name="pc", description="3DPW-PC (person-person occlusion).", subset="pc"),
    ThreedpwConfig(name="crowd", description="3DPW-Crowd (DPMesh).", subset="crowd"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register at https://virtualhumans.mpi-inf.mpg.de/3DPW/ and unpack sequenceFiles.zip and
  imageFiles.zip into manual_dir (sequenceFiles/{train,validation,test}/*.pkl,
  imageFiles/<sequence>/image_%05d.jpg). For the oc / pc configs also put 3DPW_oc.json and
  3DPW_pc.json (from https://github.com/xljh0520/JOTR) into manual_dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    if c.kind == "video":
      features = {
        "sequence": tfds.features.Text(), "actor": np.int32, "gender": tfds.features.Text(),
        "image_files": tfds.features.Sequence(tfds.features.Text()),
        "frame_index": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "valid": tfds.features.Tensor(shape=(None,), dtype=np.bool_), "betas": f32(10),
        "global_orient": f32(None, 3), "body_pose": f32(None, 23, 3), "transl": f32(None, 3),
        "global_orient_cam": f32(None, 3), "cam_extrinsics": f32(None, 4, 4),
        "cam_intrinsics": f32(3, 3), "joints3d": f32(None, 24, 3), "keypoints2d": f32(None, 18, 3),
      }  # fmt: skip
    else:
      size = c.crop_size
      features = {
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
        "sequence": tfds.features.Text(), "image_file": tfds.features.Text(),
        "frame_index": np.int32, "actor": np.int32, "gender": tfds.features.Text(),
        "betas": f32(10), "global_orient": f32(3), "body_pose": f32(23, 3), "transl": f32(3),
        "global_orient_cam": f32(3), "cam_extrinsics": f32(4, 4), "cam_intrinsics": f32(3, 3),
        "joints3d": f32(24, 3), "keypoints2d": f32(18, 3), "keypoints2d_crop": f32(18, 3),
        "center": f32(2), "scale": np.float32, "image_size": f32(2),
      }  # fmt: skip
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      homepage="https://virtualhumans.mpi-inf.mpg.de/3DPW/",
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    root = dl_manager.manual_dir
    raw.require(root, "sequenceFiles", _NAME)
    root = pathlib.Path(root)
    if c.subset in ("oc", "pc"):
      keep = _subset_frames(root, c.subset)
      return {"test": self._generate_examples(root, SPLITS, keep)}
    if c.subset == "crowd":
      keep = {(s, None) for s in CROWD_SEQUENCES}
      return {"validation": self._generate_examples(root, ("validation",), keep)}
    return {split: self._generate_examples(root, (split,), None) for split in SPLITS}

  def _generate_examples(self, root: pathlib.Path, splits, keep):
    c = self.builder_config
    for split in splits:
      folder = raw.require(root, f"sequenceFiles/{split}", _NAME)
      for path in sorted(folder.glob("*.pkl")):
        for track in read_sequence(path):
          if keep is not None and not any(s == track.sequence for s, _ in keep):
            continue
          if c.kind == "video":
            yield f"{track.sequence}/{track.actor}", _video_example(track)
            continue
          for t in range(len(track.frame_ids)):
            image_file = _image_file(t)
            if keep is not None and (track.sequence, None) not in keep:
              if (track.sequence, image_file) not in keep:
                continue
            example = self._frame_example(root, track, t, image_file)
            if example is not None:
              yield f"{track.sequence}/{image_file}/{track.actor}", example

  def _frame_example(self, root: pathlib.Path, track: Track, t: int, image_file: str):
    c = self.builder_config
    kp = track.poses2d[t]
    if not track.valid[t] or not np.any(kp[:, 2] > 0):
      return None
    path = raw.require(root, f"imageFiles/{track.sequence}/{image_file}", _NAME)
    image = crops.read_image(path)
    center, scale = crops.bbox_from_keypoints(kp[:, :2], kp[:, 2], c.expand)
    crop = crops.crop_image(image, center, scale, c.crop_size)
    kp_crop = kp.astype(np.float32)
    kp_crop[:, :2] = crops.crop_points(kp[:, :2], center, scale, c.crop_size)
    kp_crop[kp[:, 2] <= 0, :2] = 0
    return {
      "image": crops.encode_image(crop, "jpeg"),
      "sequence": track.sequence, "image_file": image_file, "frame_index": np.int32(t),
      "actor": np.int32(track.actor), "gender": track.gender, "betas": _betas(track.betas),
      "global_orient": track.poses[t, :3], "body_pose": track.poses[t, 3:].reshape(23, 3),
      "transl": track.trans[t],
      "global_orient_cam": _camera_orient(track.poses[t], track.cam_poses[t]),
      "cam_extrinsics": track.cam_poses[t], "cam_intrinsics": track.intrinsics,
      "joints3d": track.joints[t], "keypoints2d": kp, "keypoints2d_crop": kp_crop,
      "center": center.astype(np.float32), "scale": np.float32(scale),
      "image_size": np.array(image.shape[:2], np.float32),
    }  # fmt: skip


def _betas(betas: np.ndarray) -> np.ndarray:
  out = np.zeros(10, np.float32)
  out[: len(betas)] = betas
  return out


def _video_example(track: Track) -> dict:
  n = len(track.frame_ids)
  orient_cam = np.stack([_camera_orient(track.poses[t], track.cam_poses[t]) for t in range(n)])
  return {
    "sequence": track.sequence, "actor": np.int32(track.actor), "gender": track.gender,
    "image_files": [_image_file(t) for t in range(n)],
    "frame_index": np.arange(n, dtype=np.int32), "valid": track.valid,
    "betas": _betas(track.betas), "global_orient": track.poses[:, :3],
    "body_pose": track.poses[:, 3:].reshape(n, 23, 3), "transl": track.trans,
    "global_orient_cam": orient_cam, "cam_extrinsics": track.cam_poses,
    "cam_intrinsics": track.intrinsics, "joints3d": track.joints, "keypoints2d": track.poses2d,
  }  # fmt: skip
