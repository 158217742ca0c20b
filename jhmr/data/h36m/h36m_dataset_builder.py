"""`h36m`: Human3.6M as the preprocessed npz files of SPIN, or of ProHMR / ScoreHMR.

What to download: the Human3.6M images (http://vision.imar.ro/human3.6m, registration; extract
frames as SPIN does, `images/<S>_<Action>.<camera>_<frame>.jpg`) and the preprocessed npz files,
made by SPIN's `datasets/preprocess/h36m*.py` (its `data/dataset_extras`; SMPL fits such as MoSh
added for training) or by ProHMR's `dataset_preprocessing/preprocess_h36m.py` (ScoreHMR's
`data/datasets/h36m_*.npz`, renamed as below). manual_dir layout:

  <manual_dir>/h36m_train.npz               -> split train
  <manual_dir>/h36m_valid_protocol1.npz     -> split test_p1 (S9, S11, all 4 cameras)
  <manual_dir>/h36m_valid_protocol2.npz     -> split test_p2 (S9, S11, frontal camera)
  <manual_dir>/<imgname>                    (the image paths stored in the npz files)

The npz files (N entries; loaded with allow_pickle=False) come in two schemas, recognised by
their key sets (`SCHEMAS`); any other key set is refused, naming the keys each schema misses.

  SPIN (`dataset_extras`, `SPIN_SCHEMA`): imgname (N,) str, center (N,2) px, scale (N,) = box
    side / 200 px, S (N,24,4) 3D joints (metres, root-centred, conf last; SPIN's 24-joint order).
    Optional, as SPIN's loader (`datasets/base_dataset.py`) reads them: pose (N,72) SMPL
    axis-angle (camera frame) with shape (N,10) (both or neither) and has_smpl (N,) (default 1
    where pose is given, 0 without pose); part (N,24,3) 2D keypoints (x, y, conf; absent from
    SPIN's evaluation files); openpose (N,25,3). `gender`, `maskname` and `partname` may be
    present and are not read.
  ScoreHMR (ProHMR's format, `SCOREHMR_SCHEMA`): imgname, center (N,2) px, scale (N,) or (N,2)
    = box side in px (the max is taken, as ScoreHMR's loader does), extra_keypoints_2d (N,19,3)
    and extra_keypoints_3d (N,19,4) (the first 19 joints of SPIN's 24-joint order). Optional,
    as ScoreHMR's loader (`score_hmr/datasets/image_dataset.py`) reads them: body_pose (N,72)
    with has_body_pose (N,), betas (N,10) with has_betas (N,) (each pair both or neither),
    body_keypoints_2d (N,25,3) (OpenPose detections), body_keypoints_3d (N,25,4) (not read).

Optional arrays that are absent are stored as zeros whose confidence / has_smpl is 0; a
required array is never filled in.

Configs:
  frames: one example per npz entry with a 224 px JPEG crop (square box of side scale*200 at
    center; ScoreHMR's crop), all three splits.
  multiview: protocol-1 entries grouped by (subject, action, frame) across the four cameras;
    groups with all four views only; split test_p1. Views sorted by camera id.

Features (frames; multiview adds a leading [4]): image [224,224,3], imgname, subject, action,
camera, frame (int32), center [2], scale (box side / 200 px, SPIN's unit, whatever the npz
schema), global_orient [3], body_pose [23,3], betas [10], has_smpl (SPIN: has_smpl; ScoreHMR:
has_body_pose * has_betas), keypoints2d [24,3] (image px; ScoreHMR: extra_keypoints_2d in rows
0-18, rows 19-23 zero), keypoints2d_crop [24,3], joints3d [24,4] (ScoreHMR: extra_keypoints_3d
in rows 0-18), openpose [25,3] (ScoreHMR: body_keypoints_2d).
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


@dataclasses.dataclass(frozen=True)
class Schema:
  """An npz key set: `required` keys, optional `groups` (all of a group's keys, or none; its
  `extra` keys only with the group) and `optional` single keys; `ignored` keys may be present
  and are not read. Any other key makes a file not of this schema."""

  name: str
  required: tuple[str, ...]
  groups: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()
  optional: tuple[str, ...] = ()
  ignored: tuple[str, ...] = ()

  def problems(self, keys: set[str]) -> tuple[list[str], list[str]]:
    """(missing, unexpected) keys of a file with `keys` read as this schema."""
    missing = [k for k in self.required if k not in keys]
    known = set(self.required) | set(self.optional) | set(self.ignored)
    for group, extra in self.groups:
      known |= set(group) | set(extra)
      if any(k in keys for k in group + extra):
        missing += [k for k in group if k not in keys]
    return missing, sorted(keys - known)


SPIN_SCHEMA = Schema(
  name="SPIN dataset_extras",
  required=("imgname", "center", "scale", "S"),
  groups=((("pose", "shape"), ("has_smpl",)),),
  optional=("part", "openpose"),
  ignored=("gender", "maskname", "partname"),
)
SCOREHMR_SCHEMA = Schema(
  name="ScoreHMR",
  required=("imgname", "center", "scale", "extra_keypoints_2d", "extra_keypoints_3d"),
  groups=((("body_pose", "has_body_pose"), ()), (("betas", "has_betas"), ())),
  optional=("body_keypoints_2d", "body_keypoints_3d"),
)
SCHEMAS = (SPIN_SCHEMA, SCOREHMR_SCHEMA)


def schema_of(data, path) -> Schema:
  """The one schema whose key set `data` has, else RawDataError naming what each one misses."""
  keys = set(data)
  found = [s for s in SCHEMAS if s.problems(keys) == ([], [])]
  if len(found) == 1:
    return found[0]
  reasons = []
  for schema in SCHEMAS:
    missing, unexpected = schema.problems(keys)
    reason = f"{schema.name} schema: missing keys {', '.join(missing) or '(none)'}"
    if unexpected:
      reason += f"; unexpected keys {', '.join(unexpected)}"
    reasons.append(reason)
  raise raw.RawDataError(
    f"{path}: keys {', '.join(sorted(keys))} are no supported npz schema ({'; '.join(reasons)})"
  )


def read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The arrays of one preprocessed npz (either schema) in SPIN's layout and units: imgname,
  center, scale (box side / 200), pose [N,72], shape [N,10], has_smpl [N], part [N,24,3],
  S [N,24,4], openpose [N,25,3]; shapes checked, absent optional arrays zero."""
  data = raw.load_npz(path)
  schema = schema_of(data, path)
  names = raw.field(data, "imgname", path)
  if np.ndim(names) != 1:
    raise raw.RawDataError(f"{path}: imgname has shape {np.shape(names)}, expected (N,)")
  n = len(names)
  get = lambda key, shape: raw.check(data[key], shape, path, key)
  opt = lambda key, shape: get(key, shape) if key in data else np.zeros(shape, np.float32)
  out = {
    "imgname": np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in names]),
    "center": get("center", (n, 2)),
  }
  if schema is SPIN_SCHEMA:
    scale = get("scale", (n,))
    default_has = np.full(n, 1.0 if "pose" in data else 0.0, np.float32)
    out |= {
      "scale": scale, "pose": opt("pose", (n, 72)), "shape": opt("shape", (n, 10)),
      "has_smpl": get("has_smpl", (n,)) if "has_smpl" in data else default_has,
      "part": opt("part", (n, 24, 3)), "S": get("S", (n, 24, 4)),
      "openpose": opt("openpose", (n, 25, 3)),
    }  # fmt: skip
  else:
    # Box side in px: (N,) or per-axis sizes (N,k), of which ScoreHMR takes the largest.
    size = get("scale", (n, None) if np.ndim(data["scale"]) == 2 else (n,))
    size = size.reshape(n, -1).max(axis=-1)
    has_pose = opt("has_body_pose", (n,))
    has_betas = opt("has_betas", (n,))
    part = np.zeros((n, 24, 3), np.float32)
    part[:, :19] = get("extra_keypoints_2d", (n, 19, 3))
    joints = np.zeros((n, 24, 4), np.float32)
    joints[:, :19] = get("extra_keypoints_3d", (n, 19, 4))
    if "body_keypoints_3d" in data:
      get("body_keypoints_3d", (n, 25, 4))  # checked, not read
    out |= {
      "scale": (size / 200.0).astype(np.float32), "pose": opt("body_pose", (n, 72)),
      "shape": opt("betas", (n, 10)), "has_smpl": (has_pose * has_betas).astype(np.float32),
      "part": part, "S": joints, "openpose": opt("body_keypoints_2d", (n, 25, 3)),
    }  # fmt: skip
  if not np.all(out["scale"] > 0):
    raise raw.RawDataError(f"{path}: scale holds values <= 0 (box sizes must be positive)")
  return out


class Builder(tfds.core.GeneratorBasedBuilder):
  """Human3.6M, preprocessed npz format (see the module docstring)."""

  name = _NAME
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": "npz schema recognised by key set (SPIN or ScoreHMR, whose scale is px); other "
    "key sets refused.",
  }
  BUILDER_CONFIGS = [
    H36mConfig(name="frames", description="One example per npz entry, 224 px crops."),
    H36mConfig(name="multiview", description="Four synchronised views per frame.", multiview=True),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put h36m_train.npz, h36m_valid_protocol1.npz and h36m_valid_protocol2.npz (SPIN's
  dataset_extras format, or ProHMR / ScoreHMR's format renamed to these names, e.g. ScoreHMR's
  h36m_train_mosh.npz -> h36m_train.npz, h36m_val_p2.npz -> h36m_valid_protocol2.npz) in
  manual_dir, and the extracted frames at the paths their `imgname` arrays give (relative to
  manual_dir).
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
