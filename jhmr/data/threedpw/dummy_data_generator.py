"""Writes tiny fake 3DPW files in the official layout into `dummy_data/`.

Run: `python -m jhmr.data.threedpw.dummy_data_generator`. Sequences (`SEQUENCES`): one per
split, small JPEGs, and the 3DPW_oc.json / 3DPW_pc.json subset lists. `sequence(name)` returns
the dict written for a sequence, so tests can compare decoded values.

The pickles hold every field of the official sequence files, spelled as the files spell them
(written out here, independently of the builder): the field list of the 3DPW readme
(`sequence`, `betas`, `poses`, `trans`, `poses_60Hz`, `trans_60Hz`, `betas_clothed`,
`v_template_clothed`, `texture_maps`, `jointPositions`, `img_frame_ids`, `cam_poses`,
`campose_valid`, `cam_intrinsics`) with the two names the readme spells differently from the
files: `genders` (readme: `gender`) and `poses2d` (readme: `poses2D`), as every reference loader
(SPIN, VIBE, ProHMR, WHAM) reads them. Per-actor fields are lists with one entry per actor;
`img_frame_ids` index the 60 Hz arrays (twice as long), while the images are numbered by frame.
`v_template_clothed` and `texture_maps` are tiny stand-ins (the real ones are 6890x3 vertices
and texture images), since no builder reads them.
"""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np

from jhmr.data import crops

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
# name -> (split, actors, frames); frame 2 of office_phone_00 has no 2D detection and frame 1
# of downtown_walk_00 no valid camera pose.
SEQUENCES = {
  "downtown_walk_00": ("train", 1, 3),
  "courtyard_hug_00": ("validation", 2, 2),
  "office_phone_00": ("test", 1, 3),
}
# Actor genders per sequence (the order matters: actor a is genders[a]).
GENDERS = {"downtown_walk_00": ["m"], "courtyard_hug_00": ["f", "m"], "office_phone_00": ["m"]}
IMAGE_SIZE = (64, 48)  # H, W (portrait, like most 3DPW videos)


def sequence(name: str) -> dict:
  """The official-format dict of sequence `name`."""
  _, actors, frames = SEQUENCES[name]
  rng = np.random.default_rng(sorted(SEQUENCES).index(name))
  h, w = IMAGE_SIZE
  poses2d = []
  for _ in range(actors):
    kp = np.stack(
      [rng.uniform(5, w - 5, (frames, 18)), rng.uniform(5, h - 5, (frames, 18)),
       rng.uniform(0.3, 1.0, (frames, 18))], axis=1
    )  # fmt: skip
    kp[:, 2, :3] = 0.0  # a few undetected joints
    if name == "office_phone_00":
      kp[2, 2] = 0.0  # no detection at all in frame 2
    poses2d.append(kp)
  rotation = np.linalg.qr(rng.normal(size=(frames, 3, 3)))[0]
  rotation *= np.sign(np.linalg.det(rotation))[:, None, None]
  cam_poses = np.tile(np.eye(4), (frames, 1, 1))
  cam_poses[:, :3, :3] = rotation
  cam_poses[:, :3, 3] = rng.normal(size=(frames, 3))
  valid = [np.ones(frames, bool) for _ in range(actors)]
  if name == "downtown_walk_00":
    valid[0][1] = False
  poses_60hz = [rng.normal(0, 0.3, (2 * frames, 72)) for _ in range(actors)]
  trans_60hz = [rng.normal(size=(2 * frames, 3)) for _ in range(actors)]
  frame_ids = 2 * np.arange(frames)  # 60 Hz -> image frames
  return {
    "sequence": name,
    "betas": [rng.normal(size=10) for _ in range(actors)],
    "poses": [p[frame_ids] for p in poses_60hz],
    "trans": [t[frame_ids] for t in trans_60hz],
    "poses_60Hz": poses_60hz,
    "trans_60Hz": trans_60hz,
    "betas_clothed": [rng.normal(size=10) for _ in range(actors)],
    "v_template_clothed": [rng.normal(size=(8, 3)) for _ in range(actors)],
    "genders": GENDERS[name],
    "texture_maps": [np.zeros((2, 2, 3), np.uint8) for _ in range(actors)],
    "poses2d": poses2d,
    "jointPositions": [rng.normal(size=(frames, 72)) for _ in range(actors)],
    "img_frame_ids": frame_ids,
    "cam_poses": cam_poses,
    "campose_valid": valid,
    "cam_intrinsics": np.array([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]]),
  }


def main(out: pathlib.Path = DUMMY_DIR) -> None:
  for name, (split, _, frames) in SEQUENCES.items():
    folder = out / "sequenceFiles" / split
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.pkl", "wb") as f:
      pickle.dump(sequence(name), f, protocol=2)
    images = out / "imageFiles" / name
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    for t in range(frames):
      pixels = rng.integers(0, 256, IMAGE_SIZE + (3,), dtype=np.uint8)
      (images / f"image_{t:05d}.jpg").write_bytes(crops.encode_image(pixels, "jpeg"))
  subsets = {
    "oc": [
      {"id": 0, "sequence": "office_phone_00", "file_name": "office_phone_00/image_00001.jpg"}
    ],
    "pc": [{"id": 0, "sequence": "courtyard_hug_00", "file_name": "image_00000.jpg"}],
  }
  for subset, images in subsets.items():
    (out / f"3DPW_{subset}.json").write_text(json.dumps({"images": images, "annotations": []}))


if __name__ == "__main__":
  main()
