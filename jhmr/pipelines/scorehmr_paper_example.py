"""Example files in the released ScoreHMR layouts, for the paper program's self-check default.

`write_example(root, body_model)` renders synthetic people of `body_model` (`jhmr.data.synthesis`:
64 px images that are their own crops, camera f = 5000 px at the image centre) and writes what
ScoreHMR's `download_data.sh` / `download_hmr2_preds.sh` would put under a ScoreHMR checkout, in
the layouts of `jhmr.data.scorehmr_files` (research/scorehmr.md §5):

  data/datasets/3dpw_test.npz               single people (keypoint fitting rows)
  data/datasets/3dpw_test_video.pkl         clips (a list of group dicts)
  data/datasets/h36m_val_multiview.pkl      people seen from several views (a list of groups)
  data/datasets/mannequin.pkl               the same, another draw
  cache/hmr2b/<set>.npz / .pkl              "HMR 2.0b" estimates: the ground truth corrupted like
                                            a regressor (`observations.corrupt_pose`)
  data/stats/pare_feat_stats.npz            PARE's layout, mean 0 / std 1 (3072 pose features)
  data/SMPL_to_J19.pkl                      a stand-in J19 regressor: 19 rows of the body model's
                                            own joint regressor (J19's order, pelvis at 14)
  images/<set>/<i>.png                      the rendered images

Ground truth 3D keypoints are the body model's OpenPose-25 keypoints and the stand-in J19 joints
of the true body (conf 1); 2D keypoints the synthetic detector's. None of it is ScoreHMR's data:
the program says so in its table. Randomness: `KeySeq(seed)`, drawn by name.
"""

from __future__ import annotations

import pathlib
import pickle

import jax.numpy as jnp
import numpy as np
from PIL import Image

from jhmr.data import observations, synthesis
from jhmr.geometry import rotations
from jhmr.keys import KeySeq

J19_FROM_SMPL24 = (8, 5, 2, 1, 4, 7, 21, 19, 17, 16, 18, 20, 12, 15, 0, 9, 6, 15, 15)
"""The stand-in J19: LSP's 14 (right ankle ... left wrist, neck, head top ~ SMPL head), then
pelvis (14), thorax ~ spine3, spine ~ spine2, jaw ~ head, head."""
NUM_BETAS = 10  # the released files' betas
SETS = {
  # set name -> (grouped, image folder)
  "3dpw_test": (False, "threedpw"),
  "3dpw_test_video": (True, "threedpw"),
  "h36m_val_multiview": (True, "h36m"),
  "mannequin": (True, "mannequin"),
}


def _betas10(betas) -> np.ndarray:
  betas = np.asarray(betas, np.float32)
  return np.pad(betas, ((0, 0), (0, max(0, NUM_BETAS - betas.shape[1]))))[:, :NUM_BETAS]


def _weak_perspective(cam_t, focal_length: float, size: int) -> np.ndarray:
  """[N, 3] (s, tx, ty) of a crop camera seeing translations `cam_t` (inverse of
  `cameras.weak_perspective_to_translation`)."""
  s = 2.0 * focal_length / (size * cam_t[:, 2])
  return np.stack([s, cam_t[:, 0], cam_t[:, 1]], -1).astype(np.float32)


def _rows(people, body_model, j19, names) -> dict:
  """The §5 keys of a `PersonExample` batch."""
  n, size = len(people.betas), people.crop_size
  rotmat = rotations.axis_angle_to_matrix(
    jnp.concatenate([people.global_orient[:, None], people.body_pose], 1)
  )
  out = body_model(
    jnp.asarray(people.betas),
    rotmat[:, 1:],
    rotmat[:, 0],
    jnp.asarray(people.cam_t),
    pose_format="rotmat",
    joint_set="openpose25",
  )
  ones = np.ones((n, 1), np.float32)
  keypoints3d = np.asarray(out.keypoints, np.float32)
  extra3d = np.einsum("kv,bvd->bkd", j19, np.asarray(out.vertices)).astype(np.float32)
  return {
    "imgname": np.asarray(names),
    "center": np.full((n, 2), size / 2, np.float32),
    "scale": np.full(n, float(size), np.float32),
    "body_pose": np.concatenate([people.global_orient, people.body_pose.reshape(n, 69)], 1),
    "has_body_pose": np.ones(n, np.float32),
    "betas": _betas10(people.betas),
    "has_betas": np.ones(n, np.float32),
    "body_keypoints_2d": people.keypoints_2d["openpose25"].astype(np.float32),
    "extra_keypoints_2d": np.zeros((n, 19, 3), np.float32),
    "body_keypoints_3d": np.concatenate([keypoints3d, np.repeat(ones[:, None], 25, 1)], -1),
    "extra_keypoints_3d": np.concatenate([extra3d, np.repeat(ones[:, None], 19, 1)], -1),
  }


