"""Tests for jhmr.data.bvh: parsing, Euler conventions, forward kinematics, writing, errors."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.data import bvh

TWO_JOINTS = """HIERARCHY
ROOT root
{
  OFFSET 1 2 3
  CHANNELS 6 Xposition Yposition Zposition Yrotation Xrotation Zrotation
  JOINT arm
  {
    OFFSET 10 0 0
    CHANNELS 3 Xrotation Zrotation Yrotation
    End Site
    {
      OFFSET 5 0 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.04
0 0 0 0 0 0 0 0 0
1 2 3 90 0 0 0 90 0
"""


def _axis(axis: str, degrees: float) -> np.ndarray:
  return Rotation.from_euler(axis.lower(), degrees, degrees=True).as_matrix()


def test_parse_hierarchy_and_motion():
  b = bvh.parse_bvh(TWO_JOINTS)
  assert b.names == ("root", "arm")
  np.testing.assert_array_equal(b.parents, [-1, 0])
  np.testing.assert_allclose(b.offsets, [[1, 2, 3], [10, 0, 0]])
  assert b.channels[1] == ("Xrotation", "Zrotation", "Yrotation")
  np.testing.assert_allclose(b.end_sites[1], [5, 0, 0])
  assert b.end_sites[0] is None
  assert b.motion.shape == (2, 9) and b.fps == pytest.approx(25.0)
  np.testing.assert_array_equal(b.channel_offsets(), [0, 6])


def test_euler_channels_multiply_in_listed_order():
  rng = np.random.default_rng(0)
  angles = rng.uniform(-170, 170, size=(4, 3))
  for order in ("ZXY", "XYZ", "YZX", "ZYX"):
    chans = " ".join(f"{a}rotation" for a in order)
    rows = "\n".join(" ".join(f"{x:.10f}" for x in a) for a in angles)
    text = f"ROOT r\n{{\nOFFSET 0 0 0\nCHANNELS 3 {chans}\n}}\n"
    text += f"MOTION\nFrames: 4\nFrame Time: 1\n{rows}\n"
    rot = bvh.parse_bvh(text).local_rotations()[:, 0]
    for t in range(4):
      expected = _axis(order[0], angles[t, 0]) @ _axis(order[1], angles[t, 1])
      expected = expected @ _axis(order[2], angles[t, 2])
      np.testing.assert_allclose(rot[t], expected, atol=1e-9)


def test_forward_kinematics_by_hand():
  b = bvh.parse_bvh(TWO_JOINTS)
  rot, pos = b.forward_kinematics()
  ends = b.end_site_positions(rot, pos)
  np.testing.assert_allclose(pos[0], [[1, 2, 3], [11, 2, 3]], atol=1e-9)
  np.testing.assert_allclose(ends[0, 1], [16, 2, 3], atol=1e-9)
  # Frame 1: root at (1,2,3)+(1,2,3), yawed 90 deg about Y; arm rolled 90 deg about its Z.
  root = _axis("Y", 90)
  np.testing.assert_allclose(pos[1, 0], [2, 4, 6], atol=1e-9)
  np.testing.assert_allclose(pos[1, 1], [2, 4, 6] + root @ [10, 0, 0], atol=1e-9)
  np.testing.assert_allclose(rot[1, 1], root @ _axis("Z", 90), atol=1e-9)
  np.testing.assert_allclose(ends[1, 1], pos[1, 1] + root @ _axis("Z", 90) @ [5, 0, 0], atol=1e-9)


def test_format_then_parse_round_trips(tmp_path):
  rng = np.random.default_rng(1)
  names, parents = ("a", "b", "c", "d"), (-1, 0, 0, 2)  # a branch, so file order matters
  offsets = rng.normal(size=(4, 3))
  rot = Rotation.random(12, random_state=2).as_matrix().reshape(3, 4, 3, 3)
  ends = (None, np.array([0.0, 1, 0]), None, np.array([1.0, 0, 0]))
  b = bvh.from_rotations(names, parents, offsets, rot, rng.normal(size=(3, 3)), 0.1, "YXZ", ends)
  bvh.write_bvh(tmp_path / "x.bvh", b, precision=12)
  back = bvh.read_bvh(tmp_path / "x.bvh")
  assert back.names == ("a", "b", "c", "d")
  np.testing.assert_allclose(back.local_rotations(), rot, atol=1e-9)
  np.testing.assert_allclose(back.forward_kinematics()[1], b.forward_kinematics()[1], atol=1e-9)
  np.testing.assert_allclose(back.end_sites[3], [1, 0, 0])


def test_depth_first_file_order_keeps_columns_with_their_joints():
  # Joint 1's child is listed after joint 2 in `parents`, so the file order differs.
  names, parents = ("r", "x", "y", "x_child"), (-1, 0, 0, 1)
  angles = np.array([[[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30]]], np.float64)
  rot = Rotation.from_euler("ZXY", angles.reshape(-1, 3), degrees=True).as_matrix()
  b = bvh.from_rotations(
    names, parents, np.ones((4, 3)), rot.reshape(1, 4, 3, 3), np.zeros((1, 3)), 1
  )
  back = bvh.parse_bvh(bvh.format_bvh(b))
  assert back.names == ("r", "x", "x_child", "y")
  for name in names:
    np.testing.assert_allclose(
      back.local_rotations()[0, back.index(name)], b.local_rotations()[0, b.index(name)], atol=1e-9
    )


@pytest.mark.parametrize(
  "broken, message",
  [
    (TWO_JOINTS.replace("CHANNELS 3 X", "CHANNELS 2 X"), "CHANNELS says 2 but lists 3"),
    (TWO_JOINTS.replace("OFFSET 10 0 0", "OFFSET 10 0"), "OFFSET needs 3 numbers"),
    (TWO_JOINTS.replace("Frames: 2", "Frames: 3"), "header says 3 frames but 2 rows"),
    (TWO_JOINTS.replace("1 2 3 90", "1 2 3 x"), "non-number"),
    (TWO_JOINTS.replace("0 90 0\n", "0 90\n"), "motion rows need 9 values"),
    (TWO_JOINTS.replace("Yrotation Xrotation Z", "Wrotation Xrotation Z"), "unknown channel"),
    (TWO_JOINTS.split("MOTION")[0], "no MOTION section"),
    ("hello\n", "expected HIERARCHY or ROOT"),
    (TWO_JOINTS.replace("Frame Time: 0.04", "Frame Time: 0"), "Frame Time must be positive"),
  ],
)
def test_malformed_files_raise_naming_file_and_problem(tmp_path, broken, message):
  path = tmp_path / "broken.bvh"
  path.write_text(broken)
  with pytest.raises(bvh.BvhError, match=message) as info:
    bvh.read_bvh(path)
  assert "broken.bvh" in str(info.value)


def test_cmu_daz_file(shared_data_dir):
  b = bvh.read_bvh(shared_data_dir / "cmu_mocap" / "07" / "07_01.bvh")
  assert b.num_joints == 43 and b.motion.shape[1] == 132
  assert b.fps == pytest.approx(30.0, rel=1e-4)
  assert b.channels[0] == (
    "Xposition",
    "Yposition",
    "Zposition",
    "Zrotation",
    "Yrotation",
    "Xrotation",
  )
  _, pos = b.forward_kinematics()
  rest = pos[0]
  # Frame 0 is a T-pose: arms horizontal (hand at shoulder height), left at +X, Y up.
  for side in "lr":
    hand, shoulder = rest[b.index(f"{side}Hand")], rest[b.index(f"{side}Shldr")]
    assert abs(hand[1] - shoulder[1]) < 6.0 and abs(hand[0] - shoulder[0]) > 40.0
  assert rest[b.index("lShldr"), 0] > rest[b.index("rShldr"), 0]
  assert rest[b.index("head"), 1] - rest[b.index("lFoot"), 1] == pytest.approx(141, abs=3)
