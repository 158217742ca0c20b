"""Training task for DPMesh (`jhmr.models.dpmesh.DPMesh`): its losses, Noisy Key-point Reasoning
(NKR) and the optimiser's parameter groups.

Batches are `jhmr.data.example.PersonExample`s. The model's 30 input joints (SMPL-30 order,
`DPMESH30_NAMES`) are formed by `dpmesh_keypoint_transform` from the example's keypoint sets by
canonical joint name (`jhmr.io.joint_maps`): the 24 SMPL joints from 'smpl24', the face joints
from 'openpose25' / 'coco17' / 'coco18', head top from 'lsp14'; joints no set has get confidence
0. The transform stores the clean joints as `keypoints_2d['dpmesh30_clean']` and the model input,
with PoseFix "realistic" errors (`jhmr.data.posefix`, as DPMesh/JOTR for every training set), as
`keypoints_2d['dpmesh30']`.

Losses (`dpmesh_losses`, research/dpmesh.md section 12; each term is a mean over all elements,
masked elements counted, as the released `.mean()`):
  body_joint_img   L1(joint_img * 64, GT joints on the 64-grid), x, y from the clean 2D labels
                   (`target_set`, 'smpl24'), weighted by confidence and truncation (inside the
                   grid); z (root-relative depth binned over 2 m into 64) only where has_3d.
  smpl_joint_img   the same against the joints of the GT SMPL fit (body model + cam_t), all three
                   coordinates, times has_smpl and truncation.
  smpl_pose        L1 on the 72-D axis-angle (root as seen in the crop), times has_smpl.
  smpl_shape       L1 on the betas, times has_smpl.
  body_joint_proj  L1 of the predicted joints projected on the 64-grid (crop camera with
                   principal point at the crop centre) against the GT 2D labels, times confidence.
  body_joint_cam   L1 on the pelvis-relative 3D joints (m, crop-rotated GT), times has_3d.
The 15 joints are `DPMESH15_NAMES` (from the 24 SMPL joints). The focal length is the true crop
focal length (intrinsics focal x crop scale), where DPMesh approximates it by the image diagonal.

Weights (`DPMeshLossWeights`): `PAPER_WEIGHTS` (default; λ2D 5 on body_joint_proj, λ3D 2 on
body_joint_cam, λSMPL 1 on pose and shape; the paper is silent on the joint_img terms, which keep
the released pre-factor 1/64) or `RELEASED_WEIGHTS` (the pre-factors as coded, 1/64, 1/64, 2, 2,
1, 2, then `automatic=True`). With `automatic`, each weighted term L_i enters as the released
AutomaticWeightedLoss 0.5 / p_i² L_i + log(1 + p_i²) with learnable p (init 1, one per term),
held in `params['loss_weights']`.

NKR (designed from the paper; the released code has pieces, no loop, research/dpmesh.md §11):
  1. teacher: train the same model with this task and `noise=False` (GT keypoints) for the
     paper's 10 epochs; keep its variables.
  2. student: `make_dpmesh_task(..., teacher_variables=teacher)`. In each step the frozen teacher's
     backbone (inference mode: no joint dropout) sees the same crop with the clean joints, the
     student the PoseFix-noised joints; L_NKR = NT-Xent (SimCLR, over the batch: positives are
     the teacher/student features of the same example, negatives the other 2B - 2 features) +
     MSE between the student's and the teacher's fused backbone features [B, 8, 8, C]
     (flattened per example), times λ_NKR 0.1 (`nkr_loss`). The gradient reaches the student
     only (the teacher is behind `stop_gradient`). The student starts from the teacher's weights
     or from scratch (caller's choice of `init_variables`). τ defaults to the released `SimCLR`'s
     1.0. The teacher's backbone params are the task's non-trained collection `TEACHER`
     (`variables['teacher']`, the trainer's `model_state`, the loss's `state`): arguments of the
     jitted step, never constants baked into the compiled program, and saved with each
     checkpoint.

Parameter groups (`param_labels`, the task's `Task.param_labels`): 'backbone' (ControlNet, U-Net
LoRA, joint prompt, fusion: the paper's backbone rate), 'head' (regressor, and the automatic loss
weights), 'frozen' (VAE, U-Net base, pose decoder): the shared trainer gives each group its rate
(`optimizer.group_learning_rates`) and frozen leaves no gradient, optimiser state or update.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.data import posefix
from jhmr.data.example import PersonExample, crop_rotation
from jhmr.geometry import rotations
from jhmr.io import joint_maps
from jhmr.models import dpmesh_backbone
from jhmr.models.compile_options import sd_compiler_options
from jhmr.models.dpmesh import DPMESH15_FROM_SMPL24, DPMESH30_NAMES, DPMesh, DPMeshOutput
from jhmr.models.dpmesh_backbone import DPMeshBackbone
from jhmr.models.dpmesh_regressor import OUTPUT_GRID, project_to_crop
from jhmr.train.task import Task

INPUT_SET = "dpmesh30"
TEACHER = "teacher"  # the non-trained collection holding the frozen NKR teacher's backbone params
CLEAN_SET = "dpmesh30_clean"
BBOX_3D_SIZE = 2.0  # metres of root-relative depth binned into the grid (`bbox_3d_size`)
TERMS = (
  "body_joint_img",
  "smpl_joint_img",
  "smpl_pose",
  "smpl_shape",
  "body_joint_proj",
  "body_joint_cam",
)
# Sets the 30 joints are looked up in, in order (the first with the joint labelled wins).
SOURCE_SETS = ("smpl24", "openpose25", "coco17", "coco18", "lsp14", "h36m17")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMeshLossWeights:
  """Weight of each term (see the module docstring) and whether the released automatic weighting
  follows them."""

  body_joint_img: float = 1 / 64
  smpl_joint_img: float = 1 / 64
  smpl_pose: float = 1.0
  smpl_shape: float = 1.0
  body_joint_proj: float = 5.0
  body_joint_cam: float = 2.0
  automatic: bool = False


PAPER_WEIGHTS = DPMeshLossWeights()
RELEASED_WEIGHTS = DPMeshLossWeights(
  smpl_pose=2.0, smpl_shape=2.0, body_joint_proj=1.0, body_joint_cam=2.0, automatic=True
)


# ----------------------------------------------------------------------------------------------
# Keypoints


def dpmesh_keypoints(keypoints_2d) -> np.ndarray:
  """`{set: [..., K, 3]}` -> `[..., 30, 3]` in SMPL-30 order: each joint from the first set of
  `SOURCE_SETS` present that labels it (confidence > 0), else zeros."""
  target = [joint_maps.CANONICAL_NAMES.get(n, n) for n in DPMESH30_NAMES]
  out = None
  for name in SOURCE_SETS:
    if name not in keypoints_2d:
      continue
    kp = np.asarray(keypoints_2d[name], np.float32)
    if out is None:
      out = np.zeros((*kp.shape[:-2], len(target), 3), np.float32)
    canon = joint_maps.canonical_names(name)
    for j, n in enumerate(target):
      if n in canon:
        src = kp[..., canon.index(n), :]
        take = (out[..., j, 2] <= 0) & (src[..., 2] > 0)
        out[..., j, :] = np.where(take[..., None], src, out[..., j, :])
  if out is None:
    raise ValueError(f"no keypoint set of {SOURCE_SETS} in the example ({sorted(keypoints_2d)})")
  return out


def dpmesh_keypoint_transform(
  noise: bool = True, keep_clean: bool = True, samples: int = 64, hide_invisible: bool = False
):
  """Per-example transform: `keypoints_2d['dpmesh30']` = the 30 input joints (`dpmesh_keypoints`),
  PoseFix-noised when `noise`; with `keep_clean` the clean ones as `'dpmesh30_clean'`. With
  `hide_invisible` the 24 SMPL joints whose `joint_visibility` is 0 (outside the crop, or covered
  by an occluder of `jhmr.data.augment`) get confidence 0 in both (a detector does not see them;
  the loss's labels in `keypoints_2d['smpl24']` keep them)."""
  corrupt = posefix.posefix_keypoints(INPUT_SET, DPMESH30_NAMES, samples=samples)

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    clean = dpmesh_keypoints(example.keypoints_2d)
    if hide_invisible:
      seen = np.asarray(example.joint_visibility, np.float32) > 0
      clean[:24] = np.where(seen[:, None], clean[:24], 0.0)
    sets = {**example.keypoints_2d, INPUT_SET: clean}
    if keep_clean:
      sets[CLEAN_SET] = clean.copy()
    example = example.replace(keypoints_2d=sets)
    return corrupt(example, rng) if noise else example

  return transform


# ----------------------------------------------------------------------------------------------
# Losses


def crop_focal_length(batch: PersonExample):
  """[B] focal length in crop pixels: intrinsics focal (x) times the crop affine's scale."""
  scale = jnp.hypot(batch.crop_from_image[:, 0, 0], batch.crop_from_image[:, 1, 0])
  return batch.intrinsics[:, 0, 0] * scale


def _to_crop(batch: PersonExample, points):
  """Camera-frame points [B, N, 3] -> crop pixels [B, N, 2] through the example's crop camera."""
  affine = batch.crop_from_image
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), (*affine.shape[:-2], 1, 3))
  proj = jnp.concatenate([affine, bottom], -2) @ batch.intrinsics
  p = jnp.einsum("bij,bnj->bni", proj, points)
  return p[..., :2] / p[..., 2:]


