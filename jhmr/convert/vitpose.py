"""ViTPose checkpoints -> jhmr `ViT` / `VitPose` variables (research/regressors.md §2, §4).

Original (mmpose ViTPose, and the 4D-Humans HMR 2.0 backbone) layout, converted by `vit_rules`
and `convert_vitpose`:

  backbone.patch_embed.proj.{weight, bias}        -> backbone/patch_embed/{kernel, bias}
  backbone.pos_embed (1, N + 1, C)                -> backbone/pos_embed (1, N, C) = pos[:, 1:] +
                                                     pos[:, :1] (the forward's fold, done once)
  backbone.blocks.i.{norm1, norm2}.{weight, bias} -> backbone/blocks_i/{norm1, norm2}/{scale, bias}
  backbone.blocks.i.attn.{qkv, proj}.*            -> backbone/blocks_i/attn/{qkv, proj}/*
  backbone.blocks.i.mlp.{fc1, fc2}.*              -> backbone/blocks_i/mlp/{fc1, fc2}/*
  backbone.last_norm.*                            -> backbone/last_norm/*
  backbone.cls_token                              -> dropped (never used by the forward)
  keypoint_head.deconv_layers.{0, 3}.weight       -> head/deconv{1, 2}/kernel (ConvTranspose)
  keypoint_head.deconv_layers.{1, 4}.*            -> head/batchnorm{1, 2} (params + batch_stats)
  keypoint_head.final_layer.*                     -> head/conv/*   (classic head, 1x1)
  keypoint_head.final_layer.*                     -> head/conv/*   (simple head, 3x3)

transformers (`VitPoseForPoseEstimation`) layout, converted by `convert_vitpose_hf` through a
rename to the original layout (the notes' key table): `embeddings.patch_embeddings.projection` ->
`patch_embed.proj`, `embeddings.position_embeddings` -> `pos_embed`, `encoder.layer.i.attention.
attention.{query,key,value}` -> rows of `blocks.i.attn.qkv`, `...attention.output.dense` ->
`attn.proj`, `layernorm_before/after` -> `norm1/2`, `layernorm` -> `last_norm`, `head.deconv{1,2}`
/ `head.batchnorm{1,2}` / `head.conv` -> `keypoint_head.deconv_layers.{0,3}` / `.{1,4}` /
`.final_layer`. Error messages name the transformers keys.

Torch Linear/Conv weights are transposed as usual; a ConvTranspose2d weight (in, out, kh, kw)
becomes the kernel of the equivalent dilated forward conv: flipped spatially, (kh, kw, in, out).
Everything is strict: a missing, unexpected or mis-shaped key raises `ConversionError`.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jhmr.convert.common import (
  ConversionError,
  conv_kernel,
  linear_kernel,
  strict_fill,
  to_numpy,
)
from jhmr.convert.torch_io import load_torch_file
from jhmr.models.vitpose import VitPose, VitPoseConfig

__all__ = [
  "convert_vitpose",
  "convert_vitpose_hf",
  "hf_to_original_keys",
  "load_vitpose_checkpoint",
  "vit_rules",
  "vitpose_variable_shapes",
]

Flat = dict[tuple[str, ...], np.ndarray]
# Keys of the original ViT that carry no weight the forward uses.
VIT_IGNORED_KEYS = ("cls_token",)

_NORM = {"weight": "scale", "bias": "bias"}
_BLOCK = re.compile(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(\w+)$")


def _vit_key(key: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """One original ViT key (without prefix) -> (flax path, array), or None if unknown."""
  if key == "pos_embed":
    if array.ndim != 3 or array.shape[1] < 2:
      raise ConversionError(f"pos_embed: expected (1, N + 1, C), got {array.shape}")
    return ("pos_embed",), array[:, 1:] + array[:, :1]
  if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
    leaf = key.rsplit(".", 1)[1]
    return ("patch_embed", "kernel" if leaf == "weight" else "bias"), (
      conv_kernel(array) if leaf == "weight" else array
    )
  if key in ("last_norm.weight", "last_norm.bias"):
    return ("last_norm", _NORM[key.rsplit(".", 1)[1]]), array
  match = _BLOCK.match(key)
  if match is None:
    return None
  i, module, leaf = match.groups()
  path = (f"blocks_{i}", *module.split("."))
  if leaf not in _NORM:
    return None
  if module.startswith("norm"):
    return (*path, _NORM[leaf]), array
  if leaf == "weight":
    return (*path, "kernel"), linear_kernel(array)
  return (*path, "bias"), array


def vit_rules(state: Mapping[str, Any], prefix: str = "backbone.") -> tuple[Flat, dict]:
  """Converts the ViT keys under `prefix` of an original-layout state dict.

  Args:
    state: a flat state dict (torch tensors or arrays). Keys not starting with `prefix` are
      ignored (they belong to other parts of the model); with `prefix=""` every key must be a ViT
      key.
    prefix: e.g. "backbone." (ViTPose and HMR 2.0 checkpoints).

  Returns:
    `(flat, source_keys)`: `flat` maps ViT parameter paths relative to the `ViT` module (e.g.
    `("blocks_3", "attn", "qkv", "kernel")`, `("pos_embed",)` already folded to (1, N, C)) to
    numpy arrays; `source_keys` maps each path to its original key (for `strict_fill` messages).
    `<prefix>cls_token` is accepted and dropped. Shapes are not checked here: `strict_fill` does.

  Raises:
    ConversionError: a key under `prefix` that is no ViT key (all such keys named at once).
  """
  flat, source_keys, unknown = {}, {}, []
  for key, tensor in state.items():
    if not key.startswith(prefix):
      continue
    sub = key[len(prefix) :]
    if sub in VIT_IGNORED_KEYS:
      continue
    result = _vit_key(sub, to_numpy(tensor))
    if result is None:
      unknown.append(key)
      continue
    path, value = result
    flat[path], source_keys[path] = value, key
  if unknown:
    raise ConversionError(f"ViT: {len(unknown)} unexpected keys: " + ", ".join(sorted(unknown)))
  return flat, source_keys


def vitpose_variable_shapes(config: VitPoseConfig) -> Any:
  """The variables of `VitPose(config)` (`params`, and `batch_stats` for the classic head) as
  `jax.ShapeDtypeStruct`s."""
  model = VitPose(config)
  return jax.eval_shape(model.init, jax.random.key(0), model.dummy_input())


def deconv_kernel(w: np.ndarray) -> np.ndarray:
  """torch ConvTranspose2d weight [in, out, kh, kw] -> kernel [kh, kw, in, out] of the equivalent
  forward conv over the dilated input (spatially flipped)."""
  return np.asarray(w)[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)


_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}  # fmt: skip


def _head_rules(state: Mapping[str, Any], config: VitPoseConfig, prefix: str):
  """Original `keypoint_head.*` keys -> (flat variables, source_keys, unknown keys)."""
  flat, source_keys, unknown = {}, {}, []
  for key, tensor in state.items():
    if not key.startswith(prefix):
      continue
    sub, array = key[len(prefix) :], to_numpy(tensor)
    path = None
    if sub in ("final_layer.weight", "final_layer.bias"):
      leaf = sub.rsplit(".", 1)[1]
      path = ("params", "head", "conv", "kernel" if leaf == "weight" else "bias")
      array = conv_kernel(array) if leaf == "weight" else array
    elif config.head == "classic" and sub.startswith("deconv_layers."):
      _, layer, leaf = sub.split(".", 2)
      if layer in ("0", "3") and leaf == "weight":
        path = ("params", "head", f"deconv{1 if layer == '0' else 2}", "kernel")
        array = deconv_kernel(array)
      elif layer in ("1", "4") and leaf == "num_batches_tracked":
        continue  # a training counter, no weight
      elif layer in ("1", "4") and leaf in _BN:
        collection, name = _BN[leaf]
        path = (collection, "head", f"batchnorm{1 if layer == '1' else 2}", name)
    if path is None:
      unknown.append(key)
    else:
      flat[path], source_keys[path] = array, key
  return flat, source_keys, unknown


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """A checkpoint file's dict -> its flat state dict (mmpose files hold {"state_dict": ...})."""
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    return state_dict["state_dict"]
  return state_dict


