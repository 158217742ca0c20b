"""Motion capture -> SMPL-format motion: retargeting BVH skeletons onto the 24-joint body model.

`retarget_to_body(bvh, body_model)` turns a BVH clip into `Motion(global_orient [T,3],
body_pose [T,23,3] axis-angle, transl [T,3], fps)` for any SMPL-format body model (the free Anny
model by default). The method, per SMPL joint j with a mapped BVH joint b(j):

1. World rotations `G_b(t)` and positions come from BVH forward kinematics (`jhmr.data.bvh`),
   optionally re-expressed in SMPL axes by `axes` (default identity: BVH Y-up facing +Z, as in
   the CMU releases, equals SMPL's Y-up, +Z forward, left = +X).
2. Each bone's motion relative to the BVH rest pose: `D_b(t) = G_b(t) G_b(rest)^T` (the rest
   pose is a frame of the file, e.g. the CMU T-pose frame 0, or the all-zero-channel pose).
3. Rest alignment: `A_j` rotates the SMPL rest bone (joint j -> its child) onto the BVH rest
   bone between the mapped points (the smallest such rotation; for the pelvis, the frame spanned
   by the hip axis and the pelvis -> spine3 direction). Bones without an SMPL child (head,
   feet, hands) inherit their parent's alignment.
4. SMPL world rotation `G'_j(t) = D_b(t) A_j`, so every SMPL bone points where the BVH bone
   points; local rotation `R_j = G'_parent(j)^T G'_j`, stored as axis-angle.
5. Root translation: the pelvis is placed at the scaled BVH hip position, `transl = s * p_hip(t)
   - J_pelvis(rest)` (SMPL rotates about the rest pelvis and then adds `transl`). `s` is the
   ratio of SMPL to BVH leg length unless given (0.01 takes centimetres to metres), so the feet
   of the body model meet the floor where the actor's did.

Joint maps for the CMU "Daz-friendly" 43-joint release (`hip`, `lThigh`, ...), the CMU
MotionBuilder 31-joint release (`Hips`, `LeftUpLeg`, ...) and SMPL-named skeletons (as written
by `motion_to_bvh`) are chosen from the joint names (`joint_map_for`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import zlib
from collections.abc import Sequence

import numpy as np
from flax import struct
from scipy.spatial.transform import Rotation

from jhmr.data import bvh as bvh_lib

SMPL_JOINT_NAMES = (
  "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
  "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
  "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
  "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# The child whose rest position gives each SMPL joint's bone direction (-1: inherit the parent's
# alignment; the pelvis is aligned by a frame, see `_rest_alignment`).
_BONE_CHILD = (-1, 4, 5, 6, 7, 8, 9, 10, 11, 12, -1, -1, 15, 16, 17, -1, 18, 19, 20, 21, 22, 23)
_BONE_CHILD += (-1, -1)

# A source is a BVH joint name, "name/end" (its End Site, positions only) or a pair (a, b): the
# midpoint (positions) or the halfway rotation (rotations) of two joints.
Source = str | tuple[str, str]


@dataclasses.dataclass(frozen=True)
class JointMap:
  """Which BVH joints drive each of the 24 SMPL joints.

  Attributes:
    name: a label for messages.
    rotation: 24 sources of world rotation (SMPL joint order).
    position: 24 sources of rest position (bone directions for the alignment and the pelvis).
  """

  name: str
  rotation: tuple[Source, ...]
  position: tuple[Source, ...]

  def __post_init__(self):
    if len(self.rotation) != 24 or len(self.position) != 24:
      raise ValueError(f"JointMap {self.name!r} needs 24 rotation and 24 position sources")

  def bvh_joints(self) -> set[str]:
    names = set()
    for src in self.rotation + self.position:
      for s in (src,) if isinstance(src, str) else src:
        names.add(s.removesuffix("/end"))
    return names


def _sided(center: dict[int, Source], left: dict[int, str], right_of) -> tuple[Source, ...]:
  out: list[Source] = [""] * 24
  for j, src in center.items():
    out[j] = src
  for j, src in left.items():
    out[j] = src
    out[j + 1] = right_of(src)
  return tuple(out)


def _daz_right(name: str) -> str:
  return "r" + name[1:]


def _cmu_right(name: str) -> str:
  return name.replace("Left", "Right")


_DAZ_CENTER_ROT = {0: "hip", 3: "abdomen", 6: ("abdomen", "chest"), 9: "chest", 12: "neck"}
_DAZ_CENTER_ROT |= {15: "head"}
_DAZ_LEFT_ROT = {1: "lThigh", 4: "lShin", 7: "lFoot", 10: "lFoot", 13: "lCollar", 16: "lShldr"}
_DAZ_LEFT_ROT |= {18: "lForeArm", 20: "lHand", 22: "lHand"}
_DAZ_LEFT_POS = _DAZ_LEFT_ROT | {10: "lFoot/end", 22: "lMid1"}

DAZ_CMU = JointMap(
  name="cmu-daz43",
  rotation=_sided(_DAZ_CENTER_ROT, _DAZ_LEFT_ROT, _daz_right),
  position=_sided(_DAZ_CENTER_ROT, _DAZ_LEFT_POS, _daz_right),
)

_CMU_CENTER = {0: "Hips", 3: "LowerBack", 6: "Spine", 9: "Spine1", 12: "Neck", 15: "Head"}
_CMU_LEFT_ROT = {1: "LeftUpLeg", 4: "LeftLeg", 7: "LeftFoot", 10: "LeftToeBase"}
_CMU_LEFT_ROT |= {13: "LeftShoulder", 16: "LeftArm", 18: "LeftForeArm", 20: "LeftHand"}
_CMU_LEFT_ROT |= {22: "LeftHand"}
_CMU_LEFT_POS = _CMU_LEFT_ROT | {22: "LeftFingerBase"}

MOTIONBUILDER_CMU = JointMap(
  name="cmu-mb31",
  rotation=_sided(_CMU_CENTER, _CMU_LEFT_ROT, _cmu_right),
  position=_sided(_CMU_CENTER, _CMU_LEFT_POS, _cmu_right),
)

SMPL_NAMED = JointMap(name="smpl24", rotation=SMPL_JOINT_NAMES, position=SMPL_JOINT_NAMES)

JOINT_MAPS = {m.name: m for m in (DAZ_CMU, MOTIONBUILDER_CMU, SMPL_NAMED)}


def joint_map_for(bvh: bvh_lib.Bvh) -> JointMap:
  """The first of `JOINT_MAPS` whose BVH joints all exist in `bvh` (raises if none fits)."""
  names = set(bvh.names)
  for joint_map in JOINT_MAPS.values():
    if joint_map.bvh_joints() <= names:
      return joint_map
  raise ValueError(
    f"no joint map fits this BVH skeleton (joints: {', '.join(bvh.names)}); known maps: "
    f"{', '.join(JOINT_MAPS)}. Pass a JointMap."
  )


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """The target skeleton: rest joints `[24, 3]` (metres) and parents `[24]` (root -1)."""

  rest_joints: np.ndarray
  parents: np.ndarray

  def __post_init__(self):
    if np.shape(self.rest_joints) != (24, 3) or np.shape(self.parents) != (24,):
      raise ValueError("Skeleton needs rest_joints [24, 3] and parents [24]")
    if tuple(int(p) for p in self.parents[1:]) != SMPL_PARENTS[1:]:
      raise ValueError(f"Skeleton parents are not SMPL's: {list(self.parents)}")


def skeleton_of(body_model) -> Skeleton:
  """The rest skeleton (betas 0, zero pose) of a `jhmr.body` model, or a `Skeleton` as is."""
  if isinstance(body_model, Skeleton):
    return body_model
  zeros = np.zeros
  out = body_model.joints_only(
    zeros((body_model.num_betas,), np.float32), zeros((23, 3), np.float32), zeros(3, np.float32)
  )
  parents = np.array(body_model.parents, np.int64).copy()
  parents[0] = -1
  return Skeleton(rest_joints=np.asarray(out.joints, np.float64), parents=parents)


@struct.dataclass
class Motion:
  """SMPL-format motion (axis-angle, metres).

  Attributes:
    global_orient: `[T, 3]` root rotation.
    body_pose: `[T, 23, 3]` local rotations of joints 1..23.
    transl: `[T, 3]` root translation (SMPL convention: added after rotating about the rest
      pelvis).
    fps: frames per second.
  """

  global_orient: np.ndarray
  body_pose: np.ndarray
  transl: np.ndarray
  fps: float = struct.field(pytree_node=False, default=30.0)

  @property
  def num_frames(self) -> int:
    return self.global_orient.shape[0]

  def __getitem__(self, index) -> Motion:
    """Frames `index` (a slice or index array) of the motion."""
    return Motion(self.global_orient[index], self.body_pose[index], self.transl[index], self.fps)


def _halfway(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Rotation halfway between `a` and `b` (`[..., 3, 3]`) on the geodesic from a."""
  rel = Rotation.from_matrix(np.swapaxes(a, -1, -2) @ b).as_rotvec()
  return a @ Rotation.from_rotvec(0.5 * rel).as_matrix()


