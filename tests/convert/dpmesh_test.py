"""jhmr.convert.dpmesh: an official-layout DPMesh checkpoint written here (tiny sizes) against the
PyTorch model it came from; strict refusals; the SD 1.5 + ControlNet-openpose initialisation.

The checkpoint's ldm / cldm names are written in this test from research/dpmesh.md §1-2 (CompVis
`input_blocks` / `middle_block` / `output_blocks`, `zero_convs`, `middle_block_out`, VAE
`encoder.down.N.block.M`), checked against diffusers' own ldm -> diffusers converters; the U-Net's
attention and GEGLU Linears carry cloneofsimo's injected names (`M.linear.weight`,
`M.lora_down.weight`, `M.lora_up.weight`: DPMesh issue #7). The reference is diffusers' VAE,
ControlNet (direct: latent ‖ heatmaps into conv_in) and U-Net with the LoRA merged, DPMesh's
`outmodules` and `kp_lifting` in torch, the regressor oracle of dpmesh_regressor_test and the
VPoser v1 oracle of vposer_v1_test (its whole state dict under `vposer.vposer.`, as DPMesh's
`Model.vposer` wrapper registers it): the released model (`pose_decoder='vposer'`) end to end.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers.loaders import single_file_utils  # noqa: E402

from jhmr.convert import diffusers_unet, diffusers_vae  # noqa: E402
from jhmr.convert.common import ConversionError, conv_kernel  # noqa: E402
from jhmr.convert.dpmesh import (  # noqa: E402
  convert_dpmesh_checkpoint,
  init_from_sd15,
  load_dpmesh_checkpoint,
  widen_conv_in,
)
from jhmr.convert.dpmesh_regressor import convert_dpmesh_regressor  # noqa: E402
from jhmr.convert.vposer_v1 import convert_vposer_v1  # noqa: E402
from jhmr.models.controlnet import ControlNet  # noqa: E402
from jhmr.models.dpmesh import DPMesh, DPMeshConfig, vposer_pose_decoder  # noqa: E402
from jhmr.models.dpmesh_backbone import DPMeshBackbone, DPMeshBackboneConfig  # noqa: E402
from jhmr.models.dpmesh_regressor import DPMESH_REGRESSOR_TINY, DPMeshRegressor  # noqa: E402
from jhmr.models.vposer_v1 import VPoserV1  # noqa: E402
from tests.models.dpmesh_backbone_test import TORCH_UNET, TORCH_VAE  # noqa: E402
from tests.models.dpmesh_regressor_test import Regressor  # noqa: E402
from tests.models.vposer_v1_test import make_oracle  # noqa: E402
from tests.torch_reference import nchw, nhwc, randomize, rel_err  # noqa: E402

CFG = DPMeshBackboneConfig.tiny(prompt="released", image_range="unit", latent_scale=1.0)
RCFG = dataclasses.replace(DPMESH_REGRESSOR_TINY, in_channels=CFG.fusion_channels)
VPOSER = VPoserV1(num_neurons=16)  # latent 32 = RCFG.pose_code_dim
# The released model: one 32-D VPoser code decoded by VPoser v1 (crop size: translation only).
MODEL_CFG = DPMeshConfig(
  backbone=CFG,
  regressor=dataclasses.replace(RCFG, crop_size=(CFG.image_size, CFG.image_size)),
  vposer=VPOSER,
  pose_decoder="vposer",
)
J, R = CFG.num_joints, CFG.lora_rank
# The tiny diffusers models of the backbone test (ControlNetModel takes no `sample_size`).
UNET_KW = {k: v for k, v in TORCH_UNET.items() if k != "sample_size"}
VAE_KW = TORCH_VAE
UNET_PREFIX = "backbone.sd_model.model.diffusion_model."
# cloneofsimo's targets in the ldm U-Net: every Linear of CrossAttention and GEGLU (notes §10).
LORA_TARGET = re.compile(r".*\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj)\.weight")

# ----------------------------------------------------------------------------------------------
# diffusers -> ldm / cldm names (written from the notes; checked against diffusers below)

_RESNET = (
  ("norm1", "in_layers.0"),
  ("conv1", "in_layers.2"),
  ("time_emb_proj", "emb_layers.1"),
  ("norm2", "out_layers.0"),
  ("conv2", "out_layers.3"),
  ("conv_shortcut", "skip_connection"),
)


def _resnet(rest, table=_RESNET):
  for new, old in table:
    if rest.startswith(new + "."):
      return old + rest[len(new) :]
  return rest


def _ldm_unet(key, has_attention, n=3):
  """A diffusers U-Net / ControlNet key -> CompVis ldm / cldm (n = layers_per_block + 1)."""
  fixed = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "controlnet_mid_block.": "middle_block_out.0.",
  }
  for new, old in fixed.items():
    if key.startswith(new):
      return old + key[len(new) :]
  if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
    return f"zero_convs.{m[1]}.0.{m[2]}"
  if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
    i, j = int(m[1]), int(m[3])
    rest = _resnet(m[4]) if m[2] == "resnets" else m[4]
    return f"input_blocks.{n * i + j + 1}.{0 if m[2] == 'resnets' else 1}.{rest}"
  if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
    return f"input_blocks.{n * (int(m[1]) + 1)}.0.op.{m[2]}"
  if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
    return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
  if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
    return f"middle_block.1.{m[1]}"
  if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
    i, j = int(m[1]), int(m[3])
    rest = _resnet(m[4]) if m[2] == "resnets" else m[4]
    return f"output_blocks.{n * i + j}.{0 if m[2] == 'resnets' else 1}.{rest}"
  if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
    i = int(m[1])
    return f"output_blocks.{n * i + n - 1}.{2 if has_attention(i) else 1}.conv.{m[2]}"
  raise KeyError(key)


def _ldm_vae_encoder(key, value):
  """A diffusers VAE encoder / quant_conv key -> ldm (attention Linears -> 1x1 convs)."""
  if key.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.")):
    return key, value
  key = key.replace("encoder.conv_norm_out.", "encoder.norm_out.")
  if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
    return (
      f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}",
      value,
    )
  if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
    return f"encoder.down.{m[1]}.downsample.{m[2]}", value
  if m := re.fullmatch(r"encoder\.mid_block\.resnets\.(\d+)\.(.+)", key):
    return f"encoder.mid.block_{int(m[1]) + 1}.{m[2]}", value
  if m := re.fullmatch(r"encoder\.mid_block\.attentions\.0\.(\w+)(\.0)?\.(weight|bias)", key):
    name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    if value.ndim == 2:
      value = value[:, :, None, None]
    return f"encoder.mid.attn_1.{name[m[1]]}.{m[3]}", value
  return key, value  # norm_out etc. already renamed


def _ldm_names(model, keys):
  """diffusers key -> ldm / cldm key for `model`'s keys."""
  ups = {int(k.split(".")[1]) for k in keys if re.match(r"up_blocks\.\d+\.attentions", k)}
  n = model.config.layers_per_block + 1
  return {k: _ldm_unet(k, lambda i: i in ups, n) for k in keys}


