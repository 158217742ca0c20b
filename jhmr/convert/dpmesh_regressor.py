"""DPMesh checkpoint (regressor part) -> `jhmr.models.dpmesh_regressor.DPMeshRegressor` params.

The released `checkpoints/*_best_ckpt.pth.tar` are full DataParallel state_dicts (`module.`
prefix, research/dpmesh.md section 17); a training save wraps one as `{'network': ...}`. Both are
accepted. Entries of the other parts (`backbone.*`: VAE/UNet/ControlNet/fusion, `vposer.*` /
`vqvae.*`: the pose decoder, `kp_lifting.*`: the joint prompt, `human_model_layer.*`: SMPL
buffers) are skipped (exactly `OTHER_PREFIXES`); any other key, and any missing or mis-shaped
one, raises `ConversionError` naming it.

Regressor keys (`common/model.py`, `common/nets/transformer.py`; flax paths under `params/`):

  down_linear, conv2d_to_3d (1x1 Conv2d)               -> down_linear, conv2d_to_3d (Conv)
  conv_3d_coord.0 (1x1x1 Conv3d)                       -> conv_3d_coord_0 (Conv, 3D kernel)
  exponent [], spose_shape_cam_param [Q, dim]          -> exponent, spose_shape_cam_param
  query.weight (nn.Embedding)                          -> query/embedding
  cascade_{root_pose,pose,shaoe,cam}_out.i             -> cascade_{root_pose,pose,shape,cam}_out_i
  pos_embed_1d.pos_table (buffer)                      -> checked against `sinusoid_table`
  transformer.{smpl_tgt, kp_tgt}                       -> transformer/{smpl_tgt, kp_tgt}
  transformer.encoder.layers.i.*                       -> transformer/encoder/layers_i/*
  transformer.decoder.layers.i.*, .norm                -> transformer/decoder/layers_i/*, norm
  transformer.decoder.joint_img_regress.i              -> transformer/decoder/joint_img_regress_i
  transformer.decoder.fc_pos_3d.{0,1,3}                -> transformer/decoder/fc_pos_3d_{0,1,3}
  refine_3d.layers.i.*, refine_3d.norm                 -> refine_3d/layers_i/*, norm
  *.{self_attn,multihead_attn}.in_proj_{weight,bias}   -> .../{q,k,v}_proj/{kernel,bias} (thirds)
  *.out_proj.*, linear1, linear2                       -> Dense (weight transposed)
  norm, norm1-3, fc_pos_3d.1 (LayerNorm)               -> scale, bias
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.convert.common import ConversionError, conv_kernel, linear_kernel, strict_fill, to_numpy
from jhmr.models.dpmesh_regressor import (
  DPMESH_REGRESSOR_RELEASED,
  DPMeshRegressor,
  DPMeshRegressorConfig,
  sinusoid_table,
)

__all__ = ["OTHER_PREFIXES", "convert_dpmesh_regressor", "regressor_state_dict"]

# Checkpoint entries that belong to other parts of DPMesh (`common/model.py:21-60`).
OTHER_PREFIXES = ("backbone.", "vposer.", "vqvae.", "kp_lifting.", "human_model_layer.")
POS_TABLE = "pos_embed_1d.pos_table"

_CONVS = ("down_linear", "conv2d_to_3d", "conv_3d_coord_0")
_NORM = re.compile(r"(norm\d?|fc_pos_3d_1)$")


def regressor_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The regressor's entries of a DPMesh checkpoint: `network` unwrapped, `module.` stripped,
  `OTHER_PREFIXES` dropped (every other key is kept, so unknown ones reach the converter)."""
  if "network" in state_dict and isinstance(state_dict["network"], Mapping):
    state_dict = state_dict["network"]
  out = {}
  for key, value in state_dict.items():
    key = key.removeprefix("module.")
    if not key.startswith(OTHER_PREFIXES):
      out[key] = value
  return out


