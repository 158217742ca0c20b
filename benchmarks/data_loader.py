"""Input-pipeline throughput: examples/s of `jhmr.data.pipeline.make_iterator` over a TFDS
array_record source of encoded JPEG crops, reading alone and with decoding + augmentation.

  .venv/bin/python benchmarks/data_loader.py [--examples 512] [--batch 32] [--repeats 3]
                                             [--threads 1 2]

The dataset is built once into a temporary directory by `LoaderBench` (a TFDS builder defined
here): `--examples` person examples with a 256 x 256 JPEG crop (a smooth random field
plus noise, quality 90, ~20 KB at 256 px) and every `PersonExample` label (keypoints
`openpose25` / `smpl24` projected from random camera-frame joints, SMPL pose and shape). It is
read with `tfds.decode.SkipDecoding()`, so the rows hold the encoded bytes. Cases, each with
every `--threads` count of reader threads (`make_iterator(num_threads=...)`) and, with
`--workers N`, with N worker processes of 1 thread each (`worker_count=N`, grain `mp_prefetch`):

* read: rows (encoded JPEG bytes + labels) read, shuffled and batched, no transform;
* decode: + a transform decoding the JPEG (PIL) into a `PersonExample`;
* decode + augment: + the full training chain after the decode,
  `jhmr.data.augment.default_train_transforms(body_model, occluder_bank=...)` (crop jitter,
  flip, colour, noise occluder, patch occluders cut from 8 random textures, PoseFix errors on
  `openpose25`; joint names from the 'anny-tiny' body model).

Each case takes turns with the others within each repeat (median of `--repeats`), on a fresh
iterator whose first 1 + N batches are not timed (thread and process start-up, first prefetch).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import print_table  # noqa: E402

from jhmr.body.io import load_body_model  # noqa: E402
from jhmr.data import augment, crops, pipeline  # noqa: E402
from jhmr.data.example import PersonExample  # noqa: E402

CROP = 256
AUGMENTED = "+ decode + augment.default_train_transforms(occluder_bank)"
FOCAL = 5000.0


def _f32(*shape):
  return tfds.features.Tensor(shape=shape, dtype=np.float32)


class LoaderBench(tfds.core.GeneratorBasedBuilder):
  """Random person examples with JPEG crops (for this benchmark only)."""

  name = "jhmr_loader_bench"
  VERSION = tfds.core.Version("2.0.0")
  NUM_EXAMPLES = 512

  def _info(self):
    features = tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(CROP, CROP, 3), encoding_format="jpeg"),
        "crop_from_image": _f32(2, 3),
        "intrinsics": _f32(3, 3),
        "image_size": _f32(2),
        "openpose25": _f32(25, 3),
        "smpl24": _f32(24, 3),
        "global_orient": _f32(3),
        "body_pose": _f32(23, 3),
        "betas": _f32(10),
        "cam_t": _f32(3),
        "joints_3d": _f32(24, 3),
        "group": np.int32,
        "frame": np.int32,
      }
    )
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    intrinsics = np.array([[FOCAL, 0, CROP / 2], [0, FOCAL, CROP / 2], [0, 0, 1]], np.float32)
    identity = np.eye(2, 3, dtype=np.float32)
    for i in range(self.NUM_EXAMPLES):
      coarse = rng.uniform(0, 255, (8, 8, 3))
      image = np.kron(coarse, np.ones((CROP // 8, CROP // 8, 1))) + rng.normal(
        0, 8, (CROP, CROP, 3)
      )
      cam_t = np.array([0.0, 0.2, 2.2 * FOCAL / CROP], np.float32)  # body ~ 0.8 of the crop
      joints = (rng.normal(0, 0.3, (24, 3)) * [0.6, 1.2, 0.3] + cam_t).astype(np.float32)
      proj = joints @ intrinsics.T  # identity crop: image pixels are crop pixels
      smpl24 = np.concatenate([proj[:, :2] / proj[:, 2:], np.ones((24, 1))], 1)
      openpose = np.concatenate([smpl24[:25], smpl24[:1]])[:25] + rng.normal(0, 2, (25, 3))
      openpose[:, 2] = rng.uniform(0.3, 1.0, 25)
      yield (
        i,
        {
          "image": crops.encode_image(np.clip(image, 0, 255).astype(np.uint8), "jpeg", 90),
          "crop_from_image": identity,
          "intrinsics": intrinsics,
          "image_size": np.array([CROP, CROP], np.float32),
          "openpose25": openpose.astype(np.float32),
          "smpl24": smpl24.astype(np.float32),
          "global_orient": rng.normal(0, 0.3, 3).astype(np.float32),
          "body_pose": rng.normal(0, 0.3, (23, 3)).astype(np.float32),
          "betas": rng.normal(size=10).astype(np.float32),
          "cam_t": cam_t,
          "joints_3d": joints,
          "group": np.int32(i),
          "frame": np.int32(0),
        },
      )


def decode_person(row: dict, rng: np.random.Generator) -> PersonExample:
  """A `LoaderBench` row (encoded JPEG) -> `PersonExample` (the pipeline's decode transform)."""
  del rng
  with Image.open(io.BytesIO(row["image"])) as im:
    image = np.asarray(im.convert("RGB"))
  s = image.shape[0]
  one = np.float32(1)
  return PersonExample(
    image=image,
    crop_from_image=row["crop_from_image"],
    intrinsics=row["intrinsics"],
    image_size=row["image_size"],
    keypoints_2d={"openpose25": row["openpose25"], "smpl24": row["smpl24"]},
    global_orient=row["global_orient"],
    body_pose=row["body_pose"],
    betas=row["betas"],
    cam_t=row["cam_t"],
    joints_3d=row["joints_3d"],
    joint_visibility=np.ones(24, np.float32),
    occlusion=np.zeros((s, s), bool),
    has_smpl=one,
    has_3d=one,
    group=np.asarray(row["group"], np.int32),
    frame=np.asarray(row["frame"], np.int32),
  )


def _rate_once(make_iter, examples: int, batch: int, warmup: int) -> float:
  """Examples/s of consuming `examples` examples from a fresh `make_iter()`, after `warmup`
  untimed batches."""
  it = make_iter()
  for _ in range(warmup):
    next(it)
  start, seen = time.perf_counter(), 0
  while seen < examples:
    next(it)
    seen += batch
  rate = seen / (time.perf_counter() - start)
  it.close()
  return rate


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=512)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--workers", type=int, default=0, help="> 0: also rows with processes")
  args = parser.parse_args(argv)
  LoaderBench.NUM_EXAMPLES = args.examples
  print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
  with tempfile.TemporaryDirectory() as data_dir:
    builder = LoaderBench(data_dir=data_dir, file_format="array_record")
    start = time.perf_counter()
    builder.download_and_prepare()
    print(f"built {args.examples} examples in {time.perf_counter() - start:.1f} s")
    source = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})["train"]
    nbytes = np.mean([len(source[i]["image"]) for i in range(min(len(source), 64))])
    print(f"mean JPEG size: {nbytes / 1e3:.1f} KB")
    chains = {
      "read (encoded JPEG rows)": (),
      "+ JPEG decode -> PersonExample": (decode_person,),
    }
    body_model = load_body_model("anny-tiny")  # joint names for the flip and keypoint errors
    bank_rng = np.random.default_rng(1)  # textured images to cut patch occluders from
    bank = [np.kron(bank_rng.uniform(0, 255, (8, 8, 3)), np.ones((16, 16, 1))) for _ in range(8)]
    augmentation = augment.default_train_transforms(body_model, occluder_bank=bank)
    chains[AUGMENTED] = (decode_person, augmentation)
    configs = [(t, 0) for t in args.threads] + ([(1, args.workers)] if args.workers else [])
    loaders = {
      (name, threads, workers): (
        lambda chain=chain, threads=threads, workers=workers: pipeline.make_iterator(
          source,
          args.batch,
          seed=0,
          transforms=chain,
          process_index=0,
          process_count=1,
          num_threads=threads,
          prefetch=2 * threads,
          worker_count=workers,
        )  # fmt: skip
      )
      for name, chain in chains.items()
      for threads, workers in configs
    }
    runs = {key: [] for key in loaders}
    for _ in range(args.repeats):  # the cases take turns: load drift hits all of them alike
      for key, make_iter in loaders.items():
        warmup = 1 + key[2]  # one batch per worker process: all of them have started
        runs[key].append(_rate_once(make_iter, args.examples, args.batch, warmup))
  print(f"load average after: {os.getloadavg()}")
  rows = []
  for name in chains:
    base = float(np.median(runs[(name, *configs[0])]))
    for threads, workers in configs:
      rate = float(np.median(runs[(name, threads, workers)]))
      readers = f"{threads} thread(s)" + (f" x {workers} processes" if workers else "")
      rows.append((name, readers, rate, 1e3 / rate, rate / base))
  header = ["case", "readers", "examples/s", "ms/example", f"vs {configs[0][0]} thread"]
  print(f"batch {args.batch}, {args.examples} examples per timed run, median of {args.repeats}")
  print_table(header, rows)


if __name__ == "__main__":
  main()
