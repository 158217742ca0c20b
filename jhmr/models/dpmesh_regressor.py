"""DPMesh's JOTR-style SMPL regressor: fused features [B, 8, 8, 2048] -> root 6D, pose code, betas,
camera, and per-decoder-layer 3D joint locations (research/dpmesh.md sections 7-9).

  model = DPMeshRegressor(DPMESH_REGRESSOR)            # the paper (48 VQ pose tokens)
  model = DPMeshRegressor(DPMESH_REGRESSOR_RELEASED, pose_decoder=vposer)   # the released code
  variables = model.init(key, jnp.zeros((1, 8, 8, 2048)))
  out = model.apply(variables, features, focal_length=focal_from_image_size(image_hw))
  out.root_rotmat [B, 3, 3], out.pose_code, out.body_pose (when a decoder is given),
  out.betas [B, 10], out.translation [B, 3], out.joint_img [layers, B, 15, 3]

Architecture (EternalEvan/DPMesh `common/model.py`, `common/nets/transformer.py`, `nets/module.py`):
- 3D branch: 1x1 conv `conv2d_to_3d` C_in -> dim * depth, split channel-major into a volume
  [B, depth, H, W, dim] (torch `'b (c d) h w -> b c d h w'`); three anchor channels Z = (i/D)^k,
  Y = i/H, X = i/W (all i/8 in DPMesh; k = clip(`exponent`, 1, 20), learnable, init 3) are
  appended; a 1x1x1 conv
  `conv_3d_coord` (dim + 3 -> dim); the depth*H*W = 512 tokens, in (d, h, w) order, plus a fixed 1D
  sinusoid table go through `refine_3d` (post-norm encoder layers, FFN 1024, final LayerNorm).
- 2D branch: 1x1 conv `down_linear` C_in -> dim, 64 tokens (row-major), DETR 2D sine positions
  (dim/2 per axis, normalised to 2 pi).
- `transformer`: DETR post-norm encoder (FFN 2048, no final norm) and decoder. Queries: `smpl_tgt`
  for the SMPL tokens and `kp_tgt` for the 15 joint tokens (zero-init); query positions:
  `spose_shape_cam_param` (randn) then `query` (nn.Embedding(15, dim)). After every decoder layer
  the shared `decoder.norm` is applied and its output feeds the next layer; the 15 joint tokens
  predict `joint_img` in [0, 1]^3 (layer 0: sigmoid(Linear(dim -> 3)); later layers add
  Linear([tokens, inverse_sigmoid(joint_img)] -> 3) in inverse-sigmoid space); the volume is
  sampled trilinearly (align_corners=True, zeros outside) at (x, y, z^k) and the 15 samples become
  memory tokens with positions `fc_pos_3d(inverse_sigmoid(joint_img))` (Linear, LayerNorm, ReLU,
  Linear). Layer 0 attends to the 64 image tokens; later layers to 64 + the 15 latest samples.
- Heads, cascaded over the decoder layers' SMPL tokens h_l (`out_0 = Lin(h_0)`,
  `out_l = out_{l-1} + Lin([h_l, out_{l-1}])`): `cascade_root_pose_out` (6), `cascade_pose_out`
  (the pose code), `cascade_shape_out` (10; the checkpoint's `cascade_shaoe_out`),
  `cascade_cam_out` (3).

Paper vs released code (`DPMESH_REGRESSOR` vs `DPMESH_REGRESSOR_RELEASED`):
- Pose code. Paper: 48 VQ tokens between the root and shape queries (queries: root, 48 codes,
  shape, cam; `common/vq_model.py`), each with 2048 codebook logits -> `pose_code [B, 48, 2048]`.
  Released: 3 SMPL queries (pose, shape, cam); the pose token gives both the root 6D and a 32-D
  VPoser code -> `pose_code [B, 32]`. The pose decoder is injected (`pose_decoder`, any callable or
  flax module mapping `pose_code` to the body pose); it receives the raw head output (the
  codebook's soft lookup applies the softmax itself, research/dpmesh.md section 8).
- Camera: each sample its own focal length by default; the released code uses sample 0's for the
  whole batch (`shared_focal=True`, research/dpmesh.md section 19.7).
- 2D sine positions: DETR's frequencies by default; the released `PositionEmbeddingSine` truncates
  the frequency exponent to 0 (`torch.div(..., rounding_mode='trunc')`), so all 128 frequencies
  per axis are 1 (`released_sine_frequencies=True`; the checkpoints need it).

Camera (section 9): `cam_param = (tx, ty, g)`, translation `(tx, ty, sigmoid(g) * f * 2.5 / 256)`
with f the full-image diagonal sqrt(H^2 + W^2) of the sample's original image; projection onto the
256 crop with principal point (128, 128) (`project_to_crop`). The root 6D uses DPMesh's layout
(`view(3, 2)`: rows of the first two columns interleaved), not `rotations.rot6d_to_matrix`'s.

Dropout (0.1 everywhere, as the released modules) is active only with `train=True` and a
'dropout' rng.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jhmr.geometry import cameras, rotations
from jhmr.models.sd_layers import attention, attention_probabilities

Dtype = Any

CROP_SIZE = (256, 256)  # (H, W) of the crop the released model sees (`input_img_shape`)
CAMERA_3D_SIZE = 2.5  # metres (`camera_3d_size`)
OUTPUT_GRID = 64  # joint_img / projections live on a 64-grid of the crop (`output_hm_shape`)


@dataclasses.dataclass(frozen=True)
class DPMeshRegressorConfig:
  """Sizes of the regressor. Defaults: the paper, with the released code where the paper is silent
  (`configs/main_train.yml`: 2 encoder, 4 decoder layers)."""

  in_channels: int = 2048  # the fusion output (section 6)
  dim: int = 256
  heads: int = 8
  enc_layers: int = 2  # `transformer.encoder` and `refine_3d` (both `cfg.enc_layers`)
  dec_layers: int = 4
  ffn_dim: int = 2048  # `transformer`
  refine_ffn_dim: int = 1024  # `refine_3d`
  depth: int = 8  # depth bins of the volume; the anchors are i / depth
  num_joints: int = 15
  pose_tokens: int = 48  # paper: 48 VQ tokens; 0 = body code from the pose token (released)
  pose_code_dim: int = 2048  # paper: codebook logits per token; released: 32 (VPoser)
  num_betas: int = 10
  dropout: float = 0.1
  exponent_init: float = 3.0
  exponent_range: tuple[float, float] = (1.0, 20.0)
  camera_3d_size: float = CAMERA_3D_SIZE
  crop_size: tuple[int, int] = CROP_SIZE
  shared_focal: bool = False  # released: sample 0's focal length for the whole batch
  released_sine_frequencies: bool = False  # released: all 2D sine frequencies 1 (trunc division)
  layer_norm_eps: float = 1e-5

  @property
  def num_smpl_queries(self) -> int:
    """Root/pose, the pose-code tokens, shape, cam."""
    return self.pose_tokens + 3


DPMESH_REGRESSOR = DPMeshRegressorConfig()
DPMESH_REGRESSOR_RELEASED = dataclasses.replace(
  DPMESH_REGRESSOR,
  pose_tokens=0,
  pose_code_dim=32,
  shared_focal=True,
  released_sine_frequencies=True,
)
DPMESH_REGRESSOR_TINY = dataclasses.replace(
  DPMESH_REGRESSOR_RELEASED,
  in_channels=16,
  dim=32,
  heads=4,
  enc_layers=1,
  dec_layers=3,
  ffn_dim=48,
  refine_ffn_dim=40,
  depth=4,
  shared_focal=False,
)
DPMESH_REGRESSOR_TINY_PAPER = dataclasses.replace(
  DPMESH_REGRESSOR_TINY, pose_tokens=5, pose_code_dim=12, released_sine_frequencies=False
)


@struct.dataclass
class DPMeshRegressorOutput:
  """Everything downstream (body model, losses of section 12, NKR features of section 11) needs.

  Attributes:
    root_pose_6d: [B, 6] root orientation in DPMesh's 6D layout (`view(3, 2)`).
    root_rotmat: [B, 3, 3] its rotation matrix (Gram-Schmidt, as `rot6d_to_axis_angle`).
    root_pose: [B, 3] axis-angle.
    pose_code: [B, 32] (released, VPoser) or [B, pose_tokens, classes] logits (paper, VQ).
    body_pose: the pose decoder's output for `pose_code`, or None without a decoder.
    betas: [B, num_betas].
    cam_param: [B, 3] raw camera (tx, ty, logit of the depth factor).
    translation: [B, 3] camera translation (metres), or None when no focal length was given.
    joint_img: [dec_layers, B, 15, 3] joint locations in [0, 1] (x, y on the crop, z depth bin),
      after each decoder layer; `joint_img[-1]` is the released model's output.
    volume: [B, depth, H, W, dim] the refined 3D volume (NKR's `feat_3d`).
    features_2d: [B, H, W, dim] the `down_linear` map (NKR's `feat_2d`).
    exponent: [] the clipped depth exponent k.
  """

  root_pose_6d: jax.Array
  root_rotmat: jax.Array
  root_pose: jax.Array
  pose_code: jax.Array
  body_pose: Any
  betas: jax.Array
  cam_param: jax.Array
  translation: jax.Array | None
  joint_img: jax.Array
  volume: jax.Array
  features_2d: jax.Array
  exponent: jax.Array


# ----------------------------------------------------------------------------------------------
# Geometry helpers


def dpmesh_rot6d_to_matrix(x: jax.Array) -> jax.Array:
  """DPMesh's 6D `[..., 6]` (torch `x.view(3, 2)`: a1 = x[0::2], a2 = x[1::2]) -> `[..., 3, 3]`."""
  cols = jnp.swapaxes(x.reshape(*x.shape[:-1], 3, 2), -1, -2).reshape(x.shape)
  return rotations.rot6d_to_matrix(cols)


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """DETR's `log(x / (1 - x))` with x clipped to [0, 1] and both terms to >= eps."""
  x = jnp.clip(x, 0.0, 1.0)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def safe_power(x: jax.Array, k: jax.Array) -> jax.Array:
  """x ** k for x >= 0 with 0 ** k = 0 and a finite gradient in k at x = 0 (as torch.pow)."""
  pos = x > 0
  return jnp.where(pos, jnp.exp(k * jnp.log(jnp.where(pos, x, 1.0))), 0.0)


def grid_sample_3d(volume: jax.Array, grid: jax.Array) -> jax.Array:
  """Trilinear `torch.nn.functional.grid_sample(align_corners=True, padding_mode='zeros')`.

  Args:
    volume: [B, D, H, W, C] (channels last).
    grid: [B, ..., 3] sample points (x, y, z) in [-1, 1]: x indexes W, y H, z D; -1 and 1 are the
      centres of the first and last voxels.

  Returns:
    [B, ..., C]; corners outside the volume contribute zero.
  """
  b, d, h, w, c = volume.shape
  pts = grid.reshape(b, -1, 3)
  sizes = jnp.array([w, h, d], pts.dtype)
  idx = (pts + 1.0) * 0.5 * (sizes - 1.0)  # [B, N, 3] voxel coordinates (x, y, z)
  lo = jnp.floor(idx)
  frac = idx - lo
  lo = lo.astype(jnp.int32)
  out = jnp.zeros((b, pts.shape[1], c), volume.dtype)
  batch = jnp.arange(b)[:, None]
  for corner in range(8):
    offset = jnp.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], jnp.int32)
    pos = lo + offset
    weight = jnp.prod(jnp.where(offset == 1, frac, 1.0 - frac), axis=-1)
    inside = jnp.all((pos >= 0) & (pos < jnp.array([w, h, d])), axis=-1)
    x, y, z = (jnp.clip(pos[..., i], 0, n - 1) for i, n in enumerate((w, h, d)))
    values = volume[batch, z, y, x]  # [B, N, C]
    out = out + jnp.where(inside, weight, 0.0)[..., None].astype(volume.dtype) * values
  return out.reshape(*grid.shape[:-1], c)