def _minimal_rotation(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Smallest rotation `[3, 3]` taking direction `src` to direction `dst`."""
  u, v = src / np.linalg.norm(src), dst / np.linalg.norm(dst)
  axis = np.cross(u, v)
  sin, cos = np.linalg.norm(axis), float(np.dot(u, v))
  if sin < 1e-12:
    if cos > 0:
      return np.eye(3)
    perp = np.cross(u, np.eye(3)[np.argmin(np.abs(u))])
    return Rotation.from_rotvec(np.pi * perp / np.linalg.norm(perp)).as_matrix()
  return Rotation.from_rotvec(axis / sin * np.arctan2(sin, cos)).as_matrix()


def _frame(lateral: np.ndarray, up: np.ndarray) -> np.ndarray:
  """Orthonormal frame (columns x, y, z) with x along `lateral` and y close to `up`."""
  x = lateral / np.linalg.norm(lateral)
  z = np.cross(x, up)
  z /= np.linalg.norm(z)
  return np.stack([x, np.cross(z, x), z], axis=-1)


def _rest_alignment(smpl: np.ndarray, src: np.ndarray) -> np.ndarray:
  """`[24, 3, 3]` world rotations taking SMPL rest bones onto the BVH rest bones (`src` [24,3])."""
  for j, child in enumerate(_BONE_CHILD):
    for name, points in (("SMPL", smpl), ("BVH", src)):
      if child >= 0 and np.linalg.norm(points[child] - points[j]) < 1e-9:
        raise ValueError(
          f"{name} rest bone {SMPL_JOINT_NAMES[j]} -> {SMPL_JOINT_NAMES[child]} has zero length"
        )
  align = np.empty((24, 3, 3))
  # The pelvis frame: the hip axis and the pelvis -> spine3 direction (spine1 may sit on the
  # pelvis, as CMU's LowerBack does).
  smpl_frame = _frame(smpl[1] - smpl[2], smpl[9] - smpl[0])
  align[0] = _frame(src[1] - src[2], src[9] - src[0]) @ smpl_frame.T
  for j in range(1, 24):
    child = _BONE_CHILD[j]
    if child < 0:
      align[j] = align[SMPL_PARENTS[j]]
    else:
      align[j] = _minimal_rotation(smpl[child] - smpl[j], src[child] - src[j])
  return align


def _leg_length(points: np.ndarray) -> float:
  return float(
    np.mean([np.linalg.norm(points[h] - points[k]) + np.linalg.norm(points[k] - points[a])
             for h, k, a in ((1, 4, 7), (2, 5, 8))])
  )  # fmt: skip


def retarget_to_body(
  bvh: bvh_lib.Bvh,
  body_model,
  joint_map: JointMap | None = None,
  *,
  rest_frame: int | None = 0,
  scale: float | None = None,
  axes: np.ndarray | None = None,
) -> Motion:
  """Retargets a BVH clip onto the 24 joints of an SMPL-format body model (module docstring).

  Args:
    bvh: the parsed BVH file.
    body_model: a `jhmr.body` model (its rest skeleton at betas 0 is the target) or a `Skeleton`.
    joint_map: BVH -> SMPL joint map; default `joint_map_for(bvh)`.
    rest_frame: the frame in which the BVH skeleton stands in the rest pose (CMU: 0, the T-pose
      frame), or None for the pose with all rotation channels zero.
    scale: BVH units -> metres; None: SMPL leg length / BVH leg length.
    axes: `[3, 3]` rotation from BVH world axes to SMPL world axes (default identity).

  Returns:
    Motion with all `bvh.num_frames` frames (float32) at the BVH frame rate.
  """
  skeleton = skeleton_of(body_model)
  joint_map = joint_map or joint_map_for(bvh)
  rot, pos = bvh.forward_kinematics()
  end = bvh.end_site_positions(rot, pos)
  if axes is not None:
    axes = np.asarray(axes, np.float64)
    rot, pos, end = axes @ rot, pos @ axes.T, end @ axes.T
  if rest_frame is None:
    zero = dataclasses.replace(bvh, motion=np.zeros_like(bvh.motion[:1]))
    rest_rot, rest_pos = zero.forward_kinematics()
    rest_end = zero.end_site_positions(rest_rot, rest_pos)
    if axes is not None:
      rest_rot, rest_pos, rest_end = axes @ rest_rot, rest_pos @ axes.T, rest_end @ axes.T
    rest_rot, rest_pos, rest_end = rest_rot[0], rest_pos[0], rest_end[0]
  else:
    if not -bvh.num_frames <= rest_frame < bvh.num_frames:
      raise ValueError(f"rest_frame {rest_frame} outside the {bvh.num_frames} frames")
    rest_rot, rest_pos, rest_end = rot[rest_frame], pos[rest_frame], end[rest_frame]

  def point(src: Source, positions: np.ndarray, ends: np.ndarray) -> np.ndarray:
    if isinstance(src, tuple):
      return 0.5 * (point(src[0], positions, ends) + point(src[1], positions, ends))
    if src.endswith("/end"):
      j = bvh.index(src[:-4])
      if bvh.end_sites[j] is None:
        raise ValueError(f"BVH joint {src[:-4]!r} has no End Site (needed by {joint_map.name})")
      return ends[..., j, :]
    return positions[..., bvh.index(src), :]

  def delta(src: Source) -> np.ndarray:
    if isinstance(src, tuple):
      return _halfway(delta(src[0]), delta(src[1]))
    j = bvh.index(src)
    return rot[:, j] @ rest_rot[j].T

  rest_src = np.stack([point(s, rest_pos, rest_end) for s in joint_map.position])
  align = _rest_alignment(skeleton.rest_joints, rest_src)
  world = np.stack([delta(s) @ align[j] for j, s in enumerate(joint_map.rotation)], axis=1)
  local = world.copy()
  parents = np.array(SMPL_PARENTS[1:])
  local[:, 1:] = np.swapaxes(world[:, parents], -1, -2) @ world[:, 1:]
  aa = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(-1, 24, 3)
  if scale is None:
    scale = _leg_length(skeleton.rest_joints) / _leg_length(rest_src)
  transl = scale * point(joint_map.position[0], pos, end) - skeleton.rest_joints[0]
  return Motion(
    global_orient=aa[:, 0].astype(np.float32),
    body_pose=aa[:, 1:].astype(np.float32),
    transl=transl.astype(np.float32),
    fps=round(bvh.fps, 3),
  )


def motion_to_bvh(
  motion: Motion,
  body_model,
  *,
  order: str | Sequence[str] = "ZXY",
  unit: float = 1.0,
) -> bvh_lib.Bvh:
  """A BVH of `motion` on the body model's rest skeleton (SMPL joint names, units = metres*unit).

  The all-zero-channel pose is the body model's rest pose, so `retarget_to_body(b, body_model,
  rest_frame=None, scale=1 / unit)` recovers `motion`.
  """
  skeleton = skeleton_of(body_model)
  joints = skeleton.rest_joints * unit
  offsets = joints - np.concatenate([np.zeros((1, 3)), joints[list(SMPL_PARENTS[1:])]])
  offsets[0] = joints[0]
  aa = np.concatenate([motion.global_orient[:, None], motion.body_pose], axis=1)
  rot = Rotation.from_rotvec(aa.reshape(-1, 3).astype(np.float64)).as_matrix()
  return bvh_lib.from_rotations(
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    offsets,
    rot.reshape(-1, 24, 3, 3),
    np.asarray(motion.transl, np.float64) * unit,
    frame_time=1.0 / motion.fps,
    order=order,
  )


def resample(motion: Motion, fps: float) -> Motion:
  """Keeps every k-th frame so that `motion.fps / k == fps` (raises if k is not an integer)."""
  step = motion.fps / fps
  if abs(step - round(step)) > 1e-3 * step or round(step) < 1:
    raise ValueError(f"cannot resample {motion.fps:g} fps to {fps:g} fps by dropping frames")
  out = motion[:: int(round(step))]
  return out.replace(fps=motion.fps / round(step))


# ---------------------------------------------------------------------------------------------
# The CMU folder layout: <root>/<subject folder>/*.bvh


def _group(folder: str) -> str:
  """Subject group of a folder: `60-61A`/`60-61B` (partners of one take) -> `60-61`."""
  match = re.fullmatch(r"(.*\d)[A-Z]", folder)
  return match.group(1) if match else folder


def cmu_files(root: str | pathlib.Path, subjects: Sequence[str] | None = None) -> list[str]:
  """Relative paths `<folder>/<file>.bvh` under `root`, sorted; `subjects` filters folders."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"CMU mocap root {root} does not exist")
  files = sorted(str(p.relative_to(root)) for p in root.glob("*/*.bvh"))
  if subjects is not None:
    wanted = set(subjects)
    files = [f for f in files if f.split("/")[0] in wanted or _group(f.split("/")[0]) in wanted]
  if not files:
    raise FileNotFoundError(f"no <subject>/*.bvh files under {root} (subjects={subjects})")
  return files


def cmu_subject_split(
  root: str | pathlib.Path, test_fraction: float = 0.2
) -> tuple[list[str], list[str]]:
  """Deterministic split of the subject folders of `root` into (train, test) folder names.

  Folders are grouped first (`60-61A` and `60-61B` are two people in the same takes and stay on
  one side). A group is held out when `crc32(group) % 1000 < 1000 * test_fraction`: the split
  depends only on the names, so adding folders never moves existing ones.
  """
  folders = sorted({f.split("/")[0] for f in cmu_files(root)})
  groups = sorted({_group(f) for f in folders})
  held = {g for g in groups if zlib.crc32(g.encode()) % 1000 < 1000 * test_fraction}
  if not held and len(groups) > 1:
    held = {min(groups, key=lambda g: zlib.crc32(g.encode()))}
  if held == set(groups):
    held.discard(max(groups, key=lambda g: zlib.crc32(g.encode())))
  train = [f for f in folders if _group(f) not in held]
  test = [f for f in folders if _group(f) in held]
  return train, test


def load_cmu(
  root: str | pathlib.Path,
  subjects: Sequence[str] | None = None,
  body_model=None,
  fps: float = 30,
  *,
  drop_rest_frame: bool = True,
) -> dict[str, Motion]:
  """Reads and retargets the CMU BVH files under `root` (`<folder>/<name>.bvh`).

  Args:
    root: the CMU folder (e.g. `../shared/data/cmu_mocap`).
    subjects: folder names (or groups such as `60-61`) to load; None loads all.
    body_model: target body model or `Skeleton`; None loads `jhmr.body.load_body_model()`.
    fps: output frame rate (an integer divisor of the files' rate).
    drop_rest_frame: drop frame 0, the T-pose the converter added (it also serves as the rest
      pose for retargeting).

  Returns:
    `{'<folder>/<name>': Motion}` in sorted order.
  """
  if body_model is None:
    from jhmr.body import load_body_model  # noqa: PLC0415 (body sits below data; lazy for speed)

    body_model = load_body_model()
  skeleton = skeleton_of(body_model)
  root = pathlib.Path(root)
  out = {}
  for rel in cmu_files(root, subjects):
    motion = retarget_to_body(bvh_lib.read_bvh(root / rel), skeleton, rest_frame=0)
    if drop_rest_frame:
      motion = motion[1:]
    out[rel.removesuffix(".bvh")] = resample(motion, fps)
  return out