def _ldm(model, state):
  names = _ldm_names(model, list(state))
  return {names[k]: v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# The PyTorch model and its official-layout checkpoint


def _outmodules():
  """DPMesh's `outmodules` (vpdencoder_useattn.py) at the tiny widths."""
  nn = torch.nn
  c0, c1 = CFG.fusion_in_channels()[3], CFG.fusion_in_channels()[2]
  c = sum(CFG.fusion_in_channels())
  out, g = CFG.fusion_channels, CFG.fusion_groups
  return nn.ModuleList(
    [
      nn.Sequential(
        nn.Conv2d(c0, c0, 3, stride=2, padding=1),
        nn.GroupNorm(g, c0),
        nn.ReLU(),
        nn.Conv2d(c0, c0, 3, stride=2, padding=1),
      ),
      nn.Sequential(nn.Conv2d(c1, c1, 3, stride=2, padding=1)),
      nn.Sequential(nn.Conv2d(c, out, 1), nn.GroupNorm(g, out), nn.ReLU()),
    ]
  )


def _inputs(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, CFG.image_size, CFG.image_size, 3)).astype(np.float32)
  xy = rng.uniform(-4, CFG.image_size + 4, size=(batch, J, 2))
  conf = rng.uniform(size=(batch, J, 1)) * (rng.uniform(size=(batch, J, 1)) > 0.2)
  return images, np.concatenate([xy, conf], -1).astype(np.float32)