def _flax_path(key: str) -> tuple[str, ...]:
  """`transformer.decoder.layers.0.linear1` -> ('transformer', 'decoder', 'layers_0', 'linear1')."""
  parts = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", key).split(".")
  return tuple(re.sub(r"^cascade_shaoe_out", "cascade_shape_out", p) for p in parts)


def _convert_one(key: str, value: np.ndarray) -> list[tuple[tuple[str, ...], np.ndarray]]:
  path = _flax_path(key)
  *module, leaf = path
  module = tuple(module)
  if leaf in ("exponent", "spose_shape_cam_param", "smpl_tgt", "kp_tgt"):
    return [(path, value)]
  if module == ("query",) and leaf == "weight":
    return [(("query", "embedding"), value)]
  if leaf in ("in_proj_weight", "in_proj_bias"):
    if value.shape[0] % 3:
      raise ConversionError(f"{key}: shape {value.shape} is not three stacked projections")
    thirds = np.split(value, 3, axis=0)
    names = ("q_proj", "k_proj", "v_proj")
    if leaf == "in_proj_weight":
      return [((*module, n, "kernel"), linear_kernel(t)) for n, t in zip(names, thirds)]
    return [((*module, n, "bias"), t) for n, t in zip(names, thirds)]
  if leaf not in ("weight", "bias") or not module:
    raise ConversionError(f"checkpoint key {key!r} is no regressor parameter")
  if leaf == "bias":
    return [((*module, "bias"), value)]
  if _NORM.search(module[-1]):
    return [((*module, "scale"), value)]
  if module[-1] in _CONVS:
    if value.ndim == 5:  # Conv3d [out, in, d, h, w] -> [d, h, w, in, out]
      return [((*module, "kernel"), value.transpose(2, 3, 4, 1, 0))]
    if value.ndim == 4:
      return [((*module, "kernel"), conv_kernel(value))]
    raise ConversionError(f"{key}: a conv weight must be 4-D or 5-D, got shape {value.shape}")
  if value.ndim != 2:
    raise ConversionError(f"{key}: a Linear weight must be 2-D, got shape {value.shape}")
  return [((*module, "kernel"), linear_kernel(value))]


def convert_dpmesh_regressor(
  state_dict: Mapping[str, Any],
  config: DPMeshRegressorConfig = DPMESH_REGRESSOR_RELEASED,
  *,
  feature_hw: tuple[int, int] = (8, 8),
  what: str = "DPMesh checkpoint",
) -> dict[str, Any]:
  """A DPMesh state_dict (full checkpoint or regressor only) -> `{'params': ...}` for
  `DPMeshRegressor(config)` without a pose decoder (merge the decoder's params under
  `params/pose_decoder` when one is used).

  Args:
    state_dict: torch tensors or arrays by key, with or without `module.` / `network`.
    config: the regressor's sizes (the released checkpoints: `DPMESH_REGRESSOR_RELEASED`).
    feature_hw: (H, W) of the fused features (8, 8), for the `pos_table` check.
    what: the source's name in error messages.

  Raises:
    ConversionError: naming every unexpected, missing or mis-shaped key, a `pos_table` that is
      not the sinusoid table, or two keys mapping to one parameter.
  """
  entries = regressor_state_dict(state_dict)
  converted, source_keys = {}, {}
  for key, tensor in entries.items():
    value = to_numpy(tensor)
    if key == POS_TABLE:
      expected = sinusoid_table(config.depth * feature_hw[0] * feature_hw[1], config.dim)
      if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-5):
        raise ConversionError(
          f"{what}: {POS_TABLE} {value.shape} is not the {expected.shape} sinusoid table"
        )
      continue
    for path, array in _convert_one(key, value):
      if path in converted:
        raise ConversionError(
          f"{what}: keys {source_keys[path]!r} and {key!r} both map to {'/'.join(path)}"
        )
      converted[path], source_keys[path] = array, key
  model = DPMeshRegressor(config)
  features = jax.ShapeDtypeStruct((1, *feature_hw, config.in_channels), jnp.float32)
  target = jax.eval_shape(model.init, jax.random.key(0), features)["params"]
  return {"params": strict_fill(converted, target, source_keys=source_keys, what=what)}
