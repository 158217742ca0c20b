"""jhmr.convert.sd_single_file: ldm-layout SD 1.x / ControlNet files.

No original checkpoint can be downloaded, so the tests write one: tiny diffusers/transformers
models are renamed to the ldm layout by `_to_ldm_*` below, and that file is certified by
diffusers' own ldm -> diffusers converters (`diffusers.loaders.single_file_utils`), which must give
the original state dict back exactly. jhmr's converter must then give the same params as
converting the diffusers state dicts directly.
"""

import functools
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers.loaders import single_file_utils as sfu  # noqa: E402

from jhmr.convert import clip_text, diffusers_unet, diffusers_vae, sd_single_file  # noqa: E402
from jhmr.convert.common import ConversionError  # noqa: E402
from jhmr.models.controlnet import ControlNetConfig  # noqa: E402
from tests import torch_reference  # noqa: E402

randomize = functools.partial(torch_reference.randomize, scale=0.1)

LAYERS = 2
TINY_UNET = dict(
  sample_size=16,
  block_out_channels=(32, 64),
  layers_per_block=LAYERS,
  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
  cross_attention_dim=32,
  attention_head_dim=8,
  norm_num_groups=8,
)
TINY_VAE = dict(
  block_out_channels=(32, 64),
  layers_per_block=1,
  latent_channels=4,
  norm_num_groups=8,
  down_block_types=("DownEncoderBlock2D",) * 2,
  up_block_types=("UpDecoderBlock2D",) * 2,
)
TINY_CLIP = dict(
  vocab_size=100,
  hidden_size=32,
  intermediate_size=37,
  num_hidden_layers=2,
  num_attention_heads=4,
  max_position_embeddings=77,
  bos_token_id=98,
  eos_token_id=99,
)
_RESNET_TO_LDM = {
  "norm1": "in_layers.0",
  "conv1": "in_layers.2",
  "time_emb_proj": "emb_layers.1",
  "norm2": "out_layers.0",
  "conv2": "out_layers.3",
  "conv_shortcut": "skip_connection",
}


def _head(rest, table):
  name, _, tail = rest.partition(".")
  return f"{table.get(name, name)}.{tail}"


def _to_ldm_encoder(key):
  """diffusers U-Net/ControlNet encoder key -> ldm key (None if not an encoder key)."""
  if key.startswith("time_embedding.linear_"):
    return (
      "time_embed." + ("0" if "linear_1" in key else "2") + key[len("time_embedding.linear_1") :]
    )
  if key.startswith("conv_in."):
    return "input_blocks.0.0." + key[len("conv_in.") :]
  m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
  if m:
    block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
    base = 1 + block * (LAYERS + 1)
    if kind == "resnets":
      return f"input_blocks.{base + layer}.0.{_head(rest, _RESNET_TO_LDM)}"
    if kind == "attentions":
      return f"input_blocks.{base + layer}.1.{rest}"
    return f"input_blocks.{base + LAYERS}.0.op.{rest[len('conv.') :]}"
  m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", key)
  if m:
    if m[1] == "attentions":
      return f"middle_block.1.{m[3]}"
    return f"middle_block.{2 * int(m[2])}.{_head(m[3], _RESNET_TO_LDM)}"
  return None


def _to_ldm_unet(key, up_types):
  encoder = _to_ldm_encoder(key)
  if encoder:
    return encoder
  if key.startswith("conv_norm_out."):
    return "out.0." + key[len("conv_norm_out.") :]
  if key.startswith("conv_out."):
    return "out.2." + key[len("conv_out.") :]
  m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
  block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
  base = block * (LAYERS + 1)
  if kind == "resnets":
    return f"output_blocks.{base + layer}.0.{_head(rest, _RESNET_TO_LDM)}"
  if kind == "attentions":
    return f"output_blocks.{base + layer}.1.{rest}"
  sub = 2 if up_types[block].startswith("CrossAttn") else 1
  return f"output_blocks.{base + LAYERS}.{sub}.{rest}"


def _to_ldm_controlnet(key, hint_levels):
  encoder = _to_ldm_encoder(key)
  if encoder:
    return encoder
  m = re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key)
  if m:
    return f"zero_convs.{m[1]}.0.{m[2]}"
  if key.startswith("controlnet_mid_block."):
    return "middle_block_out.0." + key[len("controlnet_mid_block.") :]
  m = re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.+)", key)
  index = 0 if m[1] == "conv_in" else 4 * (hint_levels - 1) + 2 if m[1] == "conv_out" else None
  if index is None:
    index = 2 * int(m[2]) + 2
  return f"input_hint_block.{index}.{m[3]}"


