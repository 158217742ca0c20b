"""The body demo runs end to end on the tiny body and writes sensible images and a mesh."""

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from jhmr.body import io as body_io
from jhmr.data import poses
from jhmr.pipelines import body_demo
from jhmr.render import mesh_io

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # the `configs` package


def _tiny_config():
  from configs import body_demo as body_demo_config

  return body_demo_config.get_config("tiny")


def test_body_demo_tiny(tmp_path, capsys):
  config = _tiny_config()
  try:
    model = body_io.load_body_model(config.body_model)
  except (FileNotFoundError, ValueError) as e:
    pytest.skip(f"tiny body asset not available: {e}")
  out = body_demo.run(config, str(tmp_path))
  size = config.image_size
  assert [p.name for p in out["images"]] == [f"pose_{n}.png" for n in config.poses]
  for path in out["images"]:
    img = np.asarray(Image.open(path))
    assert img.shape == (size, size, 3)
    assert (img < 250).any(axis=-1).mean() > 0.05  # something other than the white background
  grid = np.asarray(Image.open(out["grid"]))
  assert grid.shape == (size, size * len(config.poses), 3)
  for name, frac in out["coverage"].items():
    assert 0.05 < frac < 0.8, (name, frac)  # the body is framed, not clipped or tiny
  v, f = mesh_io.read_obj(out["mesh"])
  assert v.shape == (model.num_vertices, 3)
  np.testing.assert_array_equal(f, np.asarray(model.faces))
  assert out["rest_joints"].shape == (24, 3)
  printed = capsys.readouterr().out
  assert "left_shoulder" in printed and "pelvis" in printed


def test_pose_parameters_and_unknown_pose():
  names = tuple(f"j{i}" for i in range(24))
  names = ("pelvis", *names[1:16], "left_shoulder", "right_shoulder", *names[18:])
  go, bp = poses.pose_parameters(("t_pose", "arms_down"), names, yaw=0.5)
  assert go.shape == (2, 3) and bp.shape == (2, 23, 3)
  np.testing.assert_allclose(go, [[0.0, 0.5, 0.0]] * 2)
  assert not bp[0].any()
  np.testing.assert_allclose(bp[1, 15], poses.DEMO_POSES["arms_down"]["left_shoulder"])
  with pytest.raises(ValueError, match="unknown demo pose"):
    poses.pose_parameters(("moonwalk",), names)
