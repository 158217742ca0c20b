"""Image grids to eyeball the data (written as PNG).

  python -m jhmr.data.preview cmu --out runs/cmu_grid.png [--root ../shared/data/cmu_mocap]
  python -m jhmr.data.preview synthetic --out runs/synthetic_grid.png [--crop 256]
  python -m jhmr.data.preview augment --out runs/augment_grid.png [--crop 256]

`augment`: min(--count, 4) synthetic people (rows), each with draws of the training
augmentation chain (`augment_grid`).

`cmu`: frames spread over a few CMU files, retargeted onto the body model
(`jhmr.data.mocap`), rendered from a camera in front of the rest pose (facing +Z), one tile
per frame. `synthetic`: people of the one generator (`jhmr.data.synthesis.single_view_set`:
demo_mix poses, crop camera, rendered crop on a random background), with the noisy OpenPose
keypoints drawn on top (confidence > 0). Both take `--body-model` (default `anny`).
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


def synthetic_grid(
  body_model, count: int = 12, crop: int = 256, seed: int = 0, poses: str = "demo_mix"
) -> np.ndarray:
  """`count` people of the one generator (`jhmr.data.synthesis.single_view_set`, pose source
  `poses`: `demo_mix` or `uniform`), 6 per row: the rendered crop, its noisy openpose25
  detections as a skeleton (confidence > 0) and the exact smpl24 joints as small dots (white:
  inside the crop)."""
  from jhmr import render  # noqa: PLC0415
  from jhmr.data import synthesis  # noqa: PLC0415
  from jhmr.keys import KeySeq  # noqa: PLC0415

  spec = synthesis.SceneSpec(crop_size=crop)
  source = synthesis.PoseSource(poses)
  people = synthesis.single_view_set(KeySeq(seed), count, body_model, source, spec)
  white = np.full((24, 3), 255, np.uint8)
  tiles = []
  for i in range(count):
    kp = people.keypoints_2d["openpose25"][i]
    tile = render.draw_keypoints(people.image[i], kp[:, :2], kp[:, 2], render.OPENPOSE25_EDGES)
    joints = people.keypoints_2d["smpl24"][i]
    tiles.append(render.draw_keypoints(tile, joints[:, :2], joints[:, 2], radius=1.5, colors=white))
  return _grid(np.stack(tiles), 6)


def augment_grid(
  body_model, count: int = 4, crop: int = 192, seed: int = 0, draws: int = 5
) -> np.ndarray:
  """`count` synthetic people (rows): the example, then `draws` draws of the full training chain
  (`jhmr.data.augment.default_train_transforms`, patch occluders cut from the other people's
  crops). Drawn on top: the openpose25 keypoints (PoseFix-corrupted) as a skeleton, the exact
  smpl24 joints as small dots (white: `joint_visibility` 1, red: 0) and the `occlusion` mask
  tinted blue."""
  from jhmr import render  # noqa: PLC0415
  from jhmr.data import augment, synthesis  # noqa: PLC0415
  from jhmr.data.example import index  # noqa: PLC0415
  from jhmr.keys import KeySeq  # noqa: PLC0415

  spec = synthesis.SceneSpec(crop_size=crop)
  people = synthesis.single_view_set(KeySeq(seed), count, body_model, synthesis.PoseSource(), spec)
  chain = augment.default_train_transforms(
    body_model, keypoint_set="openpose25", occluder_bank=list(people.image)
  )
  joint_colors = np.array([[255, 255, 255], [230, 30, 30]], np.uint8)

  def draw(ex):
    image = np.asarray(ex.image, np.float32)
    image = np.where(ex.occlusion[..., None], 0.6 * image + [0, 40, 100], image).astype(np.uint8)
    kp = ex.keypoints_2d["openpose25"]
    image = render.draw_keypoints(image, kp[:, :2], kp[:, 2], render.OPENPOSE25_EDGES)
    joints = ex.keypoints_2d["smpl24"]
    colors = joint_colors[(ex.joint_visibility <= 0).astype(int)]
    return render.draw_keypoints(image, joints[:, :2], None, radius=1.5, colors=colors)

  tiles = []
  for i in range(count):
    ex = index(people, i)
    tiles.append(draw(ex))
    for d in range(draws):
      tiles.append(draw(chain(ex, np.random.default_rng([seed, i, d]))))
  return _grid(np.stack(tiles), draws + 1)


def main(argv=None) -> pathlib.Path:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=("cmu", "synthetic", "augment"))
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
  elif args.what == "augment":
    image = augment_grid(body_model, min(args.count, 4), args.crop, args.seed)
  else:
    image = synthetic_grid(body_model, args.count, args.crop, args.seed)
  out = render.save_png(args.out, image)
  print(f"wrote {out}")
  return out


if __name__ == "__main__":
  main()
