"""Keypoint importers: OpenPose JSON and COCO keypoint-results JSON into typed numpy arrays.

Formats (facts in /work/shared/research/io_formats.md §1-2):

OpenPose writes one `<stem>_keypoints.json` per frame, `<video>_<12-digit frame>_keypoints.json`
for a video, holding `{"version": 1.3, "people": [...]}`. A person has `person_id` (`[-1]` with
tracking off), `pose_keypoints_2d` as flat x, y, c triplets (BODY_25: 75 numbers, COCO-18: 54),
`face_keypoints_2d` (70 points), `hand_left_keypoints_2d` / `hand_right_keypoints_2d` (21 each);
a disabled part is `[]`, a missing point is 0, 0, 0. Coordinates are image pixels (origin top
left) unless OpenPose ran with `--keypoint_scale`. ScoreHMR's export writes the pose as a nested
25 x 3 list instead; both are read.

A COCO keypoint-results file (MMPose, the COCO evaluation format) is one JSON list of
`{"image_id", "category_id": 1, "keypoints": 17 x (x, y, v), "score"}`, v being the keypoint score
(MMPose) or 1; MMPose adds `bbox` [x, y, w, h].

Every reading error is a ValueError naming the file and the problem. `write_openpose` writes
BODY_25 detections in OpenPose's layout (used for the `refine` example).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re

import numpy as np

from jhmr.io import joint_maps

_FRAME_RE = re.compile(r"_(\d{12})_keypoints\.json$")
_POSE_SETS = {25: "openpose25", 18: "coco18"}
# Optional parts: field name -> (JSON key, point count) (io_formats.md §1).
_PARTS = {
  "face": ("face_keypoints_2d", 70),
  "hand_left": ("hand_left_keypoints_2d", 21),
  "hand_right": ("hand_right_keypoints_2d", 21),
}


@dataclasses.dataclass(frozen=True)
class OpenPoseFrames:
  """OpenPose detections of F frames, padded to P people per frame (padding: confidence 0).

  Attributes:
    keypoints: [F, P, K, 3] float32 (x, y, confidence), image pixels, in `joint_set` order.
    frame_index: [F] int64, the frame number (from the 12-digit file suffix, else the position in
      sorted file order).
    person_id: [F, P] int64, OpenPose's `person_id` (-1 with tracking off, and for padding).
    num_people: [F] int32, the people detected in each frame.
    joint_set: name in `jhmr.io.joint_maps.JOINT_SETS` of the K keypoints.
    paths: the F files read, in frame order.
    face: [F, P, 70, 3] float32, or None when no file has face points.
    hand_left, hand_right: [F, P, 21, 3] float32, or None when no file has that hand.
  """

  keypoints: np.ndarray
  frame_index: np.ndarray
  person_id: np.ndarray
  num_people: np.ndarray
  joint_set: str
  paths: tuple[str, ...]
  face: np.ndarray | None = None
  hand_left: np.ndarray | None = None
  hand_right: np.ndarray | None = None

  @property
  def num_frames(self) -> int:
    return int(self.keypoints.shape[0])


@dataclasses.dataclass(frozen=True)
class CocoDetections:
  """N COCO-17 person detections.

  Attributes:
    image_id: [N] int64.
    keypoints: [N, 17, 3] float32 (x, y, score or visibility), image pixels, COCO-17 order.
    bbox: [N, 4] float32 [x, y, w, h] pixels; zeros when the file has none.
    score: [N] float32, the detection score.
  """

  image_id: np.ndarray
  keypoints: np.ndarray
  bbox: np.ndarray
  score: np.ndarray


def _numbers(values, path, what: str) -> np.ndarray:
  """Float64 flat array of a JSON number list; ValueError for non-numbers and NaN / inf."""
  if not isinstance(values, list):
    raise ValueError(f"{path}: {what} is {type(values).__name__}, expected a list of numbers")
  try:
    array = np.asarray(values, np.float64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: {what} is not a list of numbers ({e})") from None
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{path}: {what} has NaN or infinite values")
  return array


def _load_json(path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: malformed JSON ({e})") from None


def _person_id(value, path) -> int:
  if isinstance(value, list):
    value = value[0] if value else -1
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{path}: person_id {value!r} is not an integer")
  return int(value)


def _read_openpose_file(path, joint_set: str) -> dict:
  data = _load_json(path)
  if not isinstance(data, dict) or "people" not in data:
    raise ValueError(f"{path}: missing 'people' (an OpenPose file is {{'version', 'people'}})")
  people = data["people"]
  if not isinstance(people, list):
    raise ValueError(f"{path}: 'people' is {type(people).__name__}, expected a list")
  poses, ids, parts = [], [], {name: [] for name in _PARTS}
  for p, person in enumerate(people):
    if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
      raise ValueError(f"{path}: person {p} has no 'pose_keypoints_2d'")
    flat = _numbers(person["pose_keypoints_2d"], path, f"person {p} pose_keypoints_2d")
    if flat.size not in (3 * 25, 3 * 18):
      raise ValueError(
        f"{path}: person {p} pose_keypoints_2d has {flat.size} numbers, expected 3 x 25 = 75 "
        "(BODY_25) or 3 x 18 = 54 (COCO-18)"
      )
    src = _POSE_SETS[flat.size // 3]
    poses.append(joint_maps.convert(flat.reshape(-1, 3), src, joint_set))
    ids.append(_person_id(person.get("person_id", -1), path))
    for name, (key, k) in _PARTS.items():
      values = person.get(key, [])
      array = _numbers(values, path, f"person {p} {key}")
      if array.size not in (0, 3 * k):
        raise ValueError(
          f"{path}: person {p} {key} has {array.size} numbers, expected 0 or {3 * k}"
        )
      parts[name].append(array.reshape(-1, 3) if array.size else None)
  return {"poses": poses, "ids": ids, "parts": parts}


def _openpose_files(path) -> tuple[list[pathlib.Path], list[int]]:
  path = pathlib.Path(path)
  if path.is_dir():
    files = list(path.glob("*_keypoints.json"))
    if not files:
      raise ValueError(f"{path}: no *_keypoints.json files in the directory")
  elif path.is_file():
    files = [path]
  else:
    raise ValueError(f"{path}: no such file or directory")
  matches = [_FRAME_RE.search(f.name) for f in files]
  if all(matches):
    order = sorted(zip((int(m.group(1)) for m in matches), files, strict=True))
    if len({n for n, _ in order}) != len(order):
      raise ValueError(f"{path}: several files have the same frame number")
    return [f for _, f in order], [n for n, _ in order]
  files = sorted(files)
  return files, list(range(len(files)))


def read_openpose(path_or_dir: str | os.PathLike, joint_set: str = "openpose25") -> OpenPoseFrames:
  """Reads one OpenPose `*_keypoints.json` file, or a directory of them (one per frame).

  BODY_25 or COCO-18 is detected per person from the length of `pose_keypoints_2d` and converted
  to `joint_set` with `joint_maps.convert` (joints the source lacks get confidence 0).

  Raises:
    ValueError: naming the file, for malformed JSON, a missing `people`, a pose that is not 3 x 25
      or 3 x 18 numbers, non-numbers or NaN, or an unknown `joint_set`.
  """
  k = joint_maps.num_joints(joint_set)
  files, frame_index = _openpose_files(path_or_dir)
  frames = [_read_openpose_file(f, joint_set) for f in files]
  num_frames = len(frames)
  num_people = np.asarray([len(fr["poses"]) for fr in frames], np.int32)
  p_max = int(num_people.max(initial=0))
  keypoints = np.zeros((num_frames, p_max, k, 3), np.float32)
  person_id = np.full((num_frames, p_max), -1, np.int64)
  part_arrays = {}
  for name, (_, kp) in _PARTS.items():
    if any(a is not None for fr in frames for a in fr["parts"][name]):
      part_arrays[name] = np.zeros((num_frames, p_max, kp, 3), np.float32)
  for f, fr in enumerate(frames):
    for p, pose in enumerate(fr["poses"]):
      keypoints[f, p] = pose
      person_id[f, p] = fr["ids"][p]
      for name, array in part_arrays.items():
        if fr["parts"][name][p] is not None:
          array[f, p] = fr["parts"][name][p]
  return OpenPoseFrames(
    keypoints=keypoints,
    frame_index=np.asarray(frame_index, np.int64),
    person_id=person_id,
    num_people=num_people,
    joint_set=joint_set,
    paths=tuple(str(f) for f in files),
    face=part_arrays.get("face"),
    hand_left=part_arrays.get("hand_left"),
    hand_right=part_arrays.get("hand_right"),
  )


_EMPTY_PERSON_KEYS = (
  "face_keypoints_2d",
  "hand_left_keypoints_2d",
  "hand_right_keypoints_2d",
  "pose_keypoints_3d",
  "face_keypoints_3d",
  "hand_left_keypoints_3d",
  "hand_right_keypoints_3d",
)


def write_openpose(
  directory: str | os.PathLike,
  people_per_frame,
  frame_names=None,
  person_ids=None,
) -> list[pathlib.Path]:
  """Writes OpenPose BODY_25 detections as one `<name>_keypoints.json` per frame.

  The layout is OpenPose 1.3's (io_formats.md §1): `{"version": 1.3, "people": [...]}`, each
  person with `person_id` (a one-element list, -1 without tracking), `pose_keypoints_2d` as 75
  flat x, y, c numbers (image px, a missing point 0, 0, 0), and the face / hand 2D keys and the
  four `*_3d` keys as empty lists (parts that were not run).

  Args:
    directory: output directory (created).
    people_per_frame: a sequence over frames of arrays [P, 25, 3] (x, y, confidence) in BODY_25
      order; P may differ between frames and may be 0.
    frame_names: file stems, one per frame; default `<12-digit frame index>`.
    person_ids: a sequence over frames of [P] ints (OpenPose's `person_id`); default -1.

  Returns:
    The written paths, in frame order.

  Raises:
    ValueError: a frame that is not [P, 25, 3], non-finite values, or names / ids that do not
      match the frames.
  """
  directory = pathlib.Path(directory)
  frames = list(people_per_frame)
  if frame_names is None:
    frame_names = [f"{i:012d}" for i in range(len(frames))]
  frame_names = [str(n) for n in frame_names]
  if len(frame_names) != len(frames):
    raise ValueError(f"{len(frame_names)} frame names for {len(frames)} frames")
  if len(set(frame_names)) != len(frame_names):
    raise ValueError("frame names must be unique")
  if person_ids is not None and len(person_ids) != len(frames):
    raise ValueError(f"person_ids covers {len(person_ids)} frames, expected {len(frames)}")
  documents = []
  for f, people in enumerate(frames):
    people = np.asarray(people, np.float64)
    if people.size == 0 and people.shape[-2:] != (25, 3):
      people = people.reshape(0, 25, 3)
    if people.ndim != 3 or people.shape[1:] != (25, 3):
      raise ValueError(
        f"frame {f} ({frame_names[f]}): people must be [P, 25, 3] (BODY_25 x, y, c), "
        f"got shape {people.shape}"
      )
    if not np.all(np.isfinite(people)):
      raise ValueError(f"frame {f} ({frame_names[f]}): keypoints have NaN or infinite values")
    ids = [-1] * len(people) if person_ids is None else [int(i) for i in person_ids[f]]
    if len(ids) != len(people):
      raise ValueError(f"frame {f}: {len(ids)} person ids for {len(people)} people")
    entries = []
    for pid, person in zip(ids, people, strict=True):
      entry = {"person_id": [pid], "pose_keypoints_2d": [float(v) for v in person.reshape(-1)]}
      entry.update({key: [] for key in _EMPTY_PERSON_KEYS})
      entries.append(entry)
    documents.append({"version": 1.3, "people": entries})
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, document in zip(frame_names, documents, strict=True):
    path = directory / f"{name}_keypoints.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    paths.append(path)
  return paths


def to_observation_keypoints(
  frames: OpenPoseFrames, person: int = 0, *, person_id: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """One person's keypoints over the frames, for `jhmr.guidance.Observation.create`.

  Converts to OpenPose BODY_25 (the order ScoreHMR's keypoint guidance uses) and returns
  `keypoints_2d` [F, 25, 2] image pixels and `confidence` [F, 25]. The person is column `person`
  of every frame, or, with `person_id`, the person with that tracking id (confidence 0 in frames
  without them).
  """
  kp = joint_maps.convert(frames.keypoints, frames.joint_set, "openpose25")
  num_frames = kp.shape[0]
  out = np.zeros((num_frames, 25, 3), np.float32)
  for f in range(num_frames):
    if person_id is None:
      column = person if person < frames.num_people[f] else None
    else:
      hits = np.flatnonzero(frames.person_id[f, : frames.num_people[f]] == person_id)
      column = int(hits[0]) if hits.size else None
    if column is not None:
      out[f] = kp[f, column]
  return out[..., :2], out[..., 2]


def read_coco_results(
  path: str | os.PathLike, image_ids=None, min_score: float = 0.0
) -> CocoDetections:
  """Reads a COCO keypoint-results JSON file (a list of person detections).

  Args:
    path: the JSON file.
    image_ids: keep only detections of these image ids (None: all).
    min_score: keep only detections with `score >= min_score`.

  Raises:
    ValueError: naming the file, for malformed JSON, a top level that is not a list, an entry
      without `image_id`, `keypoints` or `score`, keypoints that are not 3 x 17 = 51 numbers,
      a `category_id` other than 1 (person), a `bbox` that is not 4 numbers, or NaN.
  """
  data = _load_json(path)
  if not isinstance(data, list):
    raise ValueError(
      f"{path}: top level is {type(data).__name__}, expected a list of detections (COCO results)"
    )
  keep = None if image_ids is None else {int(i) for i in np.asarray(image_ids).reshape(-1)}
  ids, kps, boxes, scores = [], [], [], []
  for n, entry in enumerate(data):
    if not isinstance(entry, dict):
      raise ValueError(f"{path}: entry {n} is {type(entry).__name__}, expected a dict")
    for key in ("image_id", "keypoints", "score"):
      if key not in entry:
        raise ValueError(f"{path}: entry {n} has no {key!r}")
    category = entry.get("category_id", 1)
    if category != 1:
      raise ValueError(f"{path}: entry {n} has category_id {category!r}, expected 1 (person)")
    flat = _numbers(entry["keypoints"], path, f"entry {n} keypoints")
    if flat.size != 3 * 17:
      raise ValueError(
        f"{path}: entry {n} keypoints has {flat.size} numbers, expected 3 x 17 = 51 (COCO-17)"
      )
    score = _numbers([entry["score"]], path, f"entry {n} score")[0]
    bbox = _numbers(entry.get("bbox", [0.0] * 4), path, f"entry {n} bbox")
    if bbox.size != 4:
      raise ValueError(f"{path}: entry {n} bbox has {bbox.size} numbers, expected 4 (x, y, w, h)")
    image_id = entry["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, int):
      raise ValueError(f"{path}: entry {n} image_id {image_id!r} is not an integer")
    if (keep is not None and image_id not in keep) or score < min_score:
      continue
    ids.append(image_id)
    kps.append(flat.reshape(17, 3))
    boxes.append(bbox)
    scores.append(score)
  return CocoDetections(
    image_id=np.asarray(ids, np.int64),
    keypoints=np.asarray(kps, np.float32).reshape(-1, 17, 3),
    bbox=np.asarray(boxes, np.float32).reshape(-1, 4),
    score=np.asarray(scores, np.float32),
  )
