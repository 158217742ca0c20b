"""diffusers `UNet2DConditionModel` / `ControlNetModel` -> jhmr `UNet` / `ControlNet`.

Module names in jhmr mirror diffusers with `.N` -> `_N`, so one mechanical rule converts every
key (`torch_key_rule`): Linear `weight [out, in]` -> `kernel [in, out]`, Conv2d `weight
[out, in, kh, kw]` -> `kernel [kh, kw, in, out]`, norm `weight [C]` -> `scale`, `bias` -> `bias`.
The target tree comes from `jax.eval_shape(model.init, ...)` and `convert_state_dict` raises on any
missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.convert.common import ConversionError, conv_kernel, convert_state_dict, linear_kernel
from jhmr.convert.torch_io import load_component
from jhmr.models.controlnet import ControlNet, ControlNetConfig
from jhmr.models.unet import UNet, UNetConfig


def flax_path(torch_key: str) -> tuple[str, ...]:
  """`down_blocks.0.attentions.1.proj_in.weight` -> `('down_blocks_0', 'attentions_1',
  'proj_in', 'weight')` (numeric parts join the name before them)."""
  path: list[str] = []
  for part in torch_key.split("."):
    if part.isdigit():
      if not path:
        raise ConversionError(f"key {torch_key!r} starts with an index")
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return tuple(path)


def torch_key_rule(key: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """The one conversion rule for diffusers-named weights (see the module docstring)."""
  *prefix, leaf = flax_path(key)
  if leaf == "bias":
    return (*prefix, "bias"), array
  if leaf != "weight":
    return None
  if array.ndim == 4:
    return (*prefix, "kernel"), conv_kernel(array)
  if array.ndim == 2:
    return (*prefix, "kernel"), linear_kernel(array)
  if array.ndim == 1:
    return (*prefix, "scale"), array
  return None


# ----------------------------------------------------------------------------------------------
# configs

_UNET_DEFAULTS = {
  # options jhmr implements only at these values: anything else raises.
  "center_input_sample": False,
  "flip_sin_to_cos": True,
  "freq_shift": 0,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "act_fn": "silu",
  "dual_cross_attention": False,
  "only_cross_attention": False,
  "class_embed_type": None,
  "addition_embed_type": None,
  "num_class_embeds": None,
  "resnet_time_scale_shift": "default",
  "time_embedding_type": "positional",
  "time_embedding_dim": None,
  "time_embedding_act_fn": None,
  "time_cond_proj_dim": None,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "encoder_hid_dim": None,
  "encoder_hid_dim_type": None,
  "projection_class_embeddings_input_dim": None,
  "class_embeddings_concat": False,
  "mid_block_only_cross_attention": None,
  "cross_attention_norm": None,
  "attention_type": "default",
  "resnet_skip_time_act": False,
  "resnet_out_scale_factor": 1.0,
  "downsample_padding": 1,
  "mid_block_scale_factor": 1,
  "addition_time_embed_dim": None,
  "timestep_post_act": None,
  "reverse_transformer_layers_per_block": None,
  "dropout": 0.0,
  "global_pool_conditions": False,
  "addition_embed_type_num_heads": 64,
  "controlnet_conditioning_channel_order": "rgb",
}
_IGNORED = {
  "_class_name",
  "_diffusers_version",
  "_name_or_path",
  "_use_default_values",
  "sample_size",
  "upcast_attention",
}


def _heads(config: Mapping[str, Any], num_blocks: int) -> tuple[int, ...]:
  # diffusers' historical naming: `attention_head_dim` holds the number of heads unless
  # `num_attention_heads` is given.
  heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
  if isinstance(heads, int):
    heads = (heads,) * num_blocks
  return tuple(int(h) for h in heads)


def _per_block(value: Any, num_blocks: int, name: str) -> tuple[int, ...]:
  if isinstance(value, int):
    return (value,) * num_blocks
  if any(not isinstance(v, int) for v in value):
    raise ValueError(f"{name}={value!r}: nested per-layer values are not supported")
  return tuple(value)


def _check_supported(config: Mapping[str, Any], own_keys: set[str], what: str) -> None:
  for key, value in config.items():
    if key in own_keys or key in _IGNORED:
      continue
    if key not in _UNET_DEFAULTS:
      raise ValueError(f"{what} config: unknown option {key!r}={value!r}")
    default = _UNET_DEFAULTS[key]
    if value != default and not (isinstance(default, float) and value == int(default)):
      raise ValueError(f"{what} config: {key}={value!r} is not supported (only {default!r})")


_UNET_KEYS = {
  "in_channels",
  "out_channels",
  "down_block_types",
  "up_block_types",
  "block_out_channels",
  "layers_per_block",
  "attention_head_dim",
  "num_attention_heads",
  "cross_attention_dim",
  "norm_num_groups",
  "norm_eps",
  "use_linear_projection",
  "transformer_layers_per_block",
}


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
  """A diffusers `UNet2DConditionModel` config.json dict -> `UNetConfig` (raises on options
  jhmr does not implement, e.g. class embeddings or SDXL's added conditions)."""
  _check_supported(config, _UNET_KEYS, "UNet")
  down = tuple(config.get("down_block_types", UNetConfig.down_block_types))
  n = len(down)
  cross_dim = config.get("cross_attention_dim", 1280)
  if not isinstance(cross_dim, int):
    raise ValueError(f"UNet config: per-block cross_attention_dim {cross_dim!r} not supported")
  return UNetConfig(
    in_channels=config.get("in_channels", 4),
    out_channels=config.get("out_channels", 4),
    down_block_types=down,
    up_block_types=tuple(config.get("up_block_types", UNetConfig.up_block_types)),
    block_out_channels=tuple(config.get("block_out_channels", UNetConfig.block_out_channels)),
    layers_per_block=config.get("layers_per_block", 2),
    num_attention_heads=_heads(config, n),
    cross_attention_dim=cross_dim,
    norm_num_groups=config.get("norm_num_groups", 32),
    norm_eps=config.get("norm_eps", 1e-5),
    use_linear_projection=config.get("use_linear_projection", False),
    transformer_layers_per_block=_per_block(
      config.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"
    ),
  )


_CONTROLNET_KEYS = (_UNET_KEYS - {"out_channels", "up_block_types"}) | {
  "conditioning_channels",
  "conditioning_embedding_out_channels",
}


def controlnet_config_from_diffusers(config: Mapping[str, Any]) -> ControlNetConfig:
  """A diffusers `ControlNetModel` config.json dict -> `ControlNetConfig` (with hint encoder)."""
  _check_supported(config, _CONTROLNET_KEYS, "ControlNet")
  down = tuple(config.get("down_block_types", ControlNetConfig.down_block_types))
  n = len(down)
  return ControlNetConfig(
    in_channels=config.get("in_channels", 4),
    down_block_types=down,
    block_out_channels=tuple(config.get("block_out_channels", ControlNetConfig.block_out_channels)),
    layers_per_block=config.get("layers_per_block", 2),
    num_attention_heads=_heads(config, n),
    cross_attention_dim=config.get("cross_attention_dim", 1280),
    norm_num_groups=config.get("norm_num_groups", 32),
    norm_eps=config.get("norm_eps", 1e-5),
    use_linear_projection=config.get("use_linear_projection", False),
    transformer_layers_per_block=_per_block(
      config.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block"
    ),
    conditioning_channels=config.get("conditioning_channels", 3),
    conditioning_embedding_out_channels=tuple(
      config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
    ),
  )


# ----------------------------------------------------------------------------------------------
# weights


def unet_param_shapes(config: UNetConfig) -> Any:
  """The parameter tree of `UNet(config)` as `jax.ShapeDtypeStruct`s (no memory, no compute)."""
  model = UNet(config)
  return jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]


