"""Triangle mesh files: Wavefront OBJ and PLY (ASCII or binary little-endian), write and read.

The readers parse only geometry (vertices, triangle faces, optional per-vertex RGB); they never
execute or unpickle anything, so they are safe on untrusted files.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np


def _check_mesh(vertices, faces):
  v = np.asarray(vertices, np.float32)
  f = np.asarray(faces)
  if v.ndim != 2 or v.shape[-1] != 3:
    raise ValueError(f"vertices must be [V, 3], got shape {v.shape}")
  if f.ndim != 2 or f.shape[-1] != 3 or not np.issubdtype(f.dtype, np.integer):
    raise ValueError(f"faces must be an integer [F, 3] array, got {f.dtype} {f.shape}")
  if f.size and (f.min() < 0 or f.max() >= len(v)):
    raise ValueError(f"face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
  return v, f.astype(np.int32)


def _prepare(path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  return path


def export_obj(path: str | os.PathLike, vertices, faces) -> pathlib.Path:
  """Writes an OBJ file. vertices [V, 3], faces [F, 3] (0-based). Returns the path."""
  v, f = _check_mesh(vertices, faces)
  path = _prepare(path)
  with open(path, "w") as fh:
    fh.write(f"# jhmr mesh: {len(v)} vertices, {len(f)} faces\n")
    np.savetxt(fh, v, fmt="v %.6f %.6f %.6f")
    np.savetxt(fh, f + 1, fmt="f %d %d %d")
  return path


def read_obj(path: str | os.PathLike):
  """Reads vertices [V, 3] f32 and triangle faces [F, 3] int32 (polygons fan-triangulated)."""
  verts, faces = [], []
  with open(path) as fh:
    for line_no, line in enumerate(fh, 1):
      parts = line.split()
      if not parts:
        continue
      if parts[0] == "v":
        verts.append([float(x) for x in parts[1:4]])
      elif parts[0] == "f":
        idx = []
        for token in parts[1:]:
          i = int(token.split("/")[0])
          idx.append(i - 1 if i > 0 else len(verts) + i)
        if len(idx) < 3:
          raise ValueError(f"{path}:{line_no}: a face needs at least 3 vertices")
        faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
  return _check_mesh(np.asarray(verts, np.float32).reshape(-1, 3), np.asarray(faces, np.int64))


def export_ply(
  path: str | os.PathLike, vertices, faces, colors=None, binary: bool = True
) -> pathlib.Path:
  """Writes a PLY file.

  Args:
    path: output file.
    vertices: [V, 3] positions (written as float32).
    faces: [F, 3] 0-based triangle indices.
    colors: optional [V, 3] per-vertex RGB, uint8 or float in [0, 1].
    binary: binary little-endian (default) or ASCII.

  Returns:
    The path.
  """
  v, f = _check_mesh(vertices, faces)
  rgb = None
  if colors is not None:
    rgb = np.asarray(colors)
    if rgb.shape != v.shape:
      raise ValueError(f"colors must be [V={len(v)}, 3], got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
      rgb = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
  header = [
    "ply",
    f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
    "comment jhmr mesh",
    f"element vertex {len(v)}",
    "property float x",
    "property float y",
    "property float z",
  ]
  if rgb is not None:
    header += ["property uchar red", "property uchar green", "property uchar blue"]
  header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
  path = _prepare(path)
  with open(path, "wb") as fh:
    fh.write(("\n".join(header) + "\n").encode("ascii"))
    if binary:
      fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
      if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
      vert = np.empty(len(v), dtype=fields)
      vert["x"], vert["y"], vert["z"] = v.T
      if rgb is not None:
        vert["red"], vert["green"], vert["blue"] = rgb.T
      fh.write(vert.tobytes())
      face = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
      face["n"], face["i"] = 3, f
      fh.write(face.tobytes())
    else:
      lines = []
      for i in range(len(v)):
        row = " ".join(f"{x:.6f}" for x in v[i])
        if rgb is not None:
          row += " " + " ".join(str(int(c)) for c in rgb[i])
        lines.append(row)
      lines += [f"3 {a} {b} {c}" for a, b, c in f]
      fh.write(("\n".join(lines) + "\n").encode("ascii"))
  return path


_PLY_TYPES = {
  "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
  "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
  "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def read_ply(path: str | os.PathLike):
  """Reads a triangle-mesh PLY (ASCII or binary little-endian).

  Returns:
    (vertices [V, 3] f32, faces [F, 3] int32, colors [V, 3] uint8 or None). Non-triangle faces
    are fan-triangulated; other elements/properties are skipped.
  """
  data = pathlib.Path(path).read_bytes()
  end = data.find(b"end_header")
  if not data.startswith(b"ply") or end < 0:
    raise ValueError(f"{path}: not a PLY file")
  body_start = data.index(b"\n", end) + 1
  header = data[:end].decode("ascii").splitlines()
  fmt, elements = None, []
  for line in header:
    parts = line.split()
    if not parts or parts[0] in ("ply", "comment", "obj_info"):
      continue
    if parts[0] == "format":
      fmt = parts[1]
    elif parts[0] == "element":
      elements.append((parts[1], int(parts[2]), []))
    elif parts[0] == "property":
      if parts[1] == "list":
        elements[-1][2].append((parts[4], "list", _PLY_TYPES[parts[2]], _PLY_TYPES[parts[3]]))
      else:
        elements[-1][2].append((parts[2], _PLY_TYPES[parts[1]]))
  if fmt not in ("ascii", "binary_little_endian"):
    raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
  out = {}
  if fmt == "ascii":
    tokens = data[body_start:].split()
    pos = 0
    for name, count, props in elements:
      rows = []
      for _ in range(count):
        row = {}
        for prop in props:
          if prop[1] == "list":
            n = int(tokens[pos])
            row[prop[0]] = [int(t) for t in tokens[pos + 1 : pos + 1 + n]]
            pos += 1 + n
          else:
            row[prop[0]] = float(tokens[pos])
            pos += 1
        rows.append(row)
      out[name] = rows
    verts = out.get("vertex", [])
    v = np.array([[r["x"], r["y"], r["z"]] for r in verts], np.float32).reshape(-1, 3)
    has_rgb = bool(verts) and "red" in verts[0]
    rgb = (
      np.array([[r["red"], r["green"], r["blue"]] for r in verts], np.uint8) if has_rgb else None
    )
    polys = [r["vertex_indices"] for r in out.get("face", [])]
  else:
    pos = body_start
    v = rgb = None
    polys = []
    for name, count, props in elements:
      if all(p[1] != "list" for p in props):
        dt = np.dtype([(p[0], "<" + p[1]) for p in props])
        arr = np.frombuffer(data, dt, count, pos)
        pos += dt.itemsize * count
        if name == "vertex":
          v = np.stack([arr["x"], arr["y"], arr["z"]], -1).astype(np.float32)
          if "red" in arr.dtype.names:
            rgb = np.stack([arr["red"], arr["green"], arr["blue"]], -1).astype(np.uint8)
        continue
      for _ in range(count):  # elements with lists: parse row by row
        row = {}
        for prop in props:
          if prop[1] == "list":
            cdt, idt = np.dtype("<" + prop[2]), np.dtype("<" + prop[3])
            n = int(np.frombuffer(data, cdt, 1, pos)[0])
            pos += cdt.itemsize
            row[prop[0]] = np.frombuffer(data, idt, n, pos).tolist()
            pos += idt.itemsize * n
          else:
            pos += np.dtype(prop[1]).itemsize
        if name == "face":
          polys.append(row["vertex_indices"])
    if v is None:
      raise ValueError(f"{path}: no vertex element")
  tris = [[p[0], p[k], p[k + 1]] for p in polys for k in range(1, len(p) - 1)]
  v, f = _check_mesh(v, np.asarray(tris, np.int64).reshape(-1, 3))
  return v, f, rgb