def _grid_joints(batch: PersonExample, joints_cam, grid: int):
  """Camera-frame joints [B, 15, 3] -> [B, 15, 3] on the grid (x, y crop px * grid / S; z the
  pelvis-relative depth binned over `BBOX_3D_SIZE`) and the truncation mask [B, 15, 3]."""
  s = batch.image.shape[-2]
  xy = _to_crop(batch, joints_cam) * (grid / s)
  z = ((joints_cam[..., 2] - joints_cam[:, :1, 2]) / (BBOX_3D_SIZE / 2) + 1) / 2 * grid
  out = jnp.concatenate([xy, z[..., None]], -1)
  inside = jnp.all((out >= 0) & (out < grid), -1, keepdims=True)
  return out, jnp.broadcast_to(inside, out.shape).astype(out.dtype)


def dpmesh_losses(
  output: DPMeshOutput,
  batch: PersonExample,
  body_model,
  weights: DPMeshLossWeights = PAPER_WEIGHTS,
  loss_weights=None,
  *,
  target_set: str = "smpl24",
  grid: int = OUTPUT_GRID,
):
  """DPMesh's losses (module docstring) -> (total, {term: unweighted value}).

  Args:
    output: the model's `DPMeshOutput` (with a translation: pass the focal length).
    batch: the `PersonExample` batch; `keypoints_2d[target_set]` [B, 24, 3] are the clean 2D
      labels of the SMPL joints.
    body_model: `jhmr.body.BodyModel` (betas truncated to its count).
    weights: `DPMeshLossWeights`.
    loss_weights: `[len(TERMS)]` the AutomaticWeightedLoss p when `weights.automatic`.
  """
  idx = np.asarray(DPMESH15_FROM_SMPL24)
  s = batch.image.shape[-2]
  nb = min(body_model.num_betas, output.betas.shape[-1], batch.betas.shape[-1])
  has_smpl = batch.has_smpl[:, None, None]
  has_3d = batch.has_3d[:, None, None]

  # Ground truth in the crop's frame.
  spin = crop_rotation(batch.crop_from_image, jnp)
  gt_root = rotations.matrix_to_axis_angle(
    spin @ rotations.axis_angle_to_matrix(batch.global_orient)
  )
  gt_pose = jnp.concatenate([gt_root[:, None], batch.body_pose], 1)  # [B, 24, 3]
  fit = body_model.joints_only(batch.betas[:, :nb], batch.body_pose, batch.global_orient)
  fit_cam = fit.joints[:, idx] + batch.cam_t[:, None]
  fit_img, fit_trunc = _grid_joints(batch, fit_cam, grid)
  gt_cam = batch.joints_3d[:, idx]
  gt_img, gt_trunc = _grid_joints(batch, gt_cam, grid)
  kp = batch.keypoints_2d[target_set][:, idx]
  kp_xy = kp[..., :2] * (grid / s)
  kp_inside = jnp.all((kp_xy >= 0) & (kp_xy < grid), -1)
  conf = (kp[..., 2] > 0) * kp_inside  # [B, 15]
  body_img = jnp.concatenate([kp_xy, gt_img[..., 2:]], -1)
  body_mask = jnp.concatenate(
    [
      jnp.broadcast_to(conf[..., None], kp_xy.shape),
      (gt_trunc[..., 2:] * conf[..., None]) * has_3d,
    ],
    -1,
  )

  # Prediction.
  pred_pose = jnp.concatenate([output.global_orient[:, None], output.body_pose], 1)
  body = body_model.joints_only(output.betas[:, :nb], output.body_pose, output.global_orient)
  joints = body.joints[:, idx]  # crop frame, no translation
  focal = crop_focal_length(batch)
  proj = project_to_crop(
    joints + output.translation[:, None], focal, crop_size=(s, s), grid_size=grid
  )
  pred_img = output.joint_img * grid
  gt_rel = jnp.einsum("bij,bnj->bni", spin, gt_cam - gt_cam[:, :1])

  terms = {
    "body_joint_img": jnp.mean(jnp.abs(pred_img - body_img) * body_mask),
    "smpl_joint_img": jnp.mean(jnp.abs(pred_img - fit_img) * fit_trunc * has_smpl),
    "smpl_pose": jnp.mean(jnp.abs(pred_pose - gt_pose) * has_smpl),
    "smpl_shape": jnp.mean(jnp.abs(output.betas[:, :nb] - batch.betas[:, :nb]) * has_smpl[..., 0]),
    "body_joint_proj": jnp.mean(jnp.abs(proj - kp_xy) * conf[..., None]),
    "body_joint_cam": jnp.mean(jnp.abs((joints - joints[:, :1]) - gt_rel) * has_3d),
  }
  weighted = jnp.stack([getattr(weights, k) * terms[k] for k in TERMS])
  if weights.automatic:
    if loss_weights is None:
      raise ValueError("automatic weighting needs the learnable loss_weights [6]")
    p2 = jnp.square(loss_weights)
    total = jnp.sum(0.5 / p2 * weighted + jnp.log1p(p2))
  else:
    total = jnp.sum(weighted)
  return total, terms


