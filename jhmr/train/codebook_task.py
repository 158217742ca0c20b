"""Training task for DPMesh's VQ-VAE pose codebook (`jhmr.models.pose_codebook.PoseTokenizer`).

Examples are `{'rotmat': [J, 3, 3]}` body-joint rotations (root excluded). `cmu_rotmats` builds
them from the CMU motion capture (`jhmr.data.mocap.load_cmu`), and `cmu_subject_split` chooses the
held-out subjects. The EMA codebook lives in the `"codebook"` collection, the trainer's
`model_state`; its batch sums are over the global batch (see the model's docstring).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.geometry import rotations
from jhmr.models.pose_codebook import COLLECTION, PoseTokenizer, tokenizer_loss
from jhmr.train.task import Task


def cmu_rotmats(root, subjects, body_model, *, stride: int = 1, fps: float = 30) -> np.ndarray:
  """Body-joint rotation matrices [N, 23, 3, 3] float32 of the CMU clips of `subjects`, every
  `stride`-th frame at `fps`."""
  from jhmr.data.mocap import load_cmu  # noqa: PLC0415 (the data stack only when used)

  motions = load_cmu(root, subjects=subjects, body_model=body_model, fps=fps)
  pose = np.concatenate([m.body_pose[::stride] for m in motions.values()]).astype(np.float32)
  return np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(pose)), np.float32)


def make_codebook_task(tokenizer: PoseTokenizer, poses_source, *, evaluate=None) -> Task:
  """PCT tokenizer training: smooth-L1 reconstruction + commitment loss, EMA codebook update."""
  config = tokenizer.config

  def init(key, batch):
    return tokenizer.init(key, jnp.asarray(batch["rotmat"]), train=False)

  def loss(params, state, batch, key):
    del key
    out, new_state = tokenizer.apply(
      {"params": params, **state}, batch["rotmat"], train=True, mutable=[COLLECTION]
    )
    total, terms = tokenizer_loss(config, out, batch["rotmat"])
    metrics = dict(terms, perplexity=out["perplexity"])
    return total, (metrics, {**state, **new_state})

  return Task(name="pose_codebook", init=init, loss=loss, source=poses_source, evaluate=evaluate)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(tokenizer, variables, rotmat):
  out = tokenizer.apply(variables, rotmat, train=False)
  return out["recon"], out["indices"]


def reconstruct(tokenizer, variables, rotmat, batch_size: int = 256):
  """Hard-code round trip of rotmat [N, J, 3, 3] in fixed-size chunks -> (recon, indices [N, T])."""
  rotmat = np.asarray(rotmat, np.float32)
  n = len(rotmat)
  batch_size = min(batch_size, n)
  recons, indices = [], []
  for i in range(0, n, batch_size):
    x = rotmat[i : i + batch_size]
    pad = batch_size - len(x)
    x = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
    r, idx = _reconstruct(tokenizer, variables, x)
    recons.append(np.asarray(r)[: batch_size - pad])
    indices.append(np.asarray(idx)[: batch_size - pad])
  return np.concatenate(recons), np.concatenate(indices)


def codebook_metrics(tokenizer, variables, rotmat, body_model=None, batch_size: int = 256) -> dict:
  """Held-out metrics: rotmat_l1 (mean |error| of the matrix entries), perplexity and usage
  (fraction of codes used) of the hard assignments, and with a body model mpjpe_mm (mean joint
  error in mm of the 24 root-centred joints, betas 0, identity root, decoded matrices as is)."""
  recon, indices = reconstruct(tokenizer, variables, rotmat, batch_size)
  k = tokenizer.config.codebook_size
  probs = np.bincount(indices.ravel(), minlength=k) / indices.size
  nz = probs[probs > 0]
  metrics = {
    "rotmat_l1": float(np.mean(np.abs(recon - rotmat))),
    "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
    "usage": float(len(nz) / k),
  }
  if body_model is not None:

    @jax.jit
    def joint_error(a, b):
      def joints(x):
        zeros = jnp.zeros((len(x), body_model.num_betas), jnp.float32)
        eye = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (len(x), 3, 3))
        j = body_model.joints_only(zeros, x, eye, pose_format="rotmat").joints
        return j - j[:, :1]

      return jnp.linalg.norm(joints(a) - joints(b), axis=-1).mean(-1)

    errors = [
      np.asarray(joint_error(rotmat[i : i + batch_size], recon[i : i + batch_size]))
      for i in range(0, len(rotmat), batch_size)
    ]
    metrics["mpjpe_mm"] = float(1000 * np.mean(np.concatenate(errors)))
  return metrics


def make_codebook_evaluate(tokenizer, rotmat, body_model=None):
  """A `Task.evaluate` hook: `codebook_metrics` on held-out poses (EMA params, current codebook)."""

  def evaluate(params, state, step):
    del step
    return codebook_metrics(tokenizer, {"params": params, **state}, rotmat, body_model)

  return evaluate
