"""DPMesh's regressor against a PyTorch oracle written here from research/dpmesh.md section 7
(DPMesh `common/model.py`, `common/nets/transformer.py`; module names as there, so state_dict keys
are the checkpoint's), converted with `jhmr.convert.dpmesh_regressor`; the 3D grid sample against
`torch.nn.functional.grid_sample`; the camera of section 9 by hand; converter refusals; parameter
counts of the full-size regressor."""

import copy
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from jhmr.convert.common import ConversionError
from jhmr.convert.dpmesh_regressor import convert_dpmesh_regressor
from jhmr.geometry import rotations
from jhmr.models.dpmesh_regressor import (
  DPMESH_REGRESSOR,
  DPMESH_REGRESSOR_RELEASED,
  DPMESH_REGRESSOR_TINY,
  DPMESH_REGRESSOR_TINY_PAPER,
  DPMeshRegressor,
  dpmesh_camera_translation,
  focal_from_image_size,
  grid_sample_3d,
  project_to_crop,
)
from tests.torch_reference import randomize, rel_err

# ----------------------------------------------------------------------------------------------
# PyTorch oracle (sequence-first like DETR; dropout modules present, inactive in eval mode).


def inverse_sigmoid(x, eps=1e-5):
  x = x.clamp(min=0, max=1)
  return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class TransformerEncoderLayer(tnn.Module):
  def __init__(self, d, nhead, ffn, dropout=0.1):
    super().__init__()
    self.self_attn = tnn.MultiheadAttention(d, nhead, dropout=dropout)
    self.linear1, self.linear2 = tnn.Linear(d, ffn), tnn.Linear(ffn, d)
    self.norm1, self.norm2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
    self.dropout = tnn.Dropout(dropout)

  def forward(self, src, pos):
    q = k = src + pos
    src = self.norm1(src + self.dropout(self.self_attn(q, k, value=src)[0]))
    src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
    return self.norm2(src + self.dropout(src2))


class TransformerDecoderLayer(tnn.Module):
  def __init__(self, d, nhead, ffn, dropout=0.1):
    super().__init__()
    self.self_attn = tnn.MultiheadAttention(d, nhead, dropout=dropout)
    self.multihead_attn = tnn.MultiheadAttention(d, nhead, dropout=dropout)
    self.linear1, self.linear2 = tnn.Linear(d, ffn), tnn.Linear(ffn, d)
    self.norm1, self.norm2, self.norm3 = tnn.LayerNorm(d), tnn.LayerNorm(d), tnn.LayerNorm(d)
    self.dropout = tnn.Dropout(dropout)

  def forward(self, tgt, memory, pos, query_pos):
    q = k = tgt + query_pos
    tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, value=tgt)[0]))
    tgt2 = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory)[0]
    tgt = self.norm2(tgt + self.dropout(tgt2))
    tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
    return self.norm3(tgt + self.dropout(tgt2))


class TransformerEncoder(tnn.Module):
  def __init__(self, layer, n, norm=None):
    super().__init__()
    self.layers = tnn.ModuleList([copy.deepcopy(layer) for _ in range(n)])
    self.norm = norm

  def forward(self, src, pos):
    for layer in self.layers:
      src = layer(src, pos)
    return src if self.norm is None else self.norm(src)


