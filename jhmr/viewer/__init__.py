"""jhmr.viewer: the web viewer (viser) of a results file.

    python -m jhmr.viewer RESULTS.npz [--frames VIDEO_OR_DIR] [--host 127.0.0.1] [--port 8080]

Over SSH: `ssh -L 8080:localhost:8080 user@host`, then open http://localhost:8080 locally.
`serve(...)` is the non-blocking library entry point (returns a `Viewer`; `.stop()` ends it).
"""

from jhmr.viewer.app import Viewer, serve
from jhmr.viewer.meshes import (
  CAMERA_TO_WORLD,
  camera_to_world,
  frame_meshes,
  num_iterations,
  row_vertices,
)
from jhmr.viewer.overlay import render_overlay

__all__ = [
  "CAMERA_TO_WORLD",
  "Viewer",
  "camera_to_world",
  "frame_meshes",
  "num_iterations",
  "render_overlay",
  "row_vertices",
  "serve",
]