def convert_vitpose(
  state_dict: Mapping[str, Any],
  config: VitPoseConfig,
  *,
  what: str = "ViTPose checkpoint",
  _names: Mapping[str, str] | None = None,
) -> dict:
  """Original mmpose ViTPose state dict (`backbone.*`, `keypoint_head.*`, optionally wrapped in
  `{"state_dict": ...}`) -> `VitPose(config)` variables `{"params": ..., "batch_stats": ...}`
  (no `batch_stats` for the simple head).

  Raises:
    ConversionError: any key outside `backbone.` / `keypoint_head.`, any unknown, missing or
      mis-shaped key (all listed at once).
  """
  state = _unwrap(state_dict)
  names = _names or {}
  others = [k for k in state if not k.startswith(("backbone.", "keypoint_head."))]
  head, head_keys, unknown = _head_rules(state, config, "keypoint_head.")
  try:
    vit, vit_keys = vit_rules(state, "backbone.")
  except ConversionError as e:
    raise ConversionError(f"{what}: {e}") from None
  if others or unknown:
    bad = sorted(names.get(k, k) for k in others + unknown)
    raise ConversionError(f"{what}: {len(bad)} unexpected keys: " + ", ".join(bad))
  flat = {("params", "backbone", *p): v for p, v in vit.items()}
  sources = {("params", "backbone", *p): k for p, k in vit_keys.items()}
  flat.update(head)
  sources.update(head_keys)
  sources = {p: names.get(k, k) for p, k in sources.items()}
  return strict_fill(flat, vitpose_variable_shapes(config), source_keys=sources, what=what)