class TransformerDecoder(tnn.Module):
  def __init__(self, layer, n, d, n_smpl, n_joints):
    super().__init__()
    self.layers = tnn.ModuleList([copy.deepcopy(layer) for _ in range(n)])
    self.norm = tnn.LayerNorm(d)
    self.smpl_param, self.n_joints = n_smpl, n_joints
    self.joint_img_regress = tnn.ModuleList(
      [tnn.Linear(d, 3)] + [tnn.Linear(d + 3, 3) for _ in range(n - 1)]
    )
    self.fc_pos_3d = tnn.Sequential(
      tnn.Linear(3, d), tnn.LayerNorm(d), tnn.ReLU(inplace=True), tnn.Linear(d, d)
    )

  def forward(self, tgt, memory, pos, query_pos, dense_feat, exponent):
    output, intermediate, joint_imgs = tgt, [], []
    for idx, layer in enumerate(self.layers):
      output = self.norm(layer(output, memory, pos, query_pos))
      joint_img_hs = output[self.smpl_param :].transpose(0, 1)
      intermediate.append(output[: self.smpl_param])
      if idx == 0:
        joint_img = self.joint_img_regress[idx](joint_img_hs).sigmoid()
      else:
        inv = inverse_sigmoid(joint_img)
        offset = self.joint_img_regress[idx](torch.cat([joint_img_hs, inv], dim=-1))
        joint_img = torch.sigmoid(inv + offset)
      joint_imgs.append(joint_img)
      grid = torch.cat([joint_img[..., :2], torch.pow(joint_img[..., -1:], exponent)], -1)
      grid = (grid * 2 - 1)[:, None, None]  # B, 1, 1, J, 3
      sample = F.grid_sample(dense_feat, grid, mode="bilinear", align_corners=True)
      sample = sample[:, :, 0, 0].permute(2, 0, 1)  # J, B, C
      sample_pos = self.fc_pos_3d(inverse_sigmoid(joint_img)).transpose(0, 1)
      if idx == 0:
        memory, pos = torch.cat([memory, sample]), torch.cat([pos, sample_pos])
      else:
        n = self.n_joints
        memory, pos = torch.cat([memory[:-n], sample]), torch.cat([pos[:-n], sample_pos])
    return torch.stack(intermediate), torch.stack(joint_imgs)


class Transformer(tnn.Module):
  def __init__(self, cfg):
    super().__init__()
    d = cfg.dim
    enc = TransformerEncoderLayer(d, cfg.heads, cfg.ffn_dim)
    self.encoder = TransformerEncoder(enc, cfg.enc_layers)
    dec = TransformerDecoderLayer(d, cfg.heads, cfg.ffn_dim)
    self.decoder = TransformerDecoder(dec, cfg.dec_layers, d, cfg.num_smpl_queries, cfg.num_joints)
    self.n_smpl, self.n_joints = cfg.num_smpl_queries, cfg.num_joints
    self.smpl_tgt = tnn.Parameter(torch.zeros(d))
    self.kp_tgt = tnn.Parameter(torch.zeros(d))

  def forward(self, src, query_embed, pos_embed, dense_feat, exponent):
    b = src.shape[1]
    tgt = torch.cat(
      [
        self.smpl_tgt.expand(self.n_smpl, b, -1),
        self.kp_tgt.expand(self.n_joints, b, -1),
      ]
    )
    memory = self.encoder(src, pos_embed)
    return self.decoder(tgt, memory, pos_embed, query_embed, dense_feat, exponent)


