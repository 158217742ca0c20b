"""Tests of jhmr.eval.paper: ScoreHMR's joint sets, pelvis, metrics with known answers, table."""

import numpy as np

from jhmr.eval import paper


def test_joint_sets_and_pelvis_are_the_papers():
  assert paper.PELVIS == 39 and paper.NUM_OUTPUT_JOINTS == 44
  assert paper.JOINTS_14 == (25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 43)
  assert paper.JOINTS_17 == paper.JOINTS_14 + (39, 41, 42)
  assert paper.DATASET_JOINTS["mannequin"] == paper.JOINTS_17
  assert paper.DATASET_JOINTS["3dpw"] == paper.DATASET_JOINTS["h36m_multiview"] == paper.JOINTS_14


def _target():
  return np.random.default_rng(0).normal(size=(1, 44, 3)) * 0.3


def test_mpjpe_known_answers():
  target = _target()
  # a global shift is removed by the pelvis centring
  err = paper.joint_errors(target + [1.0, 2.0, 3.0], target)
  np.testing.assert_allclose(err["mpjpe"], 0.0, atol=1e-3)
  # one of the 14 joints 14 mm off -> MPJPE 1 mm; a joint outside the set does not count
  pred = target.copy()
  pred[0, 25, 0] += 0.014
  pred[0, 10] += 5.0
  np.testing.assert_allclose(paper.joint_errors(pred, target)["mpjpe"], 1.0, rtol=1e-4)
  # with 17 joints: 17 mm on joint 41 -> 1 mm
  pred = target.copy()
  pred[0, 41, 1] += 0.017
  np.testing.assert_allclose(
    paper.joint_errors(pred, target, paper.JOINTS_17)["mpjpe"], 1.0, rtol=1e-4
  )
  # moving only the pelvis by 20 mm moves every centred joint of the 14 by 20 mm
  pred = target.copy()
  pred[0, 39, 2] += 0.020
  np.testing.assert_allclose(paper.joint_errors(pred, target)["mpjpe"], 20.0, rtol=1e-4)


def test_pa_mpjpe_known_answers():
  target = _target()
  a = np.radians(30)
  rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
  pred = 1.7 * target @ rot.T + [0.3, -0.2, 4.0]
  err = paper.joint_errors(pred, target)
  np.testing.assert_allclose(err["pa_mpjpe"], 0.0, atol=1e-3)
  assert float(err["mpjpe"][0]) > 50.0
  # a non-rigid error survives the alignment
  pred = target.copy()
  pred[0, 30] += [0.05, 0.0, 0.0]
  err = paper.joint_errors(pred, target)
  assert float(err["pa_mpjpe"][0]) > 1.0 and float(err["mpjpe"][0]) > 1.0


def test_acceleration_error_known_answer():
  t = np.arange(5, dtype=np.float64)
  target = np.zeros((5, 44, 3))
  pred = target.copy()
  pred[:, 25, 0] = 0.5 * 0.014 * t**2  # constant acceleration 14 mm/frame^2 on one of 14 joints
  np.testing.assert_allclose(paper.acceleration_error(pred, target), 1.0, rtol=1e-4)


def test_table_has_the_papers_columns_and_numbers():
  assert [r.key for r in paper.PAPER_TABLE] == [
    "keypoints_3dpw",
    "keypoints_emdb",
    "multiview_h36m",
    "multiview_mannequin",
    "video_3dpw",
    "video_emdb",
  ]
  assert paper.PAPER_ROWS["multiview_h36m"].scorehmr == (44.7, 29.0)
  assert paper.PAPER_ROWS["video_3dpw"].hmr2b == (54.3, 17.3)
  rows = paper.table_rows(
    "video_3dpw",
    {"pa_mpjpe": 60.0, "accel": 20.0},
    {"pa_mpjpe": 55.0, "accel": 12.0},
    frames=10,
    seconds=2.0,
  )
  assert [r["metric"] for r in rows] == ["pa_mpjpe", "accel"]
  assert rows[1]["paper ScoreHMR"] == 11.1 and rows[0]["frames/s"] == 5.0
  text = paper.format_markdown(rows)
  assert text.splitlines()[0] == "| " + " | ".join(paper.TABLE_COLUMNS) + " |"
