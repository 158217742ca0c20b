"""Fixtures for the guidance tests: a tiny SMPL-format body model with an OpenPose-25 set."""

import numpy as np
import pytest

from jhmr.body.joints import SMPL_PARENTS
from jhmr.body.smpl import build_body_model

# Rough SMPL rest joints (metres, Y up, facing +Z).
REST_JOINTS = np.array(
  [
    [0, 0, 0],
    [0.06, -0.09, 0],
    [-0.06, -0.09, 0],
    [0, 0.11, 0],
    [0.1, -0.47, 0],
    [-0.1, -0.47, 0],
    [0, 0.25, 0],
    [0.09, -0.87, -0.04],
    [-0.09, -0.87, -0.04],
    [0, 0.3, 0],
    [0.12, -0.93, 0.1],
    [-0.12, -0.93, 0.1],
    [0, 0.51, 0],
    [0.08, 0.42, 0],
    [-0.08, 0.42, 0],
    [0, 0.6, 0.05],
    [0.18, 0.45, 0],
    [-0.18, 0.45, 0],
    [0.43, 0.43, 0],
    [-0.43, 0.43, 0],
    [0.68, 0.43, 0],
    [-0.68, 0.43, 0],
    [0.76, 0.43, 0],
    [-0.76, 0.43, 0],
  ],
  np.float64,
)
# OpenPose BODY_25 order, each keypoint from one SMPL joint (vertex-based ones marked -1).
OPENPOSE_FROM_SMPL = [
  -1,
  12,
  17,
  19,
  21,
  16,
  18,
  20,
  0,
  2,
  5,
  8,
  1,
  4,
  7,
  -1,
  -1,
  -1,
  -1,
  10,
  10,
  7,
  11,
  11,
  8,
]


def make_tiny_body(seed=0, per_joint=4, num_betas=4):
  rng = np.random.default_rng(seed)
  v = np.repeat(REST_JOINTS, per_joint, axis=0) + 0.03 * rng.normal(size=(24 * per_joint, 3))
  nv = v.shape[0]
  owner = np.repeat(np.arange(24), per_joint)
  weights = np.zeros((nv, 24))
  weights[np.arange(nv), owner] = 0.8
  parent = np.array([max(SMPL_PARENTS[j], 0) for j in owner])
  weights[np.arange(nv), parent] += 0.2
  j_reg = np.zeros((24, nv))
  j_reg[owner, np.arange(nv)] = 1.0 / per_joint
  from_joints = np.zeros((25, 24))
  from_vertices = np.zeros((25, nv))
  for k, j in enumerate(OPENPOSE_FROM_SMPL):
    if j >= 0:
      from_joints[k, j] = 1.0
    else:  # head-ish vertices for the nose, eyes and ears
      ids = rng.choice(np.flatnonzero(owner == 15), 2, replace=False)
      from_vertices[k, ids] = 0.5
  faces = np.stack([np.arange(nv - 2), np.arange(1, nv - 1), np.arange(2, nv)], -1)
  arrays = {
    "v_template": v,
    "f": faces.astype(np.int32),
    "shapedirs": 0.02 * rng.normal(size=(nv, 3, num_betas)),
    "posedirs": 0.005 * rng.normal(size=(nv, 3, 207)),
    "J_regressor": j_reg,
    "weights": weights,
    "joint_set.openpose25.names": np.array([f"op{k}" for k in range(25)]),
    "joint_set.openpose25.from_joints": from_joints,
    "joint_set.openpose25.from_vertices": from_vertices,
  }
  return build_body_model(arrays)


@pytest.fixture(scope="session")
def tiny_body():
  return make_tiny_body()