def depth_anchors(exponent: jax.Array, depth: int, height: int, width: int) -> jax.Array:
  """Anchor channels [depth, H, W, 3] = (Z, Y, X): (i/depth)^k, i/H, i/W (the released
  `get_relative_depth_anchour`: i / 8 on every axis of its 8x8x8 volume)."""
  z = safe_power(jnp.arange(depth, dtype=jnp.float32) / depth, exponent)
  y = jnp.arange(height, dtype=jnp.float32) / height
  x = jnp.arange(width, dtype=jnp.float32) / width
  zz, yy, xx = jnp.meshgrid(z, y, x, indexing="ij")
  return jnp.stack([zz, yy, xx], axis=-1)


def sinusoid_table(n_position: int, dim: int) -> np.ndarray:
  """`PositionalEncoding1D.pos_table` [n, dim]: pos / 10000^(2 (j // 2) / dim), sin at even j,
  cos at odd j."""
  j = np.arange(dim)
  angle = np.arange(n_position)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def sine_position_2d(height: int, width: int, dim: int, released: bool = False) -> np.ndarray:
  """DETR `PositionEmbeddingSine(dim // 2, normalize=True)` [H * W, dim] (y half then x half).

  DETR's frequencies are 1 / 10000^(2 (j // 2) / (dim / 2)). DPMesh's copy computes the exponent
  with `torch.div(..., rounding_mode='trunc')`, which truncates it to 0: every frequency is 1
  (`released=True`, what the checkpoints were trained with).
  """
  feats = dim // 2
  eps, scale = 1e-6, 2 * math.pi
  y = np.arange(1, height + 1, dtype=np.float32) / (height + eps) * scale
  x = np.arange(1, width + 1, dtype=np.float32) / (width + eps) * scale
  exponent = 2 * (np.arange(feats) // 2) / feats
  dim_t = 10000.0 ** (np.trunc(exponent) if released else exponent)

  def embed(v):  # [n] -> [n, feats]: sin at even, cos at odd channels
    a = v[:, None] / dim_t
    return np.where(np.arange(feats) % 2 == 0, np.sin(a), np.cos(a))

  pos_y = np.broadcast_to(embed(y)[:, None, :], (height, width, feats))
  pos_x = np.broadcast_to(embed(x)[None, :, :], (height, width, feats))
  return np.concatenate([pos_y, pos_x], -1).reshape(height * width, dim).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Camera (section 9)


def focal_from_image_size(image_size) -> jax.Array:
  """CLIFF-style focal length: the full-image diagonal sqrt(H^2 + W^2). `[..., 2] -> [...]`."""
  image_size = jnp.asarray(image_size, jnp.float32)
  return jnp.sqrt(jnp.sum(image_size**2, axis=-1))


def dpmesh_camera_translation(
  cam_param,
  focal_length,
  *,
  crop_size: tuple[int, int] = CROP_SIZE,
  camera_3d_size: float = CAMERA_3D_SIZE,
  shared_focal: bool = False,
  bbox_size=None,
) -> jax.Array:
  """DPMesh `get_camera_trans`: `(tx, ty, g) -> (tx, ty, sigmoid(g) * f * 2.5 / sqrt(h * w))`.

  Args:
    cam_param: [B, 3] the camera head's output.
    focal_length: [B] (or scalar) focal length in crop pixels, each sample's full-image diagonal
      (`focal_from_image_size`).
    crop_size: (h, w) of the crop (256, 256).
    camera_3d_size: the depth scale (2.5 m).
    shared_focal: use sample 0's focal length for the whole batch (the released code).
    bbox_size: optional [B, 2] bbox (w, h) in image pixels: the released render mode, which
      rescales t_z by sqrt(h_crop * w_crop) / sqrt(w_bbox * h_bbox).

  Returns:
    [B, 3] translation; project with `project_to_crop` (principal point at the crop centre).
  """
  cam_param = jnp.asarray(cam_param)
  f = jnp.broadcast_to(jnp.asarray(focal_length, cam_param.dtype), cam_param.shape[:-1])
  if shared_focal:
    f = jnp.broadcast_to(f[0], f.shape)
  area = math.sqrt(crop_size[0] * crop_size[1])
  k = f * camera_3d_size / area
  if bbox_size is not None:
    bbox_size = jnp.asarray(bbox_size, cam_param.dtype)
    k = k * area / jnp.sqrt(bbox_size[..., 0] * bbox_size[..., 1])
  t_z = k * jax.nn.sigmoid(cam_param[..., 2])
  return jnp.concatenate([cam_param[..., :2], t_z[..., None]], axis=-1)


def project_to_crop(
  points,
  focal_length,
  *,
  crop_size: tuple[int, int] = CROP_SIZE,
  grid_size: int | None = OUTPUT_GRID,
  shared_focal: bool = False,
) -> jax.Array:
  """DPMesh `get_coord` projection of camera-frame points onto the crop.

  `u = X / (Z + 1e-4) * f + w / 2` (and v likewise, principal point at the crop centre), rescaled
  to a `grid_size` grid (64, the joint_img grid) unless `grid_size` is None (crop pixels).

  Args:
    points: [B, N, 3] camera-frame points (the body already translated).
    focal_length: [B] or scalar.

  Returns:
    [B, N, 2].
  """
  points = jnp.asarray(points)
  f = jnp.broadcast_to(jnp.asarray(focal_length, points.dtype), points.shape[:-2])
  if shared_focal:
    f = jnp.broadcast_to(f[0], f.shape)
  h, w = crop_size
  center = jnp.broadcast_to(jnp.array([w / 2, h / 2], points.dtype), (*points.shape[:-2], 2))
  z_eps = jnp.broadcast_to(jnp.array([0.0, 0.0, 1e-4], points.dtype), (*points.shape[:-2], 3))
  uv = cameras.perspective_projection(points, z_eps, jnp.stack([f, f], axis=-1), center)
  if grid_size is not None:
    uv = uv * jnp.array([grid_size / w, grid_size / h], points.dtype)
  return uv


# ----------------------------------------------------------------------------------------------
# Transformer (DETR, post-norm)

_xavier = nn.initializers.xavier_uniform()
# torch's default Linear init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)) (refine_3d, which
# the released code builds outside the xavier-initialised `Transformer`).
_torch_linear_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# torch MultiheadAttention's xavier init of the fused in_proj [3C, C], on each [C, C] third.
_in_proj_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


class MultiheadAttention(nn.Module):
  """torch `nn.MultiheadAttention` (batch-first here) with separate query, key and value inputs:
  `q_proj`, `k_proj`, `v_proj` (its `in_proj` split in three) and `out_proj`. Dropout acts on the
  attention weights when not deterministic. `q [B, L, C], k, v [B, S, C] -> [B, L, C]`."""

  heads: int
  dropout: float = 0.0
  out_init: Callable = _xavier
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q, k, v, deterministic: bool = True):
    c = q.shape[-1]
    dense = lambda name, init=_in_proj_init: nn.Dense(
      c, kernel_init=init, dtype=self.dtype, name=name
    )
    split = lambda t: t.reshape(*t.shape[:-1], self.heads, c // self.heads)
    q, k, v = split(dense("q_proj")(q)), split(dense("k_proj")(k)), split(dense("v_proj")(v))
    if deterministic or self.dropout == 0.0:
      out = attention(q, k, v)
    else:
      probs = nn.Dropout(self.dropout)(attention_probabilities(q, k), deterministic=False)
      out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return dense("out_proj", self.out_init)(out.reshape(*out.shape[:-2], c))


class EncoderLayer(nn.Module):
  """DETR `TransformerEncoderLayer.forward_post`: self-attention with positions on q and k, then
  ReLU FFN (`linear1`, `linear2`), each residual then LayerNorm (`norm1`, `norm2`)."""

  heads: int
  ffn_dim: int
  dropout: float
  eps: float
  kernel_init: Callable = _xavier
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos, deterministic: bool = True):
    c = x.shape[-1]
    drop = lambda t: nn.Dropout(self.dropout)(t, deterministic=deterministic)
    norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
    dense = lambda n, name: nn.Dense(n, kernel_init=self.kernel_init, dtype=self.dtype, name=name)
    qk = x + pos
    attn = MultiheadAttention(
      self.heads, self.dropout, self.kernel_init, self.dtype, name="self_attn"
    )
    x = norm("norm1")(x + drop(attn(qk, qk, x, deterministic)))
    h = dense(c, "linear2")(drop(nn.relu(dense(self.ffn_dim, "linear1")(x))))
    return norm("norm2")(x + drop(h))


