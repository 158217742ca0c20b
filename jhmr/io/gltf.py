"""Animated, skinned glTF 2.0 binary (.glb) of one body track (numpy + json + struct only).

`export_glb(path, body_model, betas, global_orient, body_pose, transl, fps)` writes:

* **Skeleton**: 24 joint nodes named after the body model's joints, parented as
  `body_model.parents`; each node's rest translation is its offset from its parent in the rest
  joints of these `betas` (the root's is the rest pelvis position).
* **Mesh**: the shaped rest vertices (`v_template + shapedirs . betas`, from the body model
  itself at zero pose), vertex normals, the model's triangles.
* **Skin**: `JOINTS_0`/`WEIGHTS_0` = the 4 strongest skinning weights of each vertex,
  renormalised to sum 1 (the limit most engines take; see `top_weights`); inverse bind
  matrices are translation-only, `translate(-J_j)` for the rest joint `J_j`.
* **Animation**: one, with a LINEAR rotation sampler per joint (unit quaternions, XYZW, made
  hemisphere-continuous) and a LINEAR translation sampler on the root (`J_pelvis + transl`,
  jhmr's convention: rotate about the rest pelvis, then add `transl`); keyframe times
  `frame / fps` seconds.

**No pose blend shapes.** glTF skinning is plain linear blend skinning: it has no pose-dependent
correctives (morph targets are animated by weight only, and clients may use only 8 of them), so
a model's pose correctives (`posedirs`) are not exported. The file reproduces jhmr's skinning
with the 4-weight truncated skinning weights and without pose blend shapes.

**Coordinate frame.** glTF is right-handed, +Y up, +Z front, metres. jhmr's body-model/world
frame is Y up, metres, and is written as is (`frame="y_up"`, default). For a track given in the
OpenCV camera frame (x right, y down, z forward into the scene; `frame="opencv"`), the skeleton is
placed under an extra root node `opencv_to_gltf` that rotates by 180 degrees about X
(quaternion [1, 0, 0, 0]); the camera then sits at the glTF origin looking down -Z with +Y up,
which is glTF's own camera convention. The joints' global transforms include that node; the
mesh vertices stay in the body frame (the bind space of the skin).
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from scipy.spatial.transform import Rotation

from jhmr.io.files import atomic_path
from jhmr.io.tracks import check_track_arrays

GLB_MAGIC = 0x46546C67  # b"glTF" little-endian
JSON_CHUNK = 0x4E4F534A  # b"JSON"
BIN_CHUNK = 0x004E4942  # b"BIN\0"

FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_COMPONENT = {
  np.dtype(np.float32): FLOAT,
  np.dtype(np.uint8): UNSIGNED_BYTE,
  np.dtype(np.uint16): UNSIGNED_SHORT,
  np.dtype(np.uint32): UNSIGNED_INT,
}
FRAMES = ("y_up", "opencv")


def top_weights(weights: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """The `k` strongest influences per vertex: joints `[V, k]` int64 and weights `[V, k]`
  float32 renormalised to sum 1 (ties broken by joint index; zero weights keep joint 0's slot
  valid)."""
  w = np.asarray(weights, np.float64)
  order = np.argsort(-w, axis=1, kind="stable")[:, :k]
  top = np.take_along_axis(w, order, axis=1)
  top = np.where(top > 0, top, 0.0)
  top = top / top.sum(axis=1, keepdims=True)
  joints = np.where(top > 0, order, 0)
  return joints.astype(np.int64), top.astype(np.float32)


def truncated_weights(weights: np.ndarray, k: int = 4) -> np.ndarray:
  """`[V, J]` skinning weights keeping only the `k` strongest per vertex, renormalised (the
  weights the GLB carries, scattered back to a dense matrix)."""
  joints, top = top_weights(weights, k)
  out = np.zeros(np.shape(weights), np.float64)
  np.add.at(out, (np.arange(out.shape[0])[:, None], joints), top.astype(np.float64))
  return out


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  v = vertices.astype(np.float64)
  face_n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
  n = np.zeros_like(v)
  for c in range(3):
    np.add.at(n, faces[:, c], face_n)
  length = np.linalg.norm(n, axis=1, keepdims=True)
  n = np.where(length > 1e-12, n / np.maximum(length, 1e-30), np.array([0.0, 1.0, 0.0]))
  return n.astype(np.float32)


def _continuous(quat: np.ndarray) -> np.ndarray:
  """Flips quaternion signs `[T, ..., 4]` so consecutive keys lie in one hemisphere."""
  quat = quat.copy()
  for t in range(1, quat.shape[0]):
    flip = np.sum(quat[t] * quat[t - 1], axis=-1) < 0
    quat[t][flip] *= -1
  return quat


class _Builder:
  """Accumulates accessors and buffer views over one BIN buffer (4-byte aligned views)."""

  def __init__(self):
    self.blob = bytearray()
    self.views: list[dict] = []
    self.accessors: list[dict] = []

  def add(self, data: np.ndarray, *, target: int | None = None, bounds: bool = True) -> int:
    data = np.ascontiguousarray(data)
    width = 1 if data.ndim == 1 else int(np.prod(data.shape[1:]))
    offset = len(self.blob)
    raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
    self.blob += raw + b"\0" * (-len(raw) % 4)
    view = {"buffer": 0, "byteOffset": offset, "byteLength": len(raw)}
    if target is not None:
      view["target"] = target
    self.views.append(view)
    accessor = {
      "bufferView": len(self.views) - 1,
      "byteOffset": 0,
      "componentType": _COMPONENT[data.dtype],
      "count": int(data.shape[0]),
      "type": _TYPES[width],
    }
    if bounds:
      flat = data.reshape(data.shape[0], width)
      cast = float if data.dtype.kind == "f" else int
      accessor["min"] = [cast(x) for x in flat.min(axis=0)]
      accessor["max"] = [cast(x) for x in flat.max(axis=0)]
    self.accessors.append(accessor)
    return len(self.accessors) - 1


def rest_shape(body_model, betas) -> tuple[np.ndarray, np.ndarray]:
  """Shaped rest vertices `[V, 3]` and rest joints `[24, 3]` for `betas` (float64 copies of the
  body model's own zero-pose output: no pose blend, no translation)."""
  betas = np.asarray(betas, np.float32)
  if betas.ndim != 1:
    raise ValueError(f"betas must be [B] (one person), got {betas.shape}")
  out = body_model(betas, np.zeros((23, 3), np.float32), np.zeros(3, np.float32))
  return np.asarray(out.vertices, np.float64), np.asarray(out.joints, np.float64)


def build_glb(
  body_model,
  betas,
  global_orient,
  body_pose,
  transl,
  fps: float = 30.0,
  *,
  frame: str = "y_up",
  name: str = "body",
) -> bytes:
  """The bytes of the GLB that `export_glb` writes (same arguments)."""
  if frame not in FRAMES:
    raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
  betas, global_orient, body_pose, transl = check_track_arrays(
    betas, global_orient, body_pose, transl
  )
  t = global_orient.shape[0]
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  parents = [int(p) for p in body_model.parents]
  parents[0] = -1
  num_joints = len(parents)
  names = list(body_model.joint_names_smpl)
  vertices, joints = rest_shape(body_model, betas)
  faces = np.asarray(body_model.faces, np.int64)
  joint_idx, weights = top_weights(np.asarray(body_model.weights), 4)

  b = _Builder()
  index_dtype = np.uint16 if vertices.shape[0] < 65535 else np.uint32
  attributes = {
    "POSITION": b.add(vertices.astype(np.float32), target=ARRAY_BUFFER),
    "NORMAL": b.add(_vertex_normals(vertices, faces), target=ARRAY_BUFFER),
    "JOINTS_0": b.add(
      joint_idx.astype(np.uint8 if num_joints <= 256 else np.uint16), target=ARRAY_BUFFER
    ),
    "WEIGHTS_0": b.add(weights, target=ARRAY_BUFFER),
  }
  indices = b.add(faces.reshape(-1).astype(index_dtype), target=ELEMENT_ARRAY_BUFFER)
  inverse_bind = np.broadcast_to(np.eye(4), (num_joints, 4, 4)).copy()
  inverse_bind[:, :3, 3] = -joints
  # MAT4 accessors are column-major: store each matrix transposed, row by row.
  ibm = b.add(np.swapaxes(inverse_bind, 1, 2).reshape(num_joints, 16).astype(np.float32))

  offsets = joints.copy()
  offsets[1:] = joints[1:] - joints[parents[1:]]
  nodes = []
  for j in range(num_joints):
    node = {"name": names[j], "translation": [float(x) for x in offsets[j]]}
    children = [c for c in range(num_joints) if parents[c] == j]
    if children:
      node["children"] = children
    nodes.append(node)
  mesh_node = len(nodes)
  nodes.append({"name": name, "mesh": 0, "skin": 0})
  roots = [0, mesh_node]
  if frame == "opencv":
    nodes.append({"name": "opencv_to_gltf", "rotation": [1.0, 0.0, 0.0, 0.0], "children": [0]})
    roots = [len(nodes) - 1, mesh_node]

  times = b.add((np.arange(t, dtype=np.float64) / fps).astype(np.float32))
  aa = np.concatenate([global_orient[:, None], body_pose], axis=1)  # [T, 24, 3]
  quat = Rotation.from_rotvec(aa.reshape(-1, 3)).as_quat().reshape(t, num_joints, 4)
  quat = _continuous(quat / np.linalg.norm(quat, axis=-1, keepdims=True)).astype(np.float32)
  samplers, channels = [], []
  for j in range(num_joints):
    samplers.append({"input": times, "output": b.add(quat[:, j]), "interpolation": "LINEAR"})
    channels.append({"sampler": j, "target": {"node": j, "path": "rotation"}})
  root_t = (joints[0] + transl).astype(np.float32)
  samplers.append({"input": times, "output": b.add(root_t), "interpolation": "LINEAR"})
  channels.append({"sampler": num_joints, "target": {"node": 0, "path": "translation"}})

  gltf = {
    "asset": {"version": "2.0", "generator": "jhmr.io.gltf"},
    "scene": 0,
    "scenes": [{"name": name, "nodes": roots}],
    "nodes": nodes,
    "meshes": [
      {
        "name": name,
        "primitives": [{"attributes": attributes, "indices": indices, "mode": 4, "material": 0}],
      }
    ],
    "materials": [
      {
        "name": "body",
        "pbrMetallicRoughness": {
          "baseColorFactor": [0.7, 0.7, 0.75, 1.0],
          "metallicFactor": 0.0,
          "roughnessFactor": 0.8,
        },
      }
    ],
    "skins": [
      {"name": name, "joints": list(range(num_joints)), "inverseBindMatrices": ibm, "skeleton": 0}
    ],
    "animations": [{"name": "track", "samplers": samplers, "channels": channels}],
    "accessors": b.accessors,
    "bufferViews": b.views,
    "buffers": [{"byteLength": len(b.blob)}],
  }
  text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 4)
  blob = bytes(b.blob)
  total = 12 + 8 + len(text) + 8 + len(blob)
  return b"".join(
    [
      struct.pack("<III", GLB_MAGIC, 2, total),
      struct.pack("<II", len(text), JSON_CHUNK),
      text,
      struct.pack("<II", len(blob), BIN_CHUNK),
      blob,
    ]
  )


def export_glb(
  path: str | os.PathLike,
  body_model,
  betas,
  global_orient,
  body_pose,
  transl,
  fps: float = 30.0,
  *,
  frame: str = "y_up",
  name: str = "body",
) -> None:
  """Writes one track as an animated, skinned glTF 2.0 binary (.glb).

  Args:
    path: output file (.glb).
    body_model: a `jhmr.body` SMPL-format model.
    betas: `[B]` shape coefficients (B <= body_model.num_betas).
    global_orient: `[T, 3]` axis-angle root rotation (about the rest pelvis).
    body_pose: `[T, 23, 3]` axis-angle local rotations of joints 1..23.
    transl: `[T, 3]` translation in metres, added after the rotation (jhmr/SMPL convention).
    fps: frames per second; keyframe k is at `k / fps` seconds.
    frame: the frame the track is given in: "y_up" (jhmr world / body-model frame, written as
      is; glTF is Y up) or "opencv" (camera frame, y down, z forward: the skeleton goes under a
      root node rotated 180 degrees about X). See the module docstring.
    name: name of the mesh, skin and scene.
  """
  data = build_glb(body_model, betas, global_orient, body_pose, transl, fps, frame=frame, name=name)
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)
