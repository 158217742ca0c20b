"""`synthetic`: rendered synthetic people as `PersonExample`s, from `jhmr.data.synthesis`.

Every example comes from the one synthetic-people generator (`jhmr.data.synthesis`): a body
posed by a pose source, facing a ScoreHMR-style crop camera with a random yaw / pitch, rendered
as an `S x S` crop (shaded body on a random gradient) with detector-like noisy `openpose25`
keypoints and the exact `smpl24` projections. Pose sources: `demo_mix` and `uniform`
(`jhmr.data.poses`, need no data) or `cmu` (CMU BVH retargeted by `jhmr.data.mocap`;
manual_dir = the CMU folder, e.g. `../shared/data/cmu_mocap`, split by subject with
`cmu_subject_split`; every `frame_stride`-th frame of every file, each frame one person, in
file order).

Build (TF-free):

  builder = make_builder("synthetic/demo_mix_224", data_dir=DIR, file_format="array_record")
  builder.download_and_prepare()            # cmu_*: DownloadConfig(manual_dir=CMU folder)
  row = builder.as_data_source()["train"][i]
  example = to_example(row)                 # the typed `PersonExample`

Configs (version 2.0.0): `demo_mix_64`, `demo_mix_224`, `uniform_224` (one view per person,
crops of that size; ScoreHMR uses 224), `cmu_224` (every 10th CMU frame, one view),
`demo_mix_multiview` (4 views of each person, yaw spread over +-45 degrees, 224 px: the
`views` consecutive examples of a person share `group`, `frame` = view index).

Determinism: persons are generated in chunks of `chunk // views` persons (`chunk` examples);
chunk k of split s comes from `KeySeq(seed).child(s).child(f"chunk{k}")` through
`synthesis.single_view_set` / `multiview_set`, and example i is row `i % chunk` of chunk
`i // chunk` (a trailing partial chunk is generated whole and cut). So an example depends only
on (config seed, split, index, chunk): not on the split size, on the build order or on the
device. Changing `chunk` changes the data. Examples are stored in index order (no shuffling),
so the consecutive examples of a multi-view person stay consecutive.

Features (the `PersonExample` fields; S = crop size, `jhmr/data/example.py` for units/frames):
image [S, S, 3] uint8 (PNG), crop_from_image [2, 3] (identity: the crop is the full image),
intrinsics [3, 3], image_size [2], keypoints_2d {openpose25 [25, 3], smpl24 [24, 3]} (x, y,
confidence; crop px), global_orient [3], body_pose [23, 3], betas [10] (the body model's, zero
padded / cut to 10), cam_t [3], joints_3d [24, 3], joint_visibility [24], occlusion [S, S] bool
(all False; zlib), has_smpl [], has_3d [] (float32), group [], frame [] (int32).
"""

from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import crops, mocap, synthesis
from jhmr.data.example import PersonExample
from jhmr.keys import KeySeq

NUM_BETAS = 10
KEYPOINT_SETS = {"openpose25": 25, "smpl24": 24}
POSE_SOURCES = ("demo_mix", "uniform", "cmu")
SPLITS = ("train", "test")
_FLOAT_FIELDS = {
  "crop_from_image": (2, 3),
  "intrinsics": (3, 3),
  "image_size": (2,),
  "global_orient": (3,),
  "body_pose": (23, 3),
  "betas": (NUM_BETAS,),
  "cam_t": (3,),
  "joints_3d": (24, 3),
  "joint_visibility": (24,),
  "has_smpl": (),
  "has_3d": (),
}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """A synthetic dataset (see the module docstring).

  Attributes:
    pose_source: `demo_mix`, `uniform` or `cmu`.
    crop_size: side S of the rendered crop in pixels.
    views: views per person (> 1: `synthesis.multiview_set`, consecutive examples).
    num_train, num_test: persons per split (`demo_mix` / `uniform`; each gives `views`
      examples). `cmu` takes one person per kept frame instead.
    frame_stride: `cmu` keeps every `frame_stride`-th frame (at 30 fps) of each file.
    chunk: examples generated together (a multiple of `views`); part of the data's identity.
    seed: root of every key.
    body_model: `jhmr.body.load_body_model` name.
  """

  pose_source: str = "demo_mix"
  crop_size: int = 224
  views: int = 1
  num_train: int = 4096
  num_test: int = 512
  frame_stride: int = 10
  chunk: int = 64
  seed: int = 0
  body_model: str = "anny"


