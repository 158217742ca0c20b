"""Reading PyTorch checkpoints safely: safetensors (no torch needed) or torch pickles.

torch pickles are only ever opened with `torch.load(..., weights_only=True)`, which refuses to
construct arbitrary objects. torch is imported lazily, inside the function that needs it, so
jhmr's runtime never depends on it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jhmr.convert.common import to_numpy

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# File names diffusers / transformers write, in order of preference.
_WEIGHT_NAMES = (
  "diffusion_pytorch_model.safetensors",
  "model.safetensors",
  "diffusion_pytorch_model.bin",
  "pytorch_model.bin",
)


def load_torch_file(path: str | pathlib.Path) -> dict[str, Any]:
  """Loads a whole checkpoint file as a (possibly nested) dict of numpy arrays / python values.

  `.safetensors` is read with the numpy backend; `.bin/.pt/.pth/.ckpt` with
  `torch.load(weights_only=True)`.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: unknown suffix or a file torch refuses to load safely.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))
  if path.suffix in _TORCH_SUFFIXES:
    import torch

    try:
      obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError & co. for unsafe content
      raise ValueError(f"{path}: cannot be loaded safely with weights_only=True ({e})") from e
    return _tensors_to_numpy(obj)
  raise ValueError(
    f"{path}: unknown checkpoint suffix {path.suffix!r}; expected .safetensors "
    f"or one of {_TORCH_SUFFIXES}"
  )


def _tensors_to_numpy(obj: Any) -> Any:
  if isinstance(obj, Mapping):
    return {k: _tensors_to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(_tensors_to_numpy(v) for v in obj)
  if hasattr(obj, "detach"):
    return to_numpy(obj)
  return obj


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