def _to_ldm_vae(key, value, n):
  part, rest = key.split(".", 1)
  if part not in ("encoder", "decoder"):
    return key, value
  rename = {"conv_shortcut": "nin_shortcut"}
  m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest)
  if m:
    level = int(m[2]) if m[1] == "down" else n - 1 - int(m[2])
    if m[3] == "resnets":
      return f"{part}.{m[1]}.{level}.block.{m[4]}.{_head(m[5], rename)}", value
    return f"{part}.{m[1]}.{level}.{m[1]}sample.{m[5]}", value
  m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest)
  if m:
    return f"{part}.mid.block_{int(m[1]) + 1}.{_head(m[2], rename)}", value
  m = re.fullmatch(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", rest)
  if m:
    name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    if value.ndim == 2:  # ldm stores these projections as 1x1 convs
      value = value[:, :, None, None]
    return f"{part}.mid.attn_1.{name[m[1]]}.{m[2]}", value
  if rest.startswith("conv_norm_out."):
    return f"{part}.norm_out.{rest[len('conv_norm_out.') :]}", value
  return key, value


def _assert_state_dicts_equal(a, b):
  assert set(a) == set(b), set(a) ^ set(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def models():
  unet = randomize(diffusers.UNet2DConditionModel(**TINY_UNET), 0)
  vae = randomize(diffusers.AutoencoderKL(**TINY_VAE), 1)
  clip = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(**TINY_CLIP)), 2)
  sd = {k: v.clone() for k, v in unet.state_dict().items()}
  ldm = {}
  for k, v in sd.items():
    ldm["model.diffusion_model." + _to_ldm_unet(k, TINY_UNET["up_block_types"])] = v
  for k, v in vae.state_dict().items():
    new, value = _to_ldm_vae(k, v.clone(), len(TINY_VAE["block_out_channels"]))
    ldm["first_stage_model." + new] = value
  for k, v in clip.state_dict().items():
    ldm["cond_stage_model.transformer." + k] = v.clone()
  ldm["alphas_cumprod"] = torch.linspace(1, 0, 10)
  ldm["model_ema.decay"] = torch.tensor(0.999)
  return dict(unet=unet, vae=vae, clip=clip, ldm=ldm)


@pytest.fixture(scope="module")
def configs(models):
  return dict(
    unet_config=diffusers_unet.unet_config_from_diffusers(dict(models["unet"].config)),
    vae_config=diffusers_vae.vae_config_from_diffusers(dict(models["vae"].config)),
    text_config=clip_text.clip_text_config_from_transformers(models["clip"].config.to_dict()),
  )


def test_the_test_file_is_a_genuine_ldm_checkpoint(models):
  """diffusers' own ldm converters turn the file back into the original state dicts."""
  ldm = models["ldm"]
  _assert_state_dicts_equal(
    sfu.convert_ldm_unet_checkpoint(ldm, dict(models["unet"].config)), models["unet"].state_dict()
  )
  _assert_state_dicts_equal(
    sfu.convert_ldm_vae_checkpoint(ldm, dict(models["vae"].config)), models["vae"].state_dict()
  )


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_matches_diffusers_conversion(tmp_path, models, configs, suffix):
  path = tmp_path / f"sd{suffix}"
  if suffix == ".safetensors":
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in models["ldm"].items()}, str(path))
  else:
    torch.save({"state_dict": models["ldm"], "global_step": 7}, str(path))
  ckpt = sd_single_file.load_sd_checkpoint(path, **configs)
  _assert_trees_equal(
    ckpt.unet,
    diffusers_unet.convert_unet_state_dict(models["unet"].state_dict(), configs["unet_config"]),
  )
  _assert_trees_equal(
    ckpt.vae,
    diffusers_vae.convert_vae_state_dict(models["vae"].state_dict(), configs["vae_config"]),
  )
  _assert_trees_equal(
    ckpt.text_encoder,
    clip_text.convert_clip_text_state_dict(models["clip"].state_dict(), configs["text_config"]),
  )
  assert set(ckpt.skipped) == {"alphas_cumprod", "model_ema.decay"}


def test_unknown_missing_and_misshaped_keys_raise(models, configs):
  ldm = models["ldm"]
  with pytest.raises(ConversionError, match="keys of no known part: foo.bar"):
    sd_single_file.convert_sd_checkpoint({**ldm, "foo.bar": torch.zeros(1)}, **configs)
  bad_key = "model.diffusion_model.input_blocks.1.7.weight"
  with pytest.raises(ConversionError, match=re.escape(bad_key)):
    sd_single_file.convert_sd_checkpoint({**ldm, bad_key: torch.zeros(1)}, **configs)
  gone = "model.diffusion_model.output_blocks.2.1.conv.weight"
  with pytest.raises(ConversionError, match="1 missing: up_blocks_0/upsamplers_0/conv/kernel"):
    missing = {k: v for k, v in ldm.items() if k != gone}
    sd_single_file.convert_sd_checkpoint(missing, parts=("unet",), **configs)
  shape = "first_stage_model.quant_conv.weight"
  with pytest.raises(ConversionError, match="mis-shaped: quant_conv/kernel"):
    sd_single_file.convert_sd_checkpoint(
      {**ldm, shape: torch.zeros(8, 8, 3, 3)}, parts=("vae",), **configs
    )
  text_only = {k: v for k, v in ldm.items() if k.startswith("cond_stage_model.")}
  with pytest.raises(ConversionError, match="no unet weights"):
    sd_single_file.convert_sd_checkpoint(text_only, **configs)
  ckpt = sd_single_file.convert_sd_checkpoint(text_only, parts=("text_encoder",), **configs)
  assert ckpt.unet is None and ckpt.text_encoder is not None


