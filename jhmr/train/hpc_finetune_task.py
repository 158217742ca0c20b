"""Diffusion-HPC's HMR fine-tuning: SPIN's trainer as released, on real + synthetic examples.

`make_hpc_finetune_task(model, real_source, synthetic_source, body_model, config=...)` returns the
`jhmr.train.task.Task` that Diffusion-HPC runs (DAPA's `train.py --adapt_baseline`, i.e. SPIN's
`Trainer`; research/diffusion_hpc.md section 3), not the paper's Eq. 7:

* Data (`MixedSource`): item 2k is real example k (mod the real count), item 2k + 1 synthetic
  example k (mod the synthetic count), each marked with `PersonExample.synthetic` (0 / 1); its
  length is twice the larger set (SPIN's MixedDataset: an epoch is the larger dataset, each sample
  real or synthetic with probability 1/2). The input pipeline shuffles the items globally, so
  every epoch of the stream is exactly half real, half synthetic and each batch is half of each
  in expectation (a batch of 64 holds 32 +- 4 of each; SPIN's own batches vary the same way).
  Only `config.keypoint_set` is kept of each example's keypoint sets, so both sides batch.
  Without a synthetic source (None) every item is real: SPIN on the real data alone, the
  baseline that credits the generated pairs.
* Losses (SPIN `train/trainer.py` as Diffusion-HPC runs it; each a mean as released):
    keypoints2d  real samples (and synthetic ones with `synthetic_keypoints`): confidence x
                 squared error of the predicted `keypoint_set` (weak-perspective, [-1, 1] crop
                 coordinates, `tasks.predicted_body`), averaged over ALL [B, K, 2] entries of the
                 batch (zero-confidence and masked entries count, as SPIN's `.mean()`).
    pose         synthetic samples with has_smpl: MSE of the rotation matrices of the 23 body
                 joints (global orientation excluded), averaged over those samples only.
    betas        the same samples: MSE of betas[1:].
    camera       exp(-10 s)^2 of the predicted weak-perspective scale s, averaged over the batch
                 (SPIN: every sample; `camera_on_real=False` restricts it to synthetic ones).
  total = loss_scale (60) x (keypoints2d weight x keypoints2d + pose weight x pose + betas weight
  x betas + camera weight x camera). SPIN multiplies the WHOLE loss by 60, the 2D term too.
  Real samples never get an SMPL term (the released code would regress them towards its
  zero-initialised fits; research/diffusion_hpc.md section 3), whatever their has_smpl says.
* Augmentation (`spin_transforms`, SPIN's BaseDataset with Diffusion-HPC's options): rotation
  clip(N, -2, 2) x 30 deg with probability 0.4 (SPIN: "set to 0 with probability 0.6"), no
  scale jitter (scale_factor 0), flip with probability 0.5 (pose and keypoints mirrored), a
  per-channel gain U(0.6, 1.4); all through `jhmr.data.augment`.
* Model: `jhmr.models.hmr.HMR` (SPIN's ResNet-50 + iterative 6D head; `jhmr.convert.spin` reads
  SPIN's checkpoint), fully fine-tuned in training mode (dropout, BatchNorm batch statistics).
  Images are normalised with ImageNet statistics (`image_normalisation='imagenet'`, SPIN's; a
  regressor trained by `tasks.make_hmr_task` wants 'jhmr').
* Optimiser (the trainer config, not this section): Adam, learning rate `LEARNING_RATE` 1e-4, no
  weight decay, batch `BATCH_SIZE` 64, constant rate; SPIN has no gradient clipping and no EMA.

The config section (`default_config()`; ml_collections) holds the loss weights and options above:
  keypoints2d, pose, betas, camera   weights (SPIN: 5, 1, 0.001, 1)
  loss_scale                         60
  keypoint_set                       the 2D label set both sources carry ('openpose25')
  synthetic_keypoints                False; True also puts the 2D term on synthetic samples (the
                                     released data gives synthetic pairs 2D labels, projected from
                                     their mesh, so the released run has it)
  camera_on_real                     True (SPIN: the regulariser on every sample)
  image_normalisation                'imagenet' (SPIN) or 'jhmr' (`tasks.normalise_images`)
  augment.{rotation_deg, rotation_prob, scale_factor, flip_prob, color_low, color_high}
                                     30, 0.4, 0.0, 0.5, 0.6, 1.4
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jhmr.data import augment
from jhmr.data.crops import IMAGENET_MEAN, IMAGENET_STD
from jhmr.data.example import PersonExample
from jhmr.train.task import Task
from jhmr.train.tasks import hmr_targets, normalise_images, predicted_body

LEARNING_RATE = 1e-4  # SPIN / DAPA `--lr 1e-4`, Adam, weight decay 0
BATCH_SIZE = 64  # SPIN's default batch size
TERMS = ("keypoints2d", "pose", "betas", "camera")
NORMALISATIONS = ("imagenet", "jhmr")


def default_config() -> ml_collections.ConfigDict:
  """The task's config section with SPIN's values (fields in the module docstring)."""
  return ml_collections.ConfigDict(
    dict(
      keypoints2d=5.0,
      pose=1.0,
      betas=0.001,
      camera=1.0,
      loss_scale=60.0,
      keypoint_set="openpose25",
      synthetic_keypoints=False,
      camera_on_real=True,
      image_normalisation="imagenet",
      augment=dict(
        rotation_deg=30.0,
        rotation_prob=0.4,
        scale_factor=0.0,
        flip_prob=0.5,
        color_low=0.6,
        color_high=1.4,
      ),
    )
  )


def normalise_imagenet(images):
  """uint8 `[..., S, S, 3]` -> float32 `(x / 255 - mean) / std` (ImageNet statistics), traceable."""
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def _shapes(example: PersonExample) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(example)[0]
  return {jax.tree_util.keystr(p): np.shape(v) for p, v in leaves}


class MixedSource:
  """Random access over real and synthetic `PersonExample`s, alternating (see module docstring).

  Item 2k: `real[k % len(real)]` with `synthetic = 0`; item 2k + 1: `synthetic[k % len(synth)]`
  with `synthetic = 1`; `len` = 2 x the larger set. `synthetic=None`: item k is `real[k]`, `len` =
  the real count. Only `keypoint_set` of `keypoints_2d` is kept.
  Raises ValueError when a source is empty, lacks the keypoint set, or its examples are shaped
  unlike the other's (image size, number of betas, ...), naming the field.
  """

  def __init__(self, real, synthetic, keypoint_set: str = "openpose25"):
    self.real, self.synthetic, self.keypoint_set = real, synthetic, keypoint_set
    for name, source in (("real", real), ("synthetic", synthetic)):
      if source is not None and len(source) == 0:
        raise ValueError(f"the {name} source is empty")
    if synthetic is None:
      self[0]  # checks the keypoint set
      return
    a, b = _shapes(self[0]), _shapes(self[1])
    for field in sorted(set(a) | set(b)):
      if a.get(field) != b.get(field):
        raise ValueError(
          f"real and synthetic examples differ in {field}: {a.get(field)} vs {b.get(field)}"
        )

  def __len__(self) -> int:
    if self.synthetic is None:
      return len(self.real)
    return 2 * max(len(self.real), len(self.synthetic))

  def __getitem__(self, index) -> PersonExample:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} outside [0, {len(self)})")
    k, is_synthetic = (index, 0) if self.synthetic is None else divmod(index, 2)
    source = self.synthetic if is_synthetic else self.real
    example = source[k % len(source)]
    if self.keypoint_set not in example.keypoints_2d:
      raise ValueError(
        f"{'synthetic' if is_synthetic else 'real'} example {k % len(source)} has no keypoint "
        f"set {self.keypoint_set!r} (has {sorted(example.keypoints_2d)})"
      )
    return example.replace(
      keypoints_2d={self.keypoint_set: np.asarray(example.keypoints_2d[self.keypoint_set])},
      synthetic=np.float32(is_synthetic),
    )


def spin_transforms(body_model, keypoint_set: str, augment_config) -> Sequence:
  """SPIN's training augmentation (module docstring) as `jhmr.data.augment` transforms."""
  a = augment_config
  return (
    augment.crop_jitter(a.scale_factor, a.rotation_deg, a.rotation_prob, 0.0),
    augment.flip(augment.flip_permutations(body_model, [keypoint_set]), a.flip_prob),
    augment.color_jitter(a.color_low, a.color_high),
  )


