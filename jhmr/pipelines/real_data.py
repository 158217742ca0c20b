"""Real benchmark data (3DPW, EMDB, Human3.6M) as the set dicts of the ScoreHMR main job.

`load_sets(config, body_model)` builds (or reuses) the TFDS builder named by `config.data.source`
in `config.data.data_dir` from the raw files in `config.data.manual_dir` ('' = TFDS's default
`<data_dir>/downloads/manual`) and returns the same sets as the synthetic path of
`jhmr.pipelines.scorehmr.build_data` (see `jhmr.pipelines.people`): per example
image [n, S, S, 3] uint8 (the builder's crop resized to `data.image_size`), rotmat [n, 24, 3, 3]
(GT SMPL pose, the root in the camera frame), betas [n, NB] (the dataset's 10 betas padded /
cut to the body model's), joints3d [n, 24, 3] (root-centred joints of that body), cam [n, 3]
(s, tx, ty) and cam_t [n, 3] (the pipeline's camera: focal `data.focal_length`, centre S / 2),
keypoints3d [n, 25, 3], keypoints_2d [n, 25, 2] crop px and confidence [n, 25] (BODY_25).

The camera: a weak-perspective (s, tx, ty) least-squares fit of the GT body's keypoints to the
dataset's own 2D keypoints in the crop (3DPW OpenPose COCO-18, EMDB projected SMPL joints, H36M
SPIN-24), converted with `weak_perspective_to_translation`; an approximation of the real
perspective camera. 2D keypoints: H36M's OpenPose BODY_25 detections where the npz has them;
otherwise (3DPW, EMDB, and H36M without them) the GT body's openpose25 keypoints projected with
that camera plus `jhmr.data.observations` detector-like noise (`people.detect`).

Sets per dataset (train on the dataset's train split, evaluate on its test split):
  threedpw  train: frames/train; keypoints: frames/test; video: frames/test runs of consecutive
            frames of one actor (no multi-view set).
  emdb      only a test split exists: train on the sequences outside EMDB 1 (config `all`),
            keypoints: EMDB 1 frames (config `emdb1`); video: their consecutive good frames.
  h36m      train: frames/train; keypoints: frames/test_p1; multiview: multiview/test_p1 (four
            cameras per frame; no video set). Entries without SMPL fits are dropped.
Sets with no example are left out (e.g. video when no run of >= 3 consecutive frames exists).
The number of examples is capped by data.num_train / num_test / num_multiview / num_sequences.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jhmr.data import builders, crops
from jhmr.geometry import cameras, rotations
from jhmr.pipelines import people

# Dataset 2D keypoint index -> (joint set of the body model, index in it).
_COCO18_TO_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
_SPIN24_TO_BODY25 = {
  0: 11, 1: 10, 2: 9, 3: 12, 4: 13, 5: 14, 6: 4, 7: 3, 8: 2, 9: 5, 10: 6, 11: 7,
  19: 0, 20: 16, 21: 15, 22: 18, 23: 17,
}  # fmt: skip
MIN_VIDEO_LENGTH = 3


def _builder(config, name: str):
  d = config.data
  data_dir = pathlib.Path(d.data_dir).expanduser()
  manual_dir = pathlib.Path(d.manual_dir).expanduser() if d.manual_dir else None
  builder = builders.make_builder(name, data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    manual = manual_dir or data_dir / "downloads" / "manual"
    if not manual.is_dir():
      raise FileNotFoundError(
        f"{name}: not prepared in data.data_dir={data_dir} and the raw files' directory "
        f"data.manual_dir={manual} does not exist (see jhmr/data/{name.split('/')[0]})"
      )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
  return builder


def _rows(config, name: str, split: str, keep=None, limit=None) -> list[dict]:
  source = _builder(config, name).as_data_source()[split]
  rows = []
  for i in range(len(source)):
    row = source[i]
    if keep is None or keep(row):
      rows.append(row)
    if limit is not None and len(rows) >= limit:
      break
  return rows


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def _resize(images, size: int) -> np.ndarray:
  return np.stack(
    [
      np.asarray(Image.fromarray(np.asarray(im)).resize((size, size), Image.BILINEAR))
      for im in images
    ]
  )


def fit_crop_camera(points, target, conf, image_size: int) -> np.ndarray:
  """Weak-perspective cam [n, 3] (s, tx, ty) fitting points [n, K, 3] (camera frame, x / y) to
  target [n, K, 2] crop px with weights conf [n, K]: (S / 2) s (X + t) + S / 2 = target.
  Examples with fewer than 2 confident points get the camera of the points' box (x1.2)."""
  half = image_size / 2
  xy, w = np.asarray(points, np.float64)[..., :2], np.asarray(conf, np.float64)
  uv = (np.asarray(target, np.float64) - half) / half  # = s (X + t)
  out = np.zeros((len(xy), 3), np.float32)
  for i in range(len(xy)):
    k = w[i] > 0
    if k.sum() >= 2:
      # Unknowns (s, s tx, s ty): u = s x + s tx, v = s y + s ty.
      a = np.zeros((2 * k.sum(), 3))
      a[0::2, 0], a[0::2, 1] = xy[i, k, 0], 1.0
      a[1::2, 0], a[1::2, 2] = xy[i, k, 1], 1.0
      sw = np.sqrt(np.repeat(w[i, k], 2))
      sol = np.linalg.lstsq(a * sw[:, None], uv[i, k].reshape(-1) * sw, rcond=None)[0]
      if sol[0] > 1e-6:
        out[i] = (sol[0], sol[1] / sol[0], sol[2] / sol[0])
        continue
    lo, hi = xy[i].min(0), xy[i].max(0)
    out[i] = (2.0 / (1.2 * max(hi - lo)), *(-(lo + hi) / 2))
  return out


