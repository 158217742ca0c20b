"""Writes the tiny fake CMU layout in `dummy_data/`.

Run: `python -m jhmr.data.cmu_mocap.dummy_data_generator`.

Four subject folders (`01`, `02`, `60-61A`, `60-61B`), one BVH each, on `SKELETON` (a fixed
SMPL-like rest skeleton, independent of the body-model assets) in centimetres with SMPL joint
names: frame 0 is the rest pose, then `FRAMES` frames of `known_motion(folder)`, so a builder
test can check the retargeted poses exactly.
"""

from __future__ import annotations

import pathlib

import numpy as np
from scipy.spatial.transform import Rotation

from jhmr.data import bvh, mocap

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
FOLDERS = ("01", "02", "60-61A", "60-61B")
FRAMES = 4

_CENTER = {0: (0, 0.9, 0), 3: (0, 1.0, 0), 6: (0, 1.13, 0), 9: (0, 1.18, 0.01), 12: (0, 1.4, -0.01)}
_CENTER |= {15: (0, 1.5, 0.03)}
_LEFT = {1: (0.09, 0.82, 0), 4: (0.1, 0.45, 0), 7: (0.1, 0.07, -0.02), 10: (0.11, 0.02, 0.1)}
_LEFT |= {13: (0.07, 1.33, 0), 16: (0.18, 1.35, -0.01), 18: (0.43, 1.34, -0.02)}
_LEFT |= {20: (0.68, 1.34, -0.01), 22: (0.76, 1.33, -0.01)}


def _skeleton() -> mocap.Skeleton:
  joints = np.zeros((24, 3))
  for j, p in _CENTER.items():
    joints[j] = p
  for j, (x, y, z) in _LEFT.items():
    joints[j], joints[j + 1] = (x, y, z), (-x, y, z)
  return mocap.Skeleton(joints, np.array(mocap.SMPL_PARENTS))


SKELETON = _skeleton()
"""A plausible SMPL-like T-pose skeleton (metres, Y up, facing +Z, left = +X)."""


def known_motion(folder: str) -> mocap.Motion:
  """The motion stored (after the rest frame) in `<folder>/<folder>_01.bvh`."""
  seed = FOLDERS.index(folder)
  rotvec = Rotation.random(FRAMES * 24, random_state=seed).as_rotvec().reshape(FRAMES, 24, 3)
  rng = np.random.default_rng(seed)
  return mocap.Motion(
    global_orient=(0.5 * rotvec[:, 0]).astype(np.float32),
    body_pose=(0.5 * rotvec[:, 1:]).astype(np.float32),
    transl=rng.normal(0, 0.5, (FRAMES, 3)).astype(np.float32),
    fps=30.0,
  )


def main(out: pathlib.Path = DUMMY_DIR) -> None:
  for folder in FOLDERS:
    motion = known_motion(folder)
    cat = lambda rest, x: np.concatenate([rest, x]).astype(np.float32)
    with_rest = mocap.Motion(
      cat(np.zeros((1, 3)), motion.global_orient),
      cat(np.zeros((1, 23, 3)), motion.body_pose),
      cat(motion.transl[:1], motion.transl),
      30.0,
    )
    (out / folder).mkdir(parents=True, exist_ok=True)
    clip = mocap.motion_to_bvh(with_rest, SKELETON, unit=100.0)
    bvh.write_bvh(out / folder / f"{folder}_01.bvh", clip, precision=8)


if __name__ == "__main__":
  main()