def _check_config(config) -> None:
  missing = sorted(set(default_config().keys()) - set(config.keys()))
  if missing:
    raise ValueError(f"hpc_finetune config lacks {missing}; start from default_config()")
  if config.image_normalisation not in NORMALISATIONS:
    raise ValueError(
      f"image_normalisation must be one of {NORMALISATIONS}, got {config.image_normalisation!r}"
    )
  for name in TERMS + ("loss_scale",):
    if not np.isfinite(config[name]) or config[name] < 0:
      raise ValueError(f"hpc_finetune.{name} must be a finite weight >= 0, got {config[name]}")


def hpc_losses(out, batch: PersonExample, body_model, config) -> dict:
  """The four unweighted SPIN terms (module docstring) of HMR outputs `out` on a mixed batch."""
  if batch.synthetic is None:
    raise ValueError("the batch has no PersonExample.synthetic flags; read it through MixedSource")
  synthetic = batch.synthetic.astype(jnp.float32)
  real = 1.0 - synthetic
  target = hmr_targets(batch, body_model, config.keypoint_set)
  _, kp2d = predicted_body(out, body_model, config.keypoint_set)
  kp_mask = jnp.ones_like(real) if config.synthetic_keypoints else real
  conf = target["keypoint_conf"] * kp_mask[:, None]
  keypoints2d = jnp.mean(conf[..., None] * jnp.square(kp2d - target["keypoints2d"]))
  smpl = synthetic * batch.has_smpl
  count = jnp.maximum(jnp.sum(smpl), 1.0)  # SPIN: 0 when no sample has SMPL labels
  pose_err = jnp.mean(jnp.square(out["rotmat"][:, 1:] - target["rotmat"][:, 1:]), axis=(1, 2, 3))
  nb = out["betas"].shape[-1]
  betas_err = jnp.mean(jnp.square(out["betas"][:, 1:] - target["betas"][:, 1:nb]), axis=-1)
  cam_mask = jnp.ones_like(real) if config.camera_on_real else synthetic
  camera = jnp.square(jnp.exp(-10.0 * out["cam"][:, 0]))
  return {
    "keypoints2d": keypoints2d,
    "pose": jnp.sum(smpl * pose_err) / count,
    "betas": jnp.sum(smpl * betas_err) / count,
    "camera": jnp.sum(cam_mask * camera) / cam_mask.shape[0],
  }