def _hmr2b(key, people, spec: synthesis.SceneSpec) -> dict:
  """Regressor-like estimates of a batch: its ground truth through `corrupt_pose`."""
  noisy = observations.corrupt_pose(
    key,
    {
      "global_orient": people.global_orient,
      "body_pose": people.body_pose,
      "betas": people.betas,
      "transl": people.cam_t,
    },
  )
  pose = jnp.concatenate([noisy["global_orient"][:, None], noisy["body_pose"]], 1)
  cam_t = np.asarray(noisy["transl"], np.float32)
  return {
    "pred_betas": _betas10(noisy["betas"]),
    "pred_pose": np.asarray(rotations.axis_angle_to_matrix(pose), np.float32),
    "pred_cam": _weak_perspective(cam_t, spec.focal_length, spec.crop_size),
    "pred_cam_t": cam_t,
  }


def _split(arrays: dict, group: np.ndarray) -> list[dict]:
  return [{k: v[group == g] for k, v in arrays.items()} for g in np.unique(group)]


def write_example(
  root,
  body_model,
  *,
  seed: int = 0,
  people: int = 16,
  clips: int = 2,
  clip_length: int = 16,
  views: int = 4,
) -> dict[str, pathlib.Path]:
  """Writes the example tree under `root` (module docstring); returns {'data_dir', 'threedpw',
  'h36m', 'mannequin'} (the image roots). Existing files are overwritten."""
  root = pathlib.Path(root)
  keys = KeySeq(seed)
  spec = synthesis.SceneSpec()
  source = synthesis.PoseSource("demo_mix")
  j19 = np.asarray(body_model.J_regressor, np.float32)[list(J19_FROM_SMPL24)]
  draws = {
    "3dpw_test": lambda k: synthesis.single_view_set(k, people, body_model, source, spec),
    "3dpw_test_video": lambda k: synthesis.video_set(
      k, clips, clip_length, body_model, source, spec
    ),
    "h36m_val_multiview": lambda k: synthesis.multiview_set(
      k, people // views, views, body_model, source, spec
    ),
    "mannequin": lambda k: synthesis.multiview_set(
      k, people // views, views, body_model, source, spec
    ),
  }
  for d in ("data/datasets", "data/stats", "cache/hmr2b"):
    (root / d).mkdir(parents=True, exist_ok=True)
  dirs = {"data_dir": root}
  for name, (grouped, folder) in SETS.items():
    batch = draws[name](keys.child(name))
    image_dir = root / "images" / folder
    image_dir.mkdir(parents=True, exist_ok=True)
    dirs[folder] = image_dir
    names = []
    for i, image in enumerate(batch.image):
      names.append(f"{name}_{i:04d}.png")
      Image.fromarray(image).save(image_dir / names[-1])
    rows, preds = _rows(batch, body_model, j19, names), _hmr2b(keys(f"{name}/hmr2b"), batch, spec)
    if grouped:
      for path, value in (
        (root / f"data/datasets/{name}.pkl", _split(rows, batch.group)),
        (root / f"cache/hmr2b/{name}.pkl", _split(preds, batch.group)),
      ):
        path.write_bytes(pickle.dumps(value, protocol=2))
    else:
      np.savez(root / f"data/datasets/{name}.npz", **rows)
      np.savez(root / f"cache/hmr2b/{name}.npz", **preds)
  zeros, ones = np.zeros((128, 24), np.float32), np.ones((128, 24), np.float32)
  np.savez(  # PARE's layout: pose features [128, 24], camera/shape features [64, 24]
    root / "data/stats/pare_feat_stats.npz",
    pose_feats_mean=zeros, pose_feats_std=ones,
    cam_shape_feats_mean=zeros[:64], cam_shape_feats_std=ones[:64],
  )  # fmt: skip
  (root / "data/SMPL_to_J19.pkl").write_bytes(pickle.dumps(j19, protocol=2))
  return dirs