class DecoderLayer(nn.Module):
  """DETR `TransformerDecoderLayer.forward_post`: self-attention (query positions on q, k),
  cross-attention (`multihead_attn`: query positions on q, memory positions on k), ReLU FFN; each
  residual then LayerNorm (`norm1`-`norm3`)."""

  heads: int
  ffn_dim: int
  dropout: float
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, deterministic: bool = True):
    c = tgt.shape[-1]
    drop = lambda t: nn.Dropout(self.dropout)(t, deterministic=deterministic)
    norm = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
    dense = lambda n, name: nn.Dense(n, kernel_init=_xavier, dtype=self.dtype, name=name)
    mha = lambda name: MultiheadAttention(self.heads, self.dropout, dtype=self.dtype, name=name)
    q = tgt + query_pos
    tgt = norm("norm1")(tgt + drop(mha("self_attn")(q, q, tgt, deterministic)))
    cross = mha("multihead_attn")(tgt + query_pos, memory + pos, memory, deterministic)
    tgt = norm("norm2")(tgt + drop(cross))
    h = dense(c, "linear2")(drop(nn.relu(dense(self.ffn_dim, "linear1")(tgt))))
    return norm("norm3")(tgt + drop(h))


class Encoder(nn.Module):
  """`layers_{i}` post-norm encoder layers, then `norm` when `final_norm` (refine_3d only)."""

  layers: int
  heads: int
  ffn_dim: int
  dropout: float
  eps: float
  final_norm: bool
  kernel_init: Callable = _xavier
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos, deterministic: bool = True):
    args = (self.heads, self.ffn_dim, self.dropout, self.eps, self.kernel_init, self.dtype)
    for i in range(self.layers):
      x = EncoderLayer(*args, name=f"layers_{i}")(x, pos, deterministic)
    if self.final_norm:
      x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(x)
    return x


