"""Tests of jhmr.io.bvh_export: a written BVH read back with jhmr's reader gives the track."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import jhmr
from jhmr.data import bvh as bvh_lib
from jhmr.geometry import rotations
from jhmr.io import bvh_export

T = 5
FPS = 30.0


@pytest.fixture(scope="module")
def model():
  return jhmr.load_body_model("anny-tiny")


@pytest.fixture(scope="module")
def track():
  rng = np.random.default_rng(1)
  betas = rng.normal(size=10).astype(np.float32)
  global_orient = rng.normal(scale=0.8, size=(T, 3))
  body_pose = rng.normal(scale=0.5, size=(T, 23, 3))
  transl = rng.normal(scale=0.5, size=(T, 3))
  return betas, global_orient, body_pose, transl


@pytest.mark.parametrize("order", ["ZXY", "XYZ"])
def test_bvh_round_trip(tmp_path, model, track, order):
  path = tmp_path / "track.bvh"
  bvh_export.export_bvh(path, model, *track, fps=FPS, order=order)
  bvh = bvh_lib.read_bvh(path)
  betas, global_orient, body_pose, transl = track
  # The file is in depth-first order: map its joints back to the body model's by name.
  names = model.joint_names_smpl
  assert sorted(bvh.names) == sorted(names)
  of = np.array([bvh.index(n) for n in names])
  for k in range(1, 24):
    assert bvh.names[bvh.parents[of[k]]] == names[model.parents[k]]
  assert bvh.parents[of[0]] == -1
  assert bvh.num_frames == T
  assert bvh.fps == pytest.approx(FPS, rel=1e-5)
  # Euler channels -> matrices (scipy, independently of the reader) == the input rotations.
  offsets = bvh.channel_offsets()
  aa = np.concatenate([global_orient[:, None], body_pose], axis=1)
  expected = np.asarray(rotations.axis_angle_to_matrix(aa.astype(np.float32)), np.float64)
  for k, j in enumerate(of):
    chans = bvh.channels[j]
    rot_cols = [offsets[j] + i for i, c in enumerate(chans) if c.endswith("rotation")]
    axes = "".join(c[0] for c in chans if c.endswith("rotation"))
    assert axes == order
    mats = Rotation.from_euler(axes, bvh.motion[:, rot_cols], degrees=True).as_matrix()
    np.testing.assert_allclose(mats, expected[:, k], atol=1e-4)
  np.testing.assert_allclose(bvh.local_rotations()[:, of], expected, atol=1e-4)
  # Root: OFFSET = rest pelvis of these betas, position channels = transl.
  rest = np.asarray(model.joints_only(betas, np.zeros((23, 3)), np.zeros(3)).joints, np.float64)
  np.testing.assert_allclose(bvh.offsets[of[0]], rest[0], atol=1e-5)
  np.testing.assert_allclose(bvh.motion[:, offsets[of[0]] : offsets[of[0]] + 3], transl, atol=1e-5)
  # Forward kinematics of the file == jhmr's posed joints.
  _, pos = bvh.forward_kinematics()
  posed = np.asarray(model.joints_only(betas, body_pose, global_orient, transl).joints)
  np.testing.assert_allclose(pos[:, of], posed, atol=1e-4)


def test_bvh_units_and_shape_checks(tmp_path, model, track):
  betas, global_orient, body_pose, transl = track
  cm = bvh_export.track_to_bvh(model, betas, global_orient, body_pose, transl, FPS, unit=100.0)
  m = bvh_export.track_to_bvh(model, betas, global_orient, body_pose, transl, FPS)
  np.testing.assert_allclose(cm.offsets, 100.0 * m.offsets, rtol=1e-9)
  with pytest.raises(ValueError, match="transl"):
    bvh_export.export_bvh(tmp_path / "x.bvh", model, betas, global_orient, body_pose, transl[:2])
  with pytest.raises(ValueError, match="betas"):
    bvh_export.export_bvh(tmp_path / "x.bvh", model, betas[None], global_orient, body_pose, transl)
