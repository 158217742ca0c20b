"""human_body_prior VPoser v2 (V02_05) checkpoint -> `jhmr.models.vposer.VPoser` variables.

The release is a PyTorch Lightning checkpoint (`V02_05/snapshots/V02_05_epoch=*_val_loss=*.ckpt`)
whose `state_dict` holds the trainer's `vp_model.` submodule; human_body_prior's `load_model(...,
remove_words_in_model_weights='vp_model.')` strips that prefix. Conversion is strict: every VPoser
weight and BatchNorm statistic must be present and shaped right, and any key other than
  * `vp_model.<layer>` (or `<layer>` already stripped),
  * `*.num_batches_tracked` (BatchNorm counters; not used in eval mode),
  * `bm_train.*` (buffers of the trainer's body model, if the checkpoint carries them),
is refused. Layer map (torch `Sequential` index -> Flax module, see the model docstring):
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
from jhmr.models.vposer import DEFAULT_MODEL, VPoser

PREFIX = "vp_model."
IGNORED_PREFIXES = ("bm_train.",)

LINEARS = {
  "encoder_net.2": "encoder_fc1",
  "encoder_net.6": "encoder_fc2",
  "encoder_net.7": "encoder_fc3",
  "encoder_net.8.mu": "encoder_mu",
  "encoder_net.8.logvar": "encoder_logvar",
  "decoder_net.0": "decoder_fc1",
  "decoder_net.3": "decoder_fc2",
  "decoder_net.5": "decoder_out",
}
BATCH_NORMS = {"encoder_net.1": "encoder_bn_in", "encoder_net.4": "encoder_bn1"}

__doc__ += "".join(f"  {k} -> {v}\n" for k, v in {**LINEARS, **BATCH_NORMS}.items())


def _rule(key: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  layer, _, leaf = key.rpartition(".")
  if layer in LINEARS and leaf in ("weight", "bias"):
    value = linear_kernel(array) if leaf == "weight" else array
    return ("params", LINEARS[layer], "kernel" if leaf == "weight" else "bias"), value
  if layer in BATCH_NORMS:
    name = BATCH_NORMS[layer]
    place = {
      "weight": ("params", name, "scale"),
      "bias": ("params", name, "bias"),
      "running_mean": ("batch_stats", name, "mean"),
      "running_var": ("batch_stats", name, "var"),
    }
    if leaf in place:
      return place[leaf], array
  return None


def convert_vposer(state_dict: Mapping[str, Any], model: VPoser = DEFAULT_MODEL) -> dict:
  """V02_05 state dict (or the whole Lightning checkpoint dict) -> {'params', 'batch_stats'}.

  Raises:
    ConversionError: unexpected, missing, duplicated or mis-shaped keys (all listed at once).
  """
  if not isinstance(state_dict, Mapping):
    raise ConversionError(f"VPoser checkpoint: expected a state dict, got {type(state_dict)}")
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]
  converted, source_keys, unexpected = {}, {}, []
  for key, tensor in state_dict.items():
    if key.startswith(IGNORED_PREFIXES) or key.endswith(".num_batches_tracked"):
      continue
    name = key.removeprefix(PREFIX)
    result = _rule(name, to_numpy(tensor))
    if result is None:
      unexpected.append(key)
      continue
    path, value = result
    if path in converted:
      raise ConversionError(
        f"VPoser checkpoint: keys {source_keys[path]!r} and {key!r} both map to {'/'.join(path)}"
      )
    converted[path], source_keys[path] = value, key
  if unexpected:
    raise ConversionError(
      f"VPoser checkpoint: {len(unexpected)} unexpected keys: " + ", ".join(unexpected)
    )
  x = jnp.zeros((1, model.num_joints * 3))
  target = jax.eval_shape(model.init, jax.random.key(0), x, jnp.zeros((1, model.latent_dim)))
  return strict_fill(converted, dict(target), source_keys=source_keys, what="VPoser checkpoint")


def load_vposer_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a V02_05 `.ckpt` -> its state dict (restricted unpickler, kind "vposer" of
  `jhmr.convert.torch_pickle`)."""
  checkpoint = load_torch_file(path, "vposer")
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f"{path}: not a checkpoint dict")
  if "state_dict" in checkpoint:
    checkpoint = checkpoint["state_dict"]
  return dict(checkpoint)


def load_vposer(path: str | pathlib.Path, model: VPoser = DEFAULT_MODEL) -> dict:
  """`convert_vposer(load_vposer_checkpoint(path))`: the Flax variables of a V02_05 file."""
  return convert_vposer(load_vposer_checkpoint(path), model)