# transformers name -> original name, applied in order as prefix / infix replacements.
_HF_RENAMES = (
  ("backbone.embeddings.patch_embeddings.projection.", "backbone.patch_embed.proj."),
  ("backbone.embeddings.position_embeddings", "backbone.pos_embed"),
  ("backbone.encoder.layer.", "backbone.blocks."),
  (".attention.output.dense.", ".attn.proj."),
  (".layernorm_before.", ".norm1."),
  (".layernorm_after.", ".norm2."),
  ("backbone.layernorm.", "backbone.last_norm."),
  ("head.deconv1.", "keypoint_head.deconv_layers.0."),
  ("head.batchnorm1.", "keypoint_head.deconv_layers.1."),
  ("head.deconv2.", "keypoint_head.deconv_layers.3."),
  ("head.batchnorm2.", "keypoint_head.deconv_layers.4."),
  ("head.conv.", "keypoint_head.final_layer."),
)
_QKV = re.compile(
  r"^(backbone\.blocks\.\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"
)


def hf_to_original_keys(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
  """transformers `VitPoseForPoseEstimation` state dict -> (original-layout state dict, map from
  each original key to the transformers key(s) it came from). query/key/value are concatenated
  (rows q | k | v) into `attn.qkv`.

  Raises:
    ConversionError: a block lacks one of query/key/value.
  """
  out, names, qkv = {}, {}, {}
  for key, tensor in state_dict.items():
    new = key
    for old, rep in _HF_RENAMES:
      if new.startswith(old) or (old.startswith(".") and old in new):
        new = new.replace(old, rep, 1)
    match = _QKV.match(new)
    if match:
      block, which, leaf = match.groups()
      qkv.setdefault((block, leaf), {})[which] = (key, to_numpy(tensor))
      continue
    out[new], names[new] = tensor, key
  for (block, leaf), parts in sorted(qkv.items()):
    lacking = [w for w in ("query", "key", "value") if w not in parts]
    if lacking:
      hf_block = next(iter(parts.values()))[0].rsplit(".", 2)[0]
      raise ConversionError(
        "transformers ViTPose checkpoint: missing "
        + ", ".join(f"{hf_block}.{w}.{leaf}" for w in lacking)
      )
    new = f"{block}.attn.qkv.{leaf}"
    out[new] = np.concatenate([parts[w][1] for w in ("query", "key", "value")], 0)
    names[new] = "+".join(parts[w][0] for w in ("query", "key", "value"))
  return out, names


def convert_vitpose_hf(state_dict: Mapping[str, Any], config: VitPoseConfig) -> dict:
  """transformers `VitPoseForPoseEstimation` state dict -> `VitPose(config)` variables.

  Strict like `convert_vitpose`; messages name the transformers keys. Set the transformers
  config's `layer_norm_eps` (default 1e-12) to match `config.vit.layer_norm_eps` when comparing.
  """
  state, names = hf_to_original_keys(_unwrap(state_dict))
  return convert_vitpose(state, config, what="transformers ViTPose checkpoint", _names=names)


def load_vitpose_checkpoint(path: str | pathlib.Path, config: VitPoseConfig) -> dict:
  """Reads an original ViTPose `.pth` (restricted unpickler, "vitpose" allow-list) or a transformers
  `model.safetensors` / `.bin` and converts it (the layout is detected from the keys)."""
  state = _unwrap(load_torch_file(path, "vitpose"))
  if any(k.startswith("backbone.embeddings.") for k in state):
    return convert_vitpose_hf(state, config)
  return convert_vitpose(state, config, what=f"ViTPose checkpoint {path}")
