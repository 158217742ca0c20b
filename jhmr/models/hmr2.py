"""HMR 2.0 (4D-Humans): a ViTPose ViT-H backbone and a cross-attention transformer-decoder head.

  model = HMR2(HMR2_FULL)                       # ViT-H/16 (256x192) + SMPLTransformerDecoderHead
  variables = model.init(key, jnp.zeros((1, 256, 192, 3)))   # {'params', 'buffers'}
  out = model.apply(variables, hmr2_input(crops [B, 256, 256, 3]))
  out.pose_6d [B, 144], out.rotmat [B, 24, 3, 3] (global orient first), out.betas [B, 10],
  out.cam [B, 3] = (s, tx, ty) weak perspective on the 256-px square crop.

Architecture (research/regressors.md section 2; 4D-Humans `hmr2/models/heads/smpl_head.py` and
`components/pose_transformer.py`):
- Backbone: `jhmr.models.vit.ViT` on a 256x192 image -> [B, 16, 12, 1280], flattened row-major to
  192 context tokens (4D-Humans `rearrange('b c h w -> b (h w) c')`).
- Head: one input token, zeros [B, 1, 1] ("zero" input, the default) or the current mean/estimate
  (pose, betas, cam) [B, 1, 157] ("mean_shape"), through `to_token_embedding` Linear(token_dim ->
  1024) plus `pos_embedding` [1, 1, 1024]; 6 layers of pre-LayerNorm residual [self-attention
  (`to_qkv` without bias, `to_out` with bias), cross-attention to the context (`to_q`, `to_kv`
  without bias, `to_out` with bias), feed-forward (Linear, exact GELU, Linear)]; no final norm;
  LayerNorm eps 1e-5 (PyTorch default). Readout: `decpose` (144), `decshape` (10), `deccam` (3),
  each added to the running estimate, which starts at the mean-init buffers; repeated
  `ief_iters` times (1 in the released model).
- 6D layout: HMR2's `reshape(2, 3)`-then-transpose, i.e. the first two rotation-matrix columns
  one after the other, which is `jhmr.geometry.rotations.rot6d_to_matrix` (ScoreHMR's layout too).

Mean-init buffers. The official head registers `init_body_pose` [1, 144], `init_betas` [1, 10] and
`init_cam` [1, 3] (SPIN's `smpl_mean_params.npz`) as buffers, and they are saved in the checkpoint.
Here they are variables of the non-trainable collection `'buffers'` (`init_body_pose` [144],
`init_betas` [10], `init_cam` [3]); `jhmr.convert.hmr2` fills them from the checkpoint. `init`
creates them from the config's `mean_*` values (upright rest pose, zero shape, cam (0.9, 0, 0));
they are not parameters, so an optimiser over `'params'` never touches them and the parameter
counts match the paper's (head 39,547,037; with ViT-H 670,459,037).

Preprocessing (`jhmr.data.crops.crop_for_hmr2`, 4D-Humans `hmr2/datasets/vitdet_dataset.py`;
the crop lives with the other crops, a floor above the models): the detector box
(x0, y0, x1, y1) is expanded to aspect w:h = 192:256, made square with side `max(h, 4w/3)`, and
warped bilinearly to 256x256 with zeros outside the image (cv2 `warpAffine` pixel convention:
integer pixel centres; crop pixel (128, 128) is the box centre), then normalised with the ImageNet
mean/std times 255. The input is RGB (4D-Humans reads BGR with cv2 and flips to RGB; jhmr images
are RGB already). 4D-Humans blurs the whole image with a Gaussian (skimage, sigma = (d - 1) / 2,
d = box / 256 / 2, when d > 1.1) before downsampling; ScoreHMR's copy of this step does not blur.
`blur=False` (default) is ScoreHMR's variant, `blur=True` 4D-Humans' (scipy `gaussian_filter`,
mode 'nearest', truncate 4: what skimage calls). Differences to cv2: cv2 interpolates with 1/32-px
fixed-point weights and rounds uint8 output; the crop is float, so pixel values differ by < 1
grey level.

Camera: `crop_translation` (tz = 2 f / (256 s + 1e-9), the model's own `pred_cam_t` at f = 5000)
and `cam_crop_to_full` (4D-Humans `renderer.cam_crop_to_full`), both thin wrappers over
`jhmr.geometry.cameras`. The 4D-Humans demo uses f = 5000 / 256 * max(W, H); ScoreHMR's demo
uses f = 5000 (research/scorehmr.md section 6).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jhmr.geometry import cameras, rotations
from jhmr.models.hmr import DEFAULT_CAM, IDENTITY_6D, UPRIGHT_6D
from jhmr.models.sd_layers import attention
from jhmr.models.vit import VIT_H, VIT_TINY, ViT, ViTConfig

Dtype = Any

NUM_JOINTS = 24  # global orient + 23 body joints
NPOSE = 6 * NUM_JOINTS
TOKEN_INPUTS = ("zero", "mean_shape")

CROP_SIZE = 256  # the square crop the released model sees (before slicing columns 32:224)
FOCAL_LENGTH = 5000.0  # cfg.EXTRA.FOCAL_LENGTH
IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet, applied to 0..1 values (x 255 on 0..255 pixels)
IMAGE_STD = (0.229, 0.224, 0.225)
BOX_ASPECT = (192, 256)  # BBOX_SHAPE (w, h) forced by 4D-Humans' `load_hmr2`


@dataclasses.dataclass(frozen=True)
class HMR2HeadConfig:
  """`SMPLTransformerDecoderHead` (4D-Humans names: TRANSFORMER_DECODER, IEF_ITERS, ...)."""

  dim: int = 1024
  depth: int = 6
  heads: int = 8
  dim_head: int = 64
  mlp_dim: int = 1024
  context_dim: int = 1280
  num_betas: int = 10
  ief_iters: int = 1  # IEF_ITERS
  token_input: str = "zero"  # TRANSFORMER_INPUT: 'zero' (released) or 'mean_shape'
  layer_norm_eps: float = 1e-5
  mean_pose_6d: Sequence[float] = UPRIGHT_6D + IDENTITY_6D * (NUM_JOINTS - 1)
  mean_betas: Sequence[float] | None = None  # zeros
  mean_cam: Sequence[float] = DEFAULT_CAM

  def __post_init__(self):
    if self.token_input not in TOKEN_INPUTS:
      raise ValueError(f"token_input {self.token_input!r}; valid: {TOKEN_INPUTS}")
    if self.ief_iters < 1 or self.depth < 1:
      raise ValueError(f"ief_iters and depth must be >= 1, got {self.ief_iters}, {self.depth}")
    betas = self.mean_betas if self.mean_betas is not None else (0.0,) * self.num_betas
    if len(self.mean_pose_6d) != NPOSE or len(betas) != self.num_betas or len(self.mean_cam) != 3:
      raise ValueError(f"mean values must have {NPOSE} (pose), num_betas and 3 (cam) entries")

  @property
  def token_dim(self) -> int:
    return 1 if self.token_input == "zero" else NPOSE + self.num_betas + 3


HMR2_HEAD = HMR2HeadConfig()
HMR2_HEAD_TINY = HMR2HeadConfig(dim=32, depth=2, heads=2, dim_head=8, mlp_dim=48, context_dim=32)


@struct.dataclass
class HMR2Output:
  """Predictions on the crop.

  pose_6d [B, 144] (24 joints x 6D, global orient first, HMR2/ScoreHMR layout); rotmat
  [B, 24, 3, 3]; betas [B, 10]; cam [B, 3] weak perspective (s, tx, ty) on the square crop;
  features: the backbone map [B, h, w, C] (HMR2 only, None from the head alone).
  """

  pose_6d: jax.Array
  rotmat: jax.Array
  betas: jax.Array
  cam: jax.Array
  features: jax.Array | None = None


def _split_heads(t: jax.Array, heads: int) -> jax.Array:
  return t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads)


class SelfAttention(nn.Module):
  """Pre-norm self-attention sub-block (residual added by the caller): `norm`, `to_qkv`,
  `to_out`. `[B, N, dim] -> [B, N, dim]`."""

  heads: int
  dim_head: int
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    inner = self.heads * self.dim_head
    h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(x)
    qkv = nn.Dense(3 * inner, use_bias=False, dtype=self.dtype, name="to_qkv")(h)
    q, k, v = (_split_heads(t, self.heads) for t in jnp.split(qkv, 3, axis=-1))
    out = attention(q, k, v).reshape(*x.shape[:-1], inner)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out")(out)


class CrossAttention(nn.Module):
  """Pre-norm cross-attention sub-block: `norm` (on the query tokens only), `to_q`, `to_kv`
  (keys then values), `to_out`. `x [B, N, dim], context [B, S, context_dim] -> [B, N, dim]`."""

  heads: int
  dim_head: int
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    inner = self.heads * self.dim_head
    h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(x)
    q = _split_heads(nn.Dense(inner, use_bias=False, dtype=self.dtype, name="to_q")(h), self.heads)
    kv = nn.Dense(2 * inner, use_bias=False, dtype=self.dtype, name="to_kv")(context)
    k, v = (_split_heads(t, self.heads) for t in jnp.split(kv, 2, axis=-1))
    out = attention(q, k, v).reshape(*x.shape[:-1], inner)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out")(out)


class FeedForward(nn.Module):
  """Pre-norm MLP sub-block: `norm`, `fc1`, exact GELU, `fc2`."""

  mlp_dim: int
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="norm")(x)
    h = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(h), approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class DecoderLayer(nn.Module):
  """One layer: `self_attn`, `cross_attn`, `ff`, each pre-norm and residual."""

  config: HMR2HeadConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(eps=cfg.layer_norm_eps, dtype=self.dtype)
    x = x + SelfAttention(cfg.heads, cfg.dim_head, name="self_attn", **kw)(x)
    x = x + CrossAttention(cfg.heads, cfg.dim_head, name="cross_attn", **kw)(x, context)
    return x + FeedForward(cfg.mlp_dim, name="ff", **kw)(x)


class TransformerDecoder(nn.Module):
  """4D-Humans `TransformerDecoder`: `to_token_embedding` + `pos_embedding`, then `depth`
  `DecoderLayer`s (`layers_{i}`); no final norm.

  `tokens [B, N, token_dim], context [B, S, context_dim] -> [B, N, dim]`.
  """

  config: HMR2HeadConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, context: jax.Array) -> jax.Array:
    cfg = self.config
    x = nn.Dense(cfg.dim, dtype=self.dtype, name="to_token_embedding")(tokens)
    pos = self.param(
      "pos_embedding", nn.initializers.normal(1.0), (1, tokens.shape[1], cfg.dim), jnp.float32
    )
    x = x + pos.astype(x.dtype)
    for i in range(cfg.depth):
      x = DecoderLayer(cfg, self.dtype, name=f"layers_{i}")(x, context)
    return x


class HMR2Head(nn.Module):
  """`SMPLTransformerDecoderHead`: context tokens [B, S, context_dim] -> `HMR2Output`.

  Variables: `params` {transformer, decpose, decshape, deccam} and `buffers` {init_body_pose
  [144], init_betas [num_betas], init_cam [3]} (the mean initialisation, see the module doc).
  """

  config: HMR2HeadConfig = HMR2_HEAD
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jax.Array) -> HMR2Output:
    cfg = self.config
    if context.ndim != 3 or context.shape[-1] != cfg.context_dim:
      raise ValueError(f"context must be [B, S, {cfg.context_dim}], got shape {context.shape}")
    batch = context.shape[0]
    betas0 = cfg.mean_betas if cfg.mean_betas is not None else (0.0,) * cfg.num_betas
    buffer = lambda name, value: (
      self.variable("buffers", name, lambda: jnp.asarray(value, jnp.float32)).value
    )
    init_pose = buffer("init_body_pose", cfg.mean_pose_6d)
    init_betas = buffer("init_betas", betas0)
    init_cam = buffer("init_cam", cfg.mean_cam)
    pose = jnp.broadcast_to(init_pose, (batch, NPOSE)).astype(jnp.float32)
    betas = jnp.broadcast_to(init_betas, (batch, cfg.num_betas)).astype(jnp.float32)
    cam = jnp.broadcast_to(init_cam, (batch, 3)).astype(jnp.float32)
    transformer = TransformerDecoder(cfg, self.dtype, name="transformer")
    decpose = nn.Dense(NPOSE, dtype=self.dtype, name="decpose")
    decshape = nn.Dense(cfg.num_betas, dtype=self.dtype, name="decshape")
    deccam = nn.Dense(3, dtype=self.dtype, name="deccam")
    for _ in range(cfg.ief_iters):
      if cfg.token_input == "zero":
        token = jnp.zeros((batch, 1, 1), context.dtype)
      else:
        token = jnp.concatenate([pose, betas, cam], axis=-1)[:, None].astype(context.dtype)
      out = transformer(token, context)[:, 0]
      pose = pose + decpose(out).astype(jnp.float32)
      betas = betas + decshape(out).astype(jnp.float32)
      cam = cam + deccam(out).astype(jnp.float32)
    rotmat = rotations.rot6d_to_matrix(pose.reshape(batch, NUM_JOINTS, 6))
    return HMR2Output(pose_6d=pose, rotmat=rotmat, betas=betas, cam=cam)


@dataclasses.dataclass(frozen=True)
class HMR2Config:
  """Backbone and head; the head's `context_dim` must equal the backbone's `embed_dim`."""

  vit: ViTConfig = VIT_H
  head: HMR2HeadConfig = HMR2_HEAD

  def __post_init__(self):
    if self.head.context_dim != self.vit.embed_dim:
      raise ValueError(
        f"head context_dim {self.head.context_dim} != backbone embed_dim {self.vit.embed_dim}"
      )


HMR2_FULL = HMR2Config()
HMR2_TINY = HMR2Config(vit=VIT_TINY, head=HMR2_HEAD_TINY)  # 64x48 input, for tests


class HMR2(nn.Module):
  """HMR 2.0: `images [B, H, W, 3]` (normalised, `config.vit.img_size`, 256x192; see
  `hmr2_input` for the 256x256 crop) -> `HMR2Output` with `features` [B, h, w, C].

  Variables: `params` {backbone (`jhmr.models.vit.ViT`), head (`HMR2Head`)} and `buffers` {head}.
  The backbone map is flattened row-major to `h * w` context tokens.
  """

  config: HMR2Config = HMR2_FULL
  implementation: str = "auto"  # backbone attention kernel (jhmr.models.sd_layers.attention)
  dtype: Dtype = jnp.float32

  def dummy_input(self, batch: int = 1) -> jax.Array:
    return jnp.zeros((batch, *self.config.vit.img_size, 3), self.dtype)

  @nn.compact
  def __call__(self, images: jax.Array) -> HMR2Output:
    features = ViT(self.config.vit, self.implementation, self.dtype, name="backbone")(images)
    b, gh, gw, c = features.shape
    out = HMR2Head(self.config.head, self.dtype, name="head")(features.reshape(b, gh * gw, c))
    return out.replace(features=features)


# ----------------------------------------------------------------------------------------------
# Camera


def crop_translation(cam, focal_length=FOCAL_LENGTH, crop_size=CROP_SIZE, eps: float = 1e-9):
  """(s, tx, ty) [..., 3] -> crop-camera translation (tx, ty, 2 f / (crop_size s + eps)).

  With f = 5000 this is the model's `pred_cam_t` (4D-Humans `hmr2.py:117-121`); its 2D keypoints
  project with focal f / crop_size to normalised crop coordinates.
  """
  return cameras.weak_perspective_to_translation(cam, focal_length, crop_size, eps)


def cam_crop_to_full(
  cam, box_center, box_size, image_size, focal_length=FOCAL_LENGTH, eps: float = 1e-9
):
  """4D-Humans `cam_crop_to_full`: crop camera (s, tx, ty) [..., 3] -> full-image translation.

  bs = box_size s + eps; t = (tx + 2 (cx - W/2) / bs, ty + 2 (cy - H/2) / bs, 2 f / bs), for a
  camera with focal f and principal point (W/2, H/2). `box_center` [..., 2] (cx, cy) and
  `box_size` [...] (the square side, `HMR2Crop.box_size`) in pixels, `image_size` [..., 2] (W, H).
  """
  return cameras.crop_to_full_translation(cam, box_center, box_size, image_size, focal_length, eps)


# ----------------------------------------------------------------------------------------------
# Preprocessing


def hmr2_input(crops: jax.Array) -> jax.Array:
  """Square crops [B, S, S, 3] -> the backbone input [B, S, 3S/4, 3]: columns S/8 : S - S/8
  (32:224 for S = 256, 4D-Humans `x[:, :, :, 32:-32]`)."""
  if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or crops.shape[1] % 8:
    raise ValueError(f"crops must be [B, S, S, 3] with S a multiple of 8, got {crops.shape}")
  margin = crops.shape[2] // 8
  return crops[:, :, margin : crops.shape[2] - margin]
