"""PARE (Kocabas et al. 2021), ScoreHMR's image-feature extractor: HRNet-W32 + part attention.

image [B, 224, 224, 3] (ImageNet-normalised RGB crop, `jhmr.data.crops.crop_for_pare`)
  -> HRNet (`jhmr.models.hrnet`)                                            F [B, 56, 56, 480]
  -> part branch:  keypoint_deconv_layers (2 x [conv3x3 no bias, BN, ReLU])  P [B, 56, 56, 128]
                   keypoint_final_layer (conv1x1)               part_logits [B, 56, 56, 25]
  -> SMPL branch:  smpl_deconv_layers (same layers, own weights)             S [B, 56, 56, 128]
                   smpl_final_layer (conv1x1)                                   [B, 56, 56, 64]
  -> attention:    W = softmax over the 56*56 positions of part_logits[..., 1:] (channel 0 is
                   background), one distribution per part, no temperature
                   pose_feats[b, c, j] = sum_p W[b, p, j] S[b, p, c]                 [B, 128, 24]
                   cam_shape_feats: the same attention on smpl_final_layer(S)        [B, 64, 24]
  -> pose_6d[b, j] = per-joint linear map of pose_feats[b, :, j] (PARE's LocallyConnected2d,
                   no bias), betas / cam = Linear(flatten(cam_shape_feats)) with channel-major
                   flatten (index c * 24 + j); no mean parameters are added.

This is ScoreHMR's configuration (research/regressors.md section 1): `hrnet_w32-conv`,
`use_heatmaps='part_segm'`, keypoint attention with softmax, 2 stride-1 "deconv" layers of 128
filters, 64 SMPL features, no iterative regression. BatchNorm runs on the `batch_stats` running
statistics (eps 1e-5) unless `train=True`. Names mirror the PyTorch keys with `.` before an index
written `_` (`head.keypoint_deconv_layers.3` -> `head/keypoint_deconv_layers_3`).

6D layout: PARE was trained decoding its 6D output as `reshape(3, 2)` (a1 = x[0::2],
a2 = x[1::2]), while ScoreHMR decodes PARE's output with its own `reshape(2, 3)` layout
(a1 = x[0:3], a2 = x[3:6]), so ScoreHMR's cached `pred_pose` is mis-decoded. `rot6d_layout`
chooses: "pare" (default, the layout the weights were trained for) or "scorehmr" (reproduces
ScoreHMR's cache). `pose_6d` is the raw network output either way; features are unaffected.

ScoreHMR conditions its score model on `features(out)` = pose_feats flattened channel-major
([B, 3072]), or with `use_betas` also cam_shape_feats ([B, 3072 + 1536]), standardised with the
released `data/stats/pare_feat_stats.npz` (`load_feature_stats`, `standardise`).
"""

from __future__ import annotations

import pathlib
from typing import Literal, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jhmr.errors import InputError
from jhmr.geometry import rotations
from jhmr.models.hrnet import HRNET_W32, HRNet, HRNetConfig

NUM_JOINTS = 24
NUM_BETAS = 10
NUM_CAM = 3
INPUT_SIZE = 224
# ImageNet statistics on [0, 1] pixels; PARE / ScoreHMR normalise (x - 255 mean) / (255 std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROT6D_LAYOUTS = ("pare", "scorehmr")

# Keys of ScoreHMR's feature statistics files (`score_hmr/utils/utils.py`,
# `StandarizeImageFeatures`): PARE's file holds one mean/std pair per feature tensor, the
# ProHMR file a single pair.
PARE_STATS_KEYS = (
  "pose_feats_mean",
  "pose_feats_std",
  "cam_shape_feats_mean",
  "cam_shape_feats_std",
)
PLAIN_STATS_KEYS = ("mean", "std")


@flax.struct.dataclass
class PareOutput:
  """What the PARE head predicts (H, W: the backbone map's size, 56 for a 224 crop).

  Attributes:
    pose_feats: `[B, 128, 24]` part-attended SMPL-branch features (channel, joint), the layout of
      ScoreHMR's cached `pose_feats`.
    cam_shape_feats: `[B, 64, 24]` part-attended `smpl_final_layer` features (channel, joint).
    part_logits: `[B, H, W, 25]` part segmentation logits, channel 0 = background (PARE's
      `pred_segm_mask`, NHWC).
    pose_6d: `[B, 24, 6]` raw 6D pose, global orientation first.
    rotmat: `[B, 24, 3, 3]` `pose_6d` decoded with the head's `rot6d_layout`.
    betas: `[B, 10]` SMPL shape.
    cam: `[B, 3]` weak-perspective camera (s, tx, ty) on the crop.
  """

  pose_feats: jax.Array
  cam_shape_feats: jax.Array
  part_logits: jax.Array
  pose_6d: jax.Array
  rotmat: jax.Array
  betas: jax.Array
  cam: jax.Array


