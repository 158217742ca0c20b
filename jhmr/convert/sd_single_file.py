"""Original single-file Stable Diffusion 1.x checkpoints (CompVis `ldm` layout) -> jhmr params.

A `.ckpt` / `.safetensors` from the CompVis / RunwayML releases holds three models under
prefixes, plus the diffusion schedule as buffers:

  model.diffusion_model.*            U-Net     (`input_blocks.N.M`, `middle_block`, `output_blocks`)
  first_stage_model.*                VAE       (`encoder.down.N.block.M`, `mid.attn_1`, ...)
  cond_stage_model.transformer.*     CLIP text (already transformers names)

Each part is renamed to the diffusers layout (`ldm_unet_key`, `ldm_vae_key`), then handed to the
strict diffusers converters (`jhmr.convert.diffusers_unet`, `.diffusers_vae`, `.clip_text`), so
every missing, unexpected or mis-shaped weight raises. ControlNet files in the lllyasviel / DPMesh
layout (`control_model.*`: `zero_convs`, `middle_block_out`, `input_hint_block`) are handled by
`convert_ldm_controlnet`.

U-Nets with cloneofsimo `lora_diffusion` layers injected (DPMesh's checkpoints:
`M.linear.weight`, `M.lora_down.weight`, `M.lora_up.weight`) are read with `split_lora`, then
`convert_ldm_unet` (base) and `convert_ldm_unet_lora` (a `jhmr.models.lora` tree).

Keys that are not weights of these models (the schedule buffers `betas`, `alphas_cumprod`, ...,
the EMA copy `model_ema.*` and the VAE's training loss `first_stage_model.loss.*`) are skipped and
listed in the result's `skipped`; any other key raises.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jhmr.convert.clip_text import convert_clip_text_state_dict
from jhmr.convert.common import DDPM_SCHEDULE_BUFFERS, ConversionError, to_numpy
from jhmr.convert.diffusers_unet import (
  convert_controlnet_state_dict,
  convert_unet_state_dict,
  flax_path,
  unet_param_shapes,
)
from jhmr.convert.diffusers_vae import convert_vae_state_dict
from jhmr.convert.torch_io import flat_arrays, load_torch_file
from jhmr.models.clip_text import CLIP_VIT_L14_TEXT, CLIPTextConfig
from jhmr.models.controlnet import SD15_CONTROLNET, ControlNetConfig
from jhmr.models.unet import SD15_UNET, UNetConfig
from jhmr.models.vae import SD_VAE, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
CONTROLNET_PREFIX = "control_model."
PARTS = ("unet", "vae", "text_encoder")

_SCHEDULE_BUFFERS = frozenset({*DDPM_SCHEDULE_BUFFERS, "logvar"})
_SKIPPED_PREFIXES = ("model_ema.", "first_stage_model.loss.")

_RESNET = {
  "in_layers.0": "norm1",
  "in_layers.2": "conv1",
  "emb_layers.1": "time_emb_proj",
  "out_layers.0": "norm2",
  "out_layers.3": "conv2",
  "skip_connection": "conv_shortcut",
}
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
# VAE mid attention: 1x1-conv q/k/v/proj_out; the legacy diffusers names make the VAE
# converter squeeze them to Linear weights.
_VAE_ATTENTION = {
  "norm": "group_norm",
  "q": "query",
  "k": "key",
  "v": "value",
  "proj_out": "proj_attn",
}


def _rename_head(rest: str, table: Mapping[str, str]) -> str | None:
  """Replaces the leading module name of `rest` (`in_layers.0.weight`) using `table`."""
  for old, new in table.items():
    if rest.startswith(old + "."):
      return new + rest[len(old) :]
  return None


def _unet_encoder_key(key: str, layers: int) -> str | None:
  """ldm names shared by the U-Net and the ControlNet (time_embed, input/middle blocks)."""
  if key.startswith("time_embed.0."):
    return "time_embedding.linear_1." + key[len("time_embed.0.") :]
  if key.startswith("time_embed.2."):
    return "time_embedding.linear_2." + key[len("time_embed.2.") :]
  if key.startswith("input_blocks.0.0."):
    return "conv_in." + key[len("input_blocks.0.0.") :]
  m = re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key)
  if m:
    i, sub, rest = int(m[1]), int(m[2]), m[3]
    block, layer = divmod(i - 1, layers + 1)
    if layer == layers:  # the downsampler closes a level
      if sub == 0 and rest.startswith("op."):
        return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
      return None
    if sub == 0:
      rest = _rename_head(rest, _RESNET)
      return rest and f"down_blocks.{block}.resnets.{layer}.{rest}"
    if sub == 1:
      return f"down_blocks.{block}.attentions.{layer}.{rest}"
    return None
  m = re.fullmatch(r"middle_block\.(\d)\.(.+)", key)
  if m:
    sub, rest = int(m[1]), m[2]
    if sub == 1:
      return f"mid_block.attentions.0.{rest}"
    rest = _rename_head(rest, _RESNET)
    return rest and f"mid_block.resnets.{sub // 2}.{rest}"
  return None


def ldm_unet_key(key: str, layers_per_block: int = 2) -> str | None:
  """An ldm U-Net key (without `model.diffusion_model.`) -> the diffusers key, or None."""
  encoder = _unet_encoder_key(key, layers_per_block)
  if encoder is not None:
    return encoder
  if key.startswith("out.0."):
    return "conv_norm_out." + key[len("out.0.") :]
  if key.startswith("out.2."):
    return "conv_out." + key[len("out.2.") :]
  m = re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key)
  if m:
    i, sub, rest = int(m[1]), int(m[2]), m[3]
    block, layer = divmod(i, layers_per_block + 1)
    if sub == 0:
      rest = _rename_head(rest, _RESNET)
      return rest and f"up_blocks.{block}.resnets.{layer}.{rest}"
    if rest.startswith("conv."):  # Upsample: its only child is `conv`
      return f"up_blocks.{block}.upsamplers.0.{rest}"
    if sub == 1:
      return f"up_blocks.{block}.attentions.{layer}.{rest}"
  return None


def ldm_controlnet_key(key: str, config: ControlNetConfig) -> str | None:
  """An ldm ControlNet key (without `control_model.`) -> the diffusers key, or None."""
  encoder = _unet_encoder_key(key, config.layers_per_block)
  if encoder is not None:
    return encoder
  m = re.fullmatch(r"zero_convs\.(\d+)\.0\.(.+)", key)
  if m:
    return f"controlnet_down_blocks.{m[1]}.{m[2]}"
  if key.startswith("middle_block_out.0."):
    return "controlnet_mid_block." + key[len("middle_block_out.0.") :]
  m = re.fullmatch(r"input_hint_block\.(\d+)\.(.+)", key)
  if m and not config.direct:
    # Convs sit at even indices (SiLUs between): 0 = conv_in, last = conv_out, others = blocks.
    index, rest = int(m[1]), m[2]
    last = 4 * (len(config.conditioning_embedding_out_channels) - 1) + 2
    if index % 2:
      return None
    if index == 0:
      return f"controlnet_cond_embedding.conv_in.{rest}"
    if index == last:
      return f"controlnet_cond_embedding.conv_out.{rest}"
    return f"controlnet_cond_embedding.blocks.{index // 2 - 1}.{rest}"
  return None


def ldm_vae_key(key: str, num_blocks: int = 4) -> str | None:
  """An ldm VAE key (without `first_stage_model.`) -> the diffusers key, or None."""
  if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key):
    return key
  m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
  if not m:
    return None
  part, rest = m[1], m[2]
  if re.fullmatch(r"conv_(in|out)\.(weight|bias)", rest):
    return key
  if rest.startswith("norm_out."):
    return f"{part}.conv_norm_out.{rest[len('norm_out.') :]}"
  m = re.fullmatch(r"mid\.block_([12])\.(.+)", rest)
  if m:
    inner = _rename_head(m[2], _VAE_RESNET) or m[2]
    return f"{part}.mid_block.resnets.{int(m[1]) - 1}.{inner}"
  m = re.fullmatch(r"mid\.attn_1\.(.+)", rest)
  if m:
    inner = _rename_head(m[1], _VAE_ATTENTION)
    return inner and f"{part}.mid_block.attentions.0.{inner}"
  m = re.fullmatch(r"(down|up)\.(\d+)\.(.+)", rest)
  if not m or (m[1] == "down") != (part == "encoder"):
    return None
  level = int(m[2]) if part == "encoder" else num_blocks - 1 - int(m[2])
  blocks = "down_blocks" if part == "encoder" else "up_blocks"
  m = re.fullmatch(r"block\.(\d+)\.(.+)", m[3]) or re.fullmatch(
    r"(downsample|upsample)\.conv\.(.+)", m[3]
  )
  if m is None:
    return None
  if m[1] in ("downsample", "upsample"):
    sampler = "downsamplers" if m[1] == "downsample" else "upsamplers"
    return f"{part}.{blocks}.{level}.{sampler}.0.conv.{m[2]}"
  inner = _rename_head(m[2], _VAE_RESNET) or m[2]
  return f"{part}.{blocks}.{level}.resnets.{m[1]}.{inner}"


def _rename_all(state: Mapping[str, Any], prefix: str, rename, what: str) -> dict[str, Any]:
  out, unknown = {}, []
  for key, value in state.items():
    new = rename(key[len(prefix) :])
    if new is None:
      unknown.append(key)
    elif new in out:
      raise ConversionError(f"{what}: two keys map to {new!r} (one is {key!r})")
    else:
      out[new] = value
  if unknown:
    raise ConversionError(f"{what}: {len(unknown)} unexpected keys: " + ", ".join(unknown))
  return out


@dataclasses.dataclass(frozen=True)
class SDCheckpoint:
  """Converted parts of a single-file SD checkpoint (params are nested dicts of numpy arrays;
  a part not requested is None). `skipped`: keys deliberately not converted."""

  unet_config: UNetConfig
  unet: dict | None
  vae_config: VAEConfig
  vae: dict | None
  text_config: CLIPTextConfig
  text_encoder: dict | None
  skipped: tuple[str, ...]


def read_state_dict(path: str | pathlib.Path) -> dict[str, Any]:
  """The flat state dict of a checkpoint file (`state_dict` entry of Lightning `.ckpt`s)."""
  state = load_torch_file(path)
  if "state_dict" in state and isinstance(state["state_dict"], Mapping):
    state = state["state_dict"]
  return flat_arrays(state)


def convert_sd_checkpoint(
  state: Mapping[str, Any],
  *,
  parts: tuple[str, ...] = PARTS,
  unet_config: UNetConfig = SD15_UNET,
  vae_config: VAEConfig = SD_VAE,
  text_config: CLIPTextConfig = CLIP_VIT_L14_TEXT,
  what: str = "SD checkpoint",
) -> SDCheckpoint:
  """Converts an ldm-layout SD 1.x state dict (see the module docstring).

  Args:
    state: flat `{key: array}` as in the single file.
    parts: which of 'unet', 'vae', 'text_encoder' to convert; keys of the others are skipped.
    unet_config, vae_config, text_config: the architectures (default: SD 1.x).

  Raises:
    ConversionError: a key belongs to no part and is no known non-weight entry, or a part does
      not match its config (missing / unexpected / mis-shaped weights).
  """
  bad = set(parts) - set(PARTS)
  if bad:
    raise ValueError(f"unknown parts {sorted(bad)}; choose from {PARTS}")
  groups = {p: {} for p in PARTS}
  skipped, unknown = [], []
  for key, value in state.items():
    if key.startswith(UNET_PREFIX):
      groups["unet"][key] = value
    elif key.startswith(_SKIPPED_PREFIXES) or key in _SCHEDULE_BUFFERS:
      skipped.append(key)
    elif key.startswith(VAE_PREFIX):
      groups["vae"][key] = value
    elif key.startswith(TEXT_PREFIX):
      groups["text_encoder"][key] = value
    else:
      unknown.append(key)
  if unknown:
    raise ConversionError(f"{what}: {len(unknown)} keys of no known part: " + ", ".join(unknown))
  for part in PARTS:
    if part not in parts:
      skipped += list(groups[part])
    elif not groups[part]:
      raise ConversionError(f"{what}: no {part} weights found")

  unet = vae = text = None
  if "unet" in parts:
    unet = convert_ldm_unet(groups["unet"], unet_config, what=f"{what} (U-Net)")
  if "vae" in parts:
    n = len(vae_config.block_out_channels)
    renamed = _rename_all(groups["vae"], VAE_PREFIX, lambda k: ldm_vae_key(k, n), f"{what} (VAE)")
    vae = convert_vae_state_dict(renamed, vae_config, what=f"{what} (VAE)")
  if "text_encoder" in parts:
    renamed = {k[len(TEXT_PREFIX) :]: v for k, v in groups["text_encoder"].items()}
    text = convert_clip_text_state_dict(renamed, text_config, what=f"{what} (text encoder)")
  return SDCheckpoint(unet_config, unet, vae_config, vae, text_config, text, tuple(skipped))


def convert_ldm_unet(
  state: Mapping[str, Any],
  config: UNetConfig = SD15_UNET,
  *,
  prefix: str = UNET_PREFIX,
  what: str = "U-Net checkpoint",
) -> dict:
  """ldm U-Net weights (every key starts with `prefix`) -> jhmr `UNet` params."""
  outside = [k for k in state if not k.startswith(prefix)]
  if outside:
    raise ConversionError(f"{what}: keys without the prefix {prefix!r}: " + ", ".join(outside))
  layers = config.layers_per_block
  renamed = _rename_all(state, prefix, lambda k: ldm_unet_key(k, layers), what)
  return convert_unet_state_dict(renamed, config, what=what)


def split_lora(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
  """Separates cloneofsimo `lora_diffusion` layers (DPMesh's checkpoints) from a state dict.

  An injected Linear `M` is stored as `M.linear.{weight,bias}`, `M.lora_down.weight [r, in]`
  and `M.lora_up.weight [out, r]`. Returns `(base, lora)`: `base` has `M.weight` / `M.bias` back
  (ready for the plain converters), `lora` maps `M` -> `(down [r, in], up [out, r])`.

  Raises:
    ConversionError: a LoRA layer lacks its down, up or base Linear weight.
  """
  downs, ups = {}, {}
  for key, value in state.items():
    for suffix, table in ((".lora_down.weight", downs), (".lora_up.weight", ups)):
      if key.endswith(suffix):
        table[key[: -len(suffix)]] = value
  adapted = set(downs) | set(ups)
  base = {}
  for key, value in state.items():
    module, _, leaf = key.rpartition(".")
    if module.endswith(".lora_down") or module.endswith(".lora_up"):
      continue
    if module.endswith(".linear") and module[: -len(".linear")] in adapted:
      key = f"{module[: -len('.linear')]}.{leaf}"
    base[key] = value
  broken = sorted(m for m in adapted if m not in downs or m not in ups or f"{m}.weight" not in base)
  if broken:
    raise ConversionError(
      "incomplete LoRA layers (need linear, lora_down, lora_up): " + ", ".join(broken)
    )
  return base, {m: (downs[m], ups[m]) for m in downs}


def convert_ldm_unet_lora(
  lora: Mapping[str, tuple[Any, Any]],
  config: UNetConfig = SD15_UNET,
  *,
  prefix: str = UNET_PREFIX,
  what: str = "U-Net LoRA",
) -> dict:
  """`split_lora`'s layers of an ldm U-Net -> a `jhmr.models.lora` tree for `UNet(config)`:
  `{module path: {lora_down [in, r], lora_up [r, out]}}` (so `merge(params, tree, 1.0)` gives
  the Linear `W + up @ down` of `lora_diffusion`)."""
  shapes = traverse_util.flatten_dict(unet_param_shapes(config))
  layers = config.layers_per_block
  out, problems = {}, []
  for module, (down, up) in lora.items():
    key = (
      ldm_unet_key(module[len(prefix) :] + ".weight", layers) if module.startswith(prefix) else None
    )
    path = flax_path(key)[:-1] if key else None
    kernel = shapes.get((*path, "kernel")) if path else None
    down, up = to_numpy(down), to_numpy(up)
    if kernel is None or len(kernel.shape) != 2:
      problems.append(f"{module}: no Dense layer of the U-Net")
    elif down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
      problems.append(f"{module}: lora_down {down.shape} / lora_up {up.shape} do not chain")
    elif (down.shape[1], up.shape[0]) != tuple(kernel.shape):
      problems.append(
        f"{module}: LoRA maps {down.shape[1]}->{up.shape[0]}, layer is {kernel.shape}"
      )
    else:
      out[(*path, "lora_down")] = np.ascontiguousarray(down.T)
      out[(*path, "lora_up")] = np.ascontiguousarray(up.T)
  if problems:
    raise ConversionError(f"{what}: " + "; ".join(problems))
  return traverse_util.unflatten_dict(out)


def load_sd_checkpoint(path: str | pathlib.Path, **kwargs) -> SDCheckpoint:
  """`convert_sd_checkpoint(read_state_dict(path), **kwargs)` for a `.ckpt`/`.safetensors`."""
  return convert_sd_checkpoint(read_state_dict(path), what=str(path), **kwargs)


def convert_ldm_controlnet(
  state: Mapping[str, Any],
  config: ControlNetConfig = SD15_CONTROLNET,
  *,
  what: str = "ControlNet checkpoint",
) -> dict:
  """ControlNet weights in the ldm/cldm layout (`control_model.*`, e.g. lllyasviel's
  `control_sd15_*.pth` or DPMesh's direct variant, which has no `input_hint_block`) -> params.

  Keys outside `control_model.` (the SD model in the same file) are ignored; convert those with
  `convert_sd_checkpoint`.
  """
  own = {k: v for k, v in state.items() if k.startswith(CONTROLNET_PREFIX)}
  if not own:
    raise ConversionError(f"{what}: no {CONTROLNET_PREFIX}* keys")
  renamed = _rename_all(
    own, CONTROLNET_PREFIX, lambda k: ldm_controlnet_key(k, config), f"{what} (ControlNet)"
  )
  return convert_controlnet_state_dict(renamed, config, what=what)
