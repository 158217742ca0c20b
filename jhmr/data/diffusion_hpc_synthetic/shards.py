"""The shard files of Diffusion-HPC's generation program (`jhmr.pipelines.diffusion_hpc`).

One shard = one `.npz` file (numpy's zip of `.npy` arrays, written with `np.savez_compressed`
through `jhmr.io.files.atomic_path`: it appears whole or not at all), named
`shard-{index:05d}-of-{count:05d}.npz`. Shard i holds every example generated from the guides
(prompts or guide images) `i * shard_size ... (i + 1) * shard_size - 1`; a shard whose guides were
all skipped holds 0 examples and still exists (it is done). Arrays (N examples, image side G,
latent side g = G / 8):

  image               [N, G, G, 3] uint8   the generated image (RGB)
  box                 [N, 3] float32       person crop box in image px: centre x, centre y, side
  intrinsics          [N, 3, 3] float32    the image's pinhole camera (px), no rotation
  global_orient       [N, 3] float32       axis-angle, camera frame (OpenCV: x right, y down)
  body_pose           [N, 23, 3] float32   axis-angle, parent relative
  betas               [N, 10] float32      shape (zero padded / cut to 10)
  cam_t               [N, 3] float32       metres, added to the body model's output
  joints_3d           [N, 24, 3] float32   SMPL joints in the camera frame (metres)
  keypoints_smpl24    [N, 24, 3] float32   (x, y, visible) projections in image px
  keypoints_openpose25 [N, 25, 3] float32  (x, y, visible) projections in image px
  depth               [N, g, g] float16    the SD 2 depth conditioning in [-1, 1]
  hardness            [N] float32          VPoser ||z||^2 of one seeded sample of the estimate
  augmentation_index  [N] int32            0 = the estimate itself, k > 0 = k-th augmentation
  guide_index         [N] int32            the guide (prompt / image) the example comes from
  prompt              [N] unicode          the text prompt
  meta                [] unicode           JSON: format, index, count, generator, settings id,
                                           the guides of the shard and the skip counts

`read_shard` checks all of it (zip CRCs included: a truncated or corrupted file raises
`ShardError` naming the problem) and returns `(arrays, meta)`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np

from jhmr.errors import InputError
from jhmr.io.files import atomic_path

FORMAT = "jhmr.diffusion_hpc.shard/1"
NUM_BETAS = 10
NAME = re.compile(r"^shard-(\d{5})-of-(\d{5})\.npz$")
FIELDS = {
  # name: (trailing shape, with 'G' / 'g' for the image / latent side; dtype kind)
  "image": (("G", "G", 3), np.uint8),
  "box": ((3,), np.float32),
  "intrinsics": ((3, 3), np.float32),
  "global_orient": ((3,), np.float32),
  "body_pose": ((23, 3), np.float32),
  "betas": ((NUM_BETAS,), np.float32),
  "cam_t": ((3,), np.float32),
  "joints_3d": ((24, 3), np.float32),
  "keypoints_smpl24": ((24, 3), np.float32),
  "keypoints_openpose25": ((25, 3), np.float32),
  "depth": (("g", "g"), np.float16),
  "hardness": ((), np.float32),
  "augmentation_index": ((), np.int32),
  "guide_index": ((), np.int32),
  "prompt": ((), np.str_),
}


class ShardError(InputError):
  """A shard file that cannot be read back (corrupted, truncated, incomplete or foreign)."""


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}.npz"


def shard_indices(count: int, process_index: int, process_count: int) -> range:
  """The shards process `process_index` of `process_count` generates: disjoint, covering all."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process {process_index} of {process_count}")
  return range(process_index, count, process_count)


def empty_arrays(image_size: int, latent_size: int) -> dict[str, np.ndarray]:
  """Arrays of 0 examples with the shapes of `FIELDS` (a shard whose guides were all skipped)."""
  out = {}
  for name, (shape, dtype) in FIELDS.items():
    dims = tuple({"G": image_size, "g": latent_size}.get(d, d) for d in shape)
    out[name] = np.zeros((0, *dims), dtype) if dtype is not np.str_ else np.zeros(0, "<U1")
  return out


