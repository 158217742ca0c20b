"""HMR 2.0: the head and the whole model against PyTorch oracles written here from the documented
architecture (research/regressors.md section 2; 4D-Humans `pose_transformer.py`, `smpl_head.py`
and the mmpose ViT), converted with `jhmr.convert.hmr2`; converter refusals; parameter counts;
camera formulas; crops."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from jhmr.convert.common import ConversionError
from jhmr.convert.hmr2 import (
  convert_hmr2,
  convert_hmr2_head,
  load_hmr2_checkpoint,
)
from jhmr.data.crops import crop_for_hmr2, square_box
from jhmr.errors import InputError
from jhmr.models.hmr2 import (
  HMR2,
  HMR2_FULL,
  HMR2_HEAD_TINY,
  HMR2_TINY,
  HMR2Head,
  cam_crop_to_full,
  crop_translation,
  hmr2_input,
)
from tests.torch_reference import randomize, rel_err

# ----------------------------------------------------------------------------------------------
# PyTorch oracle: module names as in 4D-Humans, so state_dict() keys are the checkpoint's.


class PreNorm(nn.Module):
  def __init__(self, dim, fn):
    super().__init__()
    self.norm = nn.LayerNorm(dim)  # eps 1e-5
    self.fn = fn

  def forward(self, x, **kwargs):
    return self.fn(self.norm(x), **kwargs)


class Attention(nn.Module):
  def __init__(self, dim, heads, dim_head):
    super().__init__()
    inner = heads * dim_head
    self.heads, self.scale = heads, dim_head**-0.5
    self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
    self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

  def forward(self, x):
    q, k, v = (
      t.reshape(*t.shape[:2], self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, -1)
    )
    out = torch.softmax(q @ k.transpose(-1, -2) * self.scale, -1) @ v
    return self.to_out(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
  def __init__(self, dim, context_dim, heads, dim_head):
    super().__init__()
    inner = heads * dim_head
    self.heads, self.scale = heads, dim_head**-0.5
    self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
    self.to_q = nn.Linear(dim, inner, bias=False)
    self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

  def forward(self, x, context):
    k, v = self.to_kv(context).chunk(2, -1)
    q, k, v = (
      t.reshape(*t.shape[:2], self.heads, -1).transpose(1, 2) for t in (self.to_q(x), k, v)
    )
    out = torch.softmax(q @ k.transpose(-1, -2) * self.scale, -1) @ v
    return self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.net = nn.Sequential(
      nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0)
    )

  def forward(self, x):
    return self.net(x)


class TransformerCrossAttn(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.layers = nn.ModuleList(
      nn.ModuleList(
        [
          PreNorm(c.dim, Attention(c.dim, c.heads, c.dim_head)),
          PreNorm(c.dim, CrossAttention(c.dim, c.context_dim, c.heads, c.dim_head)),
          PreNorm(c.dim, FeedForward(c.dim, c.mlp_dim)),
        ]
      )
      for _ in range(c.depth)
    )

  def forward(self, x, context):
    for sa, ca, ff in self.layers:
      x = sa(x) + x
      x = ca(x, context=context) + x
      x = ff(x) + x
    return x


class TransformerDecoder(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.to_token_embedding = nn.Linear(c.token_dim, c.dim)
    self.pos_embedding = nn.Parameter(torch.randn(1, 1, c.dim))
    self.transformer = TransformerCrossAttn(c)

  def forward(self, inp, context):
    return self.transformer(self.to_token_embedding(inp) + self.pos_embedding, context)


def torch_rot6d_to_rotmat(x):  # 4D-Humans utils/geometry.py
  x = x.reshape(-1, 2, 3).permute(0, 2, 1)
  b1 = nn.functional.normalize(x[:, :, 0])
  a2 = x[:, :, 1]
  b2 = nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1)
  return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-1)


class SMPLTransformerDecoderHead(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.c = c
    self.transformer = TransformerDecoder(c)
    self.decpose = nn.Linear(c.dim, 144)
    self.decshape = nn.Linear(c.dim, 10)
    self.deccam = nn.Linear(c.dim, 3)
    self.register_buffer("init_body_pose", torch.zeros(1, 144))
    self.register_buffer("init_betas", torch.zeros(1, 10))
    self.register_buffer("init_cam", torch.zeros(1, 3))

  def forward(self, x):  # x: (B, C, H, W) backbone map
    b = x.shape[0]
    x = x.flatten(2).transpose(1, 2)  # 'b c h w -> b (h w) c'
    pose, betas, cam = (
      t.expand(b, -1) for t in (self.init_body_pose, self.init_betas, self.init_cam)
    )
    for _ in range(self.c.ief_iters):
      if self.c.token_input == "zero":
        token = torch.zeros(b, 1, 1)
      else:
        token = torch.cat([pose, betas, cam], 1)[:, None]
      out = self.transformer(token, context=x)[:, 0]
      pose = self.decpose(out) + pose
      betas = self.decshape(out) + betas
      cam = self.deccam(out) + cam
    return pose, torch_rot6d_to_rotmat(pose).reshape(b, 24, 3, 3), betas, cam


class VitBlock(nn.Module):  # mmpose ViT Block
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = nn.Module()
    self.attn.qkv = nn.Linear(dim, 3 * dim)
    self.attn.proj = nn.Linear(dim, dim)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = nn.Module()
    self.mlp.fc1 = nn.Linear(dim, 4 * dim)
    self.mlp.fc2 = nn.Linear(4 * dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5, -1) @ v
    x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, c))
    return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class TorchViT(nn.Module):  # mmpose / 4D-Humans ViT: padding 2, pos (1, N+1, C) folded, last_norm
  def __init__(self, v):
    super().__init__()
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv2d(3, v.embed_dim, v.patch_size, v.patch_size, v.patch_padding)
    self.pos_embed = nn.Parameter(torch.zeros(1, v.num_patches + 1, v.embed_dim))
    self.blocks = nn.ModuleList(VitBlock(v.embed_dim, v.num_heads) for _ in range(v.depth))
    self.last_norm = nn.LayerNorm(v.embed_dim, eps=1e-6)

  def forward(self, x):
    x = self.patch_embed.proj(x)
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2) + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
    for blk in self.blocks:
      x = blk(x)
    return self.last_norm(x).transpose(1, 2).reshape(b, c, h, w)


class TorchHMR2(nn.Module):
  def __init__(self, config):
    super().__init__()
    self.backbone = TorchViT(config.vit)
    self.smpl_head = SMPLTransformerDecoderHead(config.head)

  def forward(self, crops):  # (B, 3, S, S)
    m = crops.shape[-1] // 8
    return self.smpl_head(self.backbone(crops[:, :, :, m:-m]))


def randomize_all(module, seed):
  """Random parameters and random mean-init buffers."""
  randomize(module, seed, scale=0.2)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for b in module.buffers():
      b.copy_(torch.randn(b.shape, generator=g))
  return module


def assert_outputs_match(out, ref, tol=1e-4):
  pose, rotmat, betas, cam = (t.detach().numpy() for t in ref)
  assert rel_err(out.pose_6d, pose) < tol
  assert rel_err(out.rotmat, rotmat) < tol
  assert rel_err(out.betas, betas) < tol
  assert rel_err(out.cam, cam) < tol


# ----------------------------------------------------------------------------------------------
# Equivalence


@pytest.mark.parametrize(
  "config",
  [HMR2_HEAD_TINY, dataclasses.replace(HMR2_HEAD_TINY, token_input="mean_shape", ief_iters=2)],
  ids=["zero_token", "mean_shape_ief2"],
)
def test_head_matches_torch(config):
  head = randomize_all(SMPLTransformerDecoderHead(config), seed=1)
  context = np.random.default_rng(0).normal(size=(2, config.context_dim, 3, 2)).astype(np.float32)
  ref = head(torch.from_numpy(context))
  variables = convert_hmr2_head(head.state_dict(), config, prefix="")
  tokens = jnp.asarray(context.reshape(2, config.context_dim, 6).transpose(0, 2, 1))
  assert_outputs_match(HMR2Head(config).apply(variables, tokens), ref)


def test_hmr2_matches_torch():
  model = randomize_all(TorchHMR2(HMR2_TINY), seed=2)
  size = HMR2_TINY.vit.img_size[0]
  crops = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
  ref = model(torch.from_numpy(crops.transpose(0, 3, 1, 2)))
  variables = convert_hmr2(model.state_dict(), HMR2_TINY.head, HMR2_TINY.vit)
  out = jax.jit(HMR2(HMR2_TINY).apply)(variables, hmr2_input(jnp.asarray(crops)))
  assert_outputs_match(out, ref)
  assert out.features.shape == (2, *HMR2_TINY.vit.grid, HMR2_TINY.vit.embed_dim)


class RunsCode:  # would run a shell command if its pickle were trusted
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os

    return (os.system, (f"touch {self.marker}",))


def test_load_lightning_checkpoint(tmp_path):
  model = randomize_all(TorchHMR2(HMR2_TINY), seed=3)
  state = dict(model.state_dict())
  state["initialized"] = torch.tensor(True)
  state["smpl.v_template"] = torch.zeros(5, 3)
  state["discriminator.D_conv1.weight"] = torch.zeros(2, 2)
  path = tmp_path / "hmr2.ckpt"
  ckpt = {"epoch": 35, "global_step": 1000000, "state_dict": state}
  torch.save(ckpt, path)
  loaded = load_hmr2_checkpoint(path, HMR2_TINY.head, HMR2_TINY.vit)
  direct = convert_hmr2(model.state_dict(), HMR2_TINY.head, HMR2_TINY.vit)
  jax.tree.map(np.testing.assert_array_equal, loaded, direct)
  np.testing.assert_array_equal(
    loaded["buffers"]["head"]["init_cam"], model.smpl_head.init_cam.numpy()[0]
  )


def test_load_refuses_code_in_checkpoint(tmp_path):
  path, marker = tmp_path / "evil.ckpt", tmp_path / "marker"
  state = {k: v for k, v in TorchHMR2(HMR2_TINY).state_dict().items()}
  torch.save({"state_dict": state, "hyper_parameters": {"hook": RunsCode(marker)}}, path)
  with pytest.raises(ValueError, match="system"):
    load_hmr2_checkpoint(path, HMR2_TINY.head, HMR2_TINY.vit)
  assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Converter refusals


@pytest.fixture(scope="module")
def tiny_state():
  return {k: v.numpy() for k, v in randomize_all(TorchHMR2(HMR2_TINY), seed=4).state_dict().items()}


def _convert(state):
  return convert_hmr2(state, HMR2_TINY.head, HMR2_TINY.vit)


def test_refuses_missing_key(tiny_state):
  state = dict(tiny_state)
  del state["smpl_head.transformer.transformer.layers.1.1.fn.to_kv.weight"]
  with pytest.raises(ConversionError, match=r"1 missing: params/head/transformer/layers_1/cross"):
    _convert(state)


def test_refuses_extra_keys(tiny_state):
  with pytest.raises(ConversionError, match="smpl_head.transformer.final_norm.weight"):
    _convert({**tiny_state, "smpl_head.transformer.final_norm.weight": np.zeros(32)})
  with pytest.raises(ConversionError, match="keypoint_head.final_layer.weight"):
    _convert({**tiny_state, "keypoint_head.final_layer.weight": np.zeros(3)})
  with pytest.raises(ConversionError, match="backbone.extra_token"):
    _convert({**tiny_state, "backbone.extra_token": np.zeros(3)})


def test_refuses_mis_shaped(tiny_state):
  state = {**tiny_state, "smpl_head.transformer.to_token_embedding.weight": np.zeros((32, 157))}
  with pytest.raises(ConversionError, match=r"mis-shaped.*to_token_embedding"):
    _convert(state)
  with pytest.raises(ConversionError, match=r"mis-shaped.*init_betas"):
    _convert({**tiny_state, "smpl_head.init_betas": np.zeros((1, 11))})


def test_ignores_documented_keys_only(tiny_state):
  state = {
    **tiny_state,
    "initialized": np.array(True),
    "smpl.shapedirs": np.zeros(3),
    "discriminator.pose_out.0.weight": np.zeros(3),
  }
  _convert(state)
  with pytest.raises(ConversionError, match="smpl_extra"):
    _convert({**tiny_state, "smpl_extra": np.zeros(1)})


# ----------------------------------------------------------------------------------------------
# Full size (shapes only)


def test_full_size_parameter_counts():
  model = HMR2(HMR2_FULL)
  shapes = jax.eval_shape(model.init, jax.random.key(0), model.dummy_input())
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert count(shapes["params"]["head"]) == 39_547_037
  # The documented counts (backbone 630,912,000, total 670,459,037) include the 193rd
  # `pos_embed` row, which the converter folds into the other 192: 1280 fewer here.
  assert count(shapes["params"]["backbone"]) == 630_912_000 - 1280
  assert count(shapes["params"]) == 670_459_037 - 1280
  assert count(shapes["buffers"]) == 144 + 10 + 3
  out = jax.eval_shape(model.apply, shapes, model.dummy_input(2))
  assert out.features.shape == (2, 16, 12, 1280) and out.rotmat.shape == (2, 24, 3, 3)


# ----------------------------------------------------------------------------------------------
# Camera


def test_cam_crop_to_full_formula():
  cam = np.array([[0.8, 0.1, -0.2], [1.3, -0.05, 0.3]])
  center = np.array([[400.0, 300.0], [100.0, 620.0]])
  size = np.array([250.0, 512.0])
  img = np.array([[1280.0, 720.0], [640.0, 960.0]])
  focal = 5000.0 / 256 * img.max(-1)  # the 4D-Humans demo focal
  bs = size * cam[:, 0] + 1e-9
  want = np.stack(
    [
      2 * (center[:, 0] - img[:, 0] / 2) / bs + cam[:, 1],
      2 * (center[:, 1] - img[:, 1] / 2) / bs + cam[:, 2],
      2 * focal / bs,
    ],
    -1,
  )
  got = cam_crop_to_full(cam, center, size, img, focal)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
  # Hand-computed: s 0.8, b 250 -> bs 200; tz = 2 * 25000 / 200; tx = 0.1 + 2 * (400-640)/200.
  np.testing.assert_allclose(
    np.asarray(cam_crop_to_full(cam[0], center[0], 250.0, img[0], 25000.0)),
    [0.1 - 2.4, -0.2 - 0.6, 250.0],
    rtol=1e-6,
  )
  t = crop_translation(cam)
  np.testing.assert_allclose(np.asarray(t[:, 2]), 2 * 5000 / (256 * cam[:, 0] + 1e-9), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(t[:, :2]), cam[:, 1:])


# ----------------------------------------------------------------------------------------------
# Crops


def test_square_box_expands_to_aspect():
  center, size = square_box([10, 20, 110, 120])  # 100 x 100 -> height 133.3
  np.testing.assert_allclose(center, [60, 70])
  assert size == pytest.approx(400 / 3)
  assert square_box([0, 0, 30, 200])[1] == 200  # tall: the height


def test_crop_pixels_and_normalisation():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
  mean, std = 255 * np.array([0.485, 0.456, 0.406]), 255 * np.array([0.229, 0.224, 0.225])
  # Box 192 wide x 256 high centred at (200, 200): side 256, scale 1, crop pixel (x, y) reads
  # image pixel (x + 72, y + 72); rows past the image bottom are zero.
  crop = crop_for_hmr2(image, [104, 72, 296, 328])
  assert crop.box_size == 256 and crop.image.shape == (256, 256, 3)
  np.testing.assert_allclose(crop.box_center, [200, 200])
  np.testing.assert_array_equal(crop.image_size, [400, 300])
  pixels = crop.image * std + mean
  np.testing.assert_allclose(pixels[:228], image[72:300, 72:328], atol=1e-3)
  np.testing.assert_allclose(pixels[228:], 0, atol=1e-3)
  # Side 512 (scale 1/2): crop pixel (x, y) reads image pixel (2x - 56, 2y - 106), zero outside.
  crop = crop_for_hmr2(image, [8, -106, 392, 406])
  pixels = crop.image * std + mean
  np.testing.assert_allclose(pixels[53:203, 28:228], image[0:300:2, 0:400:2], atol=1e-3)
  assert np.abs(pixels[:52]).max() < 1e-3


def test_crop_blur_only_when_downsampling():
  image = np.random.default_rng(1).integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
  small = [50, 50, 150, 180]
  np.testing.assert_array_equal(
    crop_for_hmr2(image, small, blur=True).image, crop_for_hmr2(image, small).image
  )
  big = [-300, -300, 500, 500]  # side 800: d = 800 / 256 / 2 = 1.56 > 1.1
  blurred, sharp = crop_for_hmr2(image, big, blur=True).image, crop_for_hmr2(image, big).image
  assert blurred.std() < sharp.std()


@pytest.mark.parametrize(
  "box, match",
  [
    ([10, 10, 10, 50], "degenerate"),
    ([10, 50, 40, 20], "degenerate"),
    ([0, 0, np.nan, 10], "finite"),
    ([500, 10, 600, 90], "outside"),
    ([-90, -90, -10, -10], "outside"),
  ],
)
def test_crop_errors(box, match):
  with pytest.raises(InputError, match=match):
    crop_for_hmr2(np.zeros((100, 120, 3), np.uint8), box)


def test_crop_rejects_bad_image_and_input_shape():
  with pytest.raises(InputError, match=r"\[H, W, 3\]"):
    crop_for_hmr2(np.zeros((100, 120)), [0, 0, 10, 10])
  with pytest.raises(ValueError, match="S, S"):
    hmr2_input(jnp.zeros((1, 256, 192, 3)))
  assert hmr2_input(jnp.zeros((1, 256, 256, 3))).shape == (1, 256, 192, 3)
