"""Tests for jhmr.data.mocap: retargeting BVH onto the SMPL 24-joint skeleton, CMU loading."""

import csv

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.data import bvh, mocap
from jhmr.data.cmu_mocap import dummy_data_generator as cmu_dummy

# A plausible SMPL-like T-pose skeleton, so these tests do not depend on the body model asset.
SKELETON = cmu_dummy.SKELETON


def _angle_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  ra, rb = Rotation.from_rotvec(a.reshape(-1, 3)), Rotation.from_rotvec(b.reshape(-1, 3))
  return np.degrees((ra.inv() * rb).magnitude())


def _random_motion(seed: int, frames: int = 6) -> mocap.Motion:
  rng = np.random.default_rng(seed)
  rotvec = Rotation.random(frames * 24, random_state=seed).as_rotvec().reshape(frames, 24, 3)
  return mocap.Motion(
    global_orient=rotvec[:, 0].astype(np.float32),
    body_pose=(0.8 * rotvec[:, 1:]).astype(np.float32),
    transl=rng.normal(size=(frames, 3)).astype(np.float32),
    fps=30.0,
  )


def _world_rotations(motion: mocap.Motion) -> np.ndarray:
  aa = np.concatenate([motion.global_orient[:, None], motion.body_pose], axis=1)
  local = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(-1, 24, 3, 3)
  world = local.copy()
  for j in range(1, 24):
    world[:, j] = world[:, mocap.SMPL_PARENTS[j]] @ local[:, j]
  return world


@pytest.mark.parametrize("order, unit", [("ZXY", 1.0), ("XZY", 100.0), (("YXZ",) * 24, 2.54)])
def test_bvh_round_trip_recovers_rotations(tmp_path, order, unit):
  motion = _random_motion(0)
  path = tmp_path / "smpl.bvh"
  bvh.write_bvh(path, mocap.motion_to_bvh(motion, SKELETON, order=order, unit=unit))
  back = mocap.retarget_to_body(bvh.read_bvh(path), SKELETON, rest_frame=None, scale=1 / unit)
  assert _angle_error_deg(motion.body_pose, back.body_pose).max() < 0.1
  assert _angle_error_deg(motion.global_orient, back.global_orient).max() < 0.1
  np.testing.assert_allclose(back.transl, motion.transl, atol=1e-4)
  assert back.fps == pytest.approx(30.0)


def test_round_trip_with_a_rest_frame_and_auto_scale():
  motion = _random_motion(1)
  rest = mocap.Motion(
    np.zeros((1, 3), np.float32), np.zeros((1, 23, 3), np.float32), motion.transl[:1], 30.0
  )
  both = jax_free_concat(rest, motion)
  b = mocap.motion_to_bvh(both, SKELETON, unit=100.0)
  back = mocap.retarget_to_body(b, SKELETON, rest_frame=0)  # scale from leg length: 0.01
  assert _angle_error_deg(both.body_pose, back.body_pose).max() < 0.1
  np.testing.assert_allclose(back.transl, both.transl, atol=1e-4)


def jax_free_concat(a: mocap.Motion, b: mocap.Motion) -> mocap.Motion:
  cat = lambda x, y: np.concatenate([x, y])
  return mocap.Motion(
    cat(a.global_orient, b.global_orient), cat(a.body_pose, b.body_pose), cat(a.transl, b.transl)
  )


def test_retargeted_bones_point_like_the_cmu_bones(shared_data_dir):
  clip = bvh.read_bvh(shared_data_dir / "cmu_mocap" / "02" / "02_03.bvh")  # run/jog
  motion = mocap.retarget_to_body(clip, SKELETON)
  world = _world_rotations(motion)
  rot, pos = clip.forward_kinematics()
  ends = clip.end_site_positions(rot, pos)
  joints = SKELETON.rest_joints
  bones = {  # SMPL bone (joint, child) -> the same bone in the Daz skeleton
    (1, 4): ("lThigh", "lShin"), (4, 7): ("lShin", "lFoot"), (7, 10): ("lFoot", "lFoot/end"),
    (2, 5): ("rThigh", "rShin"), (5, 8): ("rShin", "rFoot"), (8, 11): ("rFoot", "rFoot/end"),
    (13, 16): ("lCollar", "lShldr"), (16, 18): ("lShldr", "lForeArm"),
    (18, 20): ("lForeArm", "lHand"), (20, 22): ("lHand", "lMid1"),
    (17, 19): ("rShldr", "rForeArm"), (19, 21): ("rForeArm", "rHand"),
    (12, 15): ("neck", "head"),
  }  # fmt: skip

  def point(name):
    if name.endswith("/end"):
      return ends[:, clip.index(name[:-4])]
    return pos[:, clip.index(name)]

  for (j, c), (a, b) in bones.items():
    smpl_dir = world[:, j] @ (joints[c] - joints[j])
    smpl_dir /= np.linalg.norm(smpl_dir, axis=-1, keepdims=True)
    cmu_dir = point(b) - point(a)
    cmu_dir /= np.linalg.norm(cmu_dir, axis=-1, keepdims=True)
    assert np.abs(smpl_dir - cmu_dir).max() < 1e-4, (j, c)
  # The pelvis follows the hip: scaled BVH position == rest pelvis + transl.
  scale = np.linalg.norm(joints[1] - joints[4]) + np.linalg.norm(joints[4] - joints[7])
  assert motion.transl.shape == (clip.num_frames, 3)
  hip = pos[:, clip.index("hip")]
  ratio = (motion.transl[1:] - motion.transl[:-1]) / (hip[1:] - hip[:-1] + 1e-9)
  moving = np.abs(hip[1:] - hip[:-1]) > 1.0
  np.testing.assert_allclose(np.median(ratio[moving]), scale / 78.7, rtol=0.05)


