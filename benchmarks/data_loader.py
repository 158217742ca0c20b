"""Input-pipeline throughput: examples/s of `jhmr.data.pipeline` (grain over a TFDS
array_record source), with and without image decoding and with augmentation, against a plain
sequential read of the same data source in the same process.

  .venv/bin/python benchmarks/data_loader.py [--examples 512] [--batch 32] [--repeats 3]

The dataset is built once into a temporary directory by `LoaderBench` (a TFDS builder defined
here): `--examples` examples shaped like the 3DPW / synthetic crops (256x256 JPEG of a smooth
random field, ~20 KB; keypoints [25, 3]; SMPL pose and shape).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import print_table  # noqa: E402

from jhmr.data import augment, crops, pipeline  # noqa: E402


class LoaderBench(tfds.core.GeneratorBasedBuilder):
  """Random examples shaped like the image datasets (for this benchmark only)."""

  name = "jhmr_loader_bench"
  VERSION = tfds.core.Version("1.0.0")
  NUM_EXAMPLES = 512

  def _info(self):
    f32 = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float32)
    features = tfds.features.FeaturesDict(
      {
        "image": tfds.features.Image(shape=(256, 256, 3), encoding_format="jpeg"),
        "keypoints2d": f32(25, 3),
        "global_orient": f32(3),
        "body_pose": f32(23, 3),
        "betas": f32(10),
      }
    )
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(self.NUM_EXAMPLES):
      coarse = rng.uniform(0, 255, (8, 8, 3))
      image = np.kron(coarse, np.ones((32, 32, 1))) + rng.normal(0, 8, (256, 256, 3))
      yield (
        i,
        {
          "image": crops.encode_image(np.clip(image, 0, 255).astype(np.uint8), "jpeg", 90),
          "keypoints2d": np.column_stack([rng.uniform(20, 236, (25, 2)), np.ones(25)]).astype(
            np.float32
          ),
          "global_orient": rng.normal(size=3).astype(np.float32),
          "body_pose": rng.normal(size=(23, 3)).astype(np.float32),
          "betas": rng.normal(size=10).astype(np.float32),
        },
      )


def _rate_once(make_iter, examples: int) -> float:
  """Examples/s of consuming `examples` examples from a fresh `make_iter()`, after one warm-up
  element or batch (thread start-up and the first prefetch are not counted)."""
  it = make_iter()
  next(it)
  start, seen = time.perf_counter(), 0
  while seen < examples:
    batch = next(it)
    seen += len(batch["betas"]) if np.ndim(batch["betas"]) == 2 else 1
  return seen / (time.perf_counter() - start)


def _rates(loaders: dict, examples: int, repeats: int) -> dict[str, float]:
  """Median examples/s per loader; the loaders take turns within each repeat, so a change in
  machine load hits all of them alike."""
  runs = {name: [] for name in loaders}
  for _ in range(repeats):
    for name, make_iter in loaders.items():
      runs[name].append(_rate_once(make_iter, examples))
  return {name: float(np.median(r)) for name, r in runs.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=512)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  LoaderBench.NUM_EXAMPLES = args.examples
  with tempfile.TemporaryDirectory() as data_dir:
    builder = LoaderBench(data_dir=data_dir, file_format="array_record")
    start = time.perf_counter()
    builder.download_and_prepare()
    print(f"built {args.examples} examples in {time.perf_counter() - start:.1f} s")
    decoded = builder.as_data_source()["train"]
    encoded = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})["train"]
    n = len(decoded)

    def sequential(source):
      return lambda: (source[i % n] for i in range(10**9))

    def grain_loader(source, transforms=(), threads=2):
      config = pipeline.LoaderConfig(
        batch_size=args.batch, seed=0, num_threads=threads, prefetch=64
      )
      return lambda: iter(
        pipeline.make_dataset(source, config, transforms, shard_index=0, shard_count=1)
      )

    aug = [
      augment.crop_jitter(),
      augment.color_jitter(),
      augment.occluders(),
      augment.keypoint_noise(),
      augment.add_heatmaps(64),
    ]
    loaders = {
      "reference decoded": sequential(decoded),
      "reference bytes": sequential(encoded),
      "grain 1 decoded": grain_loader(decoded, threads=1),
      "grain 2 decoded": grain_loader(decoded, threads=2),
      "grain 4 decoded": grain_loader(decoded, threads=4),
      "grain 2 bytes": grain_loader(encoded),
      "grain 2 augmented": grain_loader(decoded, aug),
    }
    r = _rates(loaders, args.examples, args.repeats)
    ref, ref_bytes = r["reference decoded"], r["reference bytes"]
    batch = f"batch {args.batch}"
    rows = [
      ("sequential source[i] (reference)", "decoded", ref, 1.0),
      ("sequential source[i] (reference)", "bytes", ref_bytes, 1.0),
      *[
        (f"grain, {t} thread(s), {batch}", "decoded", r[k], r[k] / ref)
        for t, k in ((t, f"grain {t} decoded") for t in (1, 2, 4))
      ],
      (f"grain, 2 threads, {batch}", "bytes", r["grain 2 bytes"], r["grain 2 bytes"] / ref_bytes),
      (f"grain + crop/colour/occluder/kp-noise/heatmaps, 2 threads, {batch}", "decoded",
       r["grain 2 augmented"], r["grain 2 augmented"] / ref),
    ]  # fmt: skip
  print_table(["loader", "image", "examples/s", "ratio vs reference"], rows)


if __name__ == "__main__":
  main()
