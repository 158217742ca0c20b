"""human_body_prior VPoser v1 (`vposer_v1_0`) -> `jhmr.models.vposer_v1.VPoserV1` variables.

The release is an experiment folder (`vposer_v1_0/`: the `.ini` settings, a copy of
`vposer_smpl.py`, `snapshots/TR00_E096.pt`); the snapshot is `torch.save(model.state_dict())` of
the cvpr19 `VPoser` (saved from `.module` when trained under DataParallel, so no prefix): an
OrderedDict of tensors, read with `jhmr.convert.torch_pickle`'s "tensors" allow-list. Keys:

  bodyprior_enc_bn1.{weight, bias, running_mean, running_var[, num_batches_tracked]}
  bodyprior_enc_fc1.{weight, bias}        bodyprior_enc_bn2.{... as enc_bn1}
  bodyprior_enc_fc2, bodyprior_enc_mu, bodyprior_enc_logvar,
  bodyprior_dec_fc1, bodyprior_dec_fc2, bodyprior_dec_out: {weight, bias}

-> Flax module = the name without `bodyprior_`; Linear weight -> kernel (transposed), BatchNorm
weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var. `num_batches_tracked`
(torch >= 0.4.1 only; unused in eval mode) may be present or absent. Anything else, and any
missing or mis-shaped weight, raises `ConversionError` naming it. DPMesh's checkpoints carry the
same keys under `vposer.vposer.` (`jhmr.convert.dpmesh` passes the prefix).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jhmr.convert.common import ConversionError, linear_kernel, strict_fill, to_numpy
from jhmr.convert.torch_io import load_torch_file
from jhmr.models.vposer_v1 import VPOSER_V1, VPoserV1

__all__ = ["convert_vposer_v1", "load_vposer_v1", "load_vposer_v1_snapshot", "vposer_v1_shapes"]

TORCH_PREFIX = "bodyprior_"
LINEARS = ("enc_fc1", "enc_fc2", "enc_mu", "enc_logvar", "dec_fc1", "dec_fc2", "dec_out")
BATCH_NORMS = ("enc_bn1", "enc_bn2")
_BN_PLACES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


_COUNTERS = frozenset(f"{TORCH_PREFIX}{b}.num_batches_tracked" for b in BATCH_NORMS)


def _rule(key: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  layer, _, leaf = key.rpartition(".")
  if not layer.startswith(TORCH_PREFIX):
    return None
  name = layer[len(TORCH_PREFIX) :]
  if name in LINEARS and leaf in ("weight", "bias"):
    if leaf == "weight":
      return ("params", name, "kernel"), linear_kernel(array)
    return ("params", name, "bias"), array
  if name in BATCH_NORMS and leaf in _BN_PLACES:
    collection, leaf_name = _BN_PLACES[leaf]
    return (collection, name, leaf_name), array
  return None


def vposer_v1_shapes(model: VPoserV1 = VPOSER_V1) -> dict:
  """`{'params', 'batch_stats'}` of `model` as `jax.ShapeDtypeStruct`s (no compile)."""
  x = jnp.zeros((1, model.num_joints * 3))
  return dict(jax.eval_shape(model.init, jax.random.key(0), x))


def convert_vposer_v1(
  state_dict: Mapping[str, Any],
  model: VPoserV1 = VPOSER_V1,
  *,
  prefix: str = "",
  what: str = "VPoser v1 snapshot",
) -> dict:
  """A VPoser v1 state dict -> `{'params', 'batch_stats'}` of `model` (strict).

  Args:
    state_dict: tensors or arrays by key; every key must start with `prefix`.
    model: the sizes to expect (the release: `VPOSER_V1`, 512 neurons, latent 32).
    prefix: stripped from every key (DPMesh: the caller strips `vposer.`, then `vposer.` again).
    what: the source's name in error messages.

  Raises:
    ConversionError: every unexpected key (at once), then every missing / mis-shaped weight.
  """
  if not isinstance(state_dict, Mapping):
    raise ConversionError(f"{what}: expected a state dict, got {type(state_dict).__name__}")
  converted, source_keys, unexpected = {}, {}, []
  for key, tensor in state_dict.items():
    name = key[len(prefix) :] if key.startswith(prefix) else None
    if name in _COUNTERS:
      continue
    result = None if name is None else _rule(name, to_numpy(tensor))
    if result is None:
      unexpected.append(key)
      continue
    path, value = result
    converted[path], source_keys[path] = value, key
  if unexpected:
    raise ConversionError(f"{what}: {len(unexpected)} unexpected keys: " + ", ".join(unexpected))
  return strict_fill(converted, vposer_v1_shapes(model), source_keys=source_keys, what=what)


def _snapshot_file(path: pathlib.Path) -> pathlib.Path:
  if not path.is_dir():
    return path
  found = sorted((path / "snapshots").glob("*.pt")) if (path / "snapshots").is_dir() else []
  if len(found) != 1:
    raise ConversionError(
      f"{path}: expected one VPoser v1 snapshot under snapshots/*.pt, found "
      f"{[p.name for p in found] or 'none'}; pass the .pt file itself"
    )
  return found[0]


def load_vposer_v1_snapshot(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a VPoser v1 snapshot `.pt` (or the experiment folder holding exactly one
  `snapshots/*.pt`) -> its state dict (restricted unpickler, "tensors" kind)."""
  path = _snapshot_file(pathlib.Path(path))
  state = load_torch_file(path, "tensors")
  if not isinstance(state, Mapping):
    raise ConversionError(f"{path}: not a state dict ({type(state).__name__})")
  return dict(state)


def load_vposer_v1(path: str | pathlib.Path, model: VPoserV1 = VPOSER_V1) -> dict:
  """`convert_vposer_v1(load_vposer_v1_snapshot(path))`: the Flax variables of a v1 snapshot."""
  path = _snapshot_file(pathlib.Path(path))
  return convert_vposer_v1(load_vposer_v1_snapshot(path), model, what=str(path))
