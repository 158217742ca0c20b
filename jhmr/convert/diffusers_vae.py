"""diffusers `AutoencoderKL` -> jhmr `AutoencoderKL` (`jhmr.models.vae`).

Module names mirror diffusers, so the U-Net converter's mechanical rule applies
(`jhmr.convert.diffusers_unet.torch_key_rule`). Older SD checkpoints name the mid-block attention
`query/key/value/proj_attn`; those are renamed to `to_q/to_k/to_v/to_out.0` first. The target
tree comes from `jax.eval_shape`, and any missing, unexpected or mis-shaped key raises.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax

from jhmr.convert.common import convert_state_dict
from jhmr.convert.diffusers_unet import torch_key_rule
from jhmr.convert.torch_io import load_component
from jhmr.models.vae import AutoencoderKL, VAEConfig

_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

# options jhmr implements only at these values: anything else raises.
_DEFAULTS = {
  "act_fn": "silu",
  "shift_factor": None,
  "latents_mean": None,
  "latents_std": None,
  "use_quant_conv": True,
  "use_post_quant_conv": True,
}
_IGNORED = {
  "_class_name",
  "_diffusers_version",
  "_name_or_path",
  "_use_default_values",
  "sample_size",
  "force_upcast",
}
_OWN = {
  "in_channels",
  "out_channels",
  "block_out_channels",
  "layers_per_block",
  "latent_channels",
  "norm_num_groups",
  "scaling_factor",
  "mid_block_add_attention",
  "down_block_types",
  "up_block_types",
}


def vae_config_from_diffusers(config: Mapping[str, Any]) -> VAEConfig:
  """A diffusers `AutoencoderKL` config.json dict -> `VAEConfig` (raises on unsupported options)."""
  for key, value in config.items():
    if key in _OWN or key in _IGNORED:
      continue
    if key not in _DEFAULTS:
      raise ValueError(f"VAE config: unknown option {key!r}={value!r}")
    if value != _DEFAULTS[key]:
      raise ValueError(f"VAE config: {key}={value!r} is not supported (only {_DEFAULTS[key]!r})")
  chans = tuple(config.get("block_out_channels", (64,)))
  for name, kind in (
    ("down_block_types", "DownEncoderBlock2D"),
    ("up_block_types", "UpDecoderBlock2D"),
  ):
    types = tuple(config.get(name, (kind,) * len(chans)))
    if types != (kind,) * len(chans):
      raise ValueError(f"VAE config: {name}={types!r}; only {len(chans)} x {kind!r} is supported")
  return VAEConfig(
    in_channels=config.get("in_channels", 3),
    out_channels=config.get("out_channels", 3),
    block_out_channels=chans,
    layers_per_block=config.get("layers_per_block", 1),
    latent_channels=config.get("latent_channels", 4),
    norm_num_groups=config.get("norm_num_groups", 32),
    scaling_factor=float(config.get("scaling_factor", 0.18215)),
    mid_block_add_attention=config.get("mid_block_add_attention", True),
  )


def vae_param_shapes(config: VAEConfig) -> Any:
  """The parameter tree of `AutoencoderKL(config)` as `jax.ShapeDtypeStruct`s."""
  model = AutoencoderKL(config)
  return jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]


def _vae_rule(key: str, array):
  parts = key.split(".")
  if "attentions" in parts and len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION:
    parts[-2] = _LEGACY_ATTENTION[parts[-2]]
    key = ".".join(parts)
    if array.ndim == 4:  # legacy 1x1 conv projections -> Linear
      array = array[:, :, 0, 0]
  return torch_key_rule(key, array)


def convert_vae_state_dict(
  state_dict: Mapping[str, Any], config: VAEConfig, *, what: str = "VAE checkpoint"
) -> dict:
  """A diffusers-named `AutoencoderKL` state dict -> jhmr params (float32 numpy arrays)."""
  return convert_state_dict(state_dict, [_vae_rule], vae_param_shapes(config), what=what)


def load_vae(folder: str | pathlib.Path) -> tuple[VAEConfig, dict]:
  """A diffusers VAE folder (`config.json` + safetensors/.bin) -> `(VAEConfig, params)`."""
  config_dict, state_dict = load_component(folder)
  config = vae_config_from_diffusers(config_dict)
  return config, convert_vae_state_dict(state_dict, config, what=str(folder))