def nt_xent(a, b, temperature: float = 1.0):
  """SimCLR's NT-Xent between two views a, b [B, ...] (flattened per example): over the 2B
  L2-normalised features, cosine similarity / τ, each feature's positive is its other view and
  the other 2B - 2 are negatives; cross-entropy averaged over the 2B anchors."""
  n = a.shape[0]
  z = jnp.concatenate([a.reshape(n, -1), b.reshape(n, -1)], 0).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
  sim = (z @ z.T) / temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  logp = jax.nn.log_softmax(sim, axis=-1)
  return -jnp.mean(logp[jnp.arange(2 * n), positive])


def nkr_loss(student_feats, teacher_feats, temperature: float = 1.0, lambda_: float = 0.1):
  """L_NKR = λ (NT-Xent(student, teacher) + MSE(student, teacher)); the teacher is behind
  `stop_gradient`. Returns (λ L_NKR, {'nkr_simclr', 'nkr_mse'})."""
  teacher = jax.lax.stop_gradient(teacher_feats).astype(jnp.float32)
  student = student_feats.astype(jnp.float32)
  simclr = nt_xent(student, teacher, temperature)
  mse = jnp.mean(jnp.square(student - teacher))
  return lambda_ * (simclr + mse), {"nkr_simclr": simclr, "nkr_mse": mse}


