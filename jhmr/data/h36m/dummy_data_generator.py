"""Writes tiny fake Human3.6M npz files (SPIN format) and images into `dummy_data/`.

Run: `python -m jhmr.data.h36m.dummy_data_generator`. `arrays(split)` returns what is written.
test_p1 has frames 1-2 of S9 Directions_1 from all four cameras and frame 3 from three cameras
only (an incomplete multi-view group); test_p2 has no SMPL arrays (optional keys missing).
"""

from __future__ import annotations

import pathlib

import numpy as np

from jhmr.data import crops

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
CAMERAS = ("54138969", "55011271", "58860488", "60457274")
IMAGE_SIZE = 40


def _names(split: str) -> list[str]:
  if split == "train":
    return [f"images/S1_Walking_1.{CAMERAS[0]}_{f:06d}.jpg" for f in (1, 2)]
  if split == "test_p1":
    names = [f"images/S9_Directions_1.{c}_{f:06d}.jpg" for f in (1, 2) for c in CAMERAS]
    return names + [f"images/S9_Directions_1.{c}_000003.jpg" for c in CAMERAS[:3]]
  return [f"images/S11_Eating.{CAMERAS[3]}_000001.jpg"]


def arrays(split: str) -> dict[str, np.ndarray]:
  names = _names(split)
  n = len(names)
  rng = np.random.default_rng(len(split))
  out = {
    "imgname": np.array(names),
    "center": rng.uniform(15, 25, (n, 2)),
    "scale": rng.uniform(0.1, 0.15, n),
    "part": np.concatenate([rng.uniform(5, 35, (n, 24, 2)), np.ones((n, 24, 1))], -1),
    "S": rng.normal(size=(n, 24, 4)),
  }
  if split != "test_p2":
    out |= {"pose": rng.normal(0, 0.3, (n, 72)), "shape": rng.normal(size=(n, 10))}
    out["has_smpl"] = np.ones(n)
  return out


def main(out: pathlib.Path = DUMMY_DIR) -> None:
  from jhmr.data.h36m.h36m_dataset_builder import FILES  # noqa: PLC0415

  rng = np.random.default_rng(0)
  for split, filename in FILES.items():
    data = arrays(split)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / filename, **data)
    for name in data["imgname"]:
      (out / name).parent.mkdir(parents=True, exist_ok=True)
      pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
      (out / name).write_bytes(crops.encode_image(pixels, "jpeg"))


if __name__ == "__main__":
  main()
