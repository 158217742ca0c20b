"""Image grids to eyeball the data (written as PNG).

  python -m jhmr.data.preview cmu --out runs/cmu_grid.png [--root ../shared/data/cmu_mocap]
  python -m jhmr.data.preview synthetic --out runs/synthetic_grid.png [--crop 256]

`cmu`: frames spread over a few CMU files, retargeted onto the body model
(`jhmr.data.mocap`), rendered from a camera in front of the rest pose (facing +Z), one tile
per frame. `synthetic`: procedural poses through `jhmr.data.synthesis.observe` (random camera,
rendered crop on a random background), with the noisy OpenPose keypoints drawn on top
(confidence > 0). Both take `--body-model` (default `anny`).
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _grid(tiles: np.ndarray, columns: int) -> np.ndarray:
  """`[N, H, W, 3]` -> one `[rows*H, columns*W, 3]` image (blank tiles pad the last row)."""
  n, h, w, c = tiles.shape
  rows = -(-n // columns)
  pad = np.zeros((rows * columns - n, h, w, c), tiles.dtype)
  tiles = np.concatenate([tiles, pad]).reshape(rows, columns, h, w, c)
  return tiles.transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)


def cmu_grid(root, body_model, count: int = 12, size: int = 192, files: int = 6) -> np.ndarray:
  """`count` retargeted CMU frames (from `files` files spread over the subjects) as a grid."""
  from jhmr import render  # noqa: PLC0415
  from jhmr.data import bvh, mocap  # noqa: PLC0415

  names = mocap.cmu_files(root)
  picks = [names[i] for i in np.linspace(0, len(names) - 1, files).astype(int)]
  skeleton = mocap.skeleton_of(body_model)
  per_file = -(-count // files)
  poses = []
  for name in picks:
    motion = mocap.retarget_to_body(bvh.read_bvh(pathlib.Path(root) / name), skeleton)[1:]
    for t in np.linspace(0, motion.num_frames - 1, per_file + 2)[1:-1].astype(int):
      poses.append((motion.global_orient[t], motion.body_pose[t]))
  poses = poses[:count]
  orient = jnp.asarray(np.stack([p[0] for p in poses]))
  body = jnp.asarray(np.stack([p[1] for p in poses]))

  @jax.jit
  def draw(orient, body):
    out = body_model(jnp.zeros((orient.shape[0], body_model.num_betas)), body, orient)
    verts = out.vertices - out.joints[:, :1]  # pelvis at the origin
    verts = verts * jnp.array([1.0, -1.0, -1.0]) + jnp.array([0.0, 0.0, 3.0])  # +Z faces the camera
    frags = render.rasterize(
      verts, body_model.faces, size * 1.6, (size / 2, size / 2), (size, size)
    )
    return render.shade(frags, (0.75, 0.72, 0.68), (0.3, -0.4, -1.0)), frags.mask

  rgb, mask = draw(orient, body)
  tiles = np.where(np.asarray(mask)[..., None], np.asarray(rgb), 0.93)
  return (_grid(tiles, 6) * 255).round().astype(np.uint8)


def synthetic_grid(body_model, count: int = 12, crop: int = 256, seed: int = 0) -> np.ndarray:
  """`count` synthetic crops with their noisy keypoints drawn."""
  from jhmr import render  # noqa: PLC0415
  from jhmr.data import poses, synthesis  # noqa: PLC0415

  spec = synthesis.SceneSpec(crop_size=crop, num_betas=min(10, body_model.num_betas))

  @jax.jit
  def sample(key):
    k_pose, k_obs = jax.random.split(key)
    orient, body = poses.procedural_pose(k_pose, (1,))
    return synthesis.observe(k_obs, body_model, orient, body, jnp.zeros((1, 3)), spec)

  tiles = []
  for key in jax.random.split(jax.random.key(seed), count):
    out = jax.tree.map(np.asarray, sample(key))
    kp = out["keypoints2d_crop"][0, 0]
    edges = render.OPENPOSE25_EDGES if spec.joint_set == "openpose25" else None
    tiles.append(render.draw_keypoints(out["image"][0, 0], kp[:, :2], kp[:, 2], edges))
  return _grid(np.stack(tiles), 6)


def main(argv=None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=("cmu", "synthetic"))
  parser.add_argument("--out", required=True)
  parser.add_argument("--root", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cmu_mocap"))
  parser.add_argument("--body-model", default="anny")
  parser.add_argument("--count", type=int, default=12)
  parser.add_argument("--crop", type=int, default=256)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  from jhmr import render  # noqa: PLC0415
  from jhmr.body import load_body_model  # noqa: PLC0415

  body_model = load_body_model(args.body_model)
  if args.what == "cmu":
    image = cmu_grid(args.root, body_model, args.count)
  else:
    image = synthetic_grid(body_model, args.count, args.crop, args.seed)
  out = render.save_png(args.out, image)
  print(f"wrote {out}")
  return out


if __name__ == "__main__":
  main()
