"""`synthetic`: observations generated from a pose source, with full SMPL-format ground truth.

Pose sources: `procedural` (`jhmr.data.poses`, needs no data) or `cmu` (CMU BVH retargeted by
`jhmr.data.mocap`; manual_dir = the CMU folder, e.g. `../shared/data/cmu_mocap`, split by
subject). Each example is one person seen by `num_views` random cameras (a rig when > 1) over
`clip_length` frames, with detector-like noisy 2D keypoints (`KeypointNoise` defaults,
AR(1) in time) and, in the image configs, a rendered person crop (shaded body on a random
background, PNG), all from `jhmr.data.synthesis.observe`. Deterministic: example i of split s is
generated from `fold_in(key(seed), s * 10**7 + i)`.

Configs (version 1.0.0): `procedural_256`, `procedural_224` (one view, one frame, crops of that
size; ScoreHMR uses 224, DPMesh 256), `procedural_multiview` (4 views, keypoints only),
`cmu_256` (every 10th CMU frame, one view, crops), `cmu_video` (16-frame CMU clips, one view,
keypoints only).

Features (leading `[T]` when clip_length > 1, then `[V]` when num_views > 1; K = keypoints of
`joint_set`, default openpose25): betas [10], global_orient [T,3], body_pose [T,23,3], transl
[T,3] (world, Y up), joints3d [T,24,3], keypoints3d [T,K,3], cam_rotation [V,3,3],
cam_translation [V,3], focal_length [V,2], principal_point [V,2], global_orient_cam [T,V,3],
transl_cam [T,V,3], keypoints2d [T,V,K,3] (x, y, conf; full image), keypoints2d_true
[T,V,K,2], center [T,V,2], scale [T,V], keypoints2d_crop [T,V,K,3], image [S,S,3] (image
configs).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jhmr.data import crops, mocap, poses, synthesis

NUM_KEYPOINTS = {"openpose25": 25, "coco17": 17, "h36m17": 17, "lsp14": 14, "smpl24": 24}
_PER_FRAME = ("global_orient", "body_pose", "transl", "joints3d", "keypoints3d")
_PER_VIEW = ("cam_rotation", "cam_translation", "focal_length", "principal_point")


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """A synthetic dataset (see the module docstring)."""

  pose_source: str = "procedural"
  num_views: int = 1
  clip_length: int = 1
  crop_size: int = 0
  num_train: int = 2000
  num_test: int = 200
  frame_stride: int = 10
  seed: int = 0
  joint_set: str = "openpose25"
  body_model: str = "anny"


def _config(name, description, **kwargs) -> SyntheticConfig:
  return SyntheticConfig(name=name, description=description, **kwargs)


@functools.cache
def _observe_fn(spec: synthesis.SceneSpec, source: str):
  """Jitted `(key, body_model, pose) -> observations` (one compilation per spec and source)."""

  def fn(key, body_model, global_orient, body_pose, transl):
    if source == "procedural":
      k_pose, key = jax.random.split(key)
      global_orient, body_pose = poses.procedural_pose(k_pose, global_orient.shape[:1])
    return synthesis.observe(key, body_model, global_orient, body_pose, transl, spec)

  return jax.jit(fn)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Synthetic observations (see the module docstring)."""

  name = "synthetic"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    _config("procedural_256", "Procedural poses, one view, 256 px crops.", crop_size=256),
    _config("procedural_224", "Procedural poses, one view, 224 px crops.", crop_size=224),
    _config("procedural_multiview", "Procedural poses, 4-camera rig, keypoints.", num_views=4),
    _config("cmu_256", "CMU poses (every 10th frame), 256 px crops.", pose_source="cmu",
            crop_size=256),
    _config("cmu_video", "16-frame CMU clips, keypoints.", pose_source="cmu", clip_length=16),
  ]  # fmt: skip
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Only the cmu_* configs need files: manual_dir = a CMU BVH folder laid out as
  <subject folder>/<name>.bvh (e.g. ../shared/data/cmu_mocap). The procedural_* configs need
  nothing.
  """

  def _spec(self) -> synthesis.SceneSpec:
    c = self.builder_config
    return synthesis.SceneSpec(num_views=c.num_views, joint_set=c.joint_set, crop_size=c.crop_size)

  def body_model(self):
    """The body model the observations are generated with (`config.body_model`)."""
    from jhmr.body import load_body_model  # noqa: PLC0415 (heavy; only when building)

    return load_body_model(self.builder_config.body_model)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    if c.crop_size and (c.num_views > 1 or c.clip_length > 1):
      raise ValueError("synthetic: images are stored only for one view and one frame")
    t = (c.clip_length,) if c.clip_length > 1 else ()
    tv = t + ((c.num_views,) if c.num_views > 1 else ())
    v = tv[len(t) :]
    k = NUM_KEYPOINTS[c.joint_set]
    shapes = {
      "betas": (10,), "global_orient": t + (3,), "body_pose": t + (23, 3), "transl": t + (3,),
      "joints3d": t + (24, 3), "keypoints3d": t + (k, 3), "cam_rotation": v + (3, 3),
      "cam_translation": v + (3,), "focal_length": v + (2,), "principal_point": v + (2,),
      "global_orient_cam": tv + (3,), "transl_cam": tv + (3,), "keypoints2d": tv + (k, 3),
      "keypoints2d_true": tv + (k, 2), "center": tv + (2,), "scale": tv,
      "keypoints2d_crop": tv + (k, 3),
    }  # fmt: skip
    features = {n: tfds.features.Tensor(shape=s, dtype=np.float32) for n, s in shapes.items()}
    features["source"] = tfds.features.Text()
    if c.crop_size:
      features["image"] = tfds.features.Image(
        shape=(c.crop_size, c.crop_size, 3), encoding_format="png"
      )
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    c = self.builder_config
    if c.pose_source == "procedural":
      return {
        "train": self._generate_examples(0, [None] * c.num_train),
        "test": self._generate_examples(1, [None] * c.num_test),
      }
    if c.pose_source != "cmu":
      raise ValueError(f"synthetic: unknown pose_source {c.pose_source!r} (procedural, cmu)")
    root = pathlib.Path(dl_manager.manual_dir)
    if not root.is_dir():
      raise FileNotFoundError(f"synthetic/{c.name}: CMU manual_dir {root} does not exist")
    train, test = mocap.cmu_subject_split(root)
    return {
      "train": self._generate_examples(0, self._cmu_windows(root, train)),
      "test": self._generate_examples(1, self._cmu_windows(root, test)),
    }

  def _cmu_windows(self, root: pathlib.Path, subjects: list[str]) -> list:
    c = self.builder_config
    skeleton = mocap.skeleton_of(self.body_model())
    windows = []
    for name, motion in mocap.load_cmu(root, subjects, skeleton).items():
      step = c.clip_length if c.clip_length > 1 else c.frame_stride
      for start in range(0, motion.num_frames - c.clip_length + 1, step):
        windows.append((f"{name}/{start}", motion[start : start + c.clip_length]))
    return windows

  def _generate_examples(self, split_index: int, items: list):
    c = self.builder_config
    body_model = self.body_model()
    fn = _observe_fn(self._spec(), c.pose_source)
    base = jax.random.key(c.seed)
    zeros = (jnp.zeros((c.clip_length, 3)), jnp.zeros((c.clip_length, 23, 3)))
    for i, item in enumerate(items):
      key = jax.random.fold_in(base, split_index * 10**7 + i)
      if item is None:
        source, pose = "procedural", zeros + (jnp.zeros((c.clip_length, 3)),)
      else:
        source, motion = item
        pose = (motion.global_orient, motion.body_pose, motion.transl)
      out = jax.tree.map(np.asarray, fn(key, body_model, *pose))
      yield f"{i:08d}", self._example(out, source)

  def _example(self, out: dict, source: str) -> dict:
    c = self.builder_config
    example = {"source": source, "betas": _fit(out["betas"], 10)}
    for name, value in out.items():
      if name in ("betas", "image"):
        continue
      if c.num_views == 1 and (name in _PER_VIEW):
        value = value[0]
      elif c.num_views == 1 and name not in _PER_FRAME:
        value = value[:, 0]
      if c.clip_length == 1 and name not in _PER_VIEW:
        value = value[0]
      example[name] = value.astype(np.float32)
    if c.crop_size:
      example["image"] = crops.encode_image(out["image"][0, 0], "png")
    return example


def _fit(values: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros(size, np.float32)
  out[: min(size, len(values))] = values[:size]
  return out
