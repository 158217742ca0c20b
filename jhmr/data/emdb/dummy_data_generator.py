"""Writes tiny fake EMDB files in the official layout into `dummy_data/`.

Run: `python -m jhmr.data.emdb.dummy_data_generator`. Two sequences: `P0/09_outdoor_walk` (EMDB
1, 3 frames, frame 1 not good) and `P1/14_indoor_stairs` (not EMDB 1, 2 frames).
`sequence(subject, name)` returns the dict written.

The keys and value layouts are written out here from the `*_data.pkl` table of the EMDB README
(independently of the builder): `gender` ("female" / "male" / "neutral"), `name`
("{subject_id}_{sequence_id}"), `emdb1`, `emdb2`, `n_frames`, `good_frames_mask` (N,),
`camera` {`intrinsics` (3,3), `extrinsics` (N,4,4), `width`, `height`}, `smpl` {`poses_root`
(N,3), `poses_body` (N,69), `trans` (N,3), `betas` (10,)}, `kp2d` (N,24,2), `bboxes` {`bboxes`
(N,4) x_min y_min x_max y_max, `invalid_idxs`}. Images are `images/{%05d}.jpg` from 0.
"""

from __future__ import annotations

import pathlib
import pickle

import numpy as np

from jhmr.data import crops

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
SEQUENCES = {("P0", "09_outdoor_walk"): (True, 3), ("P1", "14_indoor_stairs"): (False, 2)}
IMAGE_SIZE = (48, 36)  # H, W


def sequence(subject: str, name: str, frames: int | None = None) -> dict:
  """The dict of one `SEQUENCES` entry; `frames` instead gives that many frames, all good."""
  emdb1, n = SEQUENCES[(subject, name)]
  rng = np.random.default_rng(int(subject[1:]))
  good = np.ones(frames or n, bool)
  if emdb1 and frames is None:
    good[1] = False
  n = len(good)
  h, w = IMAGE_SIZE
  lo = rng.uniform(2, 10, (n, 2))
  extrinsics = np.tile(np.eye(4), (n, 1, 1))
  q = np.linalg.qr(rng.normal(size=(n, 3, 3)))[0]
  extrinsics[:, :3, :3] = q * np.sign(np.linalg.det(q))[:, None, None]
  return {
    "name": f"{subject}_{name}", "gender": "female", "emdb1": emdb1, "emdb2": False, "n_frames": n,
    "good_frames_mask": good,
    "smpl": {"poses_root": rng.normal(0, 0.5, (n, 3)), "poses_body": rng.normal(0, 0.3, (n, 69)),
             "trans": rng.normal(size=(n, 3)), "betas": rng.normal(size=10)},
    "camera": {"intrinsics": np.array([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]]),
               "extrinsics": extrinsics, "width": w, "height": h},
    "kp2d": rng.uniform(0, 30, (n, 24, 2)),
    "bboxes": {"bboxes": np.concatenate([lo, lo + rng.uniform(15, 25, (n, 2))], 1),
               "invalid_idxs": np.flatnonzero(~good)},
  }  # fmt: skip


def main(out: pathlib.Path = DUMMY_DIR, frames: int | None = None) -> None:
  """Writes every `SEQUENCES` entry under `out` (`frames`: see `sequence`)."""
  rng = np.random.default_rng(0)
  for subject, name in SEQUENCES:
    folder = out / subject / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = sequence(subject, name, frames)
    with open(folder / f"{subject}_{name}_data.pkl", "wb") as f:
      pickle.dump(data, f, protocol=2)
    for t in range(data["n_frames"]):
      pixels = rng.integers(0, 256, IMAGE_SIZE + (3,), dtype=np.uint8)
      (folder / "images" / f"{t:05d}.jpg").write_bytes(crops.encode_image(pixels, "jpeg"))


if __name__ == "__main__":
  main()
