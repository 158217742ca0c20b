"""Writes tiny fake Ski-Pose labels and images into `dummy_data/`.

Run: `python -m jhmr.data.ski_pose.dummy_data_generator`. `labels(split)` returns the arrays
written: 3 train rows and 2 test rows.

The layout is written out here as research/diffusion_hpc.md §4 documents the official files
(independently of the builder): `<split>/labels.h5` with datasets `seq`, `cam`, `frame`, `subj`
(one integer per row), `3D` (17 x 3 joints per row, Human3.6M order; the test file stores it
flat as 51 numbers per row), `2D` (17 x 2 per row in [0, 1] of the image); images
`<split>/seq_{seq:03d}/cam_{cam:02d}/image_{frame:06d}.png`, 256 x 256 RGB.

The 3D joints are recognisable: joint j of row i is (100 i + j, 10 + j, 20 + j) / 100 m plus a
root offset, so the file's rows 1-3 (the dataset's flipped "right" leg) and 4-6 are known.
"""

from __future__ import annotations

import pathlib

import h5py
import numpy as np
from PIL import Image

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
ROWS = {"train": 3, "test": 2}
SIDE = 256


def labels(split: str) -> dict[str, np.ndarray]:
  n = ROWS[split]
  rng = np.random.default_rng(n)
  i = np.arange(n)[:, None]
  j = np.arange(17)[None, :]
  joints3d = np.stack([100 * i + j, 10 + j + 0 * i, 20 + j + 0 * i], -1) / 100.0
  joints3d = joints3d + np.array([0.5, -0.25, 4.0])  # not root-centred in the file
  joints2d = rng.uniform(0.25, 0.75, (n, 17, 2))
  return {
    "seq": np.arange(n) + 1,
    "cam": np.full(n, 2 if split == "train" else 5),
    "frame": np.arange(n) * 7,
    "subj": np.full(n, 3),
    "3D": joints3d.astype(np.float32),
    "2D": joints2d.astype(np.float32),
  }


def main(out: pathlib.Path = DUMMY_DIR) -> None:
  ramp = np.linspace(0, 255, SIDE).astype(np.uint8)
  pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128 + 0 * ramp[:, None]), -1)
  for split in ROWS:
    (out / split).mkdir(parents=True, exist_ok=True)
    data = labels(split)
    with h5py.File(out / split / "labels.h5", "w") as f:
      for key, value in data.items():
        f[key] = value.reshape(len(value), -1) if split == "test" and key == "3D" else value
    for seq, cam, frame in zip(data["seq"], data["cam"], data["frame"]):
      image = out / split / f"seq_{seq:03d}" / f"cam_{cam:02d}" / f"image_{frame:06d}.png"
      image.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels).save(image)


if __name__ == "__main__":
  main()
