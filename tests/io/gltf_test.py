"""Tests of jhmr.io.gltf: the GLB is parsed back by an independent little reader here (numpy +
json + struct), checked against the validator rules a test can check, and re-skinned from the
file alone against jhmr's own skinning."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import jhmr
from jhmr.io import gltf

T = 4
FPS = 25.0
_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32}
_COMPONENTS[5126] = np.float32
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


class Glb:
  """A minimal GLB reader: the JSON document and accessors as numpy arrays."""

  def __init__(self, data: bytes):
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    self.doc = json.loads(data[20 : 20 + json_len].decode("utf-8"))
    offset = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<I4s", data, offset)
    assert bin_type == b"BIN\0" and bin_len % 4 == 0
    self.bin = data[offset + 8 : offset + 8 + bin_len]
    assert offset + 8 + bin_len == len(data)
    assert self.doc["buffers"][0]["byteLength"] <= bin_len

  def accessor(self, index: int) -> np.ndarray:
    acc = self.doc["accessors"][index]
    view = self.doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_COMPONENTS[acc["componentType"]]).newbyteorder("<")
    width = _WIDTH[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    assert "byteStride" not in view  # tightly packed
    count = acc["count"] * width
    assert acc.get("byteOffset", 0) + count * dtype.itemsize <= view["byteLength"]
    out = np.frombuffer(self.bin, dtype, count=count, offset=start)
    return out.reshape(acc["count"], width) if width > 1 else out


@pytest.fixture(scope="module")
def model():
  return jhmr.load_body_model("anny-tiny")


@pytest.fixture(scope="module")
def track():
  rng = np.random.default_rng(0)
  betas = rng.normal(size=10).astype(np.float32)
  global_orient = rng.normal(scale=0.5, size=(T, 3))
  body_pose = rng.normal(scale=0.4, size=(T, 23, 3))
  transl = rng.normal(scale=0.5, size=(T, 3)) + np.array([0.0, 0.2, 3.0])
  return betas, global_orient, body_pose, transl


def _export(tmp_path, model, track, **kwargs) -> Glb:
  path = tmp_path / "track.glb"
  gltf.export_glb(path, model, *track, fps=FPS, **kwargs)
  return Glb(path.read_bytes())


def _trs(translation, rotation) -> np.ndarray:
  m = np.eye(4)
  m[:3, :3] = Rotation.from_quat(np.asarray(rotation, np.float64)).as_matrix()  # xyzw
  m[:3, 3] = translation
  return m


def _reskin(glb: Glb, frame: int) -> tuple[np.ndarray, np.ndarray]:
  """Posed vertices `[V, 3]` and skin joint positions `[J, 3]` at keyframe `frame`, from the
  GLB alone."""
  doc = glb.doc
  nodes = doc["nodes"]
  trs = [
    [n.get("translation", [0.0, 0.0, 0.0]), n.get("rotation", [0.0, 0.0, 0.0, 1.0])] for n in nodes
  ]
  anim = doc["animations"][0]
  for ch in anim["channels"]:
    sampler = anim["samplers"][ch["sampler"]]
    assert sampler["interpolation"] == "LINEAR"
    times = glb.accessor(sampler["input"])
    value = glb.accessor(sampler["output"])
    key = int(np.argmin(np.abs(times - frame / FPS)))
    assert abs(times[key] - frame / FPS) < 1e-6
    slot = {"translation": 0, "rotation": 1}[ch["target"]["path"]]
    trs[ch["target"]["node"]][slot] = value[key]
  parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
  world: dict[int, np.ndarray] = {}

  def global_of(i: int) -> np.ndarray:
    if i not in world:
      local = _trs(*trs[i])
      world[i] = global_of(parent[i]) @ local if i in parent else local
    return world[i]

  mesh_node = next(n for n in nodes if "skin" in n)
  skin = doc["skins"][mesh_node["skin"]]
  ibm = glb.accessor(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
  skin_mats = np.stack([global_of(j) @ ibm[k] for k, j in enumerate(skin["joints"])])
  prim = doc["meshes"][mesh_node["mesh"]]["primitives"][0]
  pos = glb.accessor(prim["attributes"]["POSITION"]).astype(np.float64)
  joints = glb.accessor(prim["attributes"]["JOINTS_0"]).astype(np.int64)
  weights = glb.accessor(prim["attributes"]["WEIGHTS_0"]).astype(np.float64)
  blended = np.einsum("vk,vkab->vab", weights, skin_mats[joints])
  vertices = np.einsum("vab,vb->va", blended[:, :3, :3], pos) + blended[:, :3, 3]
  return vertices, np.stack([global_of(j)[:3, 3] for j in skin["joints"]])


def _truncated_model(model, glb: Glb):
  """The body model with the GLB's own 4 weights (dense) and no pose blend shapes."""
  doc = glb.doc
  prim = doc["meshes"][0]["primitives"][0]
  joints = glb.accessor(prim["attributes"]["JOINTS_0"]).astype(np.int64)
  weights = glb.accessor(prim["attributes"]["WEIGHTS_0"]).astype(np.float64)
  dense = np.zeros((joints.shape[0], 24))
  np.add.at(dense, (np.arange(joints.shape[0])[:, None], joints), weights)
  return model.replace(weights=np.asarray(dense, np.float32), posedirs=None)


