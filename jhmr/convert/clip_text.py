"""transformers `CLIPTextModel` -> jhmr `CLIPTextModel`, and the SD `tokenizer/` folder.

Keys: an optional `text_model.` prefix and the `embeddings.` / `encoder.` levels are dropped,
`.N` -> `_N`; Linear weights are transposed, LayerNorm weights become `scale`, embedding tables
become `embedding`. The non-persistent `position_ids` buffer, when a checkpoint carries it, must
be `arange(max_positions)` and is dropped. Anything else missing, unexpected or mis-shaped raises.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jhmr.convert.common import ConversionError, convert_state_dict, to_numpy
from jhmr.convert.diffusers_unet import torch_key_rule
from jhmr.convert.torch_io import load_component
from jhmr.models.clip_text import ACTIVATIONS, CLIPTextConfig, CLIPTextModel
from jhmr.models.clip_tokenizer import CLIPTokenizer, load_tokenizer

__all__ = [
  "CLIPTokenizer",
  "clip_text_config_from_transformers",
  "clip_text_param_shapes",
  "convert_clip_text_state_dict",
  "load_text_encoder",
  "load_tokenizer",
]

_FIELDS = {
  "vocab_size": "vocab_size",
  "hidden_size": "hidden_size",
  "intermediate_size": "intermediate_size",
  "num_hidden_layers": "num_layers",
  "num_attention_heads": "num_heads",
  "max_position_embeddings": "max_position_embeddings",
  "hidden_act": "hidden_act",
  "layer_norm_eps": "layer_norm_eps",
  "eos_token_id": "eos_token_id",
}


def clip_text_config_from_transformers(config: Mapping[str, Any]) -> CLIPTextConfig:
  """A transformers `CLIPTextConfig` dict (text_encoder/config.json) -> `CLIPTextConfig`."""
  config = dict(config.get("text_config", config))
  act = config.get("hidden_act", "quick_gelu")
  if act not in ACTIVATIONS:
    raise ValueError(
      f"CLIP text config: hidden_act={act!r} is not supported ({sorted(ACTIVATIONS)})"
    )
  kwargs = {ours: config[theirs] for theirs, ours in _FIELDS.items() if theirs in config}
  return CLIPTextConfig(**kwargs)


def clip_text_param_shapes(config: CLIPTextConfig) -> Any:
  """The parameter tree of `CLIPTextModel(config)` as `jax.ShapeDtypeStruct`s."""
  model = CLIPTextModel(config)
  return jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]


def _strip(key: str) -> str:
  for prefix in ("text_model.", "embeddings.", "encoder."):
    if key.startswith(prefix):
      key = key[len(prefix) :]
  return key


def _clip_rule(key: str, array: np.ndarray):
  key = _strip(key)
  if key in ("token_embedding.weight", "position_embedding.weight"):
    return (key.split(".")[0], "embedding"), array
  if key.startswith(("layers.", "final_layer_norm.")):
    return torch_key_rule(key, array)
  return None


def convert_clip_text_state_dict(
  state_dict: Mapping[str, Any], config: CLIPTextConfig, *, what: str = "CLIP text checkpoint"
) -> dict:
  """A transformers `CLIPTextModel` state dict -> jhmr params (float32 numpy arrays)."""
  state = {}
  for key, value in state_dict.items():
    if _strip(key) == "position_ids":
      ids = to_numpy(value).reshape(-1)
      if not np.array_equal(ids, np.arange(config.max_position_embeddings)):
        raise ConversionError(f"{what}: {key} is not arange({config.max_position_embeddings})")
      continue
    state[key] = value
  return convert_state_dict(state, [_clip_rule], clip_text_param_shapes(config), what=what)


def load_text_encoder(folder: str | pathlib.Path) -> tuple[CLIPTextConfig, dict]:
  """An SD `text_encoder/` folder (`config.json` + weights) -> `(CLIPTextConfig, params)`."""
  config_dict, state_dict = load_component(folder)
  config = clip_text_config_from_transformers(config_dict)
  return config, convert_clip_text_state_dict(state_dict, config, what=str(folder))