def _check(arrays: dict, where: str) -> int:
  missing = sorted(set(FIELDS) - set(arrays))
  extra = sorted(set(arrays) - set(FIELDS) - {"meta"})
  if missing or extra:
    raise ShardError(f"{where}: missing arrays {missing}, unexpected {extra}")
  n = len(arrays["image"])
  sides = {}
  for name, (shape, dtype) in FIELDS.items():
    a = arrays[name]
    if len(a) != n:
      raise ShardError(f"{where}: {name} has {len(a)} rows, image has {n}")
    if a.ndim != 1 + len(shape):
      raise ShardError(f"{where}: {name} must be [N, {shape}], got shape {a.shape}")
    for d, got in zip(shape, a.shape[1:], strict=True):
      if isinstance(d, str):
        if sides.setdefault(d, got) != got:
          raise ShardError(f"{where}: {name} side {got} != {sides[d]}")
      elif d != got:
        raise ShardError(f"{where}: {name} must be [N, {shape}], got shape {a.shape}")
    if np.dtype(a.dtype).kind != np.dtype(dtype).kind:
      raise ShardError(f"{where}: {name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
  return n


def write_shard(path: str | os.PathLike, arrays: dict, meta: dict) -> pathlib.Path:
  """Writes one shard atomically (see the module docstring); returns its path."""
  path = pathlib.Path(path)
  n = _check(arrays, str(path))
  meta = {**meta, "format": FORMAT, "count": n}
  out = {k: np.asarray(arrays[k], FIELDS[k][1]) for k in FIELDS}
  with atomic_path(path, suffix=".npz") as tmp:
    with open(tmp, "wb") as f:
      np.savez_compressed(f, meta=np.asarray(json.dumps(meta, sort_keys=True)), **out)
  return path


def read_shard(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
  """A shard's arrays and meta. Raises `ShardError` for anything but a complete, valid shard."""
  path = pathlib.Path(path)
  match = NAME.match(path.name)
  if not match:
    raise ShardError(f"{path}: not a shard name (shard-XXXXX-of-YYYYY.npz)")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}  # reads every member: zip CRCs are checked
  except Exception as e:  # BadZipFile, zlib.error, EOFError, ValueError, OSError ...
    raise ShardError(f"{path}: unreadable shard ({type(e).__name__}: {e})") from e
  if "meta" not in arrays:
    raise ShardError(f"{path}: no meta record")
  try:
    meta = json.loads(str(arrays.pop("meta")))
  except ValueError as e:
    raise ShardError(f"{path}: bad meta record ({e})") from e
  if meta.get("format") != FORMAT:
    raise ShardError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
  n = _check(arrays, str(path))
  if meta.get("count") != n:
    raise ShardError(f"{path}: meta says {meta.get('count')} examples, the arrays hold {n}")
  if (meta.get("index"), meta.get("num_shards")) != (int(match[1]), int(match[2])):
    raise ShardError(f"{path}: meta names shard {meta.get('index')} of {meta.get('num_shards')}")
  return arrays, meta


def list_shards(directory: str | os.PathLike) -> list[pathlib.Path]:
  """The complete set of shards in `directory`, in index order. Raises `InputError` when there
  are none, when shards of different counts are mixed, or naming the missing indices."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise InputError(f"no generated shards: {directory} is not a directory")
  found = {}
  for p in directory.iterdir():
    m = NAME.match(p.name)
    if m:
      found[(int(m[1]), int(m[2]))] = p
  counts = {c for _, c in found}
  if not found:
    raise InputError(f"{directory}: no shard-XXXXX-of-YYYYY.npz files")
  if len(counts) != 1:
    raise InputError(f"{directory}: shards of different runs mixed (counts {sorted(counts)})")
  count = counts.pop()
  missing = [i for i in range(count) if (i, count) not in found]
  if missing:
    raise InputError(
      f"{directory}: shards {missing} of {count} are missing (generation unfinished)"
    )
  return [found[(i, count)] for i in range(count)]