def test_cmu_rest_frame_is_close_to_the_rest_pose(shared_data_dir):
  clip = bvh.read_bvh(shared_data_dir / "cmu_mocap" / "08" / "08_01.bvh")
  motion = mocap.retarget_to_body(clip, SKELETON)
  # Frame 0 is the T-pose: small rotations only, from the skeletons' different proportions.
  assert _angle_error_deg(motion.global_orient[0], np.zeros(3)).max() < 5
  assert np.degrees(np.linalg.norm(motion.body_pose[0], axis=-1)).max() < 35
  # Walking: knees bend well beyond the rest pose at some frames.
  knee = np.degrees(np.linalg.norm(motion.body_pose[:, 3], axis=-1))
  assert knee.max() > 40


def test_unknown_skeleton_raises():
  text = "ROOT a\n{\nOFFSET 0 0 0\nCHANNELS 3 Zrotation Xrotation Yrotation\n}\n"
  b = bvh.parse_bvh(text + "MOTION\nFrames: 1\nFrame Time: 1\n0 0 0\n")
  with pytest.raises(ValueError, match="no joint map fits"):
    mocap.retarget_to_body(b, SKELETON)


def test_resample():
  motion = _random_motion(2, frames=12)
  half = mocap.resample(motion, 15)
  assert half.num_frames == 6 and half.fps == pytest.approx(15)
  np.testing.assert_array_equal(half.body_pose, motion.body_pose[::2])
  with pytest.raises(ValueError, match="cannot resample"):
    mocap.resample(motion, 7)


def test_subject_split_keeps_partners_together(tmp_path):
  for folder in ("01", "02", "05", "60-61A", "60-61B", "94", "135", "13", "14", "07"):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "x.bvh").write_text("")
  train, test = mocap.cmu_subject_split(tmp_path)
  assert set(train) | set(test) == {p.name for p in tmp_path.iterdir()}
  assert not set(train) & set(test) and train and test
  assert ("60-61A" in train) == ("60-61B" in train)
  assert mocap.cmu_subject_split(tmp_path) == (train, test)
  # Adding a subject never moves the existing ones.
  (tmp_path / "99").mkdir()
  (tmp_path / "99" / "y.bvh").write_text("")
  train2, test2 = mocap.cmu_subject_split(tmp_path)
  assert set(train) <= set(train2) and set(test) <= set(test2)


def test_load_cmu_two_subjects(shared_data_dir):
  root = shared_data_dir / "cmu_mocap"
  motions = mocap.load_cmu(root, subjects=["03", "11"], body_model=SKELETON)
  with open(root / "index.csv") as f:
    frames = {r["path"][:-4]: int(r["frames_30fps"]) for r in csv.DictReader(f)}
  assert sorted(motions) == ["03/03_01", "03/03_02", "11/11_01"]
  for name, motion in motions.items():
    assert motion.num_frames == frames[name] - 1  # rest frame dropped
    assert motion.body_pose.shape == (motion.num_frames, 23, 3)
    assert motion.body_pose.dtype == np.float32 and motion.fps == pytest.approx(30)
    assert np.all(np.isfinite(motion.body_pose))
  slow = mocap.load_cmu(root, subjects=["11"], body_model=SKELETON, fps=10)["11/11_01"]
  np.testing.assert_array_equal(slow.body_pose, motions["11/11_01"].body_pose[::3])


