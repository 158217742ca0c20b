"""Writes tiny fake SMART annotations and images into `dummy_data/`.

Run: `python -m jhmr.data.smart.dummy_data_generator`. `videos(file)` returns the JSON lists:
three pole-vault ('cgt') videos of 7 frames (one frame without joints), one high-jump and one
badminton video; five vault ('vt') videos and one '271' video of 2 frames; sixteen diving
videos of 12 frames (frame 0 of video 3 has too few visible joints).

The layout is written out here as the official SMART v1 annotation files have it (SportsCap's
`annotations/Table_VideoInfo_*.json`, independently of the builder): a list of videos
{`VideoId`, `VideoName`, `action_labels`, `frames`}, each frame {`img_name`, `motion_label`,
`joints` (25 x [x, y, flag], OpenPose BODY_25 order, flag inverted: 0 = visible), `bbox`
[x, y, w, h], `frame_id`, `img_hw` [H, W]}. The images are small (one per video).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from jhmr.data import crops

DUMMY_DIR = pathlib.Path(__file__).resolve().parent / "dummy_data"
IMAGE_HW = (40, 40)
FILES = {
  "Table_VideoInfo_polevalut_highjump_badminton.json": [("cgt", 7)] * 3 + [("tg", 2), ("bd", 2)],
  "Table_VideoInfo_gym.json": [("vt", 2)] * 5 + [("271", 2)],
  "Table_VideoInfo_diving.json": [("dv", 12)] * 16,
}


def _frame(rng, video: str, label: str, t: int, diving: bool) -> dict:
  xy = np.round(rng.uniform(5, 35, (25, 2)), 2)
  flags = rng.integers(0, 2, 25) * 0  # visible (inverted flag 0) ...
  flags[3] = 1  # ... except one joint
  lo, hi = xy.min(0), xy.max(0)
  meta = {
    "img_name": f"{video}.jpg",  # one file per video
    "motion_label": label,
    "joints": np.column_stack([xy, flags]).tolist(),
    "bbox": [*lo.tolist(), *(hi - lo).tolist()],
    "frame_id": t + 1,
    "img_hw": list(IMAGE_HW),
  }
  if diving:
    meta["bbox"] = [5.0, 6.0, 20.0, 25.0]
    if video.endswith("003") and t == 0:
      meta["joints"] = [[1.0, 1.0, 2.0]] * 25  # nothing visible
  return meta


def videos(file: str) -> list[dict]:
  rng = np.random.default_rng(len(file))
  out = []
  for v, (label, frames) in enumerate(FILES[file]):
    name = f"{label}_{v:03d}"
    metas = [_frame(rng, name, label, t, "diving" in file) for t in range(frames)]
    if label == "cgt" and v == 2:
      metas[4]["joints"] = []
    out.append({"VideoId": -1, "VideoName": name, "action_labels": label, "frames": metas})
  return out


def main(out: pathlib.Path = DUMMY_DIR) -> None:
  pixels = np.random.default_rng(0).integers(0, 256, IMAGE_HW + (3,), dtype=np.uint8)
  jpeg = crops.encode_image(pixels, "jpeg")
  for file in FILES:
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    data = videos(file)
    (out / "annotations" / file).write_text(json.dumps(data))
    for video in data:
      for meta in video["frames"]:
        (out / "images" / meta["img_name"]).parent.mkdir(parents=True, exist_ok=True)
        (out / "images" / meta["img_name"]).write_bytes(jpeg)


if __name__ == "__main__":
  main()
