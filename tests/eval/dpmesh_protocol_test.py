"""Tests of jhmr.eval.dpmesh_protocol: subsets, 14-joint metrics, visibility split, table."""

import json
import pathlib

import numpy as np
import pytest

from jhmr.errors import InputError
from jhmr.eval import dpmesh_protocol as dp

V = 40  # a toy mesh


def _setup(seed=0):
  """A toy mesh whose first 17 vertices are the H36M joints (one-hot regressor) and whose vertex
  20 is the "SMPL pelvis"."""
  rng = np.random.default_rng(seed)
  gt = rng.normal(size=(1, V, 3)) * 0.3
  h36m = np.zeros((17, V))
  h36m[np.arange(17), np.arange(17)] = 1.0
  smpl = np.zeros((24, V))
  smpl[0, 20] = 1.0
  smpl[1:, 21] = 1.0
  return gt, h36m, smpl


def test_constants_are_dpmeshs():
  assert dp.H36M_EVAL_JOINTS == (1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 14, 15, 16)
  assert dp.H36M_ROOT == 0 and dp.H36M_JOINT_NAMES[0] == "Pelvis"
  assert dp.SUBSETS["3dpw"].file == "3DPW_latest_test.json"
  assert dp.SUBSETS["3dpw-oc"].file == "3DPW_oc.json"
  assert dp.SUBSETS["3dpw-pc"].file == "3DPW_pc.json"
  crowd = dp.SUBSETS["3dpw-crowd"]
  assert crowd.split == "validation" and crowd.file is None
  assert set(crowd.sequences) == {"courtyard_hug_00", "courtyard_dancing_00"}
  assert {s.split for n, s in dp.SUBSETS.items() if n != "3dpw-crowd"} == {"test"}


def test_translation_and_joint_selection():
  gt, h36m, smpl = _setup()
  # a global shift vanishes from every metric (pelvis / SMPL-pelvis centring)
  out = dp.evaluate(gt + [1.0, -2.0, 3.0], gt, h36m, smpl_regressor=smpl)
  for key in ("mpjpe", "pa_mpjpe", "mpvpe"):
    np.testing.assert_allclose(out[key], 0.0, atol=1e-3)
  # 14 mm on one evaluated joint (L_Wrist, 13) -> MPJPE 1 mm
  pred = gt.copy()
  pred[0, 13, 0] += 0.014
  np.testing.assert_allclose(dp.evaluate(pred, gt, h36m, smpl_regressor=smpl)["mpjpe"], 1.0, 1e-4)
  # joints outside the 14 (Torso 7, Nose 9) do not count
  pred = gt.copy()
  pred[0, 7] += 0.5
  pred[0, 9] += 0.5
  out = dp.evaluate(pred, gt, h36m, smpl_regressor=smpl)
  np.testing.assert_allclose(out["mpjpe"], 0.0, atol=1e-3)
  np.testing.assert_allclose(out["pa_mpjpe"], 0.0, atol=1e-3)
  # moving only the H36M pelvis by 20 mm moves all 14 centred joints by 20 mm
  pred = gt.copy()
  pred[0, 0, 2] += 0.020
  np.testing.assert_allclose(dp.evaluate(pred, gt, h36m, smpl_regressor=smpl)["mpjpe"], 20.0, 1e-4)


def test_mpvpe_is_centred_on_the_smpl_pelvis_not_the_h36m_one():
  gt, h36m, smpl = _setup()
  # moving the SMPL pelvis vertex (20) by 40 mm shifts the other V-1 vertices by 40 mm
  pred = gt.copy()
  pred[0, 20, 1] += 0.040
  out = dp.evaluate(pred, gt, h36m, smpl_regressor=smpl)
  np.testing.assert_allclose(out["mpvpe"], 40.0 * (V - 1) / V, rtol=1e-4)
  np.testing.assert_allclose(out["mpjpe"], 0.0, atol=1e-3)
  # moving the H36M pelvis vertex (0) only moves that vertex for MPVPE; [V] regressor accepted
  pred = gt.copy()
  pred[0, 0, 1] += 0.040
  out = dp.evaluate(pred, gt, h36m, smpl_regressor=smpl[0])
  np.testing.assert_allclose(out["mpvpe"], 40.0 / V, rtol=1e-4)


def test_pa_mpjpe_removes_a_similarity():
  gt, h36m, smpl = _setup()
  a = np.radians(40)
  rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  out = dp.evaluate(1.3 * gt @ rot.T + 0.2, gt, h36m, smpl_regressor=smpl)
  np.testing.assert_allclose(out["pa_mpjpe"], 0.0, atol=1e-2)
  assert float(out["mpjpe"][0]) > 50.0 and float(out["mpvpe"][0]) > 50.0


