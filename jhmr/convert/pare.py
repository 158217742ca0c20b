"""The official PARE checkpoint (`pare_checkpoint.ckpt`) -> `jhmr.models.pare.Pare` variables.
(ScoreHMR's crop for it is `jhmr.data.crops.crop_for_pare`.)

The file is a PyTorch Lightning checkpoint: the weights are `ckpt['state_dict']`, whose PARE keys
carry the Lightning module's `model.` prefix (`model.backbone.*`, `model.head.*`). Besides those
the Lightning module saves its loss, SMPL layers and camera buffers, and the head saves mean
parameters and a temperature it does not use in ScoreHMR's configuration; `IGNORED_PREFIXES` and
`IGNORED_KEYS` list exactly what is skipped (research/regressors.md section 1). Everything else
must map one to one, or `ConversionError` names the missing, unexpected or mis-shaped keys
(ScoreHMR itself loads with `strict=False`, which hides such problems).

Head keys map as (torch -> flax, under `head/`):
  keypoint_deconv_layers.{0,3}.weight [O, I, 3, 3]   -> keypoint_deconv_layers_{0,3}/kernel
  keypoint_deconv_layers.{1,4}.{weight,bias}         -> params .../{scale,bias}
  keypoint_deconv_layers.{1,4}.running_{mean,var}    -> batch_stats .../{mean,var}
  (num_batches_tracked is dropped; smpl_deconv_layers.* likewise)
  {keypoint,smpl}_final_layer.{weight,bias}          -> .../{kernel,bias} (conv1x1)
  pose_mlp.weight [1, 6, C, 24, 1, 1]                -> pose_mlp [24, C, 6]
  {shape,cam}_mlp.{weight,bias}                      -> .../{kernel,bias} (Linear, transposed)
Backbone keys (`backbone.*`) are converted by `jhmr.convert.hrnet.hrnet_rules`.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.convert.common import (
  ConversionError,
  conv_kernel,
  linear_kernel,
  strict_fill,
  to_numpy,
)
from jhmr.convert.hrnet import hrnet_rules
from jhmr.convert.torch_io import load_torch_file
from jhmr.models.pare import INPUT_SIZE, Pare, PareHead

LIGHTNING_PREFIX = "model."
# Saved by PARE's Lightning trainer (loss, SMPL layers) and by PARE itself (its SMPL head), after
# the `model.` prefix is stripped; none is a weight of the network.
IGNORED_PREFIXES = ("loss_fn.", "smpl.", "smpl_native.")
# Camera / face buffers of the trainer, and head buffers unused in ScoreHMR's configuration
# (no iterative regression, no mean parameters, softmax attention without temperature).
IGNORED_KEYS = (
  "K",
  "R",
  "smpl_faces",
  "head.temperature",
  "head.init_pose",
  "head.init_shape",
  "head.init_cam",
)

_BRANCH = re.compile(r"^(keypoint_deconv_layers|smpl_deconv_layers)\.(\d+)\.(\w+)$")
_BN_LEAVES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}

Flat = dict[tuple[str, ...], np.ndarray]


def _head_entry(key: str, a: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray] | None:
  """(collection, path under the head, array) of one head key (without `head.`), or None."""
  if m := _BRANCH.match(key):
    name, index, leaf = m.groups()
    module = f"{name}_{index}"
    if leaf in _BN_LEAVES and (leaf != "weight" or a.ndim == 1):
      collection, flax_leaf = _BN_LEAVES[leaf]
      return collection, (module, flax_leaf), a
    if leaf == "weight" and a.ndim == 4:
      return "params", (module, "kernel"), conv_kernel(a)
    return None
  parts = key.split(".")
  if len(parts) != 2:
    return None
  module, leaf = parts
  if module in ("keypoint_final_layer", "smpl_final_layer"):
    if leaf == "bias":
      return "params", (module, "bias"), a
    if leaf == "weight" and a.ndim == 4:
      return "params", (module, "kernel"), conv_kernel(a)
  if module in ("shape_mlp", "cam_mlp"):
    if leaf == "bias":
      return "params", (module, "bias"), a
    if leaf == "weight" and a.ndim == 2:
      return "params", (module, "kernel"), linear_kernel(a)
  if module == "pose_mlp" and leaf == "weight":
    if a.ndim != 6 or a.shape[0] != 1 or a.shape[4:] != (1, 1):
      raise ConversionError(
        f"head.pose_mlp.weight: expected a LocallyConnected2d weight [1, 6, C, 24, 1, 1], "
        f"got shape {a.shape}"
      )
    return "params", ("pose_mlp",), a[0, :, :, :, 0, 0].transpose(2, 1, 0)
  return None


def pare_head_rules(state: Mapping[str, Any], prefix: str = "head.") -> tuple[Flat, Flat, dict]:
  """Converts the keys under `prefix` (PARE head) -> `(params_flat, batch_stats_flat, sources)`.

  Flat paths are relative to the head module; `sources` maps `(collection, *path)` to the torch
  key. BatchNorm `num_batches_tracked` counters and `IGNORED_KEYS` under the prefix are consumed
  without output. Raises `ConversionError` naming every key under `prefix` that is not a head
  weight.
  """
  params, stats, sources, unknown = {}, {}, {}, []
  for key, value in state.items():
    if not key.startswith(prefix) or key in IGNORED_KEYS:
      continue
    sub = key[len(prefix) :]
    if sub.endswith(".num_batches_tracked") and _BRANCH.match(sub):
      continue
    entry = _head_entry(sub, to_numpy(value))
    if entry is None:
      unknown.append(key)
      continue
    collection, path, array = entry
    (params if collection == "params" else stats)[path] = array
    sources[(collection, *path)] = key
  if unknown:
    raise ConversionError(f"PARE head: {len(unknown)} unexpected keys: {', '.join(unknown)}")
  return params, stats, sources


def strip_lightning_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
  """`model.x` -> `x` (only a leading prefix; keys without it are kept as they are)."""
  return {
    (k[len(LIGHTNING_PREFIX) :] if k.startswith(LIGHTNING_PREFIX) else k): v
    for k, v in state.items()
  }


def _ignored(key: str) -> bool:
  return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _stray_keys(state: Mapping[str, Any], inside: tuple[str, ...]) -> list[str]:
  """Keys outside the `inside` prefixes (whose converters consume or refuse every key) that are
  not ignored non-model keys."""
  return sorted(k for k in state if not k.startswith(inside) and not _ignored(k))


def _fill(params: Flat, stats: Flat, sources: dict, target, what: str):
  converted = {("params", *p): a for p, a in params.items()}
  converted.update({("batch_stats", *p): a for p, a in stats.items()})
  return strict_fill(converted, target, source_keys=sources, what=what)


def target_variables(model: Pare | PareHead, *, height: int = INPUT_SIZE, width: int = INPUT_SIZE):
  """The variables (ShapeDtypeStructs) `model` expects: a `Pare` on `[1, height, width, 3]`
  images, or a `PareHead` on its backbone map at a quarter of that size."""
  if isinstance(model, PareHead):
    x = jnp.zeros((1, height // 4, width // 4, model.in_channels), jnp.float32)
  else:
    x = jnp.zeros((1, height, width, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def convert_pare_head(state_dict: Mapping[str, Any], head: PareHead | None = None):
  """A PARE state dict's `head.*` keys (a `model.` prefix is stripped) -> `PareHead` variables.

  Keys outside the head must be absent or one of the ignored non-model keys, except `backbone.*`,
  which is allowed (and skipped) so a whole checkpoint can be read for its head.
  """
  head = head or PareHead()
  state = strip_lightning_prefix(state_dict)
  params, stats, sources = pare_head_rules(state, "head.")
  stray = _stray_keys(state, ("head.", "backbone."))
  if stray:
    raise ConversionError(f"PARE head: {len(stray)} unexpected keys: {', '.join(stray)}")
  return _fill(params, stats, sources, target_variables(head), "PARE head")


def convert_pare(state_dict: Mapping[str, Any], config: Pare | None = None):
  """A PARE state dict (Lightning `state_dict`, with or without `model.`) -> `Pare` variables
  `{'params': {'backbone', 'head'}, 'batch_stats': {...}}`.

  Raises:
    ConversionError: a missing, unexpected (not in `IGNORED_*`) or mis-shaped key, named.
  """
  model = config or Pare()
  state = strip_lightning_prefix(state_dict)
  head_params, head_stats, head_sources = pare_head_rules(state, "head.")
  bb_params, bb_stats, bb_sources = hrnet_rules(state, prefix="backbone.")
  params = {("head", *p): a for p, a in head_params.items()}
  stats = {("head", *p): a for p, a in head_stats.items()}
  params.update({("backbone", *p): a for p, a in bb_params.items()})
  stats.update({("backbone", *p): a for p, a in bb_stats.items()})
  sources = {(c, "head", *p): k for (c, *p), k in head_sources.items()}
  sources.update({("params", "backbone", *p): bb_sources[p] for p in bb_params})
  sources.update({("batch_stats", "backbone", *p): bb_sources[p] for p in bb_stats})
  # Every key under `head.` / `backbone.` is mapped, skipped or refused by its rules.
  stray = _stray_keys(state, ("head.", "backbone."))
  if stray:
    raise ConversionError(f"PARE: {len(stray)} unexpected keys: {', '.join(stray)}")
  return _fill(params, stats, sources, target_variables(model), "PARE")


def read_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
  """The `state_dict` of a PARE Lightning checkpoint (or a bare state dict) as numpy arrays.

  The one place PARE checkpoints are read: jhmr's restricted unpickler with the "pare"
  allow-list (`jhmr.convert.torch_pickle`), through `jhmr.convert.torch_io.load_torch_file`.
  """
  ckpt = load_torch_file(path, "pare")
  state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, Mapping) else None
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path}: not a PARE checkpoint (no state_dict mapping)")
  return dict(state)


def load_pare_checkpoint(path: str | pathlib.Path, config: Pare | None = None):
  """Reads `pare_checkpoint.ckpt` and converts it for `config` (default: the official `Pare`)."""
  return convert_pare(read_checkpoint(path), config)