def controlnet_param_shapes(config: ControlNetConfig) -> Any:
  """The parameter tree of `ControlNet(config)` as `jax.ShapeDtypeStruct`s."""
  model = ControlNet(config)
  return jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]


def convert_unet_state_dict(
  state_dict: Mapping[str, Any], config: UNetConfig, *, what: str = "UNet checkpoint"
) -> dict:
  """A diffusers-named U-Net state dict -> jhmr `UNet` params (float32 numpy arrays)."""
  return convert_state_dict(state_dict, [torch_key_rule], unet_param_shapes(config), what=what)


def convert_controlnet_state_dict(
  state_dict: Mapping[str, Any], config: ControlNetConfig, *, what: str = "ControlNet checkpoint"
) -> dict:
  """A diffusers-named ControlNet state dict -> jhmr `ControlNet` params."""
  target = controlnet_param_shapes(config)
  return convert_state_dict(state_dict, [torch_key_rule], target, what=what)


def load_unet(folder: str | pathlib.Path) -> tuple[UNetConfig, dict]:
  """A diffusers U-Net folder (`config.json` + safetensors/.bin) -> `(UNetConfig, params)`."""
  config_dict, state_dict = load_component(folder)
  config = unet_config_from_diffusers(config_dict)
  return config, convert_unet_state_dict(state_dict, config, what=str(folder))


def load_controlnet(folder: str | pathlib.Path) -> tuple[ControlNetConfig, dict]:
  """A diffusers ControlNet folder -> `(ControlNetConfig, params)`."""
  config_dict, state_dict = load_component(folder)
  config = controlnet_config_from_diffusers(config_dict)
  return config, convert_controlnet_state_dict(state_dict, config, what=str(folder))


def cast_params(params: Any, dtype: Any = jnp.float32) -> Any:
  """Puts a converted numpy tree on device in `dtype` (e.g. bfloat16 for bf16 storage)."""
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
