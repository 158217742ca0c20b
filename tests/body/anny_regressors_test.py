"""Tests of the PCA / NNLS / joint-set helpers used to derive the Anny assets (numpy only)."""

import numpy as np
import pytest

from jhmr.body import anny_regressors as regs


def test_shape_space_recovers_a_planted_low_rank_space():
  rng = np.random.default_rng(0)
  v, k, n = 60, 3, 400
  mean = rng.normal(size=(v, 3))
  basis = rng.normal(size=(v, 3, k))
  betas = rng.normal(size=(n, k)) * np.array([3.0, 2.0, 1.0])
  bodies = mean + np.einsum("vck,nk->nvc", basis, betas)
  space = regs.fit_shape_space(bodies, num_betas=k)
  np.testing.assert_allclose(space.explained[-1], 1.0, atol=1e-12)
  recon = space.reconstruct(space.project(bodies))
  np.testing.assert_allclose(recon, bodies, atol=1e-9)
  np.testing.assert_allclose(space.project(bodies).std(axis=0, ddof=1), 1.0, atol=1e-9)
  # Sign convention: a positive beta raises the top vertex relative to the bottom one.
  top, bottom = np.argmax(space.mean[:, 1]), np.argmin(space.mean[:, 1])
  assert np.all(space.shapedirs[top, 1] - space.shapedirs[bottom, 1] >= 0)
  flipped = regs.fit_shape_space(bodies * np.array([1.0, -1.0, 1.0]), num_betas=k)
  top, bottom = np.argmax(flipped.mean[:, 1]), np.argmin(flipped.mean[:, 1])
  assert np.all(flipped.shapedirs[top, 1] - flipped.shapedirs[bottom, 1] >= 0)
  with pytest.raises(ValueError, match="more than"):
    regs.fit_shape_space(bodies[:3], num_betas=3)


def test_convex_regressor_recovers_planted_weights():
  rng = np.random.default_rng(1)
  bodies = rng.normal(size=(200, 30, 3))
  true = np.zeros(30)
  true[[3, 7, 11]] = [0.5, 0.3, 0.2]
  targets = np.einsum("v,nvc->nc", true, bodies)
  row = regs.fit_convex_regressor(bodies, targets, candidates=np.arange(0, 20))
  np.testing.assert_allclose(row, true, atol=1e-6)
  # Outside the candidates nothing gets weight, and the row stays convex.
  row = regs.fit_convex_regressor(bodies, targets, candidates=np.array([3, 7, 12, 13]))
  assert row.min() >= 0 and row.sum() == pytest.approx(1.0) and row[11] == 0


def test_surface_regressors_reach_interior_points():
  rng = np.random.default_rng(2)
  # Points on spheres of random radius and centre; the keypoint lies inside, half-way from the
  # centre to the +X pole (as COCO hips lie inside the body).
  direction = rng.normal(size=(300, 3))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  radius = rng.uniform(0.05, 0.08, size=(100, 1, 1))
  centre = rng.normal(scale=0.01, size=(100, 1, 3))
  bodies = centre + radius * direction
  target = centre + 0.5 * radius * np.array([1.0, 0.0, 0.0])
  rows = regs.fit_surface_regressors(bodies, target, min_candidates=8)
  np.testing.assert_allclose(np.einsum("kv,nvc->nkc", rows, bodies), target, atol=1e-4)
  assert rows.min() >= 0 and rows.sum() == pytest.approx(1.0)
  # The 8 nearest vertices alone all sit on the +X cap and cannot reach inside.
  nearest = regs.nearest_vertices(bodies.mean(0), target.mean(0)[0], 8)
  one_sided = regs.fit_convex_regressor(bodies, target[:, 0], nearest)
  assert np.abs(np.einsum("v,nvc->nc", one_sided, bodies) - target[:, 0]).max() > 0.005


def test_joint_sets_definitions_and_assembly():
  v = 40
  regressors = {name: np.eye(v)[i] for i, name in enumerate(regs.COCO17)}
  regressors |= {n: np.eye(v)[30 + i] for i, n in enumerate(["left_big_toe", "left_small_toe"])}
  regressors |= {n: np.eye(v)[32 + i] for i, n in enumerate(["left_heel", "right_big_toe"])}
  regressors |= {n: np.eye(v)[34 + i] for i, n in enumerate(["right_small_toe", "right_heel"])}
  regressors["head_top"] = np.eye(v)[39]
  expected = {
    "openpose25": regs.OPENPOSE25,
    "coco17": regs.COCO17,
    "h36m17": regs.H36M17,
    "lsp14": regs.LSP14,
  }
  rng = np.random.default_rng(3)
  joints, verts = rng.normal(size=(2, 24, 3)), rng.normal(size=(2, v, 3))
  for name, names in expected.items():
    js = regs.build_joint_set(name, v, regressors)
    assert tuple(js.names) == names
    np.testing.assert_allclose(js.from_joints.sum(1) + js.from_vertices.sum(1), 1.0)
    kp = regs.apply_joint_set(js, joints, verts)
    assert kp.shape == (2, len(names), 3)
  op = regs.build_joint_set("openpose25", v, regressors)
  kp = regs.apply_joint_set(op, joints, verts)
  np.testing.assert_allclose(kp[:, regs.OPENPOSE25.index("MidHip")], joints[:, 0])
  np.testing.assert_allclose(kp[:, regs.OPENPOSE25.index("RWrist")], joints[:, 21])
  np.testing.assert_allclose(kp[:, regs.OPENPOSE25.index("Nose")], verts[:, 0])
  h36m = regs.apply_joint_set(regs.build_joint_set("h36m17", v, regressors), joints, verts)
  np.testing.assert_allclose(h36m[:, 0], 0.5 * (joints[:, 1] + joints[:, 2]))
  np.testing.assert_allclose(h36m[:, 10], 0.5 * (joints[:, 15] + verts[:, 39]))
