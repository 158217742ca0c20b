"""Results rows -> posed body meshes, in the camera frame and in the viewer's world frame.

Frames
  camera  OpenCV, as in the results file: x right, y down, z forward (metres).
  world   the viewer's scene: the camera frame rotated 180 degrees about its x axis, i.e.
          (x, y, z) -> (x, -y, -z): x right, y up, the camera at the origin looking down -z
          (OpenGL / three.js style), so people stand upright in a y-up scene.
"""

from __future__ import annotations

import numpy as np

from jhmr.body.posing import posed_vertices

# Rotation world <- camera: 180 degrees about x (a proper rotation, det +1).
CAMERA_TO_WORLD = np.diag([1.0, -1.0, -1.0]).astype(np.float32)
# The same rotation as a wxyz quaternion (for viser nodes that live in the camera frame).
CAMERA_TO_WORLD_WXYZ = (0.0, 1.0, 0.0, 0.0)


def camera_to_world(points) -> np.ndarray:
  """[..., 3] camera-frame points (OpenCV) -> [..., 3] world points (y up): (x, -y, -z)."""
  return np.asarray(points, np.float32) * np.array([1.0, -1.0, -1.0], np.float32)


def num_iterations(results) -> int:
  """I, the number of stored guidance iterations (0 when the run stored no refinement)."""
  pose = getattr(results, "refinement_pose", None)
  return 0 if pose is None else int(np.shape(pose)[1])


def row_vertices(results, body_model, iteration: int | None = None) -> np.ndarray:
  """[N, V, 3] camera-frame vertices of every row of `results`.

  `iteration=None` poses the rows' final fields (global_orient, body_pose, cam_t); an integer
  i in [0, I) poses guidance iteration i of a refinement run (`refinement_pose[:, i]`,
  `refinement_cam_t[:, i]`; 0 = initial estimate, I - 1 = final). Betas are the rows' betas.
  """
  if iteration is None:
    orient, pose, cam_t = results.global_orient, results.body_pose, results.cam_t
  else:
    count = num_iterations(results)
    if not 0 <= iteration < count:
      raise ValueError(f"iteration {iteration} is out of range: the results hold {count}")
    ref_pose = np.asarray(results.refinement_pose)[:, iteration]  # [N, 24, 3]
    orient, pose = ref_pose[:, 0], ref_pose[:, 1:]
    cam_t = np.asarray(results.refinement_cam_t)[:, iteration]
  return posed_vertices(body_model, orient, pose, results.betas, cam_t)


def frame_meshes(
  results, body_model, iteration: int | None = None, *, world: bool = True
) -> dict[int, dict[int, np.ndarray]]:
  """Per-frame meshes: {frame: {track_id: vertices [V, 3]}} for each track present at a frame.

  Vertices are metres in the viewer's world frame (y up, see the module doc), or in the camera
  frame with `world=False`. `iteration` as in `row_vertices`. Faces are `body_model.faces`.
  """
  verts = row_vertices(results, body_model, iteration)
  if world:
    verts = camera_to_world(verts)
  out: dict[int, dict[int, np.ndarray]] = {}
  for row, (frame, track) in enumerate(zip(results.frame.tolist(), results.track_id.tolist())):
    out.setdefault(int(frame), {})[int(track)] = verts[row]
  return dict(sorted(out.items()))


def row_table(results) -> dict[tuple[int, int], int]:
  """{(frame, track_id): row index} of `results`."""
  return {
    (int(f), int(t)): i
    for i, (f, t) in enumerate(zip(results.frame.tolist(), results.track_id.tolist()))
  }
