"""Real benchmark data (3DPW, EMDB, Human3.6M) as the ScoreHMR program's sets, read lazily.

`load_sets(config, body_model, keys)` builds (or reuses) the TFDS builders of `config.data.source`
in `config.data.data_dir` from the raw files in `config.data.manual_dir` ('' = TFDS's default
`<data_dir>/downloads/manual`) and returns a `jhmr.pipelines.scorehmr.ScoreHMRSets` whose sets are
`jhmr.data.sources.MappedSource`s over the builders' TFDS data sources: an example is read and
converted (`jhmr.data.sources.*_example`: crop resized to `data.image_size`, the dataset's camera,
2D keypoints in BODY_25 slots, SMPL ground truth placed in the camera frame) when it is asked for;
no split is copied into memory. What is read eagerly is an index pass over cheap fields (names,
frame numbers, `has_smpl`) of the splits that need one, with images left undecoded (a TFDS data
source cannot read one feature alone: each record is still read and parsed; measured here on
256 px crops about 0.4 ms a row, against about 3 ms with the image decoded), and for `corrupted`
estimates the training poses.

Sets per dataset (whole splits; the official test splits of ScoreHMR's evaluation):
  threedpw  train: frames/train; keypoints: frames/test; video: frames/test (index pass:
            sequence, actor, frame_index); no multi-view set.
  emdb      only a test split exists: train on the sequences outside EMDB 1 (emdb/all, index
            pass: sequence; emdb/emdb1 for EMDB 1's sequence names); keypoints: emdb/emdb1;
            video: emdb/emdb1 (index pass: sequence, frame_index; EMDB's frames are its good
            frames, so a window never spans a bad frame); no multi-view set.
  h36m      train: frames/train entries with SMPL fits; keypoints: frames/test_p1 entries with
            SMPL fits (the program's errors need SMPL ground truth; index pass: has_smpl);
            multiview: the protocol-1 frames grouped as the `h36m/multiview` builder groups them
            (one group per subject, action and frame seen by all four cameras, views sorted by
            camera; index pass: subject, action, frame, camera, has_smpl) with SMPL fits in every
            view, read from frames/test_p1 (no second copy of the crops); no video set.
Video: every window of `data.sequence_length` consecutive frames of one sequence (and actor), in
frame order, one group per window (`jhmr.data.sources.video_windows`); None when no sequence is
that long. Keypoints: each example its own group. Sets a dataset lacks are None.

Caps (explicit overrides only): `data.max_train` keeps the first max_train training examples,
`data.max_test` the first max_test keypoint examples and as many whole multi-view groups / video
windows as fit in max_test (at least one); 0 = the whole split. A cap in use is logged
(absl warning) and printed.

Cameras: 3DPW and EMDB their own intrinsics and extrinsics (the body placed with the dataset's
translation); H36M has neither: the crop camera of focal `data.focal_length` at crop size
`data.image_size` and the body placed by a weak-perspective fit of its BODY_25 keypoints to the
row's 2D keypoints (`jhmr.data.sources` docstring).

Randomness: none (every set is the data as it is); `keys` is accepted for the program's signature
and no key is drawn from it.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from jhmr.data import builders, sources
from jhmr.keys import KeySeq
from jhmr.pipelines.scorehmr import ScoreHMRSets

INDEX_CHUNK = 1024  # rows parsed per `__getitems__` call of an index pass


def prepare_builder(config, name: str):
  """The `array_record` builder `name` (e.g. 'threedpw/frames') in `data.data_dir`, prepared
  from `data.manual_dir` if it is not yet (`prepare`)."""
  return prepare(name, config.data.data_dir, config.data.manual_dir)


def prepare(name: str, data_dir, manual_dir=None):
  """The `array_record` builder `name` in `data_dir`, prepared from `manual_dir` ('' / None:
  TFDS's `<data_dir>/downloads/manual`) if it is not yet; FileNotFoundError naming both
  directories when it is neither prepared nor preparable."""
  data_dir = pathlib.Path(data_dir).expanduser()
  manual_dir = pathlib.Path(manual_dir).expanduser() if manual_dir else None
  builder = builders.make_builder(name, data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    manual = manual_dir or data_dir / "downloads" / "manual"
    if not manual.is_dir():
      raise FileNotFoundError(
        f"{name}: not prepared in data_dir={data_dir} and the raw files' directory "
        f"manual_dir={manual} does not exist (see jhmr/data/{name.split('/')[0]})"
      )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
  return builder


def read_fields(builder, split: str, fields) -> dict[str, np.ndarray]:
  """{field: [N] array} of scalar `fields` of every row of a split, images left undecoded (one
  parse of each record; text fields as str)."""
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  values = {f: [] for f in fields}
  for start in range(0, len(source), INDEX_CHUNK):
    for row in _rows(source, range(start, min(start + INDEX_CHUNK, len(source)))):
      for f in fields:
        v = row[f]
        values[f].append(v.decode() if isinstance(v, bytes) else v)
  return {f: np.asarray(v) for f, v in values.items()}


def _rows(source, indices) -> list:
  """Rows `indices` of a data source (in one call where it reads several at once)."""
  indices = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(indices))
  return [source[i] for i in indices]


def _report_cap(message: str) -> None:
  logging.warning(message)
  print(message)


def cap_rows(indices: np.ndarray, cap: int, what: str, field: str) -> np.ndarray:
  """The first `cap` of `indices` (all when cap is 0 or not smaller), reporting a cap in use."""
  if cap and cap < len(indices):
    _report_cap(
      f"{what} capped to {cap} of {len(indices)} examples by data.{field}={cap} (0 = whole split)"
    )
    return indices[:cap]
  return indices


def cap_groups(groups: list, size: int, cap: int, what: str, unit: str) -> list:
  """The first groups (of `size` rows each) that fit in `cap` rows (at least one)."""
  keep = max(1, cap // size) if cap else len(groups)
  if keep < len(groups):
    _report_cap(
      f"{what} capped to {keep} of {len(groups)} {unit} ({keep * size} examples) by "
      f"data.max_test={cap} (0 = whole split)"
    )
    return groups[:keep]
  return groups


def _grouped(data_source, fn, groups: list[np.ndarray]) -> sources.MappedSource | None:
  """One group per index array, rows in order; frame = position in the group."""
  if not groups:
    return None
  return sources.MappedSource(
    data_source,
    fn,
    np.concatenate(groups),
    group=np.repeat(np.arange(len(groups)), [len(g) for g in groups]),
    frame=np.concatenate([np.arange(len(g)) for g in groups]),
  )


def _singles(data_source, fn, indices: np.ndarray) -> sources.MappedSource:
  """Each example its own group (single-view keypoint fitting)."""
  n = len(indices)
  return sources.MappedSource(
    data_source, fn, indices, group=np.arange(n), frame=np.zeros(n, np.int32)
  )


def _prior_poses(builder, split: str, indices: np.ndarray, orient_field: str) -> np.ndarray:
  """`[N, 144]` 6D camera-frame poses of rows `indices` (an index pass over the pose fields)."""
  import jax.numpy as jnp  # noqa: PLC0415

  from jhmr.geometry import rotations  # noqa: PLC0415

  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  parts = []
  for start in range(0, len(indices), INDEX_CHUNK):
    rows = _rows(source, indices[start : start + INDEX_CHUNK])
    pose = np.stack(
      [np.concatenate([np.reshape(r[orient_field], (1, 3)), r["body_pose"]]) for r in rows]
    )
    rotmat = rotations.axis_angle_to_matrix(jnp.asarray(pose, jnp.float32))
    parts.append(np.asarray(rotations.matrix_to_rot6d(rotmat)).reshape(len(rows), -1))
  return np.concatenate(parts).astype(np.float32)


def load_sets(config, body_model, keys: KeySeq | None = None) -> ScoreHMRSets:
  """The sets of `config.data.source` (module docstring)."""
  del keys  # deterministic: no randomness is drawn
  d = config.data
  size = d.image_size
  loaders = {"threedpw": _threedpw, "emdb": _emdb, "h36m": _h36m}
  if d.source not in loaders:
    raise ValueError(f"data.source {d.source!r} is not a real dataset: threedpw, emdb or h36m")
  parts = loaders[d.source](config, body_model, size)
  train_builder, train_split, train_indices, orient_field = parts.pop("train_rows")
  fn = parts.pop("fn")
  name = d.source
  if len(train_indices) == 0:
    raise ValueError(f"{name}: the training set is empty (data.data_dir={d.data_dir})")
  if parts["keypoints"] is None or len(parts["keypoints"]) == 0:
    raise ValueError(f"{name}: the keypoints test set is empty (data.data_dir={d.data_dir})")
  train_indices = cap_rows(train_indices, d.max_train, f"{name} train", "max_train")
  if config.estimate == "corrupted":
    prior = _prior_poses(train_builder, train_split, train_indices, orient_field)
    return ScoreHMRSets(train=None, prior_poses=prior, **parts)
  train_source = train_builder.as_data_source(train_split)
  train = sources.MappedSource(train_source, fn, train_indices)
  return ScoreHMRSets(train=train, **parts)


def _test_sets(config, test_source, fn, keypoint_rows, video_groups=None, view_groups=None):
  d = config.data
  name = d.source
  out = {"fn": fn}
  keypoint_rows = cap_rows(keypoint_rows, d.max_test, f"{name} keypoints", "max_test")
  out["keypoints"] = _singles(test_source, fn, keypoint_rows)
  if video_groups is not None:
    video_groups = cap_groups(
      video_groups, d.sequence_length, d.max_test, f"{name} video", "windows"
    )
    out["video"] = _grouped(test_source, fn, video_groups)
    if out["video"] is None:
      logging.info("%s: no run of %d consecutive frames: no video set", name, d.sequence_length)
  if view_groups is not None:
    view_groups = cap_groups(view_groups, 4, d.max_test, f"{name} multiview", "groups")
    out["multiview"] = _grouped(test_source, fn, view_groups)
  return out


def _threedpw(config, body_model, size) -> dict:
  builder = prepare_builder(config, "threedpw/frames")
  fn = functools.partial(sources.threedpw_example, body_model=body_model, size=size)
  test = builder.as_data_source("test")
  index = read_fields(builder, "test", ("sequence", "actor", "frame_index"))
  track = [f"{s}/{a}" for s, a in zip(index["sequence"], index["actor"])]
  windows = sources.video_windows(track, index["frame_index"], config.data.sequence_length)
  out = _test_sets(config, test, fn, np.arange(len(test)), video_groups=windows)
  train_rows = np.arange(builder.info.splits["train"].num_examples)
  return dict(out, train_rows=(builder, "train", train_rows, "global_orient_cam"))


def _emdb(config, body_model, size) -> dict:
  emdb1 = prepare_builder(config, "emdb/emdb1")
  everything = prepare_builder(config, "emdb/all")
  fn = functools.partial(sources.emdb_example, body_model=body_model, size=size)
  index = read_fields(emdb1, "test", ("sequence", "frame_index"))
  windows = sources.video_windows(
    index["sequence"], index["frame_index"], config.data.sequence_length
  )
  test = emdb1.as_data_source("test")
  out = _test_sets(config, test, fn, np.arange(len(test)), video_groups=windows)
  names = read_fields(everything, "test", ("sequence",))["sequence"]
  train_rows = np.flatnonzero(~np.isin(names, np.unique(index["sequence"])))
  return dict(out, train_rows=(everything, "test", train_rows, "global_orient_cam"))


def _h36m(config, body_model, size) -> dict:
  builder = prepare_builder(config, "h36m/frames")
  fn = functools.partial(
    sources.h36m_example, body_model=body_model, size=size, focal_length=config.data.focal_length
  )
  fields = ("subject", "action", "frame", "camera", "has_smpl")
  index = read_fields(builder, "test_p1", fields)
  has_smpl = index["has_smpl"] > 0
  person = list(zip(index["subject"], index["action"], index["frame"].tolist()))
  groups = [
    g for g in sources.view_groups(person, index["camera"], 4) if np.all(has_smpl[g])
  ]  # fmt: skip
  rows = np.flatnonzero(has_smpl)
  if len(rows) < len(has_smpl):
    logging.info("h36m test_p1: %d of %d entries have SMPL fits", len(rows), len(has_smpl))
  test = builder.as_data_source("test_p1")
  out = _test_sets(config, test, fn, rows, view_groups=groups)
  train_rows = np.flatnonzero(read_fields(builder, "train", ("has_smpl",))["has_smpl"] > 0)
  return dict(out, train_rows=(builder, "train", train_rows, "global_orient"))