def test_cmu_split_of_the_shared_data(shared_data_dir):
  train, test = mocap.cmu_subject_split(shared_data_dir / "cmu_mocap")
  assert len(train) + len(test) == 17 and test
  assert ("60-61A" in test) == ("60-61B" in test)


def _cmu31_bvh(frames: int, seed: int) -> bvh.Bvh:
  """A MotionBuilder-style CMU 31-joint BVH (inches-like units) with random rotations."""
  j = SKELETON.rest_joints * 40.0
  names, parents, points = [], [], []

  def add(name, parent, point):
    names.append(name)
    parents.append(-1 if parent is None else names.index(parent))
    points.append(np.asarray(point, np.float64))

  add("Hips", None, j[0])
  for side, s in (("Left", 1), ("Right", 2)):
    h = side[0]
    add(f"{h}HipJoint", "Hips", j[0])
    add(f"{side}UpLeg", f"{h}HipJoint", j[s])
    add(f"{side}Leg", f"{side}UpLeg", j[s + 3])
    add(f"{side}Foot", f"{side}Leg", j[s + 6])
    add(f"{side}ToeBase", f"{side}Foot", j[s + 9])
  add("LowerBack", "Hips", j[0])
  add("Spine", "LowerBack", j[6])
  add("Spine1", "Spine", j[9])
  add("Neck", "Spine1", j[12])
  add("Neck1", "Neck", (j[12] + j[15]) / 2)
  add("Head", "Neck1", j[15])
  for side, s in (("Left", 13), ("Right", 14)):
    add(f"{side}Shoulder", "Spine1", j[s])
    add(f"{side}Arm", f"{side}Shoulder", j[s + 3])
    add(f"{side}ForeArm", f"{side}Arm", j[s + 5])
    add(f"{side}Hand", f"{side}ForeArm", j[s + 7])
    add(f"{side}FingerBase", f"{side}Hand", j[s + 9])
    add(f"{side}HandIndex1", f"{side}FingerBase", j[s + 9] * [1.1, 1, 1])
    add(f"{side[0]}Thumb", f"{side}Hand", j[s + 9] + [0, 0, 2])
  points = np.stack(points)
  offsets = points - np.concatenate([[np.zeros(3)], points[parents[1:]]])
  offsets[0] = 0.0
  rot = Rotation.random(frames * len(names), random_state=seed).as_matrix()
  rot = Rotation.from_rotvec(0.4 * Rotation.from_matrix(rot).as_rotvec()).as_matrix()
  rot = rot.reshape(frames, len(names), 3, 3)
  rot[0] = np.eye(3)  # frame 0: the rest pose
  root = np.random.default_rng(seed).normal(0, 10, (frames, 3)) + j[0]
  return bvh.from_rotations(names, parents, offsets, rot, root, 1 / 120, "ZYX")


def test_cmu31_release_bones_point_like_the_bvh_bones():
  clip = _cmu31_bvh(6, 3)
  assert mocap.joint_map_for(clip) is mocap.MOTIONBUILDER_CMU
  motion = mocap.retarget_to_body(clip, SKELETON)
  assert motion.fps == pytest.approx(120)
  world = _world_rotations(motion)
  rot, pos = clip.forward_kinematics()
  joints = SKELETON.rest_joints
  bones = {
    (1, 4): ("LeftUpLeg", "LeftLeg"), (4, 7): ("LeftLeg", "LeftFoot"),
    (7, 10): ("LeftFoot", "LeftToeBase"), (5, 8): ("RightLeg", "RightFoot"),
    (16, 18): ("LeftArm", "LeftForeArm"), (18, 20): ("LeftForeArm", "LeftHand"),
    (20, 22): ("LeftHand", "LeftFingerBase"), (19, 21): ("RightForeArm", "RightHand"),
    (13, 16): ("LeftShoulder", "LeftArm"), (9, 12): ("Spine1", "Neck"),
  }  # fmt: skip
  for (j, c), (a, b) in bones.items():
    smpl_dir = world[:, j] @ (joints[c] - joints[j])
    bvh_dir = pos[:, clip.index(b)] - pos[:, clip.index(a)]
    cos = (
      np.sum(smpl_dir * bvh_dir, -1)
      / np.linalg.norm(smpl_dir, axis=-1)
      / np.linalg.norm(bvh_dir, axis=-1)
    )
    assert np.all(cos > 1 - 1e-6), (j, c)
  # Units: the leg-length ratio takes the file's units (here 40 x metres) back to metres.
  np.testing.assert_allclose(motion.transl[0], pos[0, 0] / 40.0 - joints[0], atol=1e-5)
