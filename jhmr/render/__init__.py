"""jhmr.render: JAX rasteriser (depth, silhouette, normals), shading, overlays and mesh files."""

from jhmr.render.mesh_io import export_obj, export_ply, read_obj, read_ply
from jhmr.render.overlay import OPENPOSE25_EDGES, draw_keypoints, save_png, to_uint8
from jhmr.render.rasterizer import Fragments, interpolate, rasterize, vertex_normals
from jhmr.render.shading import depth_to_image, overlay_mesh, shade

__all__ = [
  "OPENPOSE25_EDGES",
  "Fragments",
  "depth_to_image",
  "draw_keypoints",
  "export_obj",
  "export_ply",
  "interpolate",
  "overlay_mesh",
  "rasterize",
  "read_obj",
  "read_ply",
  "save_png",
  "shade",
  "to_uint8",
  "vertex_normals",
]