def rot6d_to_matrix(pose_6d: jax.Array, layout: Literal["pare", "scorehmr"]) -> jax.Array:
  """6D `[..., 6]` -> rotation matrices `[..., 3, 3]` in PARE's (3, 2) or ScoreHMR's (2, 3) layout.

  "pare" reads the two columns interleaved (a1 = x[0::2], a2 = x[1::2]); "scorehmr" reads them
  one after the other (a1 = x[0:3], a2 = x[3:6], `jhmr.geometry.rotations.rot6d_to_matrix`).
  """
  if layout not in ROT6D_LAYOUTS:
    raise ValueError(f"rot6d_layout must be one of {ROT6D_LAYOUTS}, got {layout!r}")
  if layout == "pare":
    pose_6d = pose_6d[..., (0, 2, 4, 1, 3, 5)]
  return rotations.rot6d_to_matrix(pose_6d)


def part_attention(features: jax.Array, part_logits: jax.Array) -> jax.Array:
  """PARE's keypoint attention: features `[B, H, W, C]`, part logits `[B, H, W, J]` -> `[B, C, J]`.

  Each part's logits are soft-maxed over the H*W positions (no temperature); the output is the
  attention-weighted sum of the features, per part.
  """
  b, h, w, j = part_logits.shape
  weights = jax.nn.softmax(part_logits.reshape(b, h * w, j), axis=1)
  return jnp.einsum("bpj,bpc->bcj", weights, features.reshape(b, h * w, features.shape[-1]))


class PareHead(nn.Module):
  """PARE's head in ScoreHMR's configuration: backbone map `[B, H, W, in_channels]` -> `PareOutput`.

  Attributes:
    in_channels: channels of the backbone map (480 for HRNet-W32); checked against the input.
    num_deconv_layers: stride-1 conv3x3 + BN + ReLU layers in each branch (2).
    num_deconv_filters: their channels (128), also the pose feature size.
    num_features_smpl: channels of `smpl_final_layer` (64), the cam/shape feature size.
    rot6d_layout: how `rotmat` decodes `pose_6d`: "pare" (trained layout) or "scorehmr".
  """

  in_channels: int = 480
  num_deconv_layers: int = 2
  num_deconv_filters: int = 128
  num_features_smpl: int = 64
  rot6d_layout: Literal["pare", "scorehmr"] = "pare"

  @nn.compact
  def __call__(self, features: jax.Array, train: bool = False) -> PareOutput:
    if features.ndim != 4 or features.shape[-1] != self.in_channels:
      raise ValueError(
        f"backbone features must be [B, H, W, {self.in_channels}], got shape {features.shape}"
      )
    if self.rot6d_layout not in ROT6D_LAYOUTS:
      raise ValueError(f"rot6d_layout must be one of {ROT6D_LAYOUTS}, got {self.rot6d_layout!r}")
    batch = features.shape[0]
    part = self._branch(features, "keypoint_deconv_layers", train)
    smpl = self._branch(features, "smpl_deconv_layers", train)
    part_logits = nn.Conv(NUM_JOINTS + 1, (1, 1), name="keypoint_final_layer")(part)
    cam_shape_map = nn.Conv(self.num_features_smpl, (1, 1), name="smpl_final_layer")(smpl)
    logits = part_logits[..., 1:]  # channel 0 is the background
    pose_feats = part_attention(smpl, logits)
    cam_shape_feats = part_attention(cam_shape_map, logits)
    # pose_mlp: PARE's LocallyConnected2d, one bias-free [C, 6] map per joint.
    kernel = self.param(
      "pose_mlp",
      nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,)),
      (NUM_JOINTS, self.num_deconv_filters, 6),
    )
    pose_6d = jnp.einsum("bcj,jco->bjo", pose_feats, kernel)
    flat = cam_shape_feats.reshape(batch, -1)  # channel-major: index c * 24 + j
    betas = nn.Dense(NUM_BETAS, name="shape_mlp")(flat)
    cam = nn.Dense(NUM_CAM, name="cam_mlp")(flat)
    return PareOutput(
      pose_feats=pose_feats,
      cam_shape_feats=cam_shape_feats,
      part_logits=part_logits,
      pose_6d=pose_6d,
      rotmat=rot6d_to_matrix(pose_6d, self.rot6d_layout),
      betas=betas,
      cam=cam,
    )

  def _branch(self, x, name: str, train: bool):
    """PyTorch Sequential [Conv2d, BatchNorm2d, ReLU] * n: modules at indices 3i and 3i + 1."""
    for i in range(self.num_deconv_layers):
      x = nn.Conv(
        self.num_deconv_filters, (3, 3), padding=1, use_bias=False, name=f"{name}_{3 * i}"
      )(x)
      x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"{name}_{3 * i + 1}"
      )(x)
      x = nn.relu(x)
    return x


