"""`h36m`: Human3.6M as the preprocessed SMPL-fit npz files used by SPIN, ProHMR and ScoreHMR.

What to download: the Human3.6M images (http://vision.imar.ro/human3.6m, registration; extract
frames as SPIN does, `images/<S>_<Action>.<camera>_<frame>.jpg`) and the preprocessed npz files
(SPIN `data/dataset_extras`, with SMPL fits such as MoSh for training; ScoreHMR/ProHMR ship the
same format). manual_dir layout:

  <manual_dir>/h36m_train.npz               -> split train
  <manual_dir>/h36m_valid_protocol1.npz     -> split test_p1 (S9, S11, all 4 cameras)
  <manual_dir>/h36m_valid_protocol2.npz     -> split test_p2 (S9, S11, frontal camera)
  <manual_dir>/<imgname>                    (the image paths stored in the npz files)

npz keys (N entries; loaded with allow_pickle=False): imgname (N,) str, center (N,2) px,
scale (N,) (box side / 200 px, SPIN's convention), and optionally pose (N,72) SMPL axis-angle
(camera frame) with shape (N,10) and has_smpl (N,), part (N,24,3) 2D keypoints (x, y, conf;
SPIN's 24-joint order), S (N,24,4) 3D joints (metres, conf last), openpose (N,25,3). Missing
optional arrays are stored as zeros with has_* flags 0.

Configs:
  frames: one example per npz entry with a 224 px JPEG crop (square box of side scale*200 at
    center; ScoreHMR's crop), all three splits.
  multiview: protocol-1 entries grouped by (subject, action, frame) across the four cameras;
    groups with all four views only; split test_p1. Views sorted by camera id.

Features (frames; multiview adds a leading [4]): image [224,224,3], imgname, subject, action,
camera, frame (int32), center [2], scale, global_orient [3], body_pose [23,3], betas [10],
has_smpl, keypoints2d [24,3] (image px), keypoints2d_crop [24,3], joints3d [24,4],
openpose [25,3].
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import crops, raw

_NAME = "h36m"
FILES = {
  "train": "h36m_train.npz",
  "test_p1": "h36m_valid_protocol1.npz",
  "test_p2": "h36m_valid_protocol2.npz",
}
_IMGNAME = re.compile(r"(S\d+)_(.+)\.(\d+)_(\d+)\.\w+$")


@dataclasses.dataclass
class H36mConfig(tfds.core.BuilderConfig):
  multiview: bool = False
  crop_size: int = 224


def parse_imgname(imgname: str, source) -> tuple[str, str, str, int]:
  """`.../S9_Directions_1.54138969_000001.jpg` -> ('S9', 'Directions_1', '54138969', 1)."""
  match = _IMGNAME.search(pathlib.Path(imgname).name)
  if not match:
    raise raw.RawDataError(f"{source}: imgname {imgname!r} is not <S>_<action>.<camera>_<frame>")
  subject, action, camera, frame = match.groups()
  return subject, action, camera, int(frame)


def read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The arrays of one preprocessed npz with shapes checked and optional arrays filled."""
  data = raw.load_npz(path)
  names = raw.field(data, "imgname", path)
  n = len(names)
  out = {
    "imgname": np.asarray([str(x) for x in names]),
    "center": raw.check(raw.field(data, "center", path), (n, 2), path, "center"),
    "scale": raw.check(raw.field(data, "scale", path), (n,), path, "scale"),
  }
  optional = {
    "pose": (n, 72), "shape": (n, 10), "part": (n, 24, 3), "S": (n, 24, 4), "openpose": (n, 25, 3)
  }  # fmt: skip
  for key, shape in optional.items():
    out[key] = (
      raw.check(data[key], shape, path, key) if key in data else np.zeros(shape, np.float32)
    )
  has = data.get("has_smpl", np.full(n, 1.0 if "pose" in data else 0.0))
  out["has_smpl"] = raw.check(has, (n,), path, "has_smpl")
  return out


class Builder(tfds.core.GeneratorBasedBuilder):
  """Human3.6M, preprocessed npz format (see the module docstring)."""

  name = _NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    H36mConfig(name="frames", description="One example per npz entry, 224 px crops."),
    H36mConfig(name="multiview", description="Four synchronised views per frame.", multiview=True),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put h36m_train.npz, h36m_valid_protocol1.npz and h36m_valid_protocol2.npz (SPIN/ScoreHMR
  preprocessed format) in manual_dir, and the extracted frames at the paths their `imgname`
  arrays give (relative to manual_dir).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    frame = {
      "image": tfds.features.Image(shape=(c.crop_size, c.crop_size, 3), encoding_format="jpeg"),
      "imgname": tfds.features.Text(), "subject": tfds.features.Text(),
      "action": tfds.features.Text(), "camera": tfds.features.Text(), "frame": np.int32,
      "center": f32(2), "scale": np.float32, "global_orient": f32(3), "body_pose": f32(23, 3),
      "betas": f32(10), "has_smpl": np.float32, "keypoints2d": f32(24, 3),
      "keypoints2d_crop": f32(24, 3), "joints3d": f32(24, 4), "openpose": f32(25, 3),
    }  # fmt: skip
    if c.multiview:
      features = {"views": tfds.features.Sequence(frame, length=4), "group": tfds.features.Text()}
    else:
      features = frame
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features), homepage="http://vision.imar.ro/human3.6m"
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    if self.builder_config.multiview:
      return {"test_p1": self._generate_examples(raw.require(root, FILES["test_p1"], _NAME))}
    return {s: self._generate_examples(raw.require(root, f, _NAME)) for s, f in FILES.items()}

  def _generate_examples(self, path: pathlib.Path):
    data = read_npz(path)
    root = path.parent
    if not self.builder_config.multiview:
      for i, name in enumerate(data["imgname"]):
        yield name, self._frame(root, data, i, path)
      return
    groups = collections.defaultdict(list)
    for i, name in enumerate(data["imgname"]):
      subject, action, camera, frame = parse_imgname(name, path)
      groups[(subject, action, frame)].append((camera, i))
    for (subject, action, frame), views in sorted(groups.items()):
      if len(views) != 4:
        continue
      key = f"{subject}_{action}_{frame:06d}"
      yield (
        key,
        {"group": key, "views": [self._frame(root, data, i, path) for _, i in sorted(views)]},
      )

  def _frame(self, root: pathlib.Path, data: dict, i: int, source) -> dict:
    size = self.builder_config.crop_size
    name = data["imgname"][i]
    subject, action, camera, frame = parse_imgname(name, source)
    image = crops.read_image(raw.require(root, name, _NAME))
    center, box = data["center"][i], float(data["scale"][i]) * 200.0
    kp = data["part"][i]
    kp_crop = kp.copy()
    kp_crop[:, :2] = crops.crop_points(kp[:, :2], center, box, size)
    kp_crop[kp[:, 2] <= 0, :2] = 0
    return {
      "image": crops.encode_image(crops.crop_image(image, center, box, size), "jpeg"),
      "imgname": name, "subject": subject, "action": action, "camera": camera,
      "frame": np.int32(frame), "center": center, "scale": data["scale"][i],
      "global_orient": data["pose"][i, :3], "body_pose": data["pose"][i, 3:].reshape(23, 3),
      "betas": data["shape"][i], "has_smpl": data["has_smpl"][i], "keypoints2d": kp,
      "keypoints2d_crop": kp_crop, "joints3d": data["S"][i], "openpose": data["openpose"][i],
    }  # fmt: skip
