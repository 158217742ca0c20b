"""`smart`: SMART / SportsCap sports images with 2D keypoints, Diffusion-HPC's few-shot splits.

What to download: the SMART dataset v1.0 (Chen et al., SportsCap, IJCV 2021;
https://github.com/ChenxinLiu/SportsCap or the Google Drive parts it links). manual_dir layout:

  <manual_dir>/annotations/Table_VideoInfo_polevalut_highjump_badminton.json
  <manual_dir>/annotations/Table_VideoInfo_gym.json
  <manual_dir>/annotations/Table_VideoInfo_diving.json
  <manual_dir>/images/<img_name>

Each JSON file is a list of videos `{"VideoName", "action_labels", "frames": [{"img_name",
"joints": [[x, y, v], ...] (OpenPose BODY_25 order), "bbox": [x, y, w, h] (diving)}]}`. The
visibility flag is inverted (0 = visible).

One config per action category, with Diffusion-HPC's few-shot split by video order within the
category (the first `train_videos` videos train, the rest test):
  polevault (label contains 'cgt', 2 train videos), highjump ('tg', 2), balancebeam ('184' or
  '204', 5), vault ('vt', 4), unevenbars ('271', 3): the first 15 joints count, visible when
  v == 0; training videos drop their last 5 frames (pole vault, high jump).
  diving (all videos of the diving file, 15 train videos, every 10th training frame): all joints,
  visible when v != 2; frames with fewer than 4 visible joints or no visible torso (neck and
  mid-hip) are skipped.
Frames without joints are skipped.

Features: image [224,224,3] (JPEG; square box of the visible joints (diving: the bbox) x1.2),
video, img_name, frame_index (int32, within the video), action, keypoints2d [25,3] (x, y,
conf 0/1; image px), keypoints2d_crop [25,3], part [24,3] (SPIN's 24-joint order from the
OpenPose joints; rows without an OpenPose counterpart are 0), center [2], scale (box side px).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import crops, raw

_NAME = "smart"
# SPIN 24-joint order <- OpenPose BODY_25 index (-1: none): R ankle, R knee, R hip, L hip,
# L knee, L ankle, R wrist, R elbow, R shoulder, L shoulder, L elbow, L wrist, neck (LSP),
# head top, pelvis (MPII), thorax, spine (H36M), jaw, head (H36M), nose, L eye, R eye, L ear,
# R ear.
SPIN_FROM_OPENPOSE = (11, 10, 9, 12, 13, 14, 4, 3, 2, 5, 6, 7, 1, -1, 8, -1, -1, -1, -1, 0, 16)
SPIN_FROM_OPENPOSE += (15, 18, 17)


@dataclasses.dataclass
class SmartConfig(tfds.core.BuilderConfig):
  file: str = "Table_VideoInfo_polevalut_highjump_badminton.json"
  labels: tuple[str, ...] = ()  # empty: every video of the file
  label_substring: bool = False  # match labels as substrings of action_labels
  train_videos: int = 2
  drop_last: int = 0
  train_stride: int = 1
  diving: bool = False
  crop_size: int = 224
  expand: float = 1.2


_GYM = "Table_VideoInfo_gym.json"


class Builder(tfds.core.GeneratorBasedBuilder):
  """SMART (see the module docstring)."""

  name = _NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SmartConfig(name="polevault", labels=("cgt",), label_substring=True, drop_last=5),
    SmartConfig(name="highjump", labels=("tg",), label_substring=True, drop_last=5),
    SmartConfig(name="balancebeam", file=_GYM, labels=("184", "204", "184;204"), train_videos=5),
    SmartConfig(name="vault", file=_GYM, labels=("vt",), train_videos=4),
    SmartConfig(name="unevenbars", file=_GYM, labels=("271",), train_videos=3),
    SmartConfig(name="diving", file="Table_VideoInfo_diving.json", train_videos=15,
                train_stride=10, diving=True),
  ]  # fmt: skip
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download SMART v1.0 (SportsCap) and put annotations/Table_VideoInfo_*.json and images/ into
  manual_dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.crop_size
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    features = {
      "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
      "video": tfds.features.Text(), "img_name": tfds.features.Text(), "frame_index": np.int32,
      "action": tfds.features.Text(), "keypoints2d": f32(25, 3), "keypoints2d_crop": f32(25, 3),
      "part": f32(24, 3), "center": f32(2), "scale": np.float32,
    }  # fmt: skip
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      homepage="https://github.com/ChenxinLiu/SportsCap",
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    path = raw.require(dl_manager.manual_dir, f"annotations/{c.file}", f"{_NAME}/{c.name}")
    videos = raw.load_json(path)
    if not isinstance(videos, list):
      raise raw.RawDataError(f"{path}: expected a list of videos, got {type(videos).__name__}")
    chosen = [v for v in videos if self._matches(v, path)]
    root = pathlib.Path(dl_manager.manual_dir)
    return {
      "train": self._generate_examples(root, path, chosen[: c.train_videos], True),
      "test": self._generate_examples(root, path, chosen[c.train_videos :], False),
    }

  def _matches(self, video, path) -> bool:
    c = self.builder_config
    label = str(raw.field(video, "action_labels", path))
    if not c.labels:
      return True
    if c.label_substring:
      return any(x in label for x in c.labels)
    return label in c.labels

  def _generate_examples(self, root: pathlib.Path, path, videos, train: bool):
    c = self.builder_config
    for video in videos:
      name = str(raw.field(video, "VideoName", path))
      frames = list(raw.field(video, "frames", path))
      if train:
        frames = frames[: len(frames) - c.drop_last if c.drop_last else None][:: c.train_stride]
        indices = range(0, len(frames) * c.train_stride, c.train_stride)
      else:
        indices = range(len(frames))
      for index, meta in zip(indices, frames):
        example = self._example(root, path, name, index, meta)
        if example is not None:
          yield f"{name}/{index}", example

  def _example(self, root, path, video: str, index: int, meta) -> dict | None:
    c = self.builder_config
    joints = raw.field(meta, "joints", path)
    if len(joints) == 0:
      return None
    flags = raw.check(joints, (None, 3), path, f"{video} frame {index} joints")
    if len(flags) > 25:
      raise raw.RawDataError(f"{path}: {video} frame {index} has {len(flags)} joints (> 25)")
    kp = np.zeros((25, 3), np.float32)
    kp[: len(flags), :2] = flags[:, :2]
    if c.diving:
      kp[: len(flags), 2] = flags[:, 2] != 2
      visible = kp[:, 2] > 0
      if visible.sum() < 4 or not (visible[1] and visible[8]):
        return None
    else:
      n = min(len(flags), 15)
      kp[:n, 2] = flags[:n, 2] == 0
    if not np.any(kp[:, 2] > 0):
      return None
    if c.diving and "bbox" in meta:
      x, y, w, h = raw.check(meta["bbox"], (4,), path, f"{video} frame {index} bbox")
      center, scale = np.array([x + w / 2, y + h / 2]), float(max(w, h) * c.expand)
    else:
      center, scale = crops.bbox_from_keypoints(kp[:, :2], kp[:, 2], c.expand)
    img_name = str(raw.field(meta, "img_name", path))
    image = crops.read_image(raw.require(root, f"images/{img_name}", _NAME))
    kp_crop = kp.copy()
    kp_crop[:, :2] = crops.crop_points(kp[:, :2], center, scale, c.crop_size)
    kp_crop[kp[:, 2] <= 0, :2] = 0
    part = np.zeros((24, 3), np.float32)
    for i, j in enumerate(SPIN_FROM_OPENPOSE):
      if j >= 0:
        part[i] = kp[j]
    return {
      "image": crops.encode_image(crops.crop_image(image, center, scale, c.crop_size), "jpeg"),
      "video": video, "img_name": img_name, "frame_index": np.int32(index), "action": c.name,
      "keypoints2d": kp, "keypoints2d_crop": kp_crop, "part": part,
      "center": center.astype(np.float32), "scale": np.float32(scale),
    }  # fmt: skip
