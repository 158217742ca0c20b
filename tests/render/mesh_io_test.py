"""OBJ / PLY export round-trips (read back with the readers and, for PLY, with a raw parse)."""

import numpy as np
import pytest

from jhmr.render import mesh_io


def _mesh(seed=0):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(50, 3)).astype(np.float32)
  f = rng.integers(0, 50, size=(80, 3)).astype(np.int32)
  return v, f


def test_obj_round_trip(tmp_path):
  v, f = _mesh()
  path = mesh_io.export_obj(tmp_path / "sub" / "m.obj", v, f)
  v2, f2 = mesh_io.read_obj(path)
  np.testing.assert_allclose(v2, v, atol=1e-6)
  np.testing.assert_array_equal(f2, f)


def test_obj_reader_handles_quads_and_slashes(tmp_path):
  path = tmp_path / "q.obj"
  path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1 4//1\n")
  v, f = mesh_io.read_obj(path)
  assert v.shape == (4, 3)
  np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("with_colors", [True, False])
def test_ply_round_trip(tmp_path, binary, with_colors):
  v, f = _mesh(1)
  colors = np.random.default_rng(2).integers(0, 256, (50, 3)).astype(np.uint8)
  path = mesh_io.export_ply(tmp_path / "m.ply", v, f, colors if with_colors else None, binary)
  v2, f2, c2 = mesh_io.read_ply(path)
  np.testing.assert_allclose(v2, v, atol=0 if binary else 1e-6)
  np.testing.assert_array_equal(f2, f)
  if with_colors:
    np.testing.assert_array_equal(c2, colors)
  else:
    assert c2 is None
  raw = path.read_bytes()
  assert raw.startswith(b"ply\nformat " + (b"binary_little_endian" if binary else b"ascii"))
  if binary:  # the body is exactly V * (12 [+3]) + F * 13 bytes after the header
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n") :]
    assert len(body) == 50 * (12 + 3 * with_colors) + 80 * 13


def test_float_colors_and_bad_input(tmp_path):
  v, f = _mesh(3)
  path = mesh_io.export_ply(tmp_path / "c.ply", v, f, np.full((50, 3), 0.5))
  assert np.all(mesh_io.read_ply(path)[2] == 128)
  with pytest.raises(ValueError, match="face indices"):
    mesh_io.export_obj(tmp_path / "bad.obj", v, f + 100)
  with pytest.raises(ValueError, match="colors"):
    mesh_io.export_ply(tmp_path / "bad.ply", v, f, np.zeros((3, 3)))
  (tmp_path / "x.ply").write_bytes(b"not a ply")
  with pytest.raises(ValueError, match="not a PLY"):
    mesh_io.read_ply(tmp_path / "x.ply")
