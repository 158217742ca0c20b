"""VPoser v2 training task for the shared trainer, and its CMU motion-capture data.

`make_vposer_task(vposer, poses)` trains `jhmr.models.vposer.VPoser` with V02_05's loss
(`vposer_loss`): the encoder's BatchNorm statistics live in the trainer's `model_state`
('batch_stats'; plus 'counters' {'step'} when the extra terms are switched off after a number of
steps). V02_05 trains with Adam lr 1e-3, weight decay 1e-5, batch 128, ReduceLROnPlateau
(patience 5), early stopping (patience 10) on AMASS; those are trainer-config choices.

`cmu_vposer_poses(root, split)` gives the 63-D body poses (SMPL joints 1..21) of the CMU BVH files
under `root` (`../shared/data/cmu_mocap`), split by subject with `cmu_subject_split`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.data.mocap import cmu_subject_split, load_cmu
from jhmr.keys import KeySeq
from jhmr.models.vposer import (
  NUM_JOINTS,
  V02_05_WEIGHTS,
  VPoser,
  VPoserLossWeights,
  vposer_loss,
)
from jhmr.train.task import ArraySource, Task


def body_model_fn(body_model):
  """A `vposer_loss` body_fn: rotation matrices [B, 21, 3, 3] -> (vertices, 24 joints) of
  `body_model` with zero betas, identity root and identity hands (joints 22, 23)."""

  def fn(rotmat):
    b = rotmat.shape[0]
    eye = jnp.broadcast_to(jnp.eye(3, dtype=rotmat.dtype), (b, 2, 3, 3))
    out = body_model(
      jnp.zeros((b, body_model.num_betas), rotmat.dtype),
      jnp.concatenate([rotmat, eye], axis=1),
      jnp.broadcast_to(jnp.eye(3, dtype=rotmat.dtype), (b, 3, 3)),
      pose_format="rotmat",
    )
    return out.vertices, out.joints

  return fn


def cmu_vposer_poses(
  root: str | pathlib.Path,
  split: str = "train",
  *,
  subjects: Sequence[str] | None = None,
  body_model=None,
  fps: float = 30,
  test_fraction: float = 0.2,
) -> np.ndarray:
  """Body poses [N, 63] float32 (axis-angle of SMPL joints 1..21) of CMU mocap under `root`.

  split: 'train' or 'test' subjects of `cmu_subject_split(root, test_fraction)`, or 'all';
  `subjects` (folder names) restricts the chosen side further."""
  if split not in ("train", "test", "all"):
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
  chosen = None
  if split != "all":
    train, test = cmu_subject_split(root, test_fraction)
    chosen = train if split == "train" else test
  if subjects is not None:
    chosen = [s for s in (chosen if chosen is not None else subjects) if s in set(subjects)]
    if not chosen:
      raise ValueError(f"none of the subjects {list(subjects)} is in the {split!r} split")
  motions = load_cmu(root, chosen, body_model, fps)
  poses = np.concatenate([m.body_pose[:, :NUM_JOINTS] for m in motions.values()])
  return poses.reshape(len(poses), -1).astype(np.float32)


def make_vposer_task(
  vposer: VPoser,
  poses,
  *,
  body_model=None,
  weights: VPoserLossWeights = V02_05_WEIGHTS,
  extra_terms_until_step: int | None = None,
  evaluate=None,
) -> Task:
  """VPoser on body poses [N, 63] or [N, 21, 3] (axis-angle; e.g. `cmu_vposer_poses`).

  Args:
    body_model: an SMPL-format `BodyModel` for the mesh and joint terms (V02_05: SMPL-X
      neutral); None trains on the geodesic rotation loss alone (see `vposer_loss`).
    extra_terms_until_step: the matrot and jtr terms stop after this many steps (V02_05: 15
      epochs, i.e. 15 * N // batch_size); None keeps them on.
  """
  poses = np.asarray(poses, np.float32)
  if poses.ndim not in (2, 3) or poses.reshape(len(poses), -1).shape[-1] != NUM_JOINTS * 3:
    raise ValueError(f"poses must be [N, 63] or [N, 21, 3] axis-angle, got shape {poses.shape}")
  source = ArraySource({"pose_body": poses.reshape(len(poses), -1)})
  body_fn = None if body_model is None else body_model_fn(body_model)

  def init(key, batch):
    x = jnp.asarray(batch["pose_body"])
    variables = dict(vposer.init(key, x, jnp.zeros((x.shape[0], vposer.latent_dim))))
    if extra_terms_until_step is not None:
      variables["counters"] = {"step": jnp.zeros((), jnp.int32)}
    return variables

  def loss(params, state, batch, key):
    keys = KeySeq(key)
    x = batch["pose_body"]
    noise = jax.random.normal(keys("sample"), (x.shape[0], vposer.latent_dim), x.dtype)
    out, updated = vposer.apply(
      {"params": params, "batch_stats": state["batch_stats"]},
      x,
      noise,
      train=True,
      rngs={"dropout": keys("dropout")},
      mutable=["batch_stats"],
    )
    new_state = {"batch_stats": updated["batch_stats"]}
    extra = 1.0
    if extra_terms_until_step is not None:
      step = state["counters"]["step"]
      extra = (step < extra_terms_until_step).astype(x.dtype)
      new_state["counters"] = {"step": step + 1}
    total, terms = vposer_loss(out, x, weights=weights, body_fn=body_fn, extra_terms=extra)
    return total, (terms, new_state)

  return Task(name="vposer", init=init, loss=loss, source=source, evaluate=evaluate)
