"""pytorch-fid's FID Inception weights (`pt_inception-2015-12-05-6726825d.pth`) -> jhmr
`InceptionV3` variables.

The file is the state dict of torchvision's `Inception3(num_classes=1008, aux_logits=False)` with
pytorch-fid's FID blocks (which add no parameters), i.e. torchvision's key names:
  `Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.{weight, bias, running_mean, running_var}`,
  `Mixed_5b.branch1x1.conv.weight`, ..., `Mixed_7c.branch_pool.bn.running_var`, `fc.weight`,
  `fc.bias`.
The rule is one to one (jhmr's submodules carry the PyTorch names):
  `<module path>.conv.weight` [O, I, kh, kw]   -> params `<path>/conv/kernel` [kh, kw, I, O]
  `<module path>.bn.weight` / `.bn.bias`       -> params `<path>/bn/scale` / `bias`
  `<module path>.bn.running_mean` / `_var`     -> batch_stats `<path>/bn/mean` / `var`
  `fc.weight` [1008, 2048] / `fc.bias`         -> params `fc/kernel` [2048, 1008] / `bias`
`num_batches_tracked` (present or not, depending on the torch that saved the file) is skipped;
any other key, a missing key or a wrong shape raises `ConversionError` naming the PyTorch key.

The file holds an OrderedDict of tensors only, so it is read by the restricted unpickler
(`jhmr.convert.torch_io.load_torch_file(path, "tensors")`); torch is not needed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jhmr.convert.common import (
  ConversionError,
  conv_kernel,
  linear_kernel,
  strict_fill,
  to_numpy,
)
from jhmr.convert.torch_io import load_torch_file
from jhmr.models.inception import MIN_SIZE, NUM_CLASSES, InceptionV3

CHECKPOINT_KIND = "tensors"  # a `jhmr.convert.torch_pickle.CHECKPOINT_KINDS` name
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's file name

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias")}
_BN |= {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_LEAVES = {
  ("conv", "kernel"): ("conv", "weight"),
  ("bn", "scale"): ("bn", "weight"),
  ("bn", "bias"): ("bn", "bias"),
  ("bn", "mean"): ("bn", "running_mean"),
  ("bn", "var"): ("bn", "running_var"),
}


def inception_shapes(num_classes: int = NUM_CLASSES) -> dict:
  """`{'params', 'batch_stats'}` of `InceptionV3(num_classes)` as `jax.ShapeDtypeStruct`s."""
  return jax.tree.map(lambda x: x, _shapes(num_classes))  # a fresh dict; the cache stays intact


@functools.lru_cache(maxsize=4)
def _shapes(num_classes: int) -> dict:
  model = InceptionV3(num_classes=num_classes)
  x = jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  return dict(jax.eval_shape(model.init, jax.random.key(0), x))


def _rule(key: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """One PyTorch key -> (flat Flax path with collection first, array), or None if unknown."""
  *modules, leaf = key.split(".")
  if modules == ["fc"] and leaf in ("weight", "bias"):
    value = linear_kernel(array) if leaf == "weight" and array.ndim == 2 else array
    return ("params", "fc", "kernel" if leaf == "weight" else "bias"), value
  if len(modules) < 2:
    return None
  *path, layer = modules
  if layer == "conv" and leaf == "weight":
    value = conv_kernel(array) if array.ndim == 4 else array
    return ("params", *path, "conv", "kernel"), value
  if layer == "bn" and leaf in _BN:
    collection, name = _BN[leaf]
    return (collection, *path, "bn", name), array
  return None


def torch_key(path: tuple[str, ...]) -> str:
  """The inverse rule: `('params', 'Mixed_5b', 'branch1x1', 'bn', 'scale')` ->
  `'Mixed_5b.branch1x1.bn.weight'` (the collection name first, as in `convert_inception`)."""
  _, *modules, layer, leaf = path
  if not modules and layer == "fc":
    return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
  layer, leaf = _LEAVES[(layer, leaf)]
  return ".".join([*modules, layer, leaf])


def convert_inception(
  state_dict: Mapping[str, Any],
  num_classes: int = NUM_CLASSES,
  *,
  what: str = "FID Inception checkpoint",
) -> dict:
  """A pytorch-fid FID Inception state dict -> `{'params', 'batch_stats'}` (numpy float32).

  Args:
    state_dict: torchvision `Inception3` keys (torch tensors or numpy arrays).
    num_classes: the `fc` head of the target `InceptionV3` (1008 for pytorch-fid's file).
    what: the source's name in error messages.

  Raises:
    ConversionError: naming every missing, unexpected and mis-shaped PyTorch key.
  """
  converted: dict[tuple[str, ...], np.ndarray] = {}
  sources: dict[tuple[str, ...], str] = {}
  unexpected = []
  for key, tensor in state_dict.items():
    if key.endswith(".num_batches_tracked"):
      continue
    result = _rule(key, to_numpy(tensor))
    if result is None:
      unexpected.append(key)
      continue
    path, value = result
    converted[path], sources[path] = value, key
  target = inception_shapes(num_classes)
  flat_target = traverse_util.flatten_dict(target)
  missing = [torch_key(p) for p in flat_target if p not in converted]
  unexpected += [sources[p] for p in converted if p not in flat_target]
  mis_shaped = [
    f"{sources[p]}: got {tuple(np.shape(converted[p]))} (as {'/'.join(p)}), "
    f"expected {tuple(flat_target[p].shape)}"
    for p in converted
    if p in flat_target and tuple(np.shape(converted[p])) != tuple(flat_target[p].shape)
  ]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing keys: {', '.join(sorted(missing))}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected keys: {', '.join(sorted(unexpected))}")
  if mis_shaped:
    problems.append(f"{len(mis_shaped)} mis-shaped keys: {'; '.join(sorted(mis_shaped))}")
  if problems:
    raise ConversionError(f"{what} does not match the model:\n  " + "\n  ".join(problems))
  return strict_fill(converted, target, source_keys=sources, what=what)


def load_inception(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> dict:
  """pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` -> `InceptionV3` variables.

  Read with the restricted unpickler (tensors and builtins only; no torch needed).

  Raises:
    FileNotFoundError: no such file.
    ConversionError: the file is not a state dict, or its keys do not match (named).
  """
  state = load_torch_file(path, CHECKPOINT_KIND)
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path}: expected a state dict, got {type(state).__name__}")
  return convert_inception(state, num_classes, what=f"{os.fspath(path)}")


__all__ = [
  "CHECKPOINT_KIND",
  "WEIGHTS_FILE",
  "convert_inception",
  "inception_shapes",
  "load_inception",
  "torch_key",
]