def test_visible_invisible_split_on_a_hand_built_mask():
  gt, h36m, smpl = _setup()
  pred = gt.copy()
  # eval joints in order: H36M 1,2,3,4,5,6,8,10,11,12,13,14,15,16; offsets on H36M 1 and 16
  pred[0, 1, 0] += 0.010  # eval position 0: visible
  pred[0, 16, 0] += 0.030  # eval position 13: invisible
  vis = np.ones((1, 14), bool)
  vis[0, [7, 13]] = False  # Head_top and R_Wrist invisible
  out = dp.evaluate(pred, gt, h36m, vis, smpl_regressor=smpl)
  np.testing.assert_allclose(out["mpjpe_visible"], 10.0 / 12, rtol=1e-4)
  np.testing.assert_allclose(out["mpjpe_invisible"], 30.0 / 2, rtol=1e-4)
  np.testing.assert_allclose(out["mpjpe"], 40.0 / 14, rtol=1e-4)
  # the same mask in H36M-17 order gives the same split
  vis17 = np.ones((1, 17), bool)
  vis17[0, [10, 16]] = False
  out17 = dp.evaluate(pred, gt, h36m, vis17, smpl_regressor=smpl)
  np.testing.assert_allclose(out17["mpjpe_invisible"], out["mpjpe_invisible"], rtol=1e-6)
  # PA split: alignment on all 14 joints, then masked means that recombine to PA-MPJPE
  pa = out["pa_mpjpe_visible"] * 12 / 14 + out["pa_mpjpe_invisible"] * 2 / 14
  np.testing.assert_allclose(pa, out["pa_mpjpe"], rtol=1e-4)
  # no invisible joint -> NaN there, skipped by summarize
  both = dp.evaluate(
    np.concatenate([pred, pred]),
    np.concatenate([gt, gt]),
    h36m,
    np.concatenate([vis, np.ones((1, 14), bool)]),
    smpl_regressor=smpl,
  )
  assert np.isnan(both["mpjpe_invisible"][1])
  summary = dp.summarize(both)
  assert summary["n"] == 2
  np.testing.assert_allclose(summary["mpjpe_invisible"], 15.0, rtol=1e-4)
  np.testing.assert_allclose(summary["mpjpe_visible"], (10 / 12 + 40 / 14) / 2, rtol=1e-4)


def test_visible_joints_from_openpose_and_coco():
  kp = np.zeros((18, 3))
  kp[:, :2] = 100.0
  kp[:, 2] = 0.9
  kp[9, 2] = 0.05  # RKnee at the threshold -> invisible (conf must exceed 0.05)
  kp[5, :2] = [300.0, 10.0]  # LShoulder outside a 256 crop
  vis = dp.visible_joints(kp, "openpose18", crop_size=256)
  expect = np.ones(14, bool)
  expect[[1, 7, 8]] = False  # R_Knee, Head_top (never), L_Shoulder (outside)
  np.testing.assert_array_equal(vis, expect)
  assert dp.visible_joints(kp, "openpose18")[8]  # no crop check -> shoulder visible
  coco = np.zeros((17, 3))
  coco[:, :2] = 50.0
  coco[:, 2] = 0.8
  coco[6, 2] = 0.05  # RShoulder low -> Neck (0.8 * 0.05) and R_Shoulder invisible
  vis = dp.visible_joints(coco[None], "coco17")[0]
  expect = np.ones(14, bool)
  expect[[6, 7, 11]] = False
  np.testing.assert_array_equal(vis, expect)


def _write(path, obj):
  path.write_text(json.dumps(obj))
  return path


def _rows():
  rows = []
  for seq in ("office_phone_00", "courtyard_hug_00", "downtown_walk_00"):
    for t in range(3):
      for actor in (0, 1):
        rows.append({"sequence": seq.encode(), "image_file": f"image_{t:05d}.jpg", "actor": actor})
  return rows


def test_select_subset_from_documented_json_layout(tmp_path):
  rows = _rows()
  # COCO-style: images (id, sequence, file_name), annotations one person each (image_id,
  # person_id); file_name prefixed by the sequence folder
  _write(
    tmp_path / "3DPW_oc.json",
    {
      "images": [
        {"id": 7, "sequence": "office_phone_00", "file_name": "office_phone_00/image_00001.jpg"},
        {"id": 8, "sequence": "downtown_walk_00", "file_name": "image_00002.jpg"},
        {"id": 9, "sequence": "downtown_walk_00", "file_name": "image_00000.jpg"},
      ],
      "annotations": [
        {"id": 1, "image_id": 7, "person_id": 1},
        {"id": 2, "image_id": 8, "person_id": 0},
        {"id": 3, "image_id": 8, "person_id": 1},
      ],
    },
  )
  got = [
    (r["sequence"].decode(), r["image_file"], r["actor"])
    for r in (rows[i] for i in dp.select_subset(rows, "3dpw-oc", tmp_path))
  ]
  assert got == [
    ("office_phone_00", "image_00001.jpg", 1),
    ("downtown_walk_00", "image_00002.jpg", 0),
    ("downtown_walk_00", "image_00002.jpg", 1),
  ]  # image id 9 has no annotation -> nothing
  # annotations without person_id keep every actor; rows may give frame_index instead of a file
  _write(
    tmp_path / "3DPW_pc.json",
    {
      "images": [{"id": 0, "sequence": "courtyard_hug_00", "file_name": "image_00002.jpg"}],
      "annotations": [{"id": 5, "image_id": 0}],
    },
  )
  frame_rows = [{"sequence": "courtyard_hug_00", "frame_index": 2, "actor": a} for a in (0, 1)]
  assert list(dp.select_subset(frame_rows, "3dpw-pc", tmp_path)) == [0, 1]
  # the crowd subset needs no file: two validation sequences
  crowd = dp.select_subset(rows, "3dpw-crowd")
  assert {rows[i]["sequence"] for i in crowd} == {b"courtyard_hug_00"} and len(crowd) == 6