class Decoder(nn.Module):
  """The JOTR decoder: `layers_{i}`, shared `norm`, `joint_img_regress_{i}`, `fc_pos_3d_{0,1,3}`.

  `tgt [B, Q, C]` (SMPL tokens first, then the joints), `memory, pos [B, S, C]`, `query_pos`,
  `volume [B, D, H, W, C]`, `exponent []` -> (SMPL tokens per layer [L, B, Q - J, C],
  joint_img per layer [L, B, J, 3]).
  """

  config: DPMeshRegressorConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tgt, memory, pos, query_pos, volume, exponent, deterministic: bool = True):
    cfg = self.config
    n_smpl = cfg.num_smpl_queries
    norm = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="norm")
    dense = lambda n, name: nn.Dense(n, kernel_init=_xavier, dtype=self.dtype, name=name)

    fc_0 = dense(cfg.dim, "fc_pos_3d_0")  # shared by all layers, like `norm`
    fc_1 = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="fc_pos_3d_1")
    fc_3 = dense(cfg.dim, "fc_pos_3d_3")
    fc_pos_3d = lambda x: fc_3(nn.relu(fc_1(fc_0(x))))

    n_mem = memory.shape[1]
    out, hs, joints = tgt, [], []
    for i in range(cfg.dec_layers):
      layer = DecoderLayer(
        cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.layer_norm_eps, self.dtype, name=f"layers_{i}"
      )
      out = norm(layer(out, memory, pos, query_pos, deterministic))
      joint_hs = out[:, n_smpl:]
      hs.append(out[:, :n_smpl])
      regress = dense(3, f"joint_img_regress_{i}")
      if i == 0:
        joint_img = jax.nn.sigmoid(regress(joint_hs))
      else:
        logit = inverse_sigmoid(joint_img)
        joint_img = jax.nn.sigmoid(logit + regress(jnp.concatenate([joint_hs, logit], -1)))
      joints.append(joint_img)
      grid = jnp.concatenate(
        [joint_img[..., :2], safe_power(joint_img[..., 2:], exponent)], axis=-1
      )
      sample = grid_sample_3d(volume, grid * 2.0 - 1.0)  # [B, J, C]
      sample_pos = fc_pos_3d(inverse_sigmoid(joint_img))
      memory = jnp.concatenate([memory[:, :n_mem], sample.astype(memory.dtype)], axis=1)
      pos = jnp.concatenate([pos[:, :n_mem], sample_pos.astype(pos.dtype)], axis=1)
    return jnp.stack(hs), jnp.stack(joints)


