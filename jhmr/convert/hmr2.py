"""The HMR 2.0 (4D-Humans) Lightning checkpoint -> `jhmr.models.hmr2.HMR2` variables.

The released `epoch=35-step=1000000.ckpt` is a Lightning checkpoint whose `state_dict` holds
`backbone.*` (the ViTPose ViT-H, converted by `jhmr.convert.vitpose.vit_rules`) and `smpl_head.*`
(the `SMPLTransformerDecoderHead`, converted here). `discriminator.*` (the adversarial prior),
`smpl.*` (body-model buffers) and `initialized` (an ActNorm flag) are no part of the regressor and
are skipped: exactly `IGNORED_PREFIXES` and `IGNORED_KEYS`. Any other unknown, missing or
mis-shaped key raises `ConversionError` naming it (research/regressors.md section 2).

Head keys (4D-Humans `pose_transformer.py`; flax paths under `params/head/`):

  smpl_head.transformer.to_token_embedding.*           -> transformer/to_token_embedding/*
  smpl_head.transformer.pos_embedding (1, 1, dim)      -> transformer/pos_embedding
  smpl_head.transformer.transformer.layers.i.0.norm.*  -> transformer/layers_i/self_attn/norm/*
  ....layers.i.0.fn.to_qkv.weight                      -> .../self_attn/to_qkv/kernel
  ....layers.i.0.fn.to_out.0.*                         -> .../self_attn/to_out/*
  ....layers.i.1.norm.*, .1.fn.{to_q, to_kv}.weight    -> .../cross_attn/{norm, to_q, to_kv}/*
  ....layers.i.1.fn.to_out.0.*                         -> .../cross_attn/to_out/*
  ....layers.i.2.norm.*, .2.fn.net.0.*, .2.fn.net.3.*  -> .../ff/{norm, fc1, fc2}/*
  smpl_head.{decpose, decshape, deccam}.*              -> {decpose, decshape, deccam}/*
  smpl_head.init_{body_pose, betas, cam} (1, n)        -> buffers/head/init_*  (n,)

Linear weights are transposed; LayerNorm `weight` becomes `scale`.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.convert.common import ConversionError, linear_kernel, strict_fill, to_numpy
from jhmr.convert.torch_io import load_torch_file
from jhmr.convert.vitpose import vit_rules
from jhmr.models.hmr2 import HMR2, HMR2_HEAD, HMR2Config, HMR2Head, HMR2HeadConfig
from jhmr.models.vit import VIT_H, ViTConfig

__all__ = [
  "IGNORED_KEYS",
  "IGNORED_PREFIXES",
  "convert_hmr2",
  "convert_hmr2_head",
  "head_rules",
  "load_hmr2_checkpoint",
]

# Checkpoint entries that are no part of the regressor (4D-Humans `hmr2.py:33-55`).
IGNORED_PREFIXES = ("discriminator.", "smpl.")
IGNORED_KEYS = ("initialized",)

Flat = dict[tuple[str, ...], np.ndarray]
_NORM = {"weight": "scale", "bias": "bias"}
_LINEAR = {"weight": "kernel", "bias": "bias"}
_LAYER = re.compile(r"transformer\.transformer\.layers\.(\d+)\.([012])\.(.+)\.(weight|bias)$")
# (sub-block index, torch module inside the PreNorm) -> (flax sub-block, flax module)
_SUBMODULES = {
  ("0", "norm"): ("self_attn", "norm"),
  ("0", "fn.to_qkv"): ("self_attn", "to_qkv"),
  ("0", "fn.to_out.0"): ("self_attn", "to_out"),
  ("1", "norm"): ("cross_attn", "norm"),
  ("1", "fn.to_q"): ("cross_attn", "to_q"),
  ("1", "fn.to_kv"): ("cross_attn", "to_kv"),
  ("1", "fn.to_out.0"): ("cross_attn", "to_out"),
  ("2", "norm"): ("ff", "norm"),
  ("2", "fn.net.0"): ("ff", "fc1"),
  ("2", "fn.net.3"): ("ff", "fc2"),
}
_BUFFERS = ("init_body_pose", "init_betas", "init_cam")


def _head_key(key: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """One head key (without `smpl_head.`) -> (path under params/head or buffers/head, array)."""
  if key in _BUFFERS:
    value = array.reshape(-1) if array.ndim == 2 and array.shape[0] == 1 else array
    return ("buffers", key), value
  if key == "transformer.pos_embedding":
    return ("params", "transformer", "pos_embedding"), array
  parts = key.split(".")
  if len(parts) == 3 and parts[0] == "transformer" and parts[1] == "to_token_embedding":
    module, leaf = ("transformer", "to_token_embedding"), parts[2]
  elif len(parts) == 2 and parts[0] in ("decpose", "decshape", "deccam"):
    module, leaf = (parts[0],), parts[1]
  elif m := _LAYER.match(key):
    i, block, inner, leaf = m.groups()
    if (block, inner) not in _SUBMODULES:
      return None
    module = ("transformer", f"layers_{i}", *_SUBMODULES[(block, inner)])
  else:
    return None
  if leaf not in _LINEAR:
    return None
  if module[-1] == "norm":
    return ("params", *module, _NORM[leaf]), array
  if leaf == "weight":
    if array.ndim != 2:
      raise ConversionError(f"{key}: a Linear weight must be 2-D, got shape {array.shape}")
    return ("params", *module, "kernel"), linear_kernel(array)
  return ("params", *module, _LINEAR[leaf]), array


def head_rules(state: Mapping[str, Any], prefix: str = "smpl_head.") -> tuple[Flat, dict]:
  """Converts the head keys under `prefix`.

  Returns:
    `(flat, source_keys)`: `flat` maps `('params', ...)` / `('buffers', ...)` paths relative to
    the `HMR2Head` module to numpy arrays; `source_keys` maps them to the original keys.

  Raises:
    ConversionError: a key under `prefix` that is no head key (all named at once).
  """
  flat, source_keys, unknown = {}, {}, []
  for key, tensor in state.items():
    if not key.startswith(prefix):
      continue
    result = _head_key(key[len(prefix) :], to_numpy(tensor))
    if result is None:
      unknown.append(key)
      continue
    flat[result[0]], source_keys[result[0]] = result[1], key
  if unknown:
    raise ConversionError(f"HMR2 head: {len(unknown)} unexpected keys: " + ", ".join(unknown))
  return flat, source_keys


def _check_no_strays(state: Mapping[str, Any], handled: tuple[str, ...]) -> None:
  stray = sorted(
    k
    for k in state
    if not k.startswith(handled) and not k.startswith(IGNORED_PREFIXES) and k not in IGNORED_KEYS
  )
  if stray:
    raise ConversionError(f"HMR2 checkpoint: {len(stray)} unexpected keys: " + ", ".join(stray))


def _target(module, *args) -> Any:
  return jax.eval_shape(module.init, jax.random.key(0), *args)


def convert_hmr2_head(
  state_dict: Mapping[str, Any], head_config: HMR2HeadConfig = HMR2_HEAD, prefix="smpl_head."
) -> dict[str, Any]:
  """The head alone: keys under `prefix` -> `{'params': ..., 'buffers': ...}` of `HMR2Head`.

  Keys outside `prefix` must be ignorable (`IGNORED_*`) or `backbone.*`.
  """
  _check_no_strays(state_dict, (prefix, "backbone."))
  flat, source_keys = head_rules(state_dict, prefix)
  context = jnp.zeros((1, 1, head_config.context_dim), jnp.float32)
  target = _target(HMR2Head(head_config), context)
  return strict_fill(flat, target, source_keys=source_keys, what="HMR2 head")


def convert_hmr2(
  state_dict: Mapping[str, Any],
  head_config: HMR2HeadConfig = HMR2_HEAD,
  vit_config: ViTConfig = VIT_H,
) -> dict[str, Any]:
  """A 4D-Humans `state_dict` -> `{'params': {backbone, head}, 'buffers': {head}}` of
  `HMR2(HMR2Config(vit_config, head_config))`.

  Raises:
    ConversionError: a missing, unexpected (other than the ignored entries) or mis-shaped key.
  """
  _check_no_strays(state_dict, ("smpl_head.", "backbone."))
  flat, source_keys = {}, {}
  head_flat, head_sources = head_rules(state_dict, "smpl_head.")
  for (collection, *rest), value in head_flat.items():
    path = (collection, "head", *rest)
    flat[path], source_keys[path] = value, head_sources[(collection, *rest)]
  vit_flat, vit_sources = vit_rules(state_dict, "backbone.")
  for rest, value in vit_flat.items():
    path = ("params", "backbone", *rest)
    flat[path], source_keys[path] = value, vit_sources[rest]
  model = HMR2(HMR2Config(vit=vit_config, head=head_config))
  target = _target(model, model.dummy_input())
  return strict_fill(flat, target, source_keys=source_keys, what="HMR2 checkpoint")


def checkpoint_state_dict(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
  """The model state dict of a loaded file: a Lightning checkpoint's `state_dict`, else the file
  itself when it is already a flat state dict."""
  if "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
    return ckpt["state_dict"]
  if any(k.startswith(("backbone.", "smpl_head.")) for k in ckpt):
    return ckpt
  raise ConversionError(
    f"neither a Lightning checkpoint (no 'state_dict') nor an HMR2 state dict; keys: "
    f"{sorted(ckpt)[:8]}"
  )


def load_hmr2_checkpoint(
  path: str | pathlib.Path,
  head_config: HMR2HeadConfig = HMR2_HEAD,
  vit_config: ViTConfig = VIT_H,
) -> dict[str, Any]:
  """Reads an HMR 2.0 checkpoint and converts it with `convert_hmr2`.

  `load_torch_file(path, "hmr2")`: the restricted unpickler of `jhmr.convert.torch_pickle` with
  the allow-list of the released Lightning `.ckpt` (its pickled yacs / omegaconf configs become
  inert stand-ins; any other global is refused by name). A plain state dict (no `state_dict`
  wrapper) or a `.safetensors` file is accepted too.
  """
  ckpt = load_torch_file(path, "hmr2")
  return convert_hmr2(checkpoint_state_dict(ckpt), head_config, vit_config)