class _Frames(synthesis.PoseSource):
  """A `motion` source whose `sample(n)` is its first n frames in order: the builder walks the
  CMU frames instead of drawing them."""

  def sample(self, key, n: int, body_model, spec) -> np.ndarray:
    del key, body_model, spec
    return np.asarray(self.body_pose[:n], np.float32)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic people as `PersonExample`s (see the module docstring)."""

  name = "synthetic"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release (world-frame camera rigs).",
    "2.0.0": "PersonExample features from the one generator, jhmr.data.synthesis.",
  }
  BUILDER_CONFIGS = [
    SyntheticConfig(name="demo_mix_64", description="demo_mix poses, one view, 64 px crops.",
                    crop_size=64),
    SyntheticConfig(name="demo_mix_224", description="demo_mix poses, one view, 224 px crops."),
    SyntheticConfig(name="uniform_224", description="Uniform poses, one view, 224 px crops.",
                    pose_source="uniform"),
    SyntheticConfig(name="cmu_224", description="Every 10th CMU frame, one view, 224 px crops.",
                    pose_source="cmu"),
    SyntheticConfig(name="demo_mix_multiview",
                    description="demo_mix poses, 4 views per person, 224 px crops.",
                    views=4, num_train=1024, num_test=128),
  ]  # fmt: skip
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Only the cmu_* configs need files: manual_dir = a CMU BVH folder laid out as
  <subject folder>/<name>.bvh (e.g. ../shared/data/cmu_mocap). The other configs need nothing.
  """

  def body_model(self):
    """The body model the people are generated with (`config.body_model`)."""
    from jhmr.body import load_body_model  # noqa: PLC0415 (heavy; only when building)

    return load_body_model(self.builder_config.body_model)

  def scene_spec(self) -> synthesis.SceneSpec:
    """The generator's scene: `SceneSpec` defaults at the config's crop size."""
    return synthesis.SceneSpec(crop_size=self.builder_config.crop_size)

  def _check_config(self) -> None:
    c = self.builder_config
    if c.pose_source not in POSE_SOURCES:
      raise ValueError(
        f"synthetic: unknown pose_source {c.pose_source!r}; valid: {', '.join(POSE_SOURCES)}"
      )
    if c.views < 1 or c.chunk < c.views or c.chunk % c.views:
      raise ValueError(f"synthetic: chunk ({c.chunk}) must be a multiple of views ({c.views})")

  def _info(self) -> tfds.core.DatasetInfo:
    self._check_config()
    s = self.builder_config.crop_size
    tensor = lambda shape, dtype=np.float32, **kw: tfds.features.Tensor(
      shape=shape, dtype=dtype, **kw
    )
    features = {
      "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
      "keypoints_2d": tfds.features.FeaturesDict(
        {name: tensor((k, 3)) for name, k in KEYPOINT_SETS.items()}
      ),
      **{name: tensor(shape) for name, shape in _FLOAT_FIELDS.items()},
      "occlusion": tensor((s, s), np.bool_, encoding=tfds.features.Encoding.ZLIB),
      "group": tensor((), np.int32),
      "frame": tensor((), np.int32),
    }
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(features), disable_shuffling=True
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    self._check_config()
    if c.pose_source != "cmu":
      counts = {"train": c.num_train, "test": c.num_test}
      return {s: self._generate_examples(s, counts[s]) for s in SPLITS}
    root = pathlib.Path(dl_manager.manual_dir)
    if not root.is_dir():
      raise FileNotFoundError(f"synthetic/{c.name}: CMU manual_dir {root} does not exist")
    body_model = self.body_model()
    subjects = dict(zip(SPLITS, mocap.cmu_subject_split(root), strict=True))
    out = {}
    for split in SPLITS:
      names = subjects[split]
      motions = mocap.load_cmu(root, names, body_model).values() if names else []
      frames = [np.asarray(m.body_pose[:: c.frame_stride], np.float32) for m in motions]
      frames = np.concatenate(frames) if frames else np.zeros((0, 23, 3), np.float32)
      out[split] = self._generate_examples(split, len(frames), frames, body_model)
    return out

  def _generate_examples(self, split: str, people: int, frames=None, body_model=None):
    """Yields `(f"{i:08d}", row)`, example i of `split` (see the module docstring)."""
    c = self.builder_config
    if people == 0:
      return
    body_model = body_model if body_model is not None else self.body_model()
    spec = self.scene_spec()
    per_chunk = c.chunk // c.views
    source = synthesis.PoseSource(c.pose_source) if frames is None else None
    for k in range(-(-people // per_chunk)):
      first = k * per_chunk
      count = min(per_chunk, people - first)
      if frames is not None:  # this chunk's frames, the last repeated to a whole chunk
        part = frames[first : first + count]
        part = np.concatenate([part, np.repeat(part[-1:], per_chunk - count, 0)])
        source = _Frames("motion", part, np.zeros(per_chunk, np.int32))
      keys = KeySeq(c.seed).child(split).child(f"chunk{k}")
      if c.views == 1:
        batch = synthesis.single_view_set(keys, per_chunk, body_model, source, spec)
      else:
        batch = synthesis.multiview_set(keys, per_chunk, c.views, body_model, source, spec)
      for row in range(count * c.views):
        i = first * c.views + row
        yield f"{i:08d}", _row(batch, row, group=first + row // c.views)


def _fit(values: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros(size, np.float32)
  out[: min(size, len(values))] = values[:size]
  return out


def _row(batch: PersonExample, j: int, group: int) -> dict:
  """Row j of a generator batch as a feature dict (`group` = the split-wide person index)."""
  row = {name: np.asarray(getattr(batch, name)[j], np.float32) for name in _FLOAT_FIELDS}
  row["betas"] = _fit(row["betas"], NUM_BETAS)
  row["image"] = crops.encode_image(batch.image[j], "png")
  row["keypoints_2d"] = {
    name: np.asarray(batch.keypoints_2d[name][j], np.float32) for name in KEYPOINT_SETS
  }
  row["occlusion"] = np.asarray(batch.occlusion[j], np.bool_)
  row["group"] = np.int32(group)
  row["frame"] = np.int32(batch.frame[j])
  return row


def to_example(row) -> PersonExample:
  """A data-source row (decoded, or with `image` left as encoded bytes) -> `PersonExample`
  (numpy, the documented dtypes; `check_example` passes)."""
  image = row["image"]
  if isinstance(image, bytes):
    from PIL import Image  # noqa: PLC0415

    image = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
  return PersonExample(
    image=np.asarray(image, np.uint8),
    keypoints_2d={name: np.asarray(kp, np.float32) for name, kp in row["keypoints_2d"].items()},
    occlusion=np.asarray(row["occlusion"], bool),
    group=np.asarray(row["group"], np.int32),
    frame=np.asarray(row["frame"], np.int32),
    **{name: np.asarray(row[name], np.float32) for name in _FLOAT_FIELDS},
  )
