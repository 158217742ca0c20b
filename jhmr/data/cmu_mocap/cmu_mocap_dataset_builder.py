"""`cmu_mocap`: CMU BVH motion capture retargeted onto the 24-joint SMPL-format body model.

What to download: any CMU Graphics Lab Motion Capture BVH release laid out as
`<manual_dir>/<subject folder>/<name>.bvh`: the cgspeed "Daz-friendly" 43-joint release (e.g.
the 185-file subset in `../shared/data/cmu_mocap`), the MotionBuilder-friendly 31-joint release
(http://mocap.cs.cmu.edu, cgspeed.com) or BVH files on an SMPL-named skeleton. Frame 0 of every
file must be the rest (T-)pose, as in the cgspeed releases; it is dropped.

Build (TF-free):

  builder = tfds.builder("cmu_mocap/frames", data_dir=DIR, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="../shared/data/cmu_mocap"))
  train = builder.as_data_source()["train"]

Splits: `train` / `test` by subject folder (`jhmr.data.mocap.cmu_subject_split`: deterministic,
the two salsa partners `60-61A`/`60-61B` stay together). Configs: `frames` (one example per
frame) and `clips` (windows of `clip_length` frames every `clip_stride` frames), both at
`fps`, retargeted onto `body_model` (`jhmr.body.load_body_model(name)`).

Features (axis-angle radians, metres, SMPL joint order):
  frames: global_orient [3], body_pose [23, 3], transl [3], name (str, `<folder>/<file>`),
    subject (str), frame_index (int32, after dropping the rest frame and resampling).
  clips: global_orient [L, 3], body_pose [L, 23, 3], transl [L, 3], name, subject, start.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import bvh as bvh_lib
from jhmr.data import mocap


@dataclasses.dataclass
class CmuConfig(tfds.core.BuilderConfig):
  """`clip_length` 0 means one example per frame."""

  fps: float = 30.0
  clip_length: int = 0
  clip_stride: int = 0
  body_model: str = "anny"


class Builder(tfds.core.GeneratorBasedBuilder):
  """CMU mocap as SMPL-format poses (see the module docstring)."""

  name = "cmu_mocap"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: retargeted frames and clips."}
  BUILDER_CONFIGS = [
    CmuConfig(name="frames", description="One example per frame at 30 fps."),
    CmuConfig(name="clips", description="64-frame clips every 16 frames at 30 fps.",
              clip_length=64, clip_stride=16),
  ]  # fmt: skip
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the CMU BVH files in manual_dir as <subject folder>/<name>.bvh (e.g. 01/01_01.bvh); the
  subset shipped next to this project is ../shared/data/cmu_mocap. Frame 0 of each file must be
  the T-pose rest frame (true for the cgspeed Daz- and MotionBuilder-friendly releases).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    length = self.builder_config.clip_length or None
    lead = (length,) if length else ()
    features = {
      "global_orient": tfds.features.Tensor(shape=lead + (3,), dtype=np.float32),
      "body_pose": tfds.features.Tensor(shape=lead + (23, 3), dtype=np.float32),
      "transl": tfds.features.Tensor(shape=lead + (3,), dtype=np.float32),
      "name": tfds.features.Text(),
      "subject": tfds.features.Text(),
      ("start" if length else "frame_index"): np.int32,
    }
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features), homepage="http://mocap.cs.cmu.edu"
    )

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    if not root.is_dir():
      raise FileNotFoundError(f"cmu_mocap: manual_dir {root} does not exist")
    train, test = mocap.cmu_subject_split(root)
    return {
      "train": self._generate_examples(root, train),
      "test": self._generate_examples(root, test),
    }

  def target_skeleton(self) -> mocap.Skeleton:
    """The rest skeleton poses are retargeted onto (`config.body_model` at betas 0)."""
    from jhmr.body import load_body_model  # noqa: PLC0415 (heavy; only when building)

    return mocap.skeleton_of(load_body_model(self.builder_config.body_model))

  def _generate_examples(self, root: pathlib.Path, subjects: list[str]):
    config = self.builder_config
    skeleton = self.target_skeleton()
    for rel in mocap.cmu_files(root, subjects):
      clip = bvh_lib.read_bvh(root / rel)
      motion = mocap.resample(mocap.retarget_to_body(clip, skeleton, rest_frame=0)[1:], config.fps)
      name, subject = rel.removesuffix(".bvh"), rel.split("/")[0]
      if not config.clip_length:
        for t in range(motion.num_frames):
          yield f"{name}/{t}", _example(motion[t], name, subject, frame_index=t)
        continue
      last = motion.num_frames - config.clip_length
      for start in range(0, last + 1, config.clip_stride):
        window = motion[start : start + config.clip_length]
        yield f"{name}/{start}", _example(window, name, subject, start=start)


def _example(motion: mocap.Motion, name: str, subject: str, **index) -> dict:
  return {
    "global_orient": motion.global_orient,
    "body_pose": motion.body_pose,
    "transl": motion.transl,
    "name": name,
    "subject": subject,
    **{k: np.int32(v) for k, v in index.items()},
  }