class Transformer(nn.Module):
  """DETR `Transformer` with the JOTR decoder: `encoder` (no final norm), `decoder`, and the
  zero-init query contents `smpl_tgt`, `kp_tgt` [dim]."""

  config: DPMeshRegressorConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, src, pos, query_pos, volume, exponent, deterministic: bool = True):
    cfg = self.config
    b = src.shape[0]
    smpl_tgt = self.param("smpl_tgt", nn.initializers.zeros, (cfg.dim,), jnp.float32)
    kp_tgt = self.param("kp_tgt", nn.initializers.zeros, (cfg.dim,), jnp.float32)
    tgt = jnp.concatenate(
      [
        jnp.broadcast_to(smpl_tgt, (b, cfg.num_smpl_queries, cfg.dim)),
        jnp.broadcast_to(kp_tgt, (b, cfg.num_joints, cfg.dim)),
      ],
      axis=1,
    ).astype(src.dtype)
    sizes = (cfg.enc_layers, cfg.heads, cfg.ffn_dim, cfg.dropout, cfg.layer_norm_eps)
    memory = Encoder(*sizes, final_norm=False, dtype=self.dtype, name="encoder")(
      src, pos, deterministic
    )
    return Decoder(cfg, self.dtype, name="decoder")(
      tgt, memory, pos, query_pos, volume, exponent, deterministic
    )


