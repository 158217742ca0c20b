"""Reading PyTorch checkpoints safely: safetensors (no torch needed) or torch pickles.

torch pickles are read by `jhmr.convert.torch_pickle.load_checkpoint`, a restricted unpickler that
builds tensors as numpy arrays and refuses, by name, any global outside an explicit allow-list
(torch is not needed). Never `torch.load(weights_only=False)`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jhmr.convert import torch_pickle

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# File names diffusers / transformers write, in order of preference.
_WEIGHT_NAMES = (
  "diffusion_pytorch_model.safetensors",
  "model.safetensors",
  "diffusion_pytorch_model.bin",
  "pytorch_model.bin",
)


def load_torch_file(
  path: str | pathlib.Path, allowed_globals: Mapping[str, Any] | str = "tensors"
) -> dict[str, Any]:
  """Loads a whole checkpoint file as a (possibly nested) dict of numpy arrays / python values.

  `.safetensors` is read with the numpy backend; `.bin/.pt/.pth/.ckpt` with
  `torch_pickle.load_checkpoint(path, allowed_globals)` (a `CHECKPOINT_KINDS` name or a mapping;
  the default allows tensors, state dicts, numpy scalars and builtins only).

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: unknown suffix, an unreadable file (`CheckpointError`), or a global outside the
      allow-list (`UnsafePickleError`, naming it).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))
  if path.suffix in _TORCH_SUFFIXES:
    return torch_pickle.load_checkpoint(path, allowed_globals)
  raise ValueError(
    f"{path}: unknown checkpoint suffix {path.suffix!r}; expected .safetensors "
    f"or one of {_TORCH_SUFFIXES}"
  )


def flat_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The array entries of a flat state dict (python scalars and strings are dropped)."""
  return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


def find_weights_file(folder: str | pathlib.Path) -> pathlib.Path:
  """The weights file of a diffusers/transformers component folder (safetensors preferred)."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"model folder not found: {folder}")
  for name in _WEIGHT_NAMES:
    if (folder / name).is_file():
      return folder / name
  raise FileNotFoundError(f"{folder}: none of {_WEIGHT_NAMES} found")


def load_component(folder: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Reads `config.json` and the weights of one diffusers/transformers component folder.

  Returns:
    (config dict, flat state dict of numpy arrays).
  """
  folder = pathlib.Path(folder)
  config_path = folder / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{folder}: config.json not found")
  try:
    config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path}: malformed JSON ({e})") from e
  return config, flat_arrays(load_torch_file(find_weights_file(folder)))
