"""Tests of the numpy rig maths used to derive the Anny assets (no anny, no torch)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.body import anny_rig as rig


def _labels():
  """A bone list with every label of the Anny default rig that the SMPL mapping names."""
  labels = []
  for _, part in rig.JOINT_TABLE:
    labels += [b for b in part if b not in labels]
  return labels


def test_minimal_rotation_aims_and_is_minimal():
  rng = np.random.default_rng(0)
  src, dst = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
  r = rig.minimal_rotation(src, dst)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.einsum("nij,nj->ni", r, unit(src)), unit(dst), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
  # The angle is the angle between the directions, and the axis is perpendicular to both.
  angle = np.arccos(np.clip(np.sum(unit(src) * unit(dst), -1), -1, 1))
  np.testing.assert_allclose(np.linalg.norm(Rotation.from_matrix(r).as_rotvec(), axis=-1), angle)
  np.testing.assert_allclose(rig.minimal_rotation(src[0], src[0] * 3.0), np.eye(3), atol=1e-12)
  with pytest.raises(ValueError, match="opposite"):
    rig.minimal_rotation(np.array([1.0, 0, 0]), np.array([-1.0, 0, 0]))


def test_fk_and_skinning_match_an_explicit_chain():
  # Three bones in a chain: root at 0, child at (1,0,0), grandchild at (2,0,0).
  heads = np.array([[[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]])
  parents = [-1, 0, 1]
  rz = Rotation.from_euler("z", 90, degrees=True).as_matrix()
  local = np.stack([np.eye(3), rz, np.eye(3)])[None]
  rots, posed = rig.forward_kinematics(heads, parents, local)
  np.testing.assert_allclose(posed[0], [[0, 0, 0], [1, 0, 0], [1, 1, 0]], atol=1e-12)
  np.testing.assert_allclose(rots[0, 2], rz, atol=1e-12)
  # A vertex fully on bone 2 follows it; one split 50/50 between bones 0 and 2 is averaged.
  verts = np.array([[[3.0, 0, 0], [3.0, 0, 0]]])
  weights = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 0.5]])
  out = rig.skin(verts, weights, heads, rots, posed)
  np.testing.assert_allclose(out[0, 0], [1, 2, 0], atol=1e-12)
  np.testing.assert_allclose(out[0, 1], [2, 1, 0], atol=1e-12)


def test_merge_matrix_maps_each_bone_once_and_raises_on_missing():
  labels = _labels()
  merge = rig.merge_matrix(labels)
  assert merge.shape == (len(labels), 24) and np.all(merge.sum(1) == 1)
  assert np.all(merge.sum(0) >= 1)  # every SMPL part owns at least one bone
  assert len(labels) == 104  # the whole Anny default rig
  with pytest.raises(KeyError, match="wrist.L"):
    rig.merge_matrix([b for b in labels if b != "wrist.L"])
  with pytest.raises(ValueError, match="extra"):
    rig.merge_matrix(labels + ["extra"])
  avg = rig.head_matrix(labels)
  np.testing.assert_allclose(avg.sum(1), 1.0)
  assert avg[rig.SMPL_JOINT_NAMES.index("left_foot")].max() == pytest.approx(0.2)  # 5 toe bases


def test_t_pose_rotations_straighten_a_toy_arm():
  labels = _labels()
  index = {b: i for i, b in enumerate(labels)}
  # A toy tree, listed parents first: each arm/leg bone hangs off the previous bone of its chain.
  arm = ("upperarm01", "lowerarm01", "wrist", "finger3-1")
  toy = {}
  for side, sign in (("L", 1.0), ("R", -1.0)):
    # A-pose-like arm (down and forward) and a splayed leg, in Anny axes (left = +X).
    toy[f"upperarm01.{side}"] = (None, [0.2 * sign, 0.0, 1.4])
    toy[f"lowerarm01.{side}"] = (f"upperarm01.{side}", [0.4 * sign, -0.05, 1.2])
    toy[f"wrist.{side}"] = (f"lowerarm01.{side}", [0.5 * sign, -0.2, 1.0])
    toy[f"finger3-1.{side}"] = (f"wrist.{side}", [0.55 * sign, -0.25, 0.92])
    toy[f"upperleg01.{side}"] = (None, [0.1 * sign, 0.0, 0.9])
    toy[f"foot.{side}"] = (f"upperleg01.{side}", [0.25 * sign, 0.0, 0.1])
  labels = ["root", *toy]
  index = {b: i for i, b in enumerate(labels)}
  parents = [-1] + [0 if p is None else index[p] for p, _ in toy.values()]
  heads = np.array([[0.0, 0.0, 1.0]] + [h for _, h in toy.values()])[None]
  local = rig.t_pose_rotations(heads, parents, labels)
  assert np.all(np.isfinite(local))
  _, posed = rig.forward_kinematics(heads, parents, local)
  for side, sign in (("L", 1.0), ("R", -1.0)):
    chain = posed[0, [index[f"{b}.{side}"] for b in arm]]
    assert np.all(np.diff(sign * chain[:, 0]) > 0)  # left arm along +X, right arm along -X
    np.testing.assert_allclose(chain[:, 1:], np.broadcast_to(chain[0, 1:], (4, 2)), atol=1e-12)
    leg = posed[0, [index[f"upperleg01.{side}"], index[f"foot.{side}"]]]
    np.testing.assert_allclose(leg[1, :2], leg[0, :2], atol=1e-12)  # foot straight below hip
    assert leg[1, 2] < leg[0, 2]


def test_axes_are_a_proper_rotation_keeping_left_on_plus_x():
  np.testing.assert_allclose(rig.ANNY_TO_SMPL @ rig.ANNY_TO_SMPL.T, np.eye(3))
  assert np.linalg.det(rig.ANNY_TO_SMPL) == pytest.approx(1.0)
  # Anny: up = +Z, facing -Y, left = +X  ->  SMPL: up = +Y, facing +Z, left = +X.
  np.testing.assert_allclose(rig.anny_to_smpl_axes(np.array([0.0, 0, 1])), [0, 1, 0])
  np.testing.assert_allclose(rig.anny_to_smpl_axes(np.array([0.0, -1, 0])), [0, 0, 1])
  np.testing.assert_allclose(rig.anny_to_smpl_axes(np.array([1.0, 0, 0])), [1, 0, 0])