class Pare(nn.Module):
  """PARE: HRNet + `PareHead`. images `[B, H, W, 3]` (H, W multiples of 32) -> `PareOutput`.

  The official model takes 224 x 224 crops (`jhmr.data.crops.crop_for_pare`) and has
  32,860,710 parameters (PARE's 32,861,502 less HRNet's unused `final_layer`).

  Attributes:
    hrnet: the backbone's `HRNetConfig` (W32 default); the head reads its `out_channels`.
    num_deconv_layers, num_deconv_filters, num_features_smpl, rot6d_layout: see `PareHead`.
  """

  hrnet: HRNetConfig = HRNET_W32
  num_deconv_layers: int = 2
  num_deconv_filters: int = 128
  num_features_smpl: int = 64
  rot6d_layout: Literal["pare", "scorehmr"] = "pare"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> PareOutput:
    features = HRNet(self.hrnet, name="backbone")(images, train)
    return PareHead(
      in_channels=self.hrnet.out_channels,
      num_deconv_layers=self.num_deconv_layers,
      num_deconv_filters=self.num_deconv_filters,
      num_features_smpl=self.num_features_smpl,
      rot6d_layout=self.rot6d_layout,
      name="head",
    )(features, train)


# ----------------------------------------------------------------------------------------------
# ScoreHMR's conditioning features


def features(output: PareOutput, use_betas: bool = False) -> jax.Array:
  """ScoreHMR's conditioning vector (before standardisation), flattened channel-major.

  `[B, C * 24]`: pose_feats (C = 128: 3072 values), or with `use_betas` pose_feats then
  cam_shape_feats (3072 + 1536), as ScoreHMR's `cat((pose_feats, cam_shape_feats), 1)
  .reshape(B, -1)` (`eval/eval_keypoint_fitting.py`).
  """
  batch = output.pose_feats.shape[0]
  parts = [output.pose_feats.reshape(batch, -1)]
  if use_betas:
    parts.append(output.cam_shape_feats.reshape(batch, -1))
  return jnp.concatenate(parts, axis=-1)


class FeatureStats(NamedTuple):
  """Per-dimension feature statistics: `mean [C]`, `std [C]` (float32); standardise with
  `(features - mean) / std`. A tuple, so `mean, std = stats` works."""

  mean: np.ndarray
  std: np.ndarray


def load_feature_stats(path: str | pathlib.Path, use_betas: bool = False) -> FeatureStats:
  """ScoreHMR's feature statistics file -> `FeatureStats` for `features(out, use_betas)`.

  Two layouts are accepted, as ScoreHMR reads them (`StandarizeImageFeatures`):
    PARE (`pare_feat_stats.npz`): `pose_feats_mean/std` and `cam_shape_feats_mean/std`, each
      flattened (C-order, i.e. channel-major for (128, 24) arrays); with `use_betas` the pose
      and cam/shape statistics are concatenated in that order.
    plain (`prohmr_feat_stats.npz`): `mean` and `std`, used as they are (not with `use_betas`).

  Raises:
    FileNotFoundError: no such file.
    InputError: unreadable file, neither layout (the keys found are named), mean and std of
      different sizes, or a std that is not finite and positive.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"feature statistics not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: np.asarray(data[k]) for k in data.files}
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: not a readable .npz file ({e})") from None
  if set(PARE_STATS_KEYS) <= set(arrays):
    pose = [arrays[k].reshape(-1) for k in PARE_STATS_KEYS[:2]]
    cam_shape = [arrays[k].reshape(-1) for k in PARE_STATS_KEYS[2:]]
    mean, std = (np.concatenate([p, c]) for p, c in zip(pose, cam_shape)) if use_betas else pose
  elif set(PLAIN_STATS_KEYS) <= set(arrays):
    if use_betas:
      raise InputError(
        f"{path}: use_betas needs the PARE keys {PARE_STATS_KEYS}; the file has {sorted(arrays)}"
      )
    mean, std = (arrays[k].reshape(-1) for k in PLAIN_STATS_KEYS)
  else:
    raise InputError(
      f"{path}: unknown feature statistics layout; expected the keys {PARE_STATS_KEYS} (PARE) "
      f"or {PLAIN_STATS_KEYS}, found {sorted(arrays)}"
    )
  if mean.shape != std.shape:
    raise InputError(f"{path}: mean has {mean.size} values but std has {std.size}")
  if not (np.all(np.isfinite(std)) and np.all(std > 0)):
    raise InputError(f"{path}: std must be finite and positive everywhere")
  return FeatureStats(mean.astype(np.float32), std.astype(np.float32))


def standardise(feats: jax.Array, stats: FeatureStats) -> jax.Array:
  """`(feats - mean) / std` over the last axis `[..., C]`; raises ValueError if C differs."""
  mean, std = stats
  if feats.shape[-1] != np.shape(mean)[-1]:
    raise ValueError(
      f"features have {feats.shape[-1]} dimensions but the statistics {np.shape(mean)[-1]} "
      "(use_betas mismatch?)"
    )
  return (feats - jnp.asarray(mean)) / jnp.asarray(std)


def normalise_crop(crop: np.ndarray) -> np.ndarray:
  """uint8 RGB `[..., 3]` -> float32 `(x / 255 - mean) / std` with ImageNet statistics."""
  x = np.asarray(crop, np.float32) / 255.0
  return (
    (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
  ).astype(np.float32)
