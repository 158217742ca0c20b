"""`diffusion_hpc_synthetic`: Diffusion-HPC's generated image-mesh pairs as a TFDS dataset.

The examples are made by the generation program (`jhmr.pipelines.diffusion_hpc`, stage
`generate`), which writes shards (format: `jhmr.data.diffusion_hpc_synthetic.shards`) into one
folder; that folder is this builder's manual_dir. With N generating processes the folder holds
the shards of all of them; the builder refuses an incomplete set, naming the missing shards.

  builder = Builder(data_dir=DIR, file_format="array_record")        # config 'default'
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=GENERATED_DIR))
  rows = builder.as_data_source()["train"]                              # TF-free
  example = to_example(rows[i], crop_size=64)                          # a `PersonExample`

Config 'beam' prepares the same examples through Apache Beam (one Beam element per shard;
`DownloadConfig(beam_runner=...)`, e.g. the DirectRunner locally) for large generated sets.

Features (one example = one generated image of one person; px = image pixels):
image [G, G, 3] uint8 (PNG), box [3] (centre x, centre y, side of the square crop box, px),
intrinsics [3, 3], global_orient [3], body_pose [23, 3] (axis-angle, camera frame / parent
relative), betas [10], cam_t [3] (m), joints_3d [24, 3] (m, camera frame), keypoints_2d
{smpl24 [24, 3], openpose25 [25, 3]} ((x, y, visible) in image px), prompt (text), hardness
(VPoser score of the estimate), augmentation_index (0 = the estimate, k > 0 = k-th augmented
pose), guide_index (the prompt / guide image it comes from), generator (text: 'sd' for Stable
Diffusion images, 'render' for images rendered by jhmr's rasteriser in place of SD).
The dataset's metadata (`builder.info.metadata`) repeats the generator and its description.
"""

from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import crops
from jhmr.data.diffusion_hpc_synthetic import shards
from jhmr.data.example import PersonExample

KEYPOINT_SETS = {"smpl24": 24, "openpose25": 25}
_FLOAT = {
  "box": (3,),
  "intrinsics": (3, 3),
  "global_orient": (3,),
  "body_pose": (23, 3),
  "betas": (shards.NUM_BETAS,),
  "cam_t": (3,),
  "joints_3d": (24, 3),
  "hardness": (),
}


@dataclasses.dataclass
class HPCConfig(tfds.core.BuilderConfig):
  """beam: prepare through Apache Beam (one element per shard) instead of a Python generator."""

  beam: bool = False


_ROWS_PER_SHARD = 1_000_000  # integer keys: with disable_shuffling, Beam orders by the key itself


def _rows(path):
  """`(key, feature dict)` of every example of one shard file; key = shard index x 10^6 + row
  (ints: the order of the examples, in both preparation modes)."""
  arrays, meta = shards.read_shard(path)
  index = int(meta["index"])
  for j in range(len(arrays["image"])):
    row = {name: np.asarray(arrays[name][j], np.float32) for name in _FLOAT}
    row["image"] = crops.encode_image(arrays["image"][j], "png")
    row["keypoints_2d"] = {
      name: np.asarray(arrays[f"keypoints_{name}"][j], np.float32) for name in KEYPOINT_SETS
    }
    row["prompt"] = str(arrays["prompt"][j])
    row["augmentation_index"] = np.int32(arrays["augmentation_index"][j])
    row["guide_index"] = np.int32(arrays["guide_index"][j])
    row["generator"] = str(meta["generator"])
    yield index * _ROWS_PER_SHARD + j, row