def total_loss(terms: dict, config):
  """loss_scale x the weighted sum of `hpc_losses`' terms."""
  return config.loss_scale * sum(config[name] * terms[name] for name in TERMS)


def make_hpc_finetune_task(
  model,
  real_source,
  synthetic_source,
  body_model,
  *,
  config=None,
  initial_variables=None,
  evaluate=None,
) -> Task:
  """The fine-tuning `Task` (module docstring) of `model` (`jhmr.models.hmr.HMR`).

  Args:
    real_source, synthetic_source: random-access `PersonExample`s (real photographs with 2D
      labels; generated image-mesh pairs with SMPL labels, has_smpl 1) of one crop size and
      number of betas, both carrying `config.keypoint_set`. `synthetic_source=None` trains on
      the real examples alone.
    body_model: the SMPL-format body model of the labels.
    config: the section of `default_config()` (None: the defaults).
    initial_variables: the starting weights ({'params', 'batch_stats'}, e.g. a converted SPIN
      checkpoint); None initialises `model` at random.
    evaluate: optional `evaluate(params, state, step) -> metrics` hook.
  Metrics: the four unweighted terms and the fraction of synthetic samples in the batch.
  """
  config = default_config() if config is None else config
  _check_config(config)
  source = MixedSource(real_source, synthetic_source, config.keypoint_set)
  normalise = normalise_imagenet if config.image_normalisation == "imagenet" else normalise_images

  def init(key, batch):
    return model.init(key, normalise(batch.image), train=False)

  def loss(params, state, batch, key):
    out, new_state = model.apply(
      {"params": params, **state},
      normalise(batch.image),
      train=True,
      rngs={"dropout": key},
      mutable=["batch_stats"],
    )
    terms = hpc_losses(out, batch, body_model, config)
    metrics = dict(terms, synthetic_fraction=jnp.mean(batch.synthetic.astype(jnp.float32)))
    return total_loss(terms, config), (metrics, new_state)

  return Task(
    name="hpc_finetune",
    init=init,
    loss=loss,
    source=source,
    transforms=spin_transforms(body_model, config.keypoint_set, config.augment),
    evaluate=evaluate,
    initial_variables=initial_variables,
  )