@jax.jit
def _body(body_model, betas, rotmat):
  out = body_model.joints_only(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat")
  kp = body_model.joints_only(
    betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set="openpose25"
  )
  return out.joints, kp.keypoints


def _to_set(key, rows, body_model, config, reference) -> dict:
  """rows of one dataset config -> a set dict (module docstring); reference(rows, size) ->
  (index into 'smpl24' or 'openpose25', points [n, K, 2] crop px, conf [n, K])."""
  d = config.data
  size = d.image_size
  spec = people.SceneSpec(image_size=size, focal_length=d.focal_length)
  orient = np.stack([r.get("global_orient_cam", r["global_orient"]) for r in rows]).astype(
    np.float32
  )
  body_pose = np.stack([r["body_pose"] for r in rows]).astype(np.float32)
  rotmat = rotations.axis_angle_to_matrix(
    jnp.concatenate([jnp.asarray(orient)[:, None], jnp.asarray(body_pose)], axis=1)
  )
  betas = np.zeros((len(rows), body_model.num_betas), np.float32)
  raw_betas = np.stack([r["betas"] for r in rows]).astype(np.float32)
  nb = min(body_model.num_betas, raw_betas.shape[1])
  betas[:, :nb] = raw_betas[:, :nb]
  joints, keypoints = (np.asarray(x) for x in _body(body_model, jnp.asarray(betas), rotmat))
  joint_set, index, target, conf = reference(rows, size)
  model_points = (joints if joint_set == "smpl24" else keypoints)[:, index]
  cam = fit_crop_camera(model_points, target, conf, size)
  cam_t = np.asarray(
    cameras.weak_perspective_to_translation(jnp.asarray(cam), d.focal_length, size)
  )
  out = {
    "image": _resize([r["image"] for r in rows], size),
    "body_pose": body_pose,
    "global_orient": np.asarray(rotmat[:, 0]),
    "rotmat": np.asarray(rotmat),
    "betas": betas,
    "cam": cam,
    "cam_t": cam_t,
    "joints3d": joints - joints[:, :1],
    "keypoints3d": keypoints + cam_t[:, None],
  }
  openpose = [r.get("openpose") for r in rows]
  if all(o is not None and np.any(o[:, 2] > 0) for o in openpose):
    # Real BODY_25 detections (image px) -> crop px at image_size.
    kp = np.stack(
      [
        crops.crop_points(o[:, :2], r["center"], 200 * r["scale"], size)
        for o, r in zip(openpose, rows)
      ]
    )
    return dict(out, keypoints_2d=kp.astype(np.float32), confidence=np.stack(openpose)[..., 2])
  return people.detect(key, out, spec)


def _threedpw_reference(rows, size):
  kp = np.stack([r["keypoints2d_crop"] for r in rows])
  crop = rows[0]["image"].shape[0]
  return "openpose25", list(_COCO18_TO_BODY25), kp[..., :2] * size / crop, kp[..., 2]


def _emdb_reference(rows, size):
  kp = np.stack([crops.crop_points(r["keypoints2d"], r["center"], r["scale"], size) for r in rows])
  return "smpl24", list(range(24)), kp, np.ones(kp.shape[:2], np.float32)


def _h36m_reference(rows, size):
  src, dst = zip(*sorted(_SPIN24_TO_BODY25.items()))
  kp = np.stack([r["keypoints2d_crop"][list(src)] for r in rows])
  crop = rows[0]["image"].shape[0]
  return "openpose25", list(dst), kp[..., :2] * size / crop, kp[..., 2]


def video_windows(sequence, frame_index, length: int, limit: int) -> list[np.ndarray]:
  """Index arrays of up to `limit` windows of `length` consecutive frames of one sequence."""
  sequence, frame_index = np.asarray(sequence), np.asarray(frame_index)
  order = np.lexsort((frame_index, sequence))
  windows, run = [], [order[0]] if len(order) else []
  for prev, cur in zip(order[:-1], order[1:]):
    if sequence[cur] == sequence[prev] and frame_index[cur] == frame_index[prev] + 1:
      run.append(cur)
    else:
      run = [cur]
    if len(run) == length:
      windows.append(np.array(run))
      run = []
  return windows[:limit]


def _video(key, rows, body_model, config, reference, seq_key) -> dict | None:
  """Windows of data.sequence_length consecutive frames (shorter, down to MIN_VIDEO_LENGTH,
  when no sequence is that long)."""
  d = config.data
  sequence = [f"{_text(r[seq_key])}/{r.get('actor', 0)}" for r in rows]
  frame = [int(r["frame_index"]) for r in rows]
  windows = []
  for length in range(d.sequence_length, MIN_VIDEO_LENGTH - 1, -1):
    windows = video_windows(sequence, frame, length, d.num_sequences)
    if windows:
      break
  if not windows:
    return None
  picked = [rows[i] for w in windows for i in w]
  group = np.repeat(np.arange(len(windows)), len(windows[0]))
  return dict(_to_set(key, picked, body_model, config, reference), group=group)


def load_sets(config, body_model) -> dict:
  """The train / keypoints / multiview / video sets of `config.data.source` (module docstring)."""
  d = config.data
  keys = jax.random.split(jax.random.PRNGKey(config.seed + 2000), 4)
  sets = {}
  if d.source == "threedpw":
    train = _rows(config, "threedpw/frames", "train", limit=d.num_train)
    test = _rows(config, "threedpw/frames", "test")
    ref, seq_key = _threedpw_reference, "sequence"
  elif d.source == "emdb":
    emdb1 = {_text(r["sequence"]) for r in _rows(config, "emdb/emdb1", "test")}
    train = _rows(
      config, "emdb/all", "test", keep=lambda r: _text(r["sequence"]) not in emdb1,
      limit=d.num_train,
    )  # fmt: skip
    test = _rows(config, "emdb/emdb1", "test")
    ref, seq_key = _emdb_reference, "sequence"
  elif d.source == "h36m":
    has_smpl = lambda r: r["has_smpl"] > 0
    train = _rows(config, "h36m/frames", "train", keep=has_smpl, limit=d.num_train)
    test = _rows(config, "h36m/frames", "test_p1", keep=has_smpl, limit=d.num_test)
    all_smpl = lambda g: np.all(np.asarray(g["views"]["has_smpl"]) > 0)
    groups = _rows(config, "h36m/multiview", "test_p1", keep=all_smpl, limit=d.num_multiview)
    ref, seq_key = _h36m_reference, None
  else:
    raise ValueError(f"data.source {d.source!r} is not a real dataset: threedpw, emdb or h36m")
  for name, rows in (("train", train), ("keypoints", test[: d.num_test])):
    if not rows:
      raise ValueError(f"{d.source}: the {name} set is empty (data.data_dir={d.data_dir})")
  sets["train"] = _to_set(keys[0], train, body_model, config, ref)
  sets["keypoints"] = _to_set(keys[1], test[: d.num_test], body_model, config, ref)
  if seq_key is None and groups:
    views = [
      {k: np.asarray(g["views"][k])[v] for k in g["views"]} for g in groups for v in range(4)
    ]
    group = np.repeat(np.arange(len(groups)), 4)
    sets["multiview"] = dict(_to_set(keys[2], views, body_model, config, ref), group=group)
  if seq_key is not None:
    video = _video(keys[3], test, body_model, config, ref, seq_key)
    if video is not None:
      sets["video"] = video
  return sets