@pytest.mark.parametrize("direct", [False, True], ids=["hint-encoder", "dpmesh-direct"])
def test_ldm_controlnet_matches_diffusers(models, direct):
  hint_channels = (8, 8, 16, 16)  # 4 levels, as in SD: diffusers' oracle assumes that layout
  levels = len(hint_channels)
  in_channels = 4 + 6 if direct else 4
  cn = randomize(
    diffusers.ControlNetModel(
      **{k: v for k, v in TINY_UNET.items() if k not in ("sample_size", "up_block_types")},
      in_channels=in_channels,
      conditioning_embedding_out_channels=hint_channels,
    ),
    3,
  )
  sd = {k: v.clone() for k, v in cn.state_dict().items()}
  ldm = {"control_model." + _to_ldm_controlnet(k, levels): v for k, v in sd.items()}
  _assert_state_dicts_equal(sfu.convert_controlnet_checkpoint(ldm, dict(cn.config)), sd)
  unet_config = diffusers_unet.unet_config_from_diffusers(TINY_UNET)
  if direct:  # DPMesh's file: widened input_blocks.0.0, no input_hint_block
    sd = {k: v for k, v in sd.items() if not k.startswith("controlnet_cond_embedding.")}
    ldm = {k: v for k, v in ldm.items() if ".input_hint_block." not in k}
    config = ControlNetConfig.from_unet(
      unet_config, conditioning_channels=6, conditioning_embedding_out_channels=None
    )
  else:
    config = ControlNetConfig.from_unet(
      unet_config, conditioning_embedding_out_channels=hint_channels
    )
  # the SD weights that share the file are ignored by the ControlNet converter
  params = sd_single_file.convert_ldm_controlnet({**ldm, **models["ldm"]}, config)
  _assert_trees_equal(params, diffusers_unet.convert_controlnet_state_dict(sd, config))


def test_cloneofsimo_lora_layers_split_and_merge(models, configs):
  """DPMesh-style U-Net with lora_diffusion layers: the base converts as usual and the LoRA tree
  merged with `jhmr.models.lora.merge` gives `W + up @ down`."""
  from jhmr.models import lora as jlora

  unet_state = {k: v for k, v in models["ldm"].items() if k.startswith("model.diffusion_model.")}
  p = "model.diffusion_model."
  modules = [
    p + "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    p + "middle_block.1.transformer_blocks.0.attn2.to_out.0",
    p + "output_blocks.3.1.transformer_blocks.0.ff.net.0.proj",
  ]
  g = torch.Generator().manual_seed(7)
  expected = {}
  for m in modules:
    w = unet_state.pop(f"{m}.weight")
    unet_state[f"{m}.linear.weight"] = w
    if f"{m}.bias" in unet_state:
      unet_state[f"{m}.linear.bias"] = unet_state.pop(f"{m}.bias")
    down, up = torch.randn(3, w.shape[1], generator=g), torch.randn(w.shape[0], 3, generator=g)
    unet_state[f"{m}.lora_down.weight"], unet_state[f"{m}.lora_up.weight"] = down, up
    expected[m] = (w + up @ down).numpy().T

  base, layers = sd_single_file.split_lora(unet_state)
  assert set(layers) == set(modules)
  params = sd_single_file.convert_ldm_unet(base, configs["unet_config"])
  _assert_trees_equal(
    params,
    diffusers_unet.convert_unet_state_dict(models["unet"].state_dict(), configs["unet_config"]),
  )
  tree = sd_single_file.convert_ldm_unet_lora(layers, configs["unet_config"])
  merged = jlora.merge(params, tree, 1.0)
  paths = [
    ("down_blocks_0", "attentions_0", "transformer_blocks_0", "attn1", "to_q"),
    ("mid_block", "attentions_0", "transformer_blocks_0", "attn2", "to_out_0"),
    ("up_blocks_1", "attentions_0", "transformer_blocks_0", "ff", "net_0", "proj"),
  ]
  for m, path in zip(modules, paths):
    kernel = merged
    for name in path:
      kernel = kernel[name]
    np.testing.assert_allclose(np.asarray(kernel["kernel"]), expected[m], atol=1e-5)

  incomplete = {k: v for k, v in unet_state.items() if k != f"{modules[0]}.lora_up.weight"}
  with pytest.raises(ConversionError, match="incomplete LoRA layers"):
    sd_single_file.split_lora(incomplete)
  wrong = {modules[1]: (torch.zeros(3, 7), torch.zeros(64, 3))}
  with pytest.raises(ConversionError, match="LoRA maps 7->64"):
    sd_single_file.convert_ldm_unet_lora(wrong, configs["unet_config"])