def test_glb_container_and_validator_rules(tmp_path, model, track):
  glb = _export(tmp_path, model, track)
  doc = glb.doc
  assert doc["asset"]["version"] == "2.0"
  for view in doc["bufferViews"]:
    assert view.get("byteOffset", 0) % 4 == 0
    assert view["byteOffset"] + view["byteLength"] <= doc["buffers"][0]["byteLength"]
  for i, acc in enumerate(doc["accessors"]):
    assert acc.get("byteOffset", 0) % np.dtype(_COMPONENTS[acc["componentType"]]).itemsize == 0
    data = glb.accessor(i)
    assert data.shape[0] == acc["count"]
    if "min" in acc or "max" in acc:
      flat = data.reshape(acc["count"], -1)
      np.testing.assert_array_equal(np.array(acc["min"]), flat.min(0))
      np.testing.assert_array_equal(np.array(acc["max"]), flat.max(0))
      assert len(acc["min"]) == _WIDTH[acc["type"]]
  prim = doc["meshes"][0]["primitives"][0]
  attrs = prim["attributes"]
  acc = doc["accessors"]
  # Type rules of the spec's attribute table, and min/max where required.
  assert (
    acc[attrs["POSITION"]]["type"] == "VEC3" and acc[attrs["POSITION"]]["componentType"] == 5126
  )
  assert "min" in acc[attrs["POSITION"]] and "max" in acc[attrs["POSITION"]]
  assert acc[attrs["NORMAL"]]["type"] == "VEC3" and acc[attrs["NORMAL"]]["componentType"] == 5126
  np.testing.assert_allclose(np.linalg.norm(glb.accessor(attrs["NORMAL"]), axis=1), 1, atol=1e-5)
  assert acc[attrs["JOINTS_0"]]["type"] == "VEC4"
  assert acc[attrs["JOINTS_0"]]["componentType"] in (5121, 5123)
  assert acc[attrs["WEIGHTS_0"]]["type"] == "VEC4"
  assert acc[attrs["WEIGHTS_0"]]["componentType"] == 5126
  assert acc[prim["indices"]]["type"] == "SCALAR"
  assert acc[prim["indices"]]["componentType"] in (5123, 5125)
  num_v = model.num_vertices
  for name in attrs:
    assert acc[attrs[name]]["count"] == num_v
  assert doc["bufferViews"][acc[attrs["POSITION"]]["bufferView"]]["target"] == 34962
  assert doc["bufferViews"][acc[prim["indices"]]["bufferView"]]["target"] == 34963
  indices = glb.accessor(prim["indices"])
  np.testing.assert_array_equal(indices.reshape(-1, 3), np.asarray(model.faces))
  # Skin weights: 4 influences, non-negative, summing to 1, the model's strongest 4.
  weights = glb.accessor(attrs["WEIGHTS_0"]).astype(np.float64)
  joints = glb.accessor(attrs["JOINTS_0"]).astype(np.int64)
  assert weights.shape == joints.shape == (num_v, 4)
  assert (weights >= 0).all()
  np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
  assert (joints < 24).all()
  full = np.asarray(model.weights, np.float64)
  top = -np.sort(-full, axis=1)[:, :4]
  np.testing.assert_allclose(weights, top / top.sum(1, keepdims=True), atol=1e-6)
  picked = np.take_along_axis(full, joints, axis=1)
  np.testing.assert_allclose(picked[weights > 0], top[weights > 0], atol=1e-7)
  for v in range(num_v):  # no joint repeated among the non-zero influences
    nz = joints[v][weights[v] > 0]
    assert len(set(nz.tolist())) == len(nz)
  # Skin and hierarchy.
  skin = doc["skins"][0]
  assert len(skin["joints"]) == 24
  assert acc[skin["inverseBindMatrices"]]["count"] == 24
  assert acc[skin["inverseBindMatrices"]]["type"] == "MAT4"
  ibm = glb.accessor(skin["inverseBindMatrices"]).reshape(24, 4, 4).transpose(0, 2, 1)
  np.testing.assert_array_equal(ibm[:, 3], np.tile([0, 0, 0, 1], (24, 1)))
  np.testing.assert_allclose(ibm[:, :3, :3], np.tile(np.eye(3), (24, 1, 1)), atol=0)
  nodes = doc["nodes"]
  parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
  node_of = skin["joints"]
  for k, j in enumerate(node_of):
    expected = model.parents[k] if k else -1
    got = node_of.index(parent[j]) if parent.get(j) in node_of else -1
    assert got == expected, (k, got, expected)
    assert nodes[j]["name"] == model.joint_names_smpl[k]
  # Animation: times = frame / fps with min/max, unit XYZW quaternions, one sampler per joint.
  anim = doc["animations"][0]
  rot_targets = [c["target"]["node"] for c in anim["channels"] if c["target"]["path"] == "rotation"]
  assert sorted(rot_targets) == sorted(node_of)
  for sampler in anim["samplers"]:
    assert sampler["interpolation"] == "LINEAR"
    inp = acc[sampler["input"]]
    assert inp["type"] == "SCALAR" and inp["componentType"] == 5126
    assert "min" in inp and "max" in inp
    np.testing.assert_allclose(glb.accessor(sampler["input"]), np.arange(T) / FPS, atol=1e-7)
    out = glb.accessor(sampler["output"])
    assert out.shape[0] == T
    if out.shape[1] == 4:
      np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("frame", [0, 2, 3])