@pytest.fixture(scope="module")
def official():
  tvae = randomize(diffusers.AutoencoderKL(**VAE_KW), seed=0)
  tunet = randomize(diffusers.UNet2DConditionModel(sample_size=32, **UNET_KW), seed=1, scale=0.15)
  tcn = randomize(
    diffusers.ControlNetModel(
      **UNET_KW, in_channels=4 + J, conditioning_embedding_out_channels=(16, 32)
    ),
    seed=2,
    scale=0.15,
  )
  with torch.no_grad():  # DPMesh's ControlNet has no hint encoder: make diffusers' contribute 0
    tcn.controlnet_cond_embedding.conv_out.weight.zero_()
    tcn.controlnet_cond_embedding.conv_out.bias.zero_()
  fusion = randomize(_outmodules(), seed=3, scale=0.05)
  kp_lifting = randomize(torch.nn.Linear(2, CFG.token_dim), seed=4, scale=0.5)
  regressor = randomize(Regressor(RCFG), seed=5, scale=0.3)
  vposer = make_oracle(seed=7, num_neurons=VPOSER.num_neurons, latentD=VPOSER.latent_dim)

  # Copies: the torch U-Net gets the LoRA merged in place below, the checkpoint keeps W.
  unet_ldm = _ldm(tunet, {k: v.clone() for k, v in tunet.state_dict().items()})
  cn_state = {
    k: v for k, v in tcn.state_dict().items() if not k.startswith("controlnet_cond_embedding.")
  }
  cn_ldm = _ldm(tcn, cn_state)
  # The test's names agree with diffusers' ldm -> diffusers conversion.
  back = single_file_utils.convert_ldm_unet_checkpoint(
    {"model.diffusion_model." + k: v for k, v in unet_ldm.items()}, dict(tunet.config)
  )
  assert set(back) == set(tunet.state_dict())
  assert all(torch.equal(back[k], v) for k, v in tunet.state_dict().items())
  back = single_file_utils.convert_controlnet_checkpoint(
    {"control_model." + k: v for k, v in cn_ldm.items()}, dict(tcn.config)
  )
  assert set(back) == set(cn_state)
  assert all(torch.equal(back[k], v) for k, v in cn_state.items())

  # LoRA injection (lora_diffusion): base under M.linear.*, factors beside it; merged in torch.
  g = torch.Generator().manual_seed(6)
  sd, merged = {}, dict(tunet.state_dict())
  lora_modules = []
  for key, value in unet_ldm.items():
    if LORA_TARGET.fullmatch(key):
      m = key[: -len(".weight")]
      down = torch.randn(R, value.shape[1], generator=g) * 0.3
      up = torch.randn(value.shape[0], R, generator=g) * 0.3
      sd[f"{UNET_PREFIX}{m}.linear.weight"] = value
      sd[f"{UNET_PREFIX}{m}.lora_down.weight"] = down
      sd[f"{UNET_PREFIX}{m}.lora_up.weight"] = up
      lora_modules.append(m)
    elif LORA_TARGET.fullmatch(key.replace(".bias", ".weight")):
      sd[f"{UNET_PREFIX}{key[: -len('.bias')]}.linear.bias"] = value
    else:
      sd[UNET_PREFIX + key] = value
  # ldm -> diffusers name of each adapted Linear, to merge W + up @ down into the reference.
  diff_of = {v: k for k, v in _ldm_names(tunet, list(merged)).items()}
  for m in lora_modules:
    d = diff_of[m + ".weight"]
    merged[d] = (
      merged[d]
      + sd[f"{UNET_PREFIX}{m}.lora_up.weight"] @ (sd[f"{UNET_PREFIX}{m}.lora_down.weight"])
    )
  tunet.load_state_dict(merged)
  assert len(lora_modules) == 16 * 9  # 16 transformer blocks x (2 x 4 attention + GEGLU)

  for k, v in cn_ldm.items():
    sd["backbone.sd_model.control_model." + k] = v
  for k, v in tvae.state_dict().items():
    if k.startswith(("encoder.", "quant_conv.", "post_quant_conv.")):  # decoder deleted
      name, value = _ldm_vae_encoder(k, v)
      sd["backbone.sd_model.first_stage_model." + name] = value
      sd["backbone.encoder_vq." + name] = value  # the same module, registered twice
  for k, v in fusion.state_dict().items():
    sd["backbone.outmodules." + k] = v
  sd["backbone.sd_model.betas"] = torch.linspace(0.1, 0.2, 10)
  sd["backbone.sd_model.alphas_cumprod"] = torch.linspace(0.9, 0.1, 10)
  sd["backbone.sd_model.cond_stage_model.transformer.text_model.final_layer_norm.weight"] = (
    torch.ones(4)
  )
  sd["kp_lifting.weight"], sd["kp_lifting.bias"] = kp_lifting.weight, kp_lifting.bias
  sd.update(regressor.state_dict())
  sd.update({"vposer.vposer." + k: v for k, v in vposer.state_dict().items()})
  sd["human_model_layer.th_shapedirs"] = torch.zeros(6, 3, 10)
  sd = {f"module.{k}": v.detach().clone() for k, v in sd.items()}
  return dict(
    sd=sd, tvae=tvae, tunet=tunet, tcn=tcn, fusion=fusion, kp_lifting=kp_lifting,
    regressor=regressor, vposer=vposer,
  )  # fmt: skip


