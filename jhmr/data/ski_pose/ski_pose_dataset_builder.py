"""`ski_pose`: Ski-Pose PTZ-Camera (Spörri / Rhodin et al.) as Diffusion-HPC evaluates it.

What to download: the Ski-Pose PTZ-Camera dataset (EPFL CVLab / Univ. Bern, "Ski-Pose"; the
preprocessed 256 x 256 crops with `labels.h5`, as Diffusion-HPC's `data/ski_3d`). manual_dir
layout:

  <manual_dir>/train/labels.h5
  <manual_dir>/train/seq_XXX/cam_XX/image_XXXXXX.png      (256 x 256)
  <manual_dir>/test/labels.h5
  <manual_dir>/test/seq_XXX/cam_XX/image_XXXXXX.png

`labels.h5` holds one row per image: `seq`, `cam`, `frame`, `subj` (integers; the image is
`seq_{seq:03d}/cam_{cam:02d}/image_{frame:06d}.png`), `3D` (17 x 3 joints, Human3.6M order, any
shape reshaping to [N, 17, 3]), `2D` (17 x 2 in [0, 1] of the 256 px image, same order).
Real sizes: 8481 train / 1716 test rows (research/diffusion_hpc.md §4).

As Diffusion-HPC's `parse_data_from_ski.py` prepares it (research/diffusion_hpc.md §4, §8.9):
* keypoints2d = `2D` x 256 (px of the 256 image), conf 1, in the file's joint order (2D is
  *not* swapped: the file's joints 4, 5, 6 are used as the left leg).
* joints3d = `3D` minus joint 0 (root-centred), then the legs swapped back (the dataset has
  them flipped): rows 1, 2, 3 (right hip, knee, ankle) <-> rows 4, 5, 6 (left). This is the
  test npz's `S` without its column of ones; train rows carry it too (Diffusion-HPC trains
  2D-only and drops it). Units as in the file (metres).
* part [24, 3]: SPIN's 24-joint order from the 13 OpenPose joints made of the 2D joints (legs,
  arms, neck = H36M joint 8); the other rows are 0.
* box: DAPA's box of `part` over *all* 24 rows (the zero rows included, so the image origin is
  inside the box), centre = its middle, side = max(3 x mean torso height (R shoulder - R hip,
  L shoulder - L hip), 1.2 x the longer box side) px (`scale` here = that side in px; DAPA's
  npz scale is side / 200).
* index: the row in labels.h5. Diffusion-HPC's few-shot `ski{N}` training set is the first N
  rows: select `index < N` (TFDS shuffles the stored order).

Features: image [crop_size, crop_size, 3] (JPEG crop of the box), image_path (relative to the
split directory), index, seq, cam, frame, subj (int32), keypoints2d [17, 3], keypoints2d_crop
[17, 3], part [24, 3] (image px), joints3d [17, 3], center [2], scale.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import crops, raw

_NAME = "ski_pose"
NUM_JOINTS = 17
IMAGE_SIZE = 256
# Human3.6M rows swapped back in 3D: right leg (hip, knee, ankle) <-> left leg.
RIGHT_LEG = (1, 2, 3)
LEFT_LEG = (4, 5, 6)
# OpenPose BODY_25 rows <- H36M 17 rows of the 2D labels (DAPA's preparation).
OPENPOSE_FROM_H36M = {
  12: 4, 13: 5, 14: 6, 9: 1, 10: 2, 11: 3, 1: 8, 5: 11, 6: 12, 7: 13, 2: 14, 3: 15, 4: 16,
}  # fmt: skip
# SPIN 24 rows <- OpenPose BODY_25 rows.
SPIN_FROM_OPENPOSE = {
  0: 11, 1: 10, 2: 9, 3: 12, 4: 13, 5: 14, 6: 4, 7: 3, 8: 2, 9: 5, 10: 6, 11: 7,
  19: 0, 20: 16, 21: 15, 22: 18, 23: 17,
}  # fmt: skip
_KEYS = ("seq", "cam", "frame", "subj", "3D", "2D")


@dataclasses.dataclass
class SkiPoseConfig(tfds.core.BuilderConfig):
  crop_size: int = 224
  expand: float = 1.2


def swap_legs(joints: np.ndarray) -> np.ndarray:
  """[..., 17, D] H36M joints with rows 1-3 and 4-6 exchanged."""
  out = np.array(joints, copy=True)
  out[..., RIGHT_LEG, :] = joints[..., LEFT_LEG, :]
  out[..., LEFT_LEG, :] = joints[..., RIGHT_LEG, :]
  return out


def spin_part(keypoints2d: np.ndarray) -> np.ndarray:
  """[17, 2] H36M image px -> [24, 3] SPIN part: rows 0-11 (limbs) with conf 1; every other
  row 0 (DAPA fills OpenPose's nose, eyes and ears from nothing)."""
  openpose = np.zeros((25, 3), np.float32)
  for op, h in OPENPOSE_FROM_H36M.items():
    openpose[op] = (*keypoints2d[h], 1.0)
  part = np.zeros((24, 3), np.float32)
  for s, op in SPIN_FROM_OPENPOSE.items():
    part[s] = openpose[op]
  return part


def dapa_box(part: np.ndarray, expand: float = 1.2) -> tuple[np.ndarray, float]:
  """DAPA's (centre [2], side px) of a [24, 3] part array (module docstring)."""
  lo, hi = part[:, :2].min(0), part[:, :2].max(0)
  torso = np.mean([np.linalg.norm(part[8] - part[2]), np.linalg.norm(part[9] - part[3])])
  side = max(torso * 3.0, float(max(hi - lo)) * expand)
  return ((lo + hi) / 2).astype(np.float64), float(side)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Ski-Pose (see the module docstring)."""

  name = _NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [SkiPoseConfig(name="frames")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download Ski-Pose PTZ (the 256 x 256 crops with labels.h5) and put train/ and test/ (each with
  labels.h5 and seq_XXX/cam_XX/image_XXXXXX.png) into manual_dir.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.crop_size
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    features = {
      "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
      "image_path": tfds.features.Text(), "index": np.int32, "seq": np.int32, "cam": np.int32,
      "frame": np.int32, "subj": np.int32, "keypoints2d": f32(NUM_JOINTS, 3),
      "keypoints2d_crop": f32(NUM_JOINTS, 3), "part": f32(24, 3), "joints3d": f32(NUM_JOINTS, 3),
      "center": f32(2), "scale": np.float32,
    }  # fmt: skip
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      homepage="https://www.epfl.ch/labs/cvlab/data/ski-poseptz-dataset/",
    )

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir) if dl_manager.manual_dir else None
    paths = {s: raw.require(root, f"{s}/labels.h5", _NAME) for s in ("train", "test")}
    return {s: self._generate_examples(path) for s, path in paths.items()}

  def _generate_examples(self, path: pathlib.Path):
    labels = _read_labels(path)
    for i in range(len(labels["seq"])):
      yield f"{i:06d}", self._example(path, labels, i)

  def _example(self, path: pathlib.Path, labels, i: int) -> dict:
    c = self.builder_config
    seq, cam, frame, subj = (int(labels[k][i]) for k in ("seq", "cam", "frame", "subj"))
    relative = f"seq_{seq:03d}/cam_{cam:02d}/image_{frame:06d}.png"
    image = crops.read_image(raw.require(path.parent, relative, _NAME))
    xy = labels["2D"][i] * IMAGE_SIZE
    kp = np.concatenate([xy, np.ones((NUM_JOINTS, 1))], -1).astype(np.float32)
    joints3d = swap_legs(labels["3D"][i] - labels["3D"][i][:1])
    part = spin_part(xy)
    center, side = dapa_box(part, c.expand)
    kp_crop = kp.copy()
    kp_crop[:, :2] = crops.crop_points(xy, center, side, c.crop_size)
    return {
      "image": crops.encode_image(crops.crop_image(image, center, side, c.crop_size), "jpeg"),
      "image_path": relative, "index": np.int32(i), "seq": np.int32(seq), "cam": np.int32(cam),
      "frame": np.int32(frame), "subj": np.int32(subj), "keypoints2d": kp,
      "keypoints2d_crop": kp_crop, "part": part, "joints3d": joints3d.astype(np.float32),
      "center": center.astype(np.float32), "scale": np.float32(side),
    }  # fmt: skip


def _read_labels(path: pathlib.Path) -> dict[str, np.ndarray]:
  """All rows of one labels.h5, checked: ints [N], `3D` [N, 17, 3], `2D` [N, 17, 2]."""
  import h5py

  try:
    with h5py.File(path, "r") as f:
      missing = [k for k in _KEYS if k not in f]
      if missing:
        raise raw.RawDataError(f"{path}: missing key(s) {missing} (has: {', '.join(f)})")
      data = {k: np.asarray(f[k][()]) for k in _KEYS}
  except OSError as e:
    raise raw.RawDataError(f"{path}: not a readable HDF5 file ({e})") from None
  n = len(data["seq"])
  out = {}
  for k in ("seq", "cam", "frame", "subj"):
    out[k] = raw.check(np.reshape(data[k], -1), (n,), path, k, dtype=np.int64)
  for k, d in (("3D", 3), ("2D", 2)):
    if data[k].size != n * NUM_JOINTS * d:
      raise raw.RawDataError(
        f"{path}: {k} has shape {data[k].shape}, expected ({n}, {NUM_JOINTS}, {d}) or ({n}, "
        f"{NUM_JOINTS * d})"
      )
    out[k] = raw.check(data[k].reshape(n, NUM_JOINTS, d), (n, NUM_JOINTS, d), path, k, np.float64)
  return out