def test_reskinned_glb_matches_jhmr(tmp_path, model, track, frame):
  glb = _export(tmp_path, model, track)
  posed, joints = _reskin(glb, frame)
  betas, global_orient, body_pose, transl = track
  args = (betas, body_pose[frame], global_orient[frame], transl[frame])
  # Exact: jhmr's LBS with the GLB's 4 renormalised weights and no pose blend shapes.
  ref = np.asarray(_truncated_model(model, glb)(*args).vertices, np.float64)
  np.testing.assert_allclose(posed, ref, atol=1e-4)
  # The full model differs only by the weight truncation (and pose correctives if any).
  full = np.asarray(model(*args).vertices, np.float64)
  assert not model.has_posedirs  # anny-tiny: no pose correctives, so only truncation remains
  assert np.abs(posed - full).max() < 0.02  # measured 5.4 mm with anny-tiny (<= 7 influences)
  # The GLB's joint node positions are jhmr's posed joints.
  np.testing.assert_allclose(joints, np.asarray(model(*args).joints, np.float64), atol=1e-5)


def test_opencv_frame_is_rotated_about_x(tmp_path, model, track):
  glb_y = _export(tmp_path, model, track)
  glb_cv = _export(tmp_path, model, track, frame="opencv")
  root = next(n for n in glb_cv.doc["nodes"] if n.get("name") == "opencv_to_gltf")
  assert root["rotation"] == [1.0, 0.0, 0.0, 0.0]
  assert glb_cv.doc["scenes"][0]["nodes"][0] == glb_cv.doc["nodes"].index(root)
  flip = np.diag([1.0, -1.0, -1.0])
  np.testing.assert_allclose(_reskin(glb_cv, 1)[0], _reskin(glb_y, 1)[0] @ flip.T, atol=1e-5)


def test_rejects_bad_shapes(tmp_path, model, track):
  betas, global_orient, body_pose, transl = track
  with pytest.raises(ValueError, match="body_pose"):
    gltf.export_glb(tmp_path / "x.glb", model, betas, global_orient, body_pose[:, :5], transl)
  with pytest.raises(ValueError, match="frame"):
    gltf.export_glb(tmp_path / "x.glb", model, *track, frame="z_up")
