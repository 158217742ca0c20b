"""Strict PyTorch state-dict -> Flax parameter-tree conversion.

Every converter in `jhmr.convert` reduces to: (1) rename each PyTorch key to a Flax path and
transform its tensor (transpose Linear/Conv weights, rename norms), (2) place the result into a
target tree built with `jax.eval_shape(model.init, ...)`, and (3) raise if anything is missing,
left over or mis-shaped. Step (3) lives here, so no converter can silently drop a weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jhmr.errors import InputError

# Schedule buffers that DDPM-style PyTorch code (guided-diffusion, CompVis ldm, ScoreHMR) registers
# on the model and therefore saves in checkpoints. They hold no weights: converters check or skip
# them.
DDPM_SCHEDULE_BUFFERS = (
  "betas",
  "alphas_cumprod",
  "alphas_cumprod_prev",
  "sqrt_alphas_cumprod",
  "sqrt_one_minus_alphas_cumprod",
  "log_one_minus_alphas_cumprod",
  "sqrt_recip_alphas_cumprod",
  "sqrt_recipm1_alphas_cumprod",
  "posterior_variance",
  "posterior_log_variance_clipped",
  "posterior_mean_coef1",
  "posterior_mean_coef2",
)


class ConversionError(InputError):
  """A checkpoint does not match the model it is being loaded into."""


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> flax Dense kernel [in, out]."""
  return np.asarray(w).T


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight [out, in, kh, kw] -> flax Conv kernel [kh, kw, in, out]."""
  return np.asarray(w).transpose(2, 3, 1, 0)


def to_numpy(tensor: Any) -> np.ndarray:
  """A torch tensor (any dtype, any device) or array-like -> float32/int numpy array."""
  if hasattr(tensor, "detach"):
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()
    tensor = tensor.numpy()
  return np.asarray(tensor)


def strict_fill(
  converted: Mapping[tuple[str, ...], np.ndarray],
  target: Any,
  *,
  source_keys: Mapping[tuple[str, ...], str] | None = None,
  what: str = "checkpoint",
) -> Any:
  """Places flat converted arrays into the structure of `target`, raising on any mismatch.

  Args:
    converted: flat mapping from Flax parameter path (tuple of names) to array.
    target: the parameter tree the model expects (arrays or `jax.ShapeDtypeStruct`s, e.g. from
      `jax.eval_shape(model.init, ...)`), nested dicts.
    source_keys: optional map from Flax path to the original PyTorch key, used in messages.
    what: a name for the source in error messages.

  Returns:
    A nested dict with the structure of `target`, holding numpy arrays cast to the target dtype.

  Raises:
    ConversionError: listing every missing path, unexpected path and shape mismatch at once.
  """
  target = jax.tree.map(lambda x: x, target)  # unfreeze FrozenDicts into dicts
  flat_target = traverse_util.flatten_dict(dict(target))
  source_keys = source_keys or {}

  def name(path):
    flax_path = "/".join(path)
    return f"{flax_path} (from {source_keys[path]!r})" if path in source_keys else flax_path

  missing = sorted("/".join(p) for p in flat_target if p not in converted)
  extra = sorted(name(p) for p in converted if p not in flat_target)
  mis_shaped = sorted(
    f"{name(p)}: got {tuple(np.shape(v))}, expected {tuple(flat_target[p].shape)}"
    for p, v in converted.items()
    if p in flat_target and tuple(np.shape(v)) != tuple(flat_target[p].shape)
  )
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: " + ", ".join(missing))
  if extra:
    problems.append(f"{len(extra)} unexpected: " + ", ".join(extra))
  if mis_shaped:
    problems.append(f"{len(mis_shaped)} mis-shaped: " + "; ".join(mis_shaped))
  if problems:
    raise ConversionError(f"{what} does not match the model:\n  " + "\n  ".join(problems))
  # Copy: a torch tensor's `.numpy()` shares memory with the module it came from, and converted
  # parameters must not change when that module does.
  filled = {p: np.array(converted[p], dtype=flat_target[p].dtype, copy=True) for p in flat_target}
  return traverse_util.unflatten_dict(filled)


def convert_state_dict(
  state_dict: Mapping[str, Any],
  rules: Iterable[Callable[[str, np.ndarray], tuple[tuple[str, ...], np.ndarray] | None]],
  target: Any,
  *,
  what: str = "checkpoint",
) -> Any:
  """Converts a PyTorch state dict with an ordered rule list, then `strict_fill`s the target.

  Each rule maps `(torch_key, array)` to `(flax_path, array)` or returns None if it does not
  apply; the first rule that applies wins. A key no rule accepts is an error.
  """
  rules = list(rules)
  converted, source_keys, unmatched = {}, {}, []
  for key, tensor in state_dict.items():
    array = to_numpy(tensor)
    for rule in rules:
      result = rule(key, array)
      if result is not None:
        path, value = result
        if path in converted:
          raise ConversionError(
            f"{what}: keys {source_keys[path]!r} and {key!r} both map to {'/'.join(path)}"
          )
        converted[path], source_keys[path] = value, key
        break
    else:
      unmatched.append(key)
  if unmatched:
    raise ConversionError(f"{what}: {len(unmatched)} unexpected keys: " + ", ".join(unmatched))
  return strict_fill(converted, target, source_keys=source_keys, what=what)