# ----------------------------------------------------------------------------------------------
# The regressor


def _cascade(hs: jax.Array, n_out: int, name: str, dtype: Dtype) -> jax.Array:
  """`cascade_fc`: hs [L, ..., C] -> out_{L-1} with out_0 = Lin(h_0), out_l = out_{l-1} +
  Lin([h_l, out_{l-1}]); Dense modules `{name}_{l}`."""
  out = None
  for i in range(hs.shape[0]):
    dense = nn.Dense(n_out, dtype=dtype, name=f"{name}_{i}")
    out = dense(hs[i]) if i == 0 else out + dense(jnp.concatenate([hs[i], out], axis=-1))
  return out


class DPMeshRegressor(nn.Module):
  """`__call__(features [B, H, W, in_channels], focal_length [B] | None, bbox_size [B, 2] | None,
  train=False) -> DPMeshRegressorOutput`. H, W are 8 in DPMesh (any size works; the 3D volume is
  [depth, H, W]). `focal_length` is each sample's full-image diagonal (`focal_from_image_size`);
  without it `translation` is None. `pose_decoder` (a callable or flax module, its parameters then
  under `params/pose_decoder`) maps `pose_code` to `body_pose`."""

  config: DPMeshRegressorConfig = DPMESH_REGRESSOR
  pose_decoder: Callable | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    features: jax.Array,
    focal_length: jax.Array | None = None,
    bbox_size: jax.Array | None = None,
    train: bool = False,
  ) -> DPMeshRegressorOutput:
    cfg = self.config
    if features.ndim != 4 or features.shape[-1] != cfg.in_channels:
      raise ValueError(
        f"features must be [B, H, W, {cfg.in_channels}], got shape {tuple(features.shape)}"
      )
    deterministic = not train
    b, h, w, _ = features.shape
    conv1x1 = lambda n, name: nn.Conv(n, (1, 1), dtype=self.dtype, name=name)

    # 3D branch: volume [B, D, H, W, C] from channel-major (c d) channels, anchors, refine_3d.
    vol = conv1x1(cfg.dim * cfg.depth, "conv2d_to_3d")(features)
    vol = vol.reshape(b, h, w, cfg.dim, cfg.depth).transpose(0, 4, 1, 2, 3)
    raw_exponent = self.param(
      "exponent", nn.initializers.constant(cfg.exponent_init), (), jnp.float32
    )
    exponent = jnp.clip(raw_exponent, *cfg.exponent_range)
    anchors = depth_anchors(exponent, cfg.depth, h, w).astype(vol.dtype)
    vol = jnp.concatenate([vol, jnp.broadcast_to(anchors, (b, *anchors.shape))], axis=-1)
    vol = nn.Conv(cfg.dim, (1, 1, 1), dtype=self.dtype, name="conv_3d_coord_0")(vol)
    pos_3d = jnp.asarray(sinusoid_table(cfg.depth * h * w, cfg.dim), vol.dtype)
    sizes = (cfg.enc_layers, cfg.heads, cfg.refine_ffn_dim, cfg.dropout, cfg.layer_norm_eps)
    refine_3d = Encoder(*sizes, True, _torch_linear_init, self.dtype, name="refine_3d")
    pos_3d = jnp.broadcast_to(pos_3d, (b, *pos_3d.shape))
    tokens = refine_3d(vol.reshape(b, -1, cfg.dim), pos_3d, deterministic)
    volume = tokens.reshape(b, cfg.depth, h, w, cfg.dim)

    # 2D branch and the transformer.
    feat_2d = conv1x1(cfg.dim, "down_linear")(features)
    pos_2d = sine_position_2d(h, w, cfg.dim, released=cfg.released_sine_frequencies)
    pos_2d = jnp.asarray(pos_2d, feat_2d.dtype)
    smpl_pos = self.param(
      "spose_shape_cam_param", nn.initializers.normal(1.0), (cfg.num_smpl_queries, cfg.dim)
    )
    joint_pos = nn.Embed(cfg.num_joints, cfg.dim, name="query").embedding
    query_pos = jnp.concatenate([smpl_pos, joint_pos], axis=0).astype(feat_2d.dtype)
    hs, joint_img = Transformer(cfg, self.dtype, name="transformer")(
      feat_2d.reshape(b, h * w, cfg.dim),
      jnp.broadcast_to(pos_2d, (b, h * w, cfg.dim)),
      jnp.broadcast_to(query_pos, (b, *query_pos.shape)),
      volume,
      exponent,
      deterministic,
    )  # hs [L, B, n_smpl, C]

    # Cascaded heads: pose token 0, pose-code tokens 1..P (paper), shape -2, cam -1.
    hs = hs.astype(jnp.float32)
    pose_token, shape_token, cam_token = hs[:, :, 0], hs[:, :, -2], hs[:, :, -1]
    code_tokens = hs[:, :, 1:-2] if cfg.pose_tokens else pose_token
    root_6d = _cascade(pose_token, 6, "cascade_root_pose_out", self.dtype)
    pose_code = _cascade(code_tokens, cfg.pose_code_dim, "cascade_pose_out", self.dtype)
    betas = _cascade(shape_token, cfg.num_betas, "cascade_shape_out", self.dtype)
    cam_param = _cascade(cam_token, 3, "cascade_cam_out", self.dtype)

    root_rotmat = dpmesh_rot6d_to_matrix(root_6d)
    translation = None
    if focal_length is not None:
      translation = dpmesh_camera_translation(
        cam_param,
        focal_length,
        crop_size=cfg.crop_size,
        camera_3d_size=cfg.camera_3d_size,
        shared_focal=cfg.shared_focal,
        bbox_size=bbox_size,
      )
    body_pose = self.pose_decoder(pose_code) if self.pose_decoder is not None else None
    return DPMeshRegressorOutput(
      root_pose_6d=root_6d,
      root_rotmat=root_rotmat,
      root_pose=rotations.matrix_to_axis_angle(root_rotmat),
      pose_code=pose_code,
      body_pose=body_pose,
      betas=betas,
      cam_param=cam_param,
      translation=translation,
      joint_img=joint_img,
      volume=volume,
      features_2d=feat_2d,
      exponent=exponent,
    )