def test_bad_subset_files_are_named(tmp_path):
  rows = _rows()
  with pytest.raises(InputError, match="3DPW_latest_test.json"):
    dp.select_subset(rows, "3dpw", tmp_path)
  with pytest.raises(InputError, match="3DPW_oc.json.*JSON"):
    (tmp_path / "3DPW_oc.json").write_text("{not json")
    dp.select_subset(rows, "3dpw-oc", tmp_path)
  _write(tmp_path / "3DPW_pc.json", {"images": [{"id": 0, "file_name": "image_00000.jpg"}]})
  with pytest.raises(InputError, match=r"3DPW_pc.json.*images\[0\].*sequence"):
    dp.select_subset(rows, "3dpw-pc", tmp_path)
  _write(tmp_path / "3DPW_pc.json", [1, 2])
  with pytest.raises(InputError, match="3DPW_pc.json.*'images'"):
    dp.select_subset(rows, "3dpw-pc", tmp_path)
  _write(
    tmp_path / "3DPW_pc.json",
    {
      "images": [{"id": 0, "sequence": "a", "file_name": "image_00000.jpg"}],
      "annotations": [{"image_id": 3}],
    },
  )
  with pytest.raises(InputError, match=r"3DPW_pc.json.*annotations\[0\]"):
    dp.select_subset(rows, "3dpw-pc", tmp_path)
  with pytest.raises(InputError, match="unknown DPMesh subset"):
    dp.select_subset(rows, "3dpw-xx", tmp_path)
  with pytest.raises(InputError, match="manual_dir"):
    dp.select_subset(rows, "3dpw-oc")


def test_free_body_vertex_regressor_and_table():
  # keypoint = 0.5 joint0 + 0.5 vertex 2, joint0 = mean of vertices 0 and 1
  j_reg = np.zeros((24, 3))
  j_reg[0, :2] = 0.5
  from_joints = np.zeros((1, 24))
  from_joints[0, 0] = 0.5
  from_vertices = np.array([[0.0, 0.0, 0.5]])
  np.testing.assert_allclose(
    dp.vertex_regressor(from_joints, from_vertices, j_reg), [[0.25, 0.25, 0.5]]
  )
  row = {"subset": "3dpw-oc", "n": 3, "mpjpe": 70.04, "pa_mpjpe": 45.0, "mpvpe": float("nan")}
  table = dp.format_table([row], "free")
  assert "| 3dpw-oc | 3 | 70.0 | 45.0 | - | - |" in table
  assert "free body model" in table and "not comparable" in table
  assert "gendered" in dp.format_table([row], "smpl_gendered")
  with pytest.raises(ValueError):
    dp.format_table([row], "")


def test_crowd_sequences_match_the_builder_and_free_body_h36m():
  from jhmr.body import io as body_io
  from jhmr.data.threedpw import threedpw_dataset_builder as builder

  assert dp.CROWD_SEQUENCES == builder.CROWD_SEQUENCES
  arrays = body_io.read_npz(pathlib.Path(body_io.__file__).parent / "assets" / "anny_smpl_tiny.npz")
  assert list(arrays["joint_set.h36m17.names"])[:1] == ["Pelvis"]
  reg = dp.vertex_regressor(
    arrays["joint_set.h36m17.from_joints"],
    arrays["joint_set.h36m17.from_vertices"],
    arrays["J_regressor"],
  )
  assert reg.shape == (17, arrays["v_template"].shape[0])
  np.testing.assert_allclose(reg.sum(axis=1), 1.0, atol=1e-5)  # moves rigidly with the mesh
  mesh = arrays["v_template"][None]
  out = dp.evaluate(mesh + 0.1, mesh, reg, smpl_regressor=arrays["J_regressor"])
  np.testing.assert_allclose(out["mpvpe"], 0.0, atol=1e-3)
