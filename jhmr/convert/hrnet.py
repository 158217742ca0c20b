"""PARE's PyTorch HRNet backbone (pose-HRNet + "conv" upsampling) -> jhmr `HRNet` variables.

The rule is mechanical: a PyTorch module path is split at its names, and each name takes the
indices that follow it (`stage3.1.branches.2.0.conv1.weight` -> `stage3_1/branches_2_0/conv1`,
`transition1.1.0.0.weight` -> `transition1_1_0_0`, `upsample_stage_4.5.weight` ->
`upsample_stage_4_5`). Then
  conv `weight` [O, I, kh, kw] -> params `kernel` [kh, kw, I, O];
  BN `weight` / `bias` -> params `scale` / `bias`;
  BN `running_mean` / `running_var` -> batch_stats `mean` / `var`.
Ignored on purpose: every `num_batches_tracked`, and `final_layer.weight` / `final_layer.bias`
(PARE builds a conv1x1 32 -> 24 head there but never calls it). Any other key, missing key or
shape mismatch raises `ConversionError` naming the PyTorch key. The key names are those of
ScoreHMR's vendored `score_hmr/models/pare/backbone/hrnet.py` (= PARE's), whose trunk keys are
also timm's `hrnet_w32` feature keys.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jhmr.convert.common import ConversionError, conv_kernel, strict_fill, to_numpy
from jhmr.models.hrnet import HRNET_W32, HRNet, HRNetConfig

# Keys under the prefix that hold no weight of `HRNet`; `num_batches_tracked` is skipped anywhere.
IGNORED_KEYS = ("final_layer.weight", "final_layer.bias")

_BATCH_STATS = {"running_mean": "mean", "running_var": "var"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean"}
_LEAVES["var"] = "running_var"
# a Flax module name: the PyTorch name (`upsample_stage_N` keeps its digit), then `_index`es
_SEGMENT = re.compile(r"(upsample_stage_\d+|[A-Za-z]+(?:_[A-Za-z]+)*\d*)((?:_\d+)*)")


def _module_path(names: list[str]) -> tuple[str, ...]:
  """`[stage2, 0, fuse_layers, 1, 0, 0, 1]` -> `(stage2_0, fuse_layers_1_0_0_1)`."""
  path: list[str] = []
  for name in names:
    if name.isdigit() and path:
      path[-1] = f"{path[-1]}_{name}"
    else:
      path.append(name)
  return tuple(path)


def torch_key(path: tuple[str, ...]) -> str:
  """The inverse of the rule: `('stage2_0', 'branches_1_3', 'bn1', 'var')` ->
  `'stage2.0.branches.1.3.bn1.running_var'`."""
  names = []
  for segment in path[:-1]:
    name, indices = _SEGMENT.fullmatch(segment).groups()
    names += [name, *indices.split("_")[1:]]
  return ".".join([*names, _LEAVES[path[-1]]])


def hrnet_rules(
  state: Mapping[str, Any], prefix: str = ""
) -> tuple[dict[tuple[str, ...], np.ndarray], dict[tuple[str, ...], np.ndarray], dict]:
  """Maps every key of `state` under `prefix` to a flat Flax path of `HRNet`'s variables.

  Stable API: PARE's converter calls `hrnet_rules(state, "backbone.")`. Keys outside `prefix` are
  not looked at; every key under it is consumed: either ignored (`IGNORED_KEYS` after the prefix,
  and `num_batches_tracked`) or mapped, and a mapped key that `HRNet` has no place for (an
  unknown module or leaf name) ends up as an unexpected path that `strict_fill` reports.

  Args:
    state: a PyTorch state dict (torch tensors or numpy arrays).
    prefix: the backbone's key prefix, e.g. `"backbone."`; `""` for a bare backbone.

  Returns:
    `(params, batch_stats, source_keys)`: flat `{path tuple: array}` for the `params` and
    `batch_stats` collections (float32 numpy, Flax layouts), and `{path tuple: PyTorch key}` for
    both (their paths never collide: kernel/scale/bias vs mean/var), for error messages.

  Raises:
    ConversionError: two keys that map to the same path.
  """
  params, batch_stats, source_keys = {}, {}, {}
  for key, tensor in state.items():
    if not key.startswith(prefix):
      continue
    local = key[len(prefix) :]
    *names, leaf = local.split(".")
    if local in IGNORED_KEYS or leaf == "num_batches_tracked":
      continue
    array = to_numpy(tensor)
    module = _module_path(names)
    if leaf in _BATCH_STATS:
      collection, path = batch_stats, (*module, _BATCH_STATS[leaf])
    elif leaf == "weight" and array.ndim == 4:
      collection, path, array = params, (*module, "kernel"), conv_kernel(array)
    elif leaf == "weight" and array.ndim == 1:
      collection, path = params, (*module, "scale")
    else:  # BN bias; anything else keeps its name and is reported as unexpected
      collection, path = params, (*module, leaf)
    if path in source_keys:
      raise ConversionError(
        f"HRNet: keys {source_keys[path]!r} and {key!r} both map to {'/'.join(path)}"
      )
    collection[path], source_keys[path] = array, key
  return params, batch_stats, source_keys


def hrnet_shapes(config: HRNetConfig = HRNET_W32) -> dict:
  """`{'params', 'batch_stats'}` of `HRNet(config)` as `jax.ShapeDtypeStruct`s (no allocation)."""
  return jax.tree.map(lambda x: x, _shapes(config))  # a fresh dict; the cached one stays intact


@functools.lru_cache(maxsize=8)
def _shapes(config: HRNetConfig) -> dict:
  model = HRNet(config)
  return jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())


def convert_hrnet(
  state: Mapping[str, Any],
  config: HRNetConfig = HRNET_W32,
  prefix: str = "",
  *,
  what: str = "HRNet checkpoint",
) -> dict:
  """A PARE HRNet state dict -> `{'params', 'batch_stats'}` for `HRNet(config)` (numpy float32).

  Raises:
    ConversionError: naming every missing, unexpected or mis-shaped key (params first, then
      batch_stats).
  """
  params, batch_stats, source_keys = hrnet_rules(state, prefix)
  target = hrnet_shapes(config)
  fill = lambda converted, collection: _fill(
    converted, target[collection], source_keys, f"{what} ({collection})", prefix
  )
  return {"params": fill(params, "params"), "batch_stats": fill(batch_stats, "batch_stats")}


def _fill(converted, target, source_keys, what, prefix):
  """`strict_fill`, whose report also names the PyTorch keys of missing paths."""
  try:
    return strict_fill(converted, target, source_keys=source_keys, what=what)
  except ConversionError as error:
    flat = traverse_util.flatten_dict(jax.tree.map(lambda x: x, target))
    missing = [prefix + torch_key(p) for p in flat if p not in converted]
    if not missing:
      raise
    raise ConversionError(f"{error}\n  missing PyTorch keys: {', '.join(missing)}") from None