# ----------------------------------------------------------------------------------------------
# Parameter groups and the task


def param_labels(params) -> dict:
  """'backbone' / 'head' / 'frozen' per leaf of the task's params (module docstring)."""
  out = {}
  for group, tree in dict(params).items():
    if group == "backbone":
      mask = dpmesh_backbone.trainable_mask(tree)
      out[group] = jax.tree.map(lambda t: "backbone" if t else "frozen", mask)
    elif group in ("regressor", "loss_weights"):
      out[group] = jax.tree.map(lambda _: "head", tree)
    elif group in ("pose_codebook", "vposer"):  # the frozen pose decoders
      out[group] = jax.tree.map(lambda _: "frozen", tree)
    else:
      raise ValueError(f"unknown DPMesh parameter group {group!r}")
  return out


def images_unit(batch: PersonExample):
  return jnp.asarray(batch.image, jnp.float32) / 255.0


def make_dpmesh_task(
  model: DPMesh,
  source,
  body_model,
  *,
  init_variables=None,
  teacher_variables=None,
  weights: DPMeshLossWeights = PAPER_WEIGHTS,
  noise: bool = True,
  nkr_weight: float = 0.1,
  temperature: float = 1.0,
  transforms=(),
  hide_invisible: bool = False,
  evaluate=None,
) -> Task:
  """DPMesh on `PersonExample` crops (of the model's crop size).

  Args:
    model: `DPMesh`.
    source: random-access `PersonExample`s.
    body_model: `jhmr.body.BodyModel` for the losses.
    init_variables: the starting variables (`with_pretrained(random_variables(...), ...)`): the
      task's `initial_variables` (the trainer places them without compiling an init) and what
      its `init` returns. Without them `init` calls `model.init` (compiling the SD U-Net's init:
      minutes).
    teacher_variables: a trained teacher's variables (`{'params': {'backbone': ...}, ...}`): adds
      the NKR term; its backbone params become the non-trained collection `TEACHER`.
    weights: `PAPER_WEIGHTS` or `RELEASED_WEIGHTS` (automatic: `params['loss_weights']`).
    noise: PoseFix errors on the input joints (False to train the teacher).
    nkr_weight, temperature: λ_NKR and the NT-Xent τ.
    transforms: augmentations applied before the keypoint transform.
    hide_invisible: joints with `joint_visibility` 0 are missing from the input keypoints
      (`dpmesh_keypoint_transform`).

  The task labels its parameters with `param_labels`; its training step compiles with
  `sd_compiler_options` (on CPU, XLA's faster convolutions for the SD stack).
  """
  transforms = (*transforms, dpmesh_keypoint_transform(noise=noise, hide_invisible=hide_invisible))
  backbone = DPMeshBackbone(model.config.backbone, model.attention_implementation)
  teacher = None
  if teacher_variables is not None:
    teacher = {"backbone": dict(teacher_variables["params"]["backbone"])}

  def extra_collections(variables):
    variables = {k: dict(v) for k, v in variables.items()}
    if weights.automatic:
      variables["params"]["loss_weights"] = jnp.ones((len(TERMS),), jnp.float32)
    if teacher is not None:
      variables[TEACHER] = teacher
    return variables

  initial = None if init_variables is None else extra_collections(init_variables)
  nkr = teacher is not None

  def init(key, batch):
    if initial is not None:
      return initial
    kp = jnp.asarray(batch.keypoints_2d[INPUT_SET])
    return extra_collections(model.init(key, images_unit(batch), kp, crop_focal_length(batch)))

  def loss(params, state, batch, key):
    params = dict(params)
    p = params.pop("loss_weights", None)
    model_state = {k: v for k, v in state.items() if k != TEACHER}
    images = images_unit(batch)
    out = model.apply(
      {"params": params, **model_state},
      images,
      batch.keypoints_2d[INPUT_SET],
      crop_focal_length(batch),
      train=True,
      rngs={"dropout": key},
    )
    total, metrics = dpmesh_losses(out, batch, body_model, weights, p)
    if nkr:  # the teacher comes in through `state`, not through this closure
      frozen = {"params": state[TEACHER]["backbone"]}
      t = backbone.apply(frozen, images, batch.keypoints_2d[CLEAN_SET], train=False)
      value, nkr_metrics = nkr_loss(out.backbone.fused, t.fused, temperature, nkr_weight)
      total = total + value
      metrics = {**metrics, **nkr_metrics}
    return total, (metrics, state)

  return Task(
    name="dpmesh",
    init=init,
    loss=loss,
    source=source,
    transforms=transforms,
    evaluate=evaluate,
    param_labels=param_labels,
    initial_variables=initial,
    compiler_options=sd_compiler_options(),
  )