class _Recorder:
  """diffusers' plain attention, keeping the cross-attention softmax `[B, heads, L, S]`."""

  def __init__(self, store):
    self.store = store

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    q = attn.head_to_batch_dim(attn.to_q(hidden_states))
    k = attn.head_to_batch_dim(attn.to_k(context))
    v = attn.head_to_batch_dim(attn.to_v(context))
    probs = attn.get_attention_scores(q, k, None)
    if encoder_hidden_states is not None:
      self.store.append(probs.reshape(-1, attn.heads, *probs.shape[1:]))
    return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))


def _torch_forward(m, images, keypoints, heatmaps):
  """DPMesh's released feature path in torch: VAE mean, kp_lifting, ControlNet, LoRA U-Net,
  output blocks 1/4/7/11, cross maps (down + up, heads then layers averaged), outmodules."""
  tunet, s = m["tunet"], CFG.latent_size
  maps, feats, handles = [], {}, []
  tunet.set_attn_processor({k: _Recorder(maps) for k in tunet.attn_processors})
  layers = CFG.unet.layers_per_block + 1
  for i, block in enumerate(tunet.up_blocks):
    for j in range(layers):
      if j == layers - 1 and block.upsamplers is not None:
        module = block.upsamplers[0]
      elif hasattr(block, "attentions"):
        module = block.attentions[j]
      else:
        module = block.resnets[j]

      def hook(mod, args, output, index=i * layers + j):
        output = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        feats[index] = output

      handles.append(module.register_forward_hook(hook))
  with torch.no_grad():
    latent = m["tvae"].encode(nchw(images)).latent_dist.mode()
    xy = torch.from_numpy(keypoints[..., :2] * s / CFG.image_size)
    ctx = m["kp_lifting"](xy / s)
    t = torch.ones(len(images))
    down, mid = m["tcn"](
      torch.cat([latent, nchw(heatmaps)], 1), t, ctx, torch.zeros(len(images), 3, 64, 64),
      return_dict=False,
    )  # fmt: skip
    maps.clear()
    tunet(latent, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    avg = {}
    for side in (8, 16):
      sel = [p.mean(1) for i, p in enumerate(maps) if i != 6 and p.shape[2] == side * side]
      avg[side] = torch.stack(sel).mean(0).transpose(1, 2).reshape(len(images), J, side, side)
    m0, m1, m2 = m["fusion"]
    up = torch.nn.functional.interpolate(feats[1], scale_factor=2)
    y = torch.cat(
      [m0(feats[11]), m1(torch.cat([feats[7], avg[16]], 1)), torch.cat([feats[4], avg[8]], 1), up],
      1,
    )
    fused = m2(y)
  for h in handles:
    h.remove()
  return latent, ctx, feats, avg, fused


def test_official_checkpoint_matches_torch_model(official, tmp_path):
  path = tmp_path / "3dpw_best_ckpt.pth.tar"
  optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
  torch.save({"epoch": 7, "network": official["sd"], "optimizer": optimizer}, path)
  ckpt = load_dpmesh_checkpoint(path, CFG, RCFG, vposer_model=VPOSER)
  assert set(ckpt.backbone) == {"vae", "unet", "unet_lora", "controlnet", "prompt", "fusion"}
  ref_vposer = convert_vposer_v1(official["vposer"].state_dict(), VPOSER)
  jax.tree.map(np.testing.assert_array_equal, ckpt.vposer_v1, ref_vposer)
  assert set(ckpt.variables["params"]) == {"backbone", "regressor", "vposer"}
  assert set(ckpt.variables["params"]["vposer"]) == {"dec_fc1", "dec_fc2", "dec_out"}
  assert not any("VPoser" in n for n in ckpt.notes)
  assert set(ckpt.skipped) == {
    "backbone.sd_model.betas",
    "backbone.sd_model.alphas_cumprod",
    "backbone.sd_model.cond_stage_model.transformer.text_model.final_layer_norm.weight",
    "backbone.sd_model.first_stage_model.post_quant_conv.weight",
    "backbone.sd_model.first_stage_model.post_quant_conv.bias",
    "human_model_layer.th_shapedirs",
  }
  reg_sd = {k: v for k, v in official["regressor"].state_dict().items()}
  ref_reg = convert_dpmesh_regressor(reg_sd, RCFG)["params"]
  jax.tree.map(np.testing.assert_array_equal, ckpt.regressor, ref_reg)
  assert ckpt.variables["params"]["regressor"] is ckpt.regressor

  # The converted variables are exactly the released model's (structure and shapes).
  model = DPMesh(MODEL_CFG)
  want = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        *model.dummy_inputs())  # fmt: skip
  shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)  # noqa: E731
  assert shapes(ckpt.variables) == shapes(want)

  images, keypoints = _inputs()
  # Eager: per-op compiles are cheaper here than compiling the whole jitted graph.
  out = DPMeshBackbone(CFG).apply({"params": ckpt.backbone}, images, keypoints)
  assert float(jnp.max(out.heatmaps)) > 0.5
  latent, ctx, feats, avg, fused = _torch_forward(official, images, keypoints, out.heatmaps)
  assert rel_err(out.latent, nhwc(latent)) < 1e-4
  assert rel_err(out.context, ctx.numpy()) < 1e-4
  for block, feature in zip(CFG.feature_blocks, out.decoder_features, strict=True):
    assert rel_err(feature, nhwc(feats[block])) < 1e-4, block
  for side in (8, 16):
    assert rel_err(out.attention_maps[side], nhwc(avg[side])) < 1e-4, side
  assert out.fused.shape == (2, 8, 8, CFG.fusion_channels)
  assert rel_err(out.fused, nhwc(fused)) < 1e-4

  # Regressor and frozen VPoser v1 decoder (DPMesh's `Vposer`: 21 joints + 2 zero hand joints),
  # DPMesh's own decoder function on the converted groups; jitted (one small program).
  @jax.jit
  def head(params, fused):
    decoder = vposer_pose_decoder(VPOSER, params["vposer"])
    reg = DPMeshRegressor(MODEL_CFG.regressor, pose_decoder=decoder)
    return reg.apply({"params": params["regressor"]}, fused)

  reg = head(ckpt.variables["params"], out.fused)
  with torch.no_grad():
    ref = official["regressor"](fused, torch.full((2,), 100.0))
    rot = official["vposer"].decode(ref["pose_code"]).numpy().reshape(2, 21, 3, 3)
  assert rel_err(reg.pose_code, ref["pose_code"].numpy()) < 1e-4
  assert rel_err(reg.betas, ref["betas"].numpy()) < 1e-4
  assert rel_err(reg.body_pose[:, :21], rot) < 1e-4
  np.testing.assert_array_equal(reg.body_pose[:, 21:], np.broadcast_to(np.eye(3), (2, 2, 3, 3)))


