"""Writes tiny fake Human3.6M npz files and images into `dummy_data/`.

Run: `python -m jhmr.data.h36m.dummy_data_generator`. `arrays(split)` returns what is written
for a split. The npz keys are written out here as the preprocessing scripts that make the real
files write them, independently of the builder:

  train, test_p1: SPIN's `dataset_extras` layout (SPIN `datasets/preprocess/h36m*.py`, read by
    SPIN's `datasets/base_dataset.py`): imgname, center (px), scale (box side / 200), part
    (24,3), S (24,4), plus the SMPL fits pose (72) / shape (10) / has_smpl of the training
    files. test_p1 has frames 1-2 of S9 Directions_1 from all four cameras and frame 3 from
    three cameras only (an incomplete multi-view group).
  test_p2: ProHMR's layout as ScoreHMR reads it (ProHMR `dataset_preprocessing/
    preprocess_h36m.py`, ScoreHMR `score_hmr/datasets/image_dataset.py`) for the protocol-2
    file: imgname, center (px), scale (box side in px, not / 200), extra_keypoints_2d (19,3),
    extra_keypoints_3d (19,4); no SMPL fits (their optional keys are absent).

`scorehmr_arrays(names)` gives a full ScoreHMR-layout entry set (SMPL fits and OpenPose
keypoints too) for tests that write their own files.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jhmr.data import crops

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
CAMERAS = ("54138969", "55011271", "58860488", "60457274")
IMAGE_SIZE = 40
# The preprocessed files' names (SPIN's `config.py`), by the builder's split.
FILES = {
  "train": "h36m_train.npz",
  "test_p1": "h36m_valid_protocol1.npz",
  "test_p2": "h36m_valid_protocol2.npz",
}
# SPIN's preprocessing puts the 17 Human3.6M joints into these rows of its 24-joint order
# (`global_idx`); the other rows stay 0 with confidence 0.
H36M_ROWS = (14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6)


def _names(split: str) -> list[str]:
  if split == "train":
    return [f"images/S1_Walking_1.{CAMERAS[0]}_{f:06d}.jpg" for f in (1, 2)]
  if split == "test_p1":
    names = [f"images/S9_Directions_1.{c}_{f:06d}.jpg" for f in (1, 2) for c in CAMERAS]
    return names + [f"images/S9_Directions_1.{c}_000003.jpg" for c in CAMERAS[:3]]
  return [f"images/S11_Eating.{CAMERAS[3]}_000001.jpg"]


def _joints(rng, n: int, rows: int, dims: int) -> np.ndarray:
  """Joints at SPIN's 17 Human3.6M rows (of `rows`) with confidence 1, the rest 0."""
  out = np.zeros((n, rows, dims + 1))
  out[:, H36M_ROWS, :dims] = rng.uniform(5, 35, (n, 17, dims))
  out[:, H36M_ROWS, dims] = 1.0
  return out


def arrays(split: str) -> dict[str, np.ndarray]:
  names = _names(split)
  n = len(names)
  rng = np.random.default_rng(len(split))
  if split == "test_p2":  # ProHMR / ScoreHMR layout, scale in px
    return {
      "imgname": np.array(names),
      "center": rng.uniform(15, 25, (n, 2)),
      "scale": rng.uniform(20, 30, n),
      "extra_keypoints_2d": _joints(rng, n, 19, 2),
      "extra_keypoints_3d": _joints(rng, n, 19, 3) / [30.0, 30.0, 30.0, 1.0],
    }
  out = {
    "imgname": np.array(names),
    "center": rng.uniform(15, 25, (n, 2)),
    "scale": rng.uniform(0.1, 0.15, n),
    "part": np.concatenate([rng.uniform(5, 35, (n, 24, 2)), np.ones((n, 24, 1))], -1),
    "S": rng.normal(size=(n, 24, 4)),
    "pose": rng.normal(0, 0.3, (n, 72)),
    "shape": rng.normal(size=(n, 10)),
    "has_smpl": np.ones(n),
  }
  out["S"][..., 3] = 1.0  # confidence
  return out


def scorehmr_arrays(names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
  """A full ScoreHMR-layout npz for `names`: every key of ScoreHMR's loader, the second entry
  without betas (has_betas 0)."""
  n = len(names)
  rng = np.random.default_rng(seed)
  has_betas = np.ones(n)
  has_betas[1:2] = 0
  body_3d = np.concatenate([rng.normal(size=(n, 25, 3)), np.ones((n, 25, 1))], -1)
  return {
    "imgname": np.array(names),
    "center": rng.uniform(15, 25, (n, 2)),
    "scale": rng.uniform(20, 30, n),
    "body_pose": rng.normal(0, 0.3, (n, 72)),
    "has_body_pose": np.ones(n),
    "betas": rng.normal(size=(n, 10)),
    "has_betas": has_betas,
    "body_keypoints_2d": np.concatenate(
      [rng.uniform(5, 35, (n, 25, 2)), rng.uniform(0.2, 1, (n, 25, 1))], -1
    ),
    "extra_keypoints_2d": _joints(rng, n, 19, 2),
    "body_keypoints_3d": body_3d,
    "extra_keypoints_3d": _joints(rng, n, 19, 3) / [30.0, 30.0, 30.0, 1.0],
  }


def write_images(out: pathlib.Path, names, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  for name in names:
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    (out / name).write_bytes(crops.encode_image(pixels, "jpeg"))


def main(out: pathlib.Path = DUMMY_DIR) -> None:
  out.mkdir(parents=True, exist_ok=True)
  names = []
  for split, filename in FILES.items():
    data = arrays(split)
    np.savez(out / filename, **data)
    names += list(data["imgname"])
  write_images(out, names)


if __name__ == "__main__":
  main()
