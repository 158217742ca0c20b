"""Body demo: renders the default body in a few poses, with OpenPose keypoints, and exports a mesh.

The placeholder main job (`configs/body_demo.py`): it exercises the body model, the cameras and the
rasteriser end to end. Outputs in `workdir`:
  pose_<name>.png   shaded mesh over a plain background, projected OpenPose BODY_25 keypoints
  poses.png         the poses side by side
  rest_pose.obj     the rest-pose (T-pose) mesh
and it prints the 24 rest-pose joints.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.body import io as body_io
from jhmr.data.poses import pose_parameters
from jhmr.geometry import cameras
from jhmr.render import mesh_io, overlay, rasterizer, shading

# Body frame (Y up, facing +Z) -> camera frame (Y down, +Z forward): 180 degrees about X, so the
# body faces the camera.
_BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


def frame_camera(vertices, image_size: int, focal_length: float, fill: float = 0.85):
  """A ScoreHMR-style camera that frames camera-space meshes [P, V, 3] (centred at the origin).

  Each mesh gets a weak-perspective crop camera (s, tx, ty) that centres its bounding box and
  makes its larger side span `fill` of the image, converted to a perspective translation with
  `weak_perspective_to_translation` (ScoreHMR's tz = 2 f / (size * s)). Returns [P, 3].
  """
  lo, hi = jnp.min(vertices, axis=1), jnp.max(vertices, axis=1)
  centre = (lo + hi) / 2
  extent = jnp.max((hi - lo)[:, :2], axis=-1)
  cam = jnp.stack([2.0 * fill / extent, -centre[:, 0], -centre[:, 1]], axis=-1)
  t = cameras.weak_perspective_to_translation(cam, focal_length, image_size)
  return t.at[:, 2].add(-centre[:, 2])  # the box centre (not the origin) sits at depth tz


def run(config, workdir: str) -> dict:
  """Renders `config.poses` of the body model to PNGs in `workdir` and exports the rest mesh.

  Args:
    config: ConfigDict with `body_model` (None = the default Anny model, or 'anny-tiny' / a
      path), `poses` (names from `DEMO_POSES`), `yaw_degrees` (view angle), `image_size`,
      `focal_length`, `mesh_alpha`, `background` (RGB in [0, 1]) and `keypoint_set`.
    workdir: output directory (created).

  Returns:
    {'images': [paths], 'grid': path, 'mesh': path, 'rest_joints': [24, 3] numpy array,
     'coverage': {pose: silhouette fraction}}.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  model = body_io.load_body_model(config.body_model)
  names = tuple(config.poses)
  size = int(config.image_size)
  global_orient, body_pose = pose_parameters(
    names, model.joint_names("smpl24"), np.deg2rad(config.yaw_degrees)
  )
  kp_set = config.keypoint_set if config.keypoint_set in model.available_joint_sets else "smpl24"
  edges = overlay.OPENPOSE25_EDGES if kp_set == "openpose25" else None

  @jax.jit
  def pose_and_render(model, global_orient, body_pose):
    out = model(jnp.zeros((1, model.num_betas)), body_pose, global_orient, joint_set=kp_set)
    verts = out.vertices @ _BODY_TO_CAMERA.T
    kps = (out.keypoints if out.keypoints is not None else out.joints) @ _BODY_TO_CAMERA.T
    pelvis = out.joints[:, :1] @ _BODY_TO_CAMERA.T
    verts, kps = verts - pelvis, kps - pelvis
    t = frame_camera(verts, size, config.focal_length)
    centre = jnp.array([size / 2.0, size / 2.0])
    frags = rasterizer.rasterize(
      verts + t[:, None], model.faces, config.focal_length, centre, (size, size),
      smooth_normals=True,
    )  # fmt: skip
    background = jnp.broadcast_to(
      jnp.asarray(config.background, jnp.float32), (*frags.mask.shape, 3)
    )
    images = shading.overlay_mesh(background, frags, alpha=config.mesh_alpha)
    kp2d = cameras.perspective_projection(kps, t, config.focal_length, centre)
    return images, kp2d, frags.mask.mean(axis=(1, 2))

  images, kp2d, coverage = pose_and_render(
    model, jnp.asarray(global_orient), jnp.asarray(body_pose)
  )
  paths, tiles = [], []
  for p, name in enumerate(names):
    conf = np.ones(kp2d.shape[1], np.float32)
    if kp_set != "smpl24":  # keypoints the asset does not define are not drawn
      conf = np.asarray(model.joint_sets[kp_set].valid, np.float32)
    tile = overlay.draw_keypoints(np.asarray(images[p]), np.asarray(kp2d[p]), conf, edges)
    paths.append(overlay.save_png(workdir / f"pose_{name}.png", tile))
    tiles.append(tile)
  grid = overlay.save_png(workdir / "poses.png", np.concatenate(tiles, axis=1))

  rest = jax.jit(
    lambda m: m(jnp.zeros((1, m.num_betas)), jnp.zeros((1, 23, 3)), jnp.zeros((1, 3)))
  )(model)
  mesh = mesh_io.export_obj(workdir / "rest_pose.obj", rest.vertices[0], model.faces)
  rest_joints = np.asarray(rest.joints[0])
  print(f"Rest-pose joints of the body model ({model.num_vertices} vertices), metres, Y up:")
  for name, xyz in zip(model.joint_names("smpl24"), rest_joints, strict=True):
    print(f"  {name:15s} {xyz[0]:+.4f} {xyz[1]:+.4f} {xyz[2]:+.4f}")
  print(f"wrote {len(paths)} pose images, {grid.name} and {mesh.name} to {workdir}")
  return {
    "images": paths,
    "grid": grid,
    "mesh": mesh,
    "rest_joints": rest_joints,
    "coverage": {n: float(c) for n, c in zip(names, np.asarray(coverage), strict=True)},
  }