def _drop(sd, key):
  sd = dict(sd)
  del sd[key]
  return sd


LORA_Q = "module." + UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_q"
REFUSALS = {
  "missing U-Net weight": (
    lambda sd: _drop(sd, f"module.{UNET_PREFIX}input_blocks.1.0.in_layers.2.weight"),
    r"missing.*down_blocks_0/resnets_0/conv1/kernel",
  ),
  "missing LoRA factor": (
    lambda sd: _drop(sd, LORA_Q + ".lora_up.weight"),
    r"incomplete LoRA.*input_blocks\.1\.1\.transformer_blocks\.0\.attn2\.to_q",
  ),
  "missing fusion": (
    lambda sd: _drop(sd, "module.backbone.outmodules.0.1.weight"),
    r"missing.*outmodules_0_1/scale",
  ),
  "extra backbone key": (
    lambda sd: {**sd, "module.backbone.sd_model.control_model.hint.0.weight": torch.ones(1)},
    r"control_model\.hint\.0\.weight",
  ),
  "extra part": (
    lambda sd: {**sd, "module.backbone.clip.weight": torch.ones(1)},
    r"no known part.*backbone\.clip\.weight",
  ),
  "extra regressor key": (
    lambda sd: {**sd, "module.transformer.bogus.weight": torch.ones(1)},
    r"transformer\.bogus",
  ),
  "mis-shaped LoRA": (
    lambda sd: {**sd, LORA_Q + ".lora_down.weight": torch.ones(R + 1, 16)},
    r"input_blocks\.1\.1\.transformer_blocks\.0\.attn2\.to_q.*chain",
  ),
  "mis-shaped fusion": (
    lambda sd: {**sd, "module.backbone.outmodules.2.0.weight": torch.ones(3, 3, 1, 1)},
    r"mis-shaped.*outmodules_2_0/kernel",
  ),
  "mis-shaped ControlNet conv_in": (
    lambda sd: {
      **sd,
      "module.backbone.sd_model.control_model.input_blocks.0.0.weight": torch.ones(16, 4, 3, 3),
    },
    r"mis-shaped.*conv_in/kernel",
  ),
  "missing VPoser weight": (
    lambda sd: _drop(sd, "module.vposer.vposer.bodyprior_dec_out.bias"),
    r"VPoser v1.*missing: params/dec_out/bias",
  ),
  "missing VPoser statistic": (
    lambda sd: _drop(sd, "module.vposer.vposer.bodyprior_enc_bn1.running_mean"),
    r"VPoser v1.*missing: batch_stats/enc_bn1/mean",
  ),
  "extra VPoser key": (
    lambda sd: {**sd, "module.vposer.vposer.bodyprior_dec_fc3.weight": torch.ones(1)},
    r"VPoser v1.*unexpected keys: vposer\.vposer\.bodyprior_dec_fc3\.weight",
  ),
  "VPoser key outside the wrapper's model": (
    lambda sd: {**sd, "module.vposer.bodyprior_dec_fc1.weight": torch.ones(16, 32)},
    r"VPoser v1.*unexpected keys: vposer\.bodyprior_dec_fc1\.weight",
  ),
  "mis-shaped VPoser": (
    lambda sd: {**sd, "module.vposer.vposer.bodyprior_dec_fc1.weight": torch.ones(16, 31)},
    r"VPoser v1.*mis-shaped.*dec_fc1/kernel.*vposer\.vposer\.bodyprior_dec_fc1\.weight",
  ),
  "alias differs": (
    lambda sd: {**sd, "module.backbone.encoder_vq.quant_conv.bias": torch.ones(8)},
    r"encoder_vq\.quant_conv\.bias.*differs",
  ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_name_the_key(official, case):
  edit, pattern = REFUSALS[case]
  with pytest.raises(ConversionError, match=re.compile(pattern, re.S)):
    convert_dpmesh_checkpoint(edit(official["sd"]), CFG, RCFG, vposer_model=VPOSER)


def test_refuses_vposer_and_paper_prompt(official):
  with pytest.raises(ConversionError, match="VPoser v1"):
    convert_dpmesh_checkpoint(official["sd"], CFG, RCFG, vposer="error", vposer_model=VPOSER)
  paper = dataclasses.replace(CFG, prompt="paper")
  with pytest.raises(ConversionError, match="kp_lifting"):
    convert_dpmesh_checkpoint(official["sd"], paper, RCFG, vposer_model=VPOSER)
  # The release's 512-neuron VPoser is expected by default: the tiny one is mis-shaped.
  with pytest.raises(ConversionError, match=r"(?s)VPoser v1.*mis-shaped.*dec_fc1/kernel"):
    convert_dpmesh_checkpoint(official["sd"], CFG, RCFG)
  with pytest.raises(ValueError, match="latent size 16"):
    convert_dpmesh_checkpoint(official["sd"], CFG, RCFG, vposer_model=VPoserV1(latent_dim=16))


def test_checkpoint_without_vposer_gets_a_note(official, monkeypatch):
  """No VPoser keys: converted (the decoder comes from a snapshot) with a note. The U-Net part is
  stubbed: only the VPoser bookkeeping is under test here."""
  import jhmr.convert.dpmesh as dpmesh_convert

  monkeypatch.setattr(dpmesh_convert, "_convert_unet_and_lora", lambda *a: ({}, {}))
  monkeypatch.setattr(dpmesh_convert, "convert_ldm_controlnet", lambda *a, **k: {})
  monkeypatch.setattr(dpmesh_convert, "_convert_vae", lambda *a: {})
  sd = {k: v for k, v in official["sd"].items() if not k.startswith("module.vposer.")}
  ckpt = convert_dpmesh_checkpoint(sd, CFG, RCFG, vposer="error")
  assert ckpt.vposer_v1 is None and set(ckpt.variables["params"]) == {"backbone", "regressor"}
  assert any("no VPoser v1" in n and "load_vposer_v1" in n for n in ckpt.notes)


def test_widen_conv_in():
  k = np.arange(2 * 2 * 4 * 3, dtype=np.float32).reshape(2, 2, 4, 3)
  w = widen_conv_in(k, 34)
  assert w.shape == (2, 2, 34, 3)
  np.testing.assert_array_equal(w[:, :, :4], k)
  assert not np.any(w[:, :, 4:])
  with pytest.raises(ValueError):
    widen_conv_in(k, 3)


def test_init_from_sd15_widens_openpose_conv_in(official, tmp_path):
  official["tvae"].save_pretrained(tmp_path / "sd" / "vae")
  tunet = randomize(diffusers.UNet2DConditionModel(sample_size=32, **UNET_KW), seed=8)
  tunet.save_pretrained(tmp_path / "sd" / "unet")
  openpose = randomize(
    diffusers.ControlNetModel(**UNET_KW, conditioning_embedding_out_channels=(16, 32)),
    seed=9,
    scale=0.15,
  )
  openpose.save_pretrained(tmp_path / "openpose")
  params = init_from_sd15(tmp_path / "sd", tmp_path / "openpose", CFG)

  unet = diffusers_unet.convert_unet_state_dict(tunet.state_dict(), CFG.unet)
  jax.tree.map(np.testing.assert_array_equal, params["unet"], unet)
  vae = diffusers_vae.convert_vae_state_dict(official["tvae"].state_dict(), CFG.vae)
  jax.tree.map(np.testing.assert_array_equal, params["vae"]["encoder"], vae["encoder"])
  assert not any(np.any(np.asarray(x)) for x in _leaves(params["unet_lora"], "lora_up"))
  assert all(np.any(np.asarray(x)) for x in _leaves(params["unet_lora"], "lora_down"))
  assert set(params["prompt"]) == {"kp_lifting"} and "outmodules_2_0" in params["fusion"]

  kernel = params["controlnet"]["conv_in"]["kernel"]
  assert kernel.shape == (3, 3, 4 + J, CFG.unet.block_out_channels[0])
  np.testing.assert_array_equal(kernel[:, :, :4], conv_kernel(openpose.conv_in.weight.detach()))
  assert not np.any(kernel[:, :, 4:])
  assert "controlnet_cond_embedding" not in params["controlnet"]

  # Without a ControlNet file: the U-Net's encoder copy, conv_in widened, zero convs zero.
  copy = init_from_sd15(tmp_path / "sd", None, CFG)["controlnet"]
  jax.tree.map(np.testing.assert_array_equal, copy["down_blocks_1"], unet["down_blocks_1"])
  np.testing.assert_array_equal(copy["conv_in"]["kernel"][:, :, :4], unet["conv_in"]["kernel"])
  assert not np.any(copy["conv_in"]["kernel"][:, :, 4:])
  zero_convs = {k: v for k, v in copy.items() if k.startswith("controlnet_")}
  assert len(zero_convs) == 13 and not any(np.any(x) for x in jax.tree.leaves(zero_convs))

  # Empty heatmaps: the widened ControlNet = the openpose ControlNet without a hint.
  rng = np.random.default_rng(10)
  latent = rng.normal(size=(2, CFG.latent_size, CFG.latent_size, 4)).astype(np.float32)
  ctx = rng.normal(size=(2, J, CFG.token_dim)).astype(np.float32)
  down, mid = ControlNet(CFG.controlnet).apply(
    {"params": params["controlnet"]},
    latent,
    jnp.ones(2),
    ctx,
    np.zeros((2, CFG.latent_size, CFG.latent_size, J), np.float32),
  )
  with torch.no_grad():
    openpose.controlnet_cond_embedding.conv_out.weight.zero_()
    openpose.controlnet_cond_embedding.conv_out.bias.zero_()
    ref_down, ref_mid = openpose(
      nchw(latent), torch.ones(2), torch.from_numpy(ctx), torch.zeros(2, 3, 64, 64),
      return_dict=False,
    )  # fmt: skip
  for ours, ref in zip(down, ref_down, strict=True):
    assert rel_err(ours, nhwc(ref)) < 1e-4
  assert rel_err(mid, nhwc(ref_mid)) < 1e-4


def _leaves(tree, name):
  return [v for p, v in traverse_util.flatten_dict(tree).items() if p[-1] == name]
