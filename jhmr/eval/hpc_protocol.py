"""Diffusion-HPC's SMART / Ski-Pose evaluation (research/diffusion_hpc.md §4, §8.9) and its numbers.

As DAPA's `eval_diffusion.py` computes them:
* PCK (`--eval_type 2d`): SMPL joints 25..48 (SPIN's 24 ground-truth-set joints) projected with
  focal 5000 into the 224 px crop (`crop_translation`, `project_to_crop`), compared with the
  24 ground-truth joints whose confidence is exactly 1. A joint is correct when its distance
  is strictly below 22.4 px (224 / 10). Per image: the fraction correct; an image without any
  annotated joint scores 0 and still counts (DAPA's zero-initialised array). PCK = the mean
  over images x 100. SMART's number is per action (`pck_per_action`).
* Ski 3D: the prediction is `J_regressor_h36m` (17 joints) applied to the neutral mesh, minus
  its pelvis (joint 0); the ground truth `S` (17 x 3, or 17 x 4 with a column of ones) minus its
  pelvis. 16 joints are kept (joint 9, "Head (H36M)", is dropped); MPJPE and PA-MPJPE
  (similarity Procrustes, `jhmr.eval.metrics`) x 1000 -> mm, per sample.
`REFERENCE` holds the numbers of the released checkpoints (Diffusion-HPC README).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jhmr.eval import metrics

CROP_SIZE = 224
FOCAL_LENGTH = 5000.0
PCK_THRESHOLD = CROP_SIZE / 10  # 22.4 px
NUM_GT_JOINTS = 24
"""SPIN's 24 ground-truth joints (the SMPL joint output's rows 25..48)."""
NUM_H36M = 17
PELVIS = 0
HEAD_H36M = 9
"""Dropped from the Ski joints."""
SKI_JOINTS = tuple(j for j in range(NUM_H36M) if j != HEAD_H36M)
"""The 16 H36M joints of the Ski evaluation."""
REFERENCE = {
  "smart_polevault_pck": 77.70,
  "ski_mpjpe": 111.67,
  "ski_pa_mpjpe": 81.76,
}
"""Diffusion-HPC's released checkpoints (README): pole vault PCK@22.4px (%); Ski-Pose test MPJPE
and PA-MPJPE (mm, 16 joints) of the model fine-tuned on `ski8481_real` (all 8481 train rows)."""


def crop_translation(pred_camera, focal_length: float = FOCAL_LENGTH, size: int = CROP_SIZE):
  """SPIN's weak-perspective camera [..., 3] (s, tx, ty) -> translation [..., 3]
  (tx, ty, 2 f / (size s + 1e-9))."""
  cam = jnp.asarray(pred_camera)
  depth = 2 * focal_length / (size * cam[..., 0] + 1e-9)
  return jnp.stack([cam[..., 1], cam[..., 2], depth], -1)


def project_to_crop(joints, cam_t, focal_length: float = FOCAL_LENGTH, size: int = CROP_SIZE):
  """Joints [..., J, 3] + translation [..., 3] -> crop px [..., J, 2] (principal point at the
  crop centre, identity rotation)."""
  p = jnp.asarray(joints) + jnp.asarray(cam_t)[..., None, :]
  return focal_length * p[..., :2] / p[..., 2:3] + size / 2


def pck_per_image(pred_2d, gt_2d, threshold: float = PCK_THRESHOLD):
  """pred_2d [N, 24, 2] and gt_2d [N, 24, 3] (x, y, conf) in crop px -> [N] fractions in [0, 1]
  of the joints with conf == 1 closer than `threshold` (strictly); 0 where no joint has conf 1."""
  pred = jnp.asarray(pred_2d)
  gt = jnp.asarray(gt_2d, pred.dtype)
  if gt.ndim != 3 or gt.shape[-1] != 3 or pred.shape != gt.shape[:-1] + (2,):
    raise ValueError(f"expected pred [N, K, 2] and gt [N, K, 3], got {pred.shape}, {gt.shape}")
  annotated = gt[..., 2] == 1
  dist = jnp.linalg.norm(pred - gt[..., :2], axis=-1)
  correct = (dist < jnp.asarray(threshold, dist.dtype)) & annotated
  count = jnp.sum(annotated, -1)
  return jnp.where(count > 0, jnp.sum(correct, -1) / jnp.maximum(count, 1), 0.0)


def pck(pred_2d, gt_2d, threshold: float = PCK_THRESHOLD):
  """Diffusion-HPC's PCK (module docstring): mean of `pck_per_image` x 100."""
  return 100.0 * jnp.mean(pck_per_image(pred_2d, gt_2d, threshold))


def pck_per_action(pred_2d, gt_2d, actions: Sequence, threshold: float = PCK_THRESHOLD):
  """{action: PCK} over the images of each action (`actions`: [N] labels, e.g. the `action`
  feature of the `smart` builder rows), in sorted order of the labels."""
  per_image = np.asarray(pck_per_image(pred_2d, gt_2d, threshold))
  labels = np.asarray([a.decode() if isinstance(a, bytes) else str(a) for a in actions])
  if labels.shape != per_image.shape:
    raise ValueError(f"expected {per_image.shape[0]} action labels, got {labels.shape}")
  return {a: float(100.0 * per_image[labels == a].mean()) for a in sorted(set(labels))}


def ski_joints(joints17):
  """[..., 17, 3+] H36M joints -> [..., 16, 3]: pelvis-centred, joint 9 dropped."""
  j = jnp.asarray(joints17)[..., :3]
  if j.shape[-2] != NUM_H36M:
    raise ValueError(f"expected [..., {NUM_H36M}, 3] joints, got {jnp.shape(joints17)}")
  return metrics.center_on_root(j, PELVIS)[..., jnp.asarray(SKI_JOINTS), :]


def ski_errors(pred_vertices, gt_S, h36m_regressor) -> dict[str, jnp.ndarray]:
  """Ski-Pose 3D errors per sample, in mm for metre-valued inputs.

  Args:
    pred_vertices: [N, V, 3] predicted (neutral) mesh vertices.
    gt_S: [N, 17, 3] or [N, 17, 4] ground-truth H36M joints (the `ski_pose` builder's
      `joints3d`, legs already swapped back; a 4th column is ignored).
    h36m_regressor: [17, V] `J_regressor_h36m`.

  Returns:
    {'mpjpe': [N], 'pa_mpjpe': [N]} x 1000, on the 16 pelvis-centred joints.
  """
  regressor = jnp.asarray(h36m_regressor)
  pred = jnp.einsum("jv,nvc->njc", regressor, jnp.asarray(pred_vertices, regressor.dtype))
  pred, gt = ski_joints(pred), ski_joints(gt_S)
  return {
    "mpjpe": 1000.0 * metrics.mpjpe(pred, gt),
    "pa_mpjpe": 1000.0 * metrics.pa_mpjpe(pred, gt),
  }