class Builder(tfds.core.GeneratorBasedBuilder):
  """Diffusion-HPC generated pairs (see the module docstring)."""

  name = "diffusion_hpc_synthetic"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (shard format jhmr.diffusion_hpc.shard/1)."}
  BUILDER_CONFIGS = [
    HPCConfig(name="default", description="Generated shards, Python generator."),
    HPCConfig(name="beam", description="Generated shards, prepared with Apache Beam.", beam=True),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  manual_dir = the `generated` folder of a Diffusion-HPC generation run (the workdir of
  `python -m jhmr.launch --config configs/diffusion_hpc.py --config.stage=generate`), holding
  shard-XXXXX-of-YYYYY.npz files.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    tensor = lambda shape, dtype=np.float32: tfds.features.Tensor(shape=shape, dtype=dtype)
    features = {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "keypoints_2d": tfds.features.FeaturesDict(
        {name: tensor((k, 3)) for name, k in KEYPOINT_SETS.items()}
      ),
      **{name: tensor(shape) for name, shape in _FLOAT.items()},
      "prompt": tfds.features.Text(),
      "generator": tfds.features.Text(),
      "augmentation_index": tensor((), np.int32),
      "guide_index": tensor((), np.int32),
    }
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    paths = shards.list_shards(pathlib.Path(dl_manager.manual_dir))
    _, meta = shards.read_shard(paths[0])
    self.info.metadata["generator"] = meta["generator"]
    self.info.metadata["generator_description"] = meta.get("generator_description", "")
    self.info.metadata["num_shards"] = len(paths)
    return {"train": self._generate_examples(paths)}

  def _generate_examples(self, paths):
    """A generator of `(key, row)` (config 'default') or a Beam PTransform (config 'beam')."""
    if not self.builder_config.beam:
      return _all_rows(paths)
    beam = tfds.core.lazy_imports.apache_beam
    return beam.Create([str(p) for p in paths]) | beam.FlatMap(_rows)


def _all_rows(paths):
  for path in paths:
    yield from _rows(path)


def to_example(row, crop_size: int, num_betas: int | None = None) -> PersonExample:
  """A data-source row -> `PersonExample` with a `crop_size`² crop of the row's box (the trainer's
  example; keypoints in crop px, `crop_from_image` the box's affine). Generated labels are full
  SMPL ground truth: has_smpl = has_3d = 1, synthetic = 1. `num_betas` cuts / zero-pads betas to
  the body model's count (None: the stored 10)."""
  image = row["image"]
  if isinstance(image, bytes):
    from PIL import Image  # noqa: PLC0415

    image = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
  image = np.asarray(image, np.uint8)
  box = np.asarray(row["box"], np.float64)
  center, side = box[:2], float(box[2])
  affine = crops.crop_transform(center, side, crop_size).astype(np.float32)
  keypoints = {}
  for name in KEYPOINT_SETS:
    kp = np.asarray(row["keypoints_2d"][name], np.float32)
    xy = crops.crop_points(kp[:, :2], center, side, crop_size)
    inside = np.all((xy >= 0) & (xy < crop_size), -1) & (kp[:, 2] > 0)
    keypoints[name] = np.where(inside[:, None], np.concatenate([xy, kp[:, 2:]], -1), 0.0).astype(
      np.float32
    )
  h, w = image.shape[:2]
  return PersonExample(
    image=crops.crop_image(image, center, side, crop_size),
    crop_from_image=affine,
    intrinsics=np.asarray(row["intrinsics"], np.float32),
    image_size=np.asarray([w, h], np.float32),
    keypoints_2d=keypoints,
    global_orient=np.asarray(row["global_orient"], np.float32),
    body_pose=np.asarray(row["body_pose"], np.float32),
    betas=_betas(row["betas"], num_betas),
    cam_t=np.asarray(row["cam_t"], np.float32),
    joints_3d=np.asarray(row["joints_3d"], np.float32),
    joint_visibility=keypoints["smpl24"][:, 2].copy(),
    occlusion=np.zeros((crop_size, crop_size), bool),
    has_smpl=np.float32(1.0),
    has_3d=np.float32(1.0),
    group=np.int32(row["guide_index"]),
    frame=np.int32(row["augmentation_index"]),
    synthetic=np.float32(1.0),
  )


def _betas(betas, num_betas: int | None) -> np.ndarray:
  betas = np.asarray(betas, np.float32)
  if num_betas is None:
    return betas
  out = np.zeros(num_betas, np.float32)
  out[: min(num_betas, len(betas))] = betas[:num_betas]
  return out
