"""`emdb`: the EMDB electromagnetic in-the-wild dataset (Kaufmann et al. 2023), official files.

What to download (registration required): https://eth-ait.github.io/emdb/ -> the per-subject
archives. manual_dir layout (as unpacked):

  <manual_dir>/P<k>/<sequence>/P<k>_<sequence>_data.pkl
  <manual_dir>/P<k>/<sequence>/images/*.jpg      (one per frame; sorted names = frame order)

Each `_data.pkl` (read with the restricted unpickler of `jhmr.body.io`; keys as documented in
the EMDB README of the first release, checked on read) is a dict: `name`,
`gender`, `emdb1` / `emdb2` (bool: member of the EMDB 1 / EMDB 2 benchmark subsets), `n_frames`
N, `good_frames_mask` (N,) bool, `smpl` {`poses_root` (N,3), `poses_body` (N,69), `trans`
(N,3), `betas` (10,)} (world frame), `camera` {`intrinsics` (3,3), `extrinsics` (N,4,4) world ->
camera, `width`, `height`}, `kp2d` (N,24,2) projected SMPL joints, `bboxes` {`bboxes` (N,4)
x1 y1 x2 y2, `invalid_idxs`}.

Configs: `emdb1` (frames of the EMDB 1 sequences, as ScoreHMR evaluates: "all 24 SMPL
joints"), `emdb1_video` (EMDB 1 sequences as arrays [T, ...] with the good-frame mask, no
images), `all` (frames of every sequence). Frames are the good frames only, with a 224 px JPEG
crop (square box around the bbox, x1.2). Single split `test`.

Frame features: image [224,224,3], sequence, subject, frame_index, gender, betas [10],
global_orient [3], body_pose [23,3], transl [3] (world), global_orient_cam [3], cam_extrinsics
[4,4], cam_intrinsics [3,3], keypoints2d [24,2] (image px), bbox [4], center [2], scale,
image_size [2] (H, W).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from scipy.spatial.transform import Rotation

from jhmr.data import crops, raw

_NAME = "emdb"


@dataclasses.dataclass
class EmdbConfig(tfds.core.BuilderConfig):
  subset: str = "emdb1"  # emdb1 or all
  video: bool = False
  crop_size: int = 224
  expand: float = 1.2


def read_sequence(path: pathlib.Path) -> dict:
  """One official `_data.pkl` as checked numpy arrays (see the module docstring)."""
  data = raw.load_pickle(path)
  get = lambda d, key: raw.field(d, key, path)
  smpl, camera = get(data, "smpl"), get(data, "camera")
  n = len(raw.check(get(data, "good_frames_mask"), (None,), path, "good_frames_mask", bool))
  bboxes = get(data, "bboxes")
  return {
    "name": str(get(data, "name")),
    "gender": str(get(data, "gender")),
    "emdb1": bool(get(data, "emdb1")),
    "good": raw.check(get(data, "good_frames_mask"), (n,), path, "good_frames_mask", bool),
    "poses_root": raw.check(get(smpl, "poses_root"), (n, 3), path, "smpl.poses_root"),
    "poses_body": raw.check(get(smpl, "poses_body"), (n, 69), path, "smpl.poses_body"),
    "trans": raw.check(get(smpl, "trans"), (n, 3), path, "smpl.trans"),
    "betas": raw.check(get(smpl, "betas"), (10,), path, "smpl.betas"),
    "intrinsics": raw.check(get(camera, "intrinsics"), (3, 3), path, "camera.intrinsics"),
    "extrinsics": raw.check(get(camera, "extrinsics"), (n, 4, 4), path, "camera.extrinsics"),
    "kp2d": raw.check(get(data, "kp2d"), (n, 24, 2), path, "kp2d"),
    "bboxes": raw.check(get(bboxes, "bboxes"), (n, 4), path, "bboxes.bboxes"),
  }


def _orient_cam(root: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
  """World root orientation `[..., 3]` -> camera frame (`R_ext @ R_root`), float32."""
  rotation = Rotation.from_matrix(extrinsics[..., :3, :3]) * Rotation.from_rotvec(root)
  return rotation.as_rotvec().astype(np.float32)


class Builder(tfds.core.GeneratorBasedBuilder):
  """EMDB (see the module docstring)."""

  name = _NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    EmdbConfig(name="emdb1", description="EMDB 1 good frames with 224 px crops."),
    EmdbConfig(name="emdb1_video", description="EMDB 1 sequences as arrays.", video=True),
    EmdbConfig(name="all", description="All sequences' good frames.", subset="all"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register at https://eth-ait.github.io/emdb/ and unpack the subject archives into manual_dir:
  P<k>/<sequence>/P<k>_<sequence>_data.pkl and P<k>/<sequence>/images/*.jpg (one per frame).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    if c.video:
      features = {
        "sequence": tfds.features.Text(), "subject": tfds.features.Text(),
        "gender": tfds.features.Text(), "good": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
        "betas": f32(10), "global_orient": f32(None, 3), "body_pose": f32(None, 23, 3),
        "transl": f32(None, 3), "global_orient_cam": f32(None, 3),
        "cam_extrinsics": f32(None, 4, 4), "cam_intrinsics": f32(3, 3),
        "keypoints2d": f32(None, 24, 2), "bbox": f32(None, 4),
      }  # fmt: skip
    else:
      size = c.crop_size
      features = {
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
        "sequence": tfds.features.Text(), "subject": tfds.features.Text(),
        "frame_index": np.int32, "gender": tfds.features.Text(), "betas": f32(10),
        "global_orient": f32(3), "body_pose": f32(23, 3), "transl": f32(3),
        "global_orient_cam": f32(3), "cam_extrinsics": f32(4, 4), "cam_intrinsics": f32(3, 3),
        "keypoints2d": f32(24, 2), "bbox": f32(4), "center": f32(2), "scale": np.float32,
        "image_size": f32(2),
      }  # fmt: skip
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features), homepage="https://eth-ait.github.io/emdb/"
    )

  def _split_generators(self, dl_manager):
    root = pathlib.Path(raw.require(dl_manager.manual_dir, ".", _NAME))
    files = sorted(root.glob("P*/*/*_data.pkl"))
    if not files:
      raise FileNotFoundError(f"{_NAME}: no P<k>/<sequence>/*_data.pkl files under {root}")
    return {"test": self._generate_examples(files)}

  def _generate_examples(self, files):
    c = self.builder_config
    for path in files:
      seq = read_sequence(path)
      if c.subset == "emdb1" and not seq["emdb1"]:
        continue
      subject, name = path.parent.parent.name, path.parent.name
      n = len(seq["good"])
      body = seq["poses_body"].reshape(n, 23, 3)
      common = {
        "sequence": name,
        "subject": subject,
        "gender": seq["gender"],
        "betas": seq["betas"],
      }
      if c.video:
        yield name, common | {
          "good": seq["good"], "global_orient": seq["poses_root"], "body_pose": body,
          "transl": seq["trans"],
          "global_orient_cam": _orient_cam(seq["poses_root"], seq["extrinsics"]),
          "cam_extrinsics": seq["extrinsics"], "cam_intrinsics": seq["intrinsics"],
          "keypoints2d": seq["kp2d"], "bbox": seq["bboxes"],
        }  # fmt: skip
        continue
      images = sorted((path.parent / "images").glob("*.jpg"))  # frame t = the t-th image
      if len(images) != n:
        raise raw.RawDataError(
          f"{path.parent / 'images'}: {len(images)} .jpg files for the {n} frames of {path.name}"
        )
      for t in np.flatnonzero(seq["good"]):
        image = crops.read_image(images[t])
        box = seq["bboxes"][t]
        center = (box[:2] + box[2:]) / 2
        scale = float(max(box[2:] - box[:2]) * c.expand)
        crop = crops.crop_image(image, center, scale, c.crop_size)
        yield f"{name}/{t}", common | {
          "image": crops.encode_image(crop, "jpeg"), "frame_index": np.int32(t),
          "global_orient": seq["poses_root"][t], "body_pose": body[t], "transl": seq["trans"][t],
          "global_orient_cam": _orient_cam(seq["poses_root"][t], seq["extrinsics"][t]),
          "cam_extrinsics": seq["extrinsics"][t], "cam_intrinsics": seq["intrinsics"],
          "keypoints2d": seq["kp2d"][t], "bbox": box, "center": center.astype(np.float32),
          "scale": np.float32(scale), "image_size": np.array(image.shape[:2], np.float32),
        }  # fmt: skip