def position_embedding_sine(x, num_pos_feats, released, temperature=10000):
  not_mask = torch.ones_like(x[:, 0]).bool()
  y_embed = not_mask.cumsum(1, dtype=torch.float32)
  x_embed = not_mask.cumsum(2, dtype=torch.float32)
  eps, scale = 1e-6, 2 * math.pi
  y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
  x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  if released:  # DPMesh's line: the trunc division makes every exponent 0
    dim_t = temperature ** torch.div(2 * (dim_t // 2), num_pos_feats, rounding_mode="trunc")
  else:  # DETR's
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  pos_x = x_embed[:, :, :, None] / dim_t
  pos_y = y_embed[:, :, :, None] / dim_t
  pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
  pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
  return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionalEncoding1D(tnn.Module):
  def __init__(self, d_hid, n_position):
    super().__init__()
    table = np.array(
      [[p / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for p in range(n_position)]
    )
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    self.register_buffer("pos_table", torch.FloatTensor(table))


def rot6d_to_rotmat(x):
  x = x.view(-1, 3, 2)
  b1 = F.normalize(x[:, :, 0])
  a2 = x[:, :, 1]
  b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
  return torch.stack((b1, b2, torch.cross(b1, b2, dim=1)), dim=-1)


class Regressor(tnn.Module):
  """The regressor part of DPMesh's `Model` (module names as there, `cascade_shaoe_out` too)."""

  def __init__(self, cfg, hw=(8, 8)):
    super().__init__()
    self.cfg, d, layers = cfg, cfg.dim, cfg.dec_layers
    self.down_linear = tnn.Conv2d(cfg.in_channels, d, 1, 1)
    self.transformer = Transformer(cfg)
    self.pos_embed_1d = PositionalEncoding1D(d, cfg.depth * hw[0] * hw[1])
    self.spose_shape_cam_param = tnn.Parameter(torch.randn(cfg.num_smpl_queries, d))
    self.query = tnn.Embedding(cfg.num_joints, d)

    def cascade(n):
      return tnn.ModuleList([tnn.Linear(d, n)] + [tnn.Linear(d + n, n) for _ in range(layers - 1)])

    self.cascade_root_pose_out = cascade(6)
    self.cascade_pose_out = cascade(cfg.pose_code_dim)
    self.cascade_shaoe_out = cascade(cfg.num_betas)
    self.cascade_cam_out = cascade(3)
    self.conv2d_to_3d = tnn.Conv2d(cfg.in_channels, d * cfg.depth, 1, 1)
    self.exponent = tnn.Parameter(torch.tensor(3, dtype=torch.float32))
    self.conv_3d_coord = tnn.Sequential(tnn.Conv3d(d + 3, d, 1, 1))
    enc = TransformerEncoderLayer(d, cfg.heads, cfg.refine_ffn_dim)
    self.refine_3d = TransformerEncoder(enc, cfg.enc_layers, tnn.LayerNorm(d))

  @staticmethod
  def cascade_fc(hs, net_list):
    out = net_list[0](hs[0])
    for i in range(1, len(hs)):
      out = out + net_list[i](torch.cat([hs[i], out], dim=-1))
    return out

  def anchors(self, k, d, h, w):
    z = torch.pow(torch.arange(d, dtype=torch.float32) / d, k).reshape(1, 1, d, 1, 1)
    y = (torch.arange(h, dtype=torch.float32) / h).reshape(1, 1, 1, h, 1)
    x = (torch.arange(w, dtype=torch.float32) / w).reshape(1, 1, 1, 1, w)
    return torch.cat([z.expand(1, 1, d, h, w), y.expand(1, 1, d, h, w), x.expand(1, 1, d, h, w)], 1)

  def forward(self, img, focal_length):
    cfg = self.cfg
    b, _, h, w = img.shape
    d = cfg.depth
    dense_feat = self.conv2d_to_3d(img).reshape(b, cfg.dim, d, h, w)  # 'b (c d) h w'
    exponent = torch.clamp(self.exponent, 1, 20)
    dense_feat = torch.cat(
      [dense_feat, self.anchors(exponent, d, h, w).expand(b, -1, -1, -1, -1)], 1
    )
    dense_feat = self.conv_3d_coord(dense_feat)
    tokens = dense_feat.flatten(2).permute(2, 0, 1)  # (d h w) b c
    pos_3d = self.pos_embed_1d.pos_table[:, None].expand(-1, b, -1)
    tokens = self.refine_3d(tokens, pos_3d)
    volume = tokens.permute(1, 2, 0).reshape(b, cfg.dim, d, h, w)
    feat = self.down_linear(img)
    img_pos = position_embedding_sine(feat, cfg.dim // 2, cfg.released_sine_frequencies)
    query_pos = torch.cat([self.spose_shape_cam_param, self.query.weight])[:, None].expand(
      -1, b, -1
    )
    src = feat.flatten(2).permute(2, 0, 1)
    img_pos = img_pos.flatten(2).permute(2, 0, 1)
    hs, joint_img = self.transformer(src, query_pos, img_pos, volume, exponent)
    hs = hs.transpose(1, 2)  # L, B, n, C
    pose_token, shape_token, cam_token = hs[:, :, 0], hs[:, :, -2], hs[:, :, -1]
    code_tokens = hs[:, :, 1:-2] if cfg.pose_tokens else pose_token
    root_6d = self.cascade_fc(pose_token, self.cascade_root_pose_out)
    cam_param = self.cascade_fc(cam_token, self.cascade_cam_out)
    gamma = torch.sigmoid(cam_param[:, 2])
    t_z = focal_length * cfg.camera_3d_size / math.sqrt(256 * 256) * gamma
    return {
      "root_pose_6d": root_6d,
      "root_rotmat": rot6d_to_rotmat(root_6d),
      "pose_code": self.cascade_fc(code_tokens, self.cascade_pose_out),
      "betas": self.cascade_fc(shape_token, self.cascade_shaoe_out),
      "cam_param": cam_param,
      "translation": torch.cat([cam_param[:, :2], t_z[:, None]], 1),
      "joint_img": joint_img,
      "volume": volume.permute(0, 2, 3, 4, 1),
      "features_2d": feat.permute(0, 2, 3, 1),
    }


def _oracle(cfg, seed=0):
  oracle = randomize(Regressor(cfg), seed=seed, scale=0.3)
  with torch.no_grad():
    oracle.exponent.fill_(2.5)  # inside the clamp range, so the anchors' power is exercised
  return oracle


def _state_dict(oracle):
  sd = {f"module.{k}": v for k, v in oracle.state_dict().items()}
  sd["module.backbone.some_conv.weight"] = torch.zeros(2, 2)  # other parts: skipped
  sd["module.vposer.bodyprior_dec_fc1.weight"] = torch.zeros(2, 2)
  return sd


# ----------------------------------------------------------------------------------------------
# The regressor against the oracle


class _LinearDecoder(nn.Module):
  """Stand-in pose decoder: pose code [B, 32] -> body pose [B, 23, 3]."""

  @nn.compact
  def __call__(self, code):
    return nn.Dense(69, name="fc")(code).reshape(*code.shape[:-1], 23, 3)


@pytest.mark.parametrize("cfg", [DPMESH_REGRESSOR_TINY, DPMESH_REGRESSOR_TINY_PAPER])
def test_regressor_matches_torch_oracle(cfg):
  oracle = _oracle(cfg)
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 8, 8, cfg.in_channels)).astype(np.float32)
  image_hw = np.array([[1080.0, 1920.0], [480.0, 640.0]], np.float32)
  focal = np.sqrt((image_hw**2).sum(-1))
  with torch.no_grad():
    ref = oracle(torch.from_numpy(features.transpose(0, 3, 1, 2)), torch.from_numpy(focal))

  variables = convert_dpmesh_regressor(_state_dict(oracle), cfg)
  decoder = None
  if not cfg.pose_tokens:
    fc = torch.nn.Linear(cfg.pose_code_dim, 69)
    randomize(fc, seed=1)
    ref["body_pose"] = fc(ref["pose_code"]).reshape(-1, 23, 3)
    variables["params"]["pose_decoder"] = {
      "fc": {"kernel": fc.weight.detach().numpy().T, "bias": fc.bias.detach().numpy()}
    }
    decoder = _LinearDecoder()
  model = DPMeshRegressor(cfg, pose_decoder=decoder)
  out = jax.jit(model.apply)(variables, features, focal_from_image_size(image_hw))

  for name, value in ref.items():
    err = rel_err(getattr(out, name), value.detach().numpy())
    assert err < 1e-4, (name, err)
  assert out.joint_img.shape == (cfg.dec_layers, 2, cfg.num_joints, 3)
  np.testing.assert_allclose(
    rotations.axis_angle_to_matrix(out.root_pose), out.root_rotmat, atol=1e-5
  )
  assert float(out.exponent) == pytest.approx(2.5)


# ----------------------------------------------------------------------------------------------
# Pieces


def test_grid_sample_3d_matches_torch():
  rng = np.random.default_rng(1)
  volume = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)  # B, C, D, H, W
  grid = rng.uniform(-1.3, 1.3, size=(2, 2, 3, 7, 3)).astype(np.float32)
  grid[0, 0, 0, :3] = [[-1, -1, -1], [1, 1, 1], [1, -1, 0.3]]  # corners and faces exactly
  ref = F.grid_sample(
    torch.from_numpy(volume), torch.from_numpy(grid), mode="bilinear", align_corners=True
  )  # B, C, 2, 3, 7
  ours = grid_sample_3d(jnp.asarray(volume.transpose(0, 2, 3, 4, 1)), jnp.asarray(grid))
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 4, 1), atol=1e-5, rtol=1e-5)


