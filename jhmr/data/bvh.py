"""BVH motion files: reading, writing, and forward kinematics (numpy, offline).

A BVH file is a joint hierarchy (names, parent, OFFSET of each joint in its parent's frame,
CHANNELS) followed by one row of channel values per frame. The conventions implemented here are
the standard ones (and those of the CMU releases):

* A joint's local rotation is the product of its rotation channels **in the order listed**:
  `CHANNELS 3 Zrotation Xrotation Yrotation` means `R = Rz(a) @ Rx(b) @ Ry(c)` (intrinsic
  rotations, degrees). Any of the 12 Euler orders (and fewer than 3 rotation channels) work.
* A joint's local translation is `OFFSET + (Xposition, Yposition, Zposition)` where it has
  position channels (normally only the root), else `OFFSET`.
* World transform of joint j: `G_j = G_parent @ [R_j | t_j]`.

Everything here is numpy float64 and runs once per file when a dataset is built; nothing of it
is traced by JAX. `Bvh` is a frozen dataclass; `read_bvh`/`parse_bvh` raise `BvhError` naming the
file and line on malformed input.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from jhmr.errors import InputError

_ROTATION_CHANNELS = {"Xrotation": "X", "Yrotation": "Y", "Zrotation": "Z"}
_POSITION_CHANNELS = {"Xposition": 0, "Yposition": 1, "Zposition": 2}


class BvhError(InputError):
  """A BVH file is malformed (the message names the file, the line and the problem)."""


@dataclasses.dataclass(frozen=True)
class Bvh:
  """One BVH file: hierarchy and motion.

  Attributes:
    names: joint names, `J` of them, in file (depth-first) order; the root is joint 0.
    parents: `[J]` int, parent index of each joint, -1 for the root.
    offsets: `[J, 3]` float64, each joint's OFFSET in its parent's frame (file units).
    channels: per joint, the channel names in file order (e.g. `('Zrotation', 'Xrotation',
      'Yrotation')`).
    end_sites: per joint, the OFFSET `[3]` of its `End Site` or None.
    frame_time: seconds per frame.
    motion: `[T, C]` float64 channel values, C = total number of channels.
  """

  names: tuple[str, ...]
  parents: np.ndarray
  offsets: np.ndarray
  channels: tuple[tuple[str, ...], ...]
  end_sites: tuple[np.ndarray | None, ...]
  frame_time: float
  motion: np.ndarray

  @property
  def num_joints(self) -> int:
    return len(self.names)

  @property
  def num_frames(self) -> int:
    return self.motion.shape[0]

  @property
  def fps(self) -> float:
    return 1.0 / self.frame_time

  def index(self, name: str) -> int:
    """Index of the joint called `name` (raises KeyError listing the joints if absent)."""
    try:
      return self.names.index(name)
    except ValueError:
      raise KeyError(f"BVH has no joint {name!r}; joints: {', '.join(self.names)}") from None

  def channel_offsets(self) -> np.ndarray:
    """`[J]` column of each joint's first channel in a motion row."""
    counts = np.array([len(c) for c in self.channels])
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

  def local_rotations(self) -> np.ndarray:
    """`[T, J, 3, 3]` local rotation of every joint from its rotation channels."""
    t = self.num_frames
    out = np.broadcast_to(np.eye(3), (t, self.num_joints, 3, 3)).copy()
    for j, (chans, start) in enumerate(zip(self.channels, self.channel_offsets())):
      axes = "".join(_ROTATION_CHANNELS.get(c, "") for c in chans)
      if not axes:
        continue
      cols = [start + i for i, c in enumerate(chans) if c in _ROTATION_CHANNELS]
      out[:, j] = Rotation.from_euler(axes, self.motion[:, cols], degrees=True).as_matrix()
    return out

  def local_translations(self) -> np.ndarray:
    """`[T, J, 3]` OFFSET plus position channels, per joint."""
    out = np.broadcast_to(self.offsets, (self.num_frames, self.num_joints, 3)).copy()
    for j, (chans, start) in enumerate(zip(self.channels, self.channel_offsets())):
      for i, c in enumerate(chans):
        if c in _POSITION_CHANNELS:
          out[:, j, _POSITION_CHANNELS[c]] += self.motion[:, start + i]
    return out

  def forward_kinematics(self) -> tuple[np.ndarray, np.ndarray]:
    """World rotations `[T, J, 3, 3]` and positions `[T, J, 3]` of every joint."""
    local_r, local_t = self.local_rotations(), self.local_translations()
    rot = np.empty_like(local_r)
    pos = np.empty_like(local_t)
    for j, p in enumerate(self.parents):
      if p < 0:
        rot[:, j], pos[:, j] = local_r[:, j], local_t[:, j]
      else:
        rot[:, j] = rot[:, p] @ local_r[:, j]
        pos[:, j] = pos[:, p] + np.einsum("tij,tj->ti", rot[:, p], local_t[:, j])
    return rot, pos

  def end_site_positions(self, rotations: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`[T, J, 3]` world position of each joint's End Site (the joint's own position if none)."""
    out = positions.copy()
    for j, end in enumerate(self.end_sites):
      if end is not None:
        out[:, j] = positions[:, j] + rotations[:, j] @ end
    return out


def _error(source: str, line: int | None, problem: str) -> BvhError:
  where = f"{source}:{line}" if line is not None else source
  return BvhError(f"{where}: {problem}")


def parse_bvh(text: str, source: str = "<string>") -> Bvh:
  """Parses BVH text (see the module docstring for conventions); `source` names it in errors."""
  lines = text.splitlines()
  names: list[str] = []
  parents: list[int] = []
  offsets: list[list[float]] = []
  channels: list[tuple[str, ...]] = []
  end_sites: list[np.ndarray | None] = []
  stack: list[int] = []  # open joints; -2 marks an open End Site
  pending: str | None = None  # "joint" or "end": a header waiting for its '{'
  i = 0

  def floats(tokens: Sequence[str], n: int, lineno: int, what: str) -> list[float]:
    if len(tokens) != n:
      raise _error(source, lineno, f"{what} needs {n} numbers, got {len(tokens)}")
    try:
      return [float(t) for t in tokens]
    except ValueError:
      raise _error(source, lineno, f"{what} has a non-number: {' '.join(tokens)}") from None

  while i < len(lines):
    lineno, tokens = i + 1, lines[i].split()
    i += 1
    if not tokens:
      continue
    head = tokens[0]
    if head == "HIERARCHY" and not names:
      continue
    if not names and head != "ROOT":
      raise _error(source, lineno, f"expected HIERARCHY or ROOT, found {head!r}")
    if head in ("ROOT", "JOINT"):
      if len(tokens) < 2:
        raise _error(source, lineno, f"{head} without a name")
      if head == "ROOT" and (names or stack):
        raise _error(source, lineno, "only one ROOT is supported")
      if head == "JOINT" and not stack:
        raise _error(source, lineno, "JOINT outside any joint")
      names.append(" ".join(tokens[1:]))
      parents.append(stack[-1] if stack else -1)
      offsets.append([0.0, 0.0, 0.0])
      channels.append(())
      end_sites.append(None)
      pending = "joint"
    elif head == "End":
      if not stack or stack[-1] < 0:
        raise _error(source, lineno, "End Site outside a joint")
      pending = "end"
    elif head == "{":
      if pending is None:
        raise _error(source, lineno, "'{' without a ROOT/JOINT/End Site header")
      stack.append(len(names) - 1 if pending == "joint" else -2)
      pending = None
    elif head == "}":
      if not stack:
        raise _error(source, lineno, "unbalanced '}'")
      stack.pop()
    elif head == "OFFSET":
      if not stack:
        raise _error(source, lineno, "OFFSET outside a joint")
      values = floats(tokens[1:], 3, lineno, "OFFSET")
      if stack[-1] == -2:
        end_sites[stack[-2]] = np.array(values)
      else:
        offsets[stack[-1]] = values
    elif head == "CHANNELS":
      if not stack or stack[-1] < 0:
        raise _error(source, lineno, "CHANNELS outside a joint")
      try:
        n = int(tokens[1])
      except (IndexError, ValueError):
        raise _error(source, lineno, "CHANNELS needs a count") from None
      chans = tuple(tokens[2:])
      if len(chans) != n:
        raise _error(source, lineno, f"CHANNELS says {n} but lists {len(chans)}")
      unknown = [c for c in chans if c not in _ROTATION_CHANNELS and c not in _POSITION_CHANNELS]
      if unknown:
        raise _error(source, lineno, f"unknown channel(s) {unknown}")
      channels[stack[-1]] = chans
    elif head == "MOTION":
      if stack:
        raise _error(source, lineno, "MOTION before the hierarchy is closed (missing '}')")
      break
    else:
      raise _error(source, lineno, f"unexpected token {head!r} in HIERARCHY")
  else:
    raise _error(source, None, "no MOTION section")
  if not names:
    raise _error(source, None, "no joints in HIERARCHY")

  def header(key: str) -> str:
    nonlocal i
    while i < len(lines) and not lines[i].strip():
      i += 1
    if i >= len(lines) or not lines[i].strip().startswith(key):
      raise _error(source, i + 1, f"expected {key!r}")
    value = lines[i].strip()[len(key) :].strip()
    i += 1
    return value

  try:
    num_frames = int(header("Frames:"))
    frame_time = float(header("Frame Time:"))
  except ValueError as e:
    raise _error(source, i, f"bad MOTION header ({e})") from None
  if frame_time <= 0:
    raise _error(source, i, f"Frame Time must be positive, got {frame_time}")
  num_channels = sum(len(c) for c in channels)
  rows = [ln for ln in lines[i:] if ln.strip()]
  if len(rows) != num_frames:
    raise _error(source, None, f"header says {num_frames} frames but {len(rows)} rows follow")
  try:
    flat = np.array(" ".join(rows).split(), dtype=np.float64)
  except ValueError:
    raise _error(source, None, "a motion row holds a non-number") from None
  if flat.size != num_frames * num_channels:
    bad = next((k for k, r in enumerate(rows) if len(r.split()) != num_channels), 0)
    raise _error(
      source, i + 1 + bad, f"motion rows need {num_channels} values (frame {bad} does not)"
    )
  motion = flat.reshape(num_frames, num_channels)
  if not np.all(np.isfinite(motion)):
    raise _error(source, None, "motion holds non-finite values")
  return Bvh(
    names=tuple(names),
    parents=np.array(parents, np.int64),
    offsets=np.array(offsets, np.float64),
    channels=tuple(channels),
    end_sites=tuple(end_sites),
    frame_time=frame_time,
    motion=motion,
  )


def read_bvh(path: str | os.PathLike) -> Bvh:
  """Reads a BVH file (raises BvhError naming the file on malformed content)."""
  with open(path, encoding="utf-8", errors="strict") as f:
    try:
      text = f.read()
    except UnicodeDecodeError as e:
      raise _error(str(path), None, f"not a text file ({e})") from None
  return parse_bvh(text, source=str(path))


def _depth_first(children: list[list[int]]) -> list[int]:
  order, stack = [], [0]
  while stack:
    j = stack.pop()
    order.append(j)
    stack.extend(reversed(children[j]))
  return order


def format_bvh(bvh: Bvh, precision: int = 6) -> str:
  """The BVH text of `bvh` (inverse of `parse_bvh` up to number formatting)."""
  children: list[list[int]] = [[] for _ in bvh.names]
  for j, p in enumerate(bvh.parents):
    if p >= 0:
      children[p].append(j)
  out = ["HIERARCHY"]

  def vec(v) -> str:
    return " ".join(f"{x:.{precision}g}" for x in v)

  def emit(j: int, depth: int) -> None:
    pad = "  " * depth
    out.append(f"{pad}{'ROOT' if bvh.parents[j] < 0 else 'JOINT'} {bvh.names[j]}")
    out.append(f"{pad}{{")
    out.append(f"{pad}  OFFSET {vec(bvh.offsets[j])}")
    out.append(f"{pad}  CHANNELS {len(bvh.channels[j])} {' '.join(bvh.channels[j])}")
    for c in children[j]:
      emit(c, depth + 1)
    if bvh.end_sites[j] is not None:
      out.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {vec(bvh.end_sites[j])}"])
      out.append(f"{pad}  }}")
    out.append(f"{pad}}}")

  emit(0, 0)
  # The file lists joints depth-first; motion columns follow that order.
  order = _depth_first(children)
  starts = bvh.channel_offsets()
  columns = [starts[j] + k for j in order for k in range(len(bvh.channels[j]))]
  out += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time:.7g}"]
  out += [" ".join(f"{x:.{precision + 3}g}" for x in row) for row in bvh.motion[:, columns]]
  return "\n".join(out) + "\n"


def write_bvh(path: str | os.PathLike, bvh: Bvh, precision: int = 6) -> None:
  """Writes `bvh` as a BVH file."""
  with open(path, "w", encoding="utf-8") as f:
    f.write(format_bvh(bvh, precision))


def from_rotations(
  names: Sequence[str],
  parents: Sequence[int],
  offsets: np.ndarray,
  rotations: np.ndarray,
  root_positions: np.ndarray,
  frame_time: float,
  order: str | Sequence[str] = "ZXY",
  end_sites: Sequence[np.ndarray | None] | None = None,
) -> Bvh:
  """Builds a `Bvh` from local rotation matrices.

  Args:
    names, parents, offsets: the hierarchy (`parents[0] == -1`, parents before children).
    rotations: `[T, J, 3, 3]` local rotations.
    root_positions: `[T, 3]` root position channels (added to the root OFFSET).
    frame_time: seconds per frame.
    order: Euler order of the rotation channels, one for all joints or one per joint
      (e.g. "ZXY" -> `Zrotation Xrotation Yrotation`).
    end_sites: optional End Site OFFSET per joint.
  """
  num_joints = len(names)
  orders = [order] * num_joints if isinstance(order, str) else list(order)
  if len(orders) != num_joints or any(sorted(o) != ["X", "Y", "Z"] for o in orders):
    raise ValueError(f"order must be a permutation of 'XYZ' (or one per joint), got {order!r}")
  if parents[0] != -1 or any(not -1 < p < j for j, p in enumerate(parents) if j):
    raise ValueError("parents must list the root first (-1) and parents before children")
  rotations = np.asarray(rotations, np.float64)
  if rotations.shape[1:] != (num_joints, 3, 3):
    raise ValueError(f"rotations must be [T, {num_joints}, 3, 3], got {rotations.shape}")
  columns, channels = [np.asarray(root_positions, np.float64)], []
  for j, o in enumerate(orders):
    rot_names = tuple(f"{a}rotation" for a in o)
    channels.append(("Xposition", "Yposition", "Zposition") + rot_names if j == 0 else rot_names)
    columns.append(Rotation.from_matrix(rotations[:, j]).as_euler(o, degrees=True))
  return Bvh(
    names=tuple(names),
    parents=np.asarray(parents, np.int64),
    offsets=np.asarray(offsets, np.float64),
    channels=tuple(channels),
    end_sites=tuple(end_sites) if end_sites is not None else (None,) * num_joints,
    frame_time=float(frame_time),
    motion=np.concatenate(columns, axis=1),
  )