def test_camera_uses_each_samples_own_focal_length():
  image_hw = np.array([[1080.0, 1920.0], [480.0, 640.0]])
  cam = np.array([[0.1, -0.2, 0.3], [-0.5, 0.4, -1.0]])
  f = np.array([math.hypot(1080, 1920), math.hypot(480, 640)])  # 2202.9..., 800
  assert f[1] == 800.0
  np.testing.assert_allclose(focal_from_image_size(image_hw), f, rtol=1e-6)
  sig = 1 / (1 + np.exp(-cam[:, 2]))
  expected = np.concatenate([cam[:, :2], (sig * f * 2.5 / 256)[:, None]], 1)
  t = dpmesh_camera_translation(cam, focal_from_image_size(image_hw))
  np.testing.assert_allclose(t, expected, rtol=1e-6)
  # The released code: sample 0's focal length for the whole batch.
  shared = dpmesh_camera_translation(cam, f, shared_focal=True)
  np.testing.assert_allclose(shared[1, 2], sig[1] * f[0] * 2.5 / 256, rtol=1e-6)
  # Render mode: t_z rescaled by sqrt(256 * 256) / sqrt(w_bbox * h_bbox).
  bbox = np.array([[100.0, 400.0], [64.0, 64.0]])
  render = dpmesh_camera_translation(cam, f, bbox_size=bbox)
  np.testing.assert_allclose(render[:, 2], expected[:, 2] * 256 / np.array([200.0, 64.0]))
  # Projection onto the crop (principal point (128, 128)), then the 64-grid.
  points = np.array([[[0.1, 0.2, 5.0]], [[-0.3, 0.1, 2.0]]])
  u = points[..., 0] / (points[..., 2] + 1e-4) * f[:, None] + 128
  v = points[..., 1] / (points[..., 2] + 1e-4) * f[:, None] + 128
  uv = np.stack([u, v], -1)
  ours = project_to_crop(points, f, grid_size=None)
  np.testing.assert_allclose(ours, uv, rtol=1e-6, atol=1e-4)  # float32 near the centre
  np.testing.assert_allclose(project_to_crop(points, f), uv / 4, rtol=1e-6, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Converter refusals and parameter counts


@pytest.fixture(scope="module")
def tiny_state_dict():
  return _state_dict(_oracle(DPMESH_REGRESSOR_TINY))


def test_converter_names_missing_extra_and_misshaped_keys(tiny_state_dict):
  sd = dict(tiny_state_dict)
  del sd["module.transformer.decoder.fc_pos_3d.3.bias"]
  sd["module.mystery.weight"] = torch.zeros(3, 3)
  sd["module.cascade_shaoe_out.0.weight"] = torch.zeros(7, 32)
  with pytest.raises(ConversionError) as info:
    convert_dpmesh_regressor(sd, DPMESH_REGRESSOR_TINY)
  msg = str(info.value)
  assert "transformer/decoder/fc_pos_3d_3/bias" in msg  # missing
  assert "mystery.weight" in msg  # unexpected
  assert "cascade_shaoe_out.0.weight" in msg and "(32, 7)" in msg  # mis-shaped
  # A released checkpoint into the paper layout: the query table and pose head do not fit.
  with pytest.raises(ConversionError, match="spose_shape_cam_param"):
    convert_dpmesh_regressor(tiny_state_dict, DPMESH_REGRESSOR_TINY_PAPER)
  sd = dict(tiny_state_dict)
  sd["module.pos_embed_1d.pos_table"] = sd["module.pos_embed_1d.pos_table"] + 1.0
  with pytest.raises(ConversionError, match="pos_table"):
    convert_dpmesh_regressor(sd, DPMESH_REGRESSOR_TINY)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  "cfg, expected",
  [(DPMESH_REGRESSOR, 30_109_223), (DPMESH_REGRESSOR_RELEASED, 15_444_647)],
  ids=["paper", "released"],
)
def test_full_size_parameter_count(cfg, expected):
  features = jax.ShapeDtypeStruct((1, 8, 8, 2048), jnp.float32)
  shapes = jax.eval_shape(DPMeshRegressor(cfg).init, jax.random.key(0), features)
  assert _count(shapes["params"]) == expected
  torch_cfg = dataclasses.replace(cfg)
  with torch.device("meta"):
    oracle = Regressor(torch_cfg)
  assert sum(p.numel() for p in oracle.parameters()) == expected
