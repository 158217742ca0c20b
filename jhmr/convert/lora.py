"""PyTorch LoRA weights on a diffusers-named U-Net -> a jhmr LoRA tree (`jhmr.models.lora`).

Accepted key layouts (one checkpoint may not mix them):
- diffusers attention processors (`unet.load_attn_procs`, e.g. Diffusion-HPC's fine-tuned SD):
  `<block>.attn1.processor.to_q_lora.down.weight` [r, in] / `.up.weight` [out, r]
  (`to_out_lora` adapts `to_out.0`);
- PEFT / diffusers >= 0.24: `[unet.]<module>.lora_A.weight` [r, in] / `.lora_B.weight` [out, r];
- cloneofsimo `lora_diffusion` names: `<module>.lora_down.weight` / `<module>.lora_up.weight`.

Every adapted module must exist in the base parameters as a Dense kernel of matching shape;
unknown keys, unpaired factors and shape mismatches raise `ConversionError`. The returned scale
is what the checkpoint implies (`alpha / r` when alphas are stored, else 1.0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jhmr.convert.common import ConversionError, to_numpy
from jhmr.convert.diffusers_unet import flax_path

_PATTERNS = (
  # (regex, factor group -> "down"/"up")
  (
    re.compile(r"^(?P<m>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora\.(?P<f>down|up)\.weight$")
  ),
  (re.compile(r"^(?:unet\.|base_model\.model\.)?(?P<m>.+)\.lora_(?P<f>A|B)\.weight$")),
  (re.compile(r"^(?P<m>.+)\.lora_(?P<f>down|up)\.weight$")),
)
_FACTOR = {"down": "lora_down", "up": "lora_up", "A": "lora_down", "B": "lora_up"}
_ALPHA = re.compile(r"^(?:unet\.)?(?P<m>.+)\.alpha$")


def _module_path(match: re.Match) -> tuple[str, ...]:
  module = match.group("m")
  if "p" in match.groupdict() and match.group("p"):
    proj = match.group("p")
    module = f"{module}.{'to_out.0' if proj == 'to_out' else proj}"
  return flax_path(module)


def convert_lora_state_dict(
  state_dict: Mapping[str, Any], base_params: Any, *, what: str = "LoRA checkpoint"
) -> tuple[dict, float]:
  """A LoRA state dict (layouts above) -> `(lora_tree, scale)` for `jhmr.models.lora.merge`.

  Args:
    base_params: the U-Net parameters (arrays or ShapeDtypeStructs) the LoRA adapts.
  """
  flat_base = traverse_util.flatten_dict(dict(base_params))
  factors: dict[tuple[str, ...], dict[str, np.ndarray]] = {}
  alphas: dict[tuple[str, ...], float] = {}
  unknown = []
  for key, value in state_dict.items():
    alpha = _ALPHA.match(key)
    if alpha:
      alphas[flax_path(alpha.group("m"))] = float(to_numpy(value))
      continue
    for pattern in _PATTERNS:
      m = pattern.match(key)
      if m:
        slot = factors.setdefault(_module_path(m), {})
        name = _FACTOR[m.group("f")]
        if name in slot:
          raise ConversionError(f"{what}: two {name} tensors for {'/'.join(_module_path(m))}")
        # torch [r, in] (down/A) -> [in, r]; torch [out, r] (up/B) -> [r, out]
        slot[name] = to_numpy(value).T
        break
    else:
      unknown.append(key)
  if unknown:
    raise ConversionError(f"{what}: {len(unknown)} unexpected keys: " + ", ".join(unknown))
  if not factors:
    raise ConversionError(f"{what}: no LoRA tensors found")
  problems, out = [], {}
  for module, slot in sorted(factors.items()):
    name = "/".join(module)
    if set(slot) != {"lora_down", "lora_up"}:
      problems.append(f"{name}: needs both lora_down and lora_up, got {sorted(slot)}")
      continue
    kernel = flat_base.get((*module, "kernel"))
    if kernel is None or len(kernel.shape) != 2:
      problems.append(f"{name}: no Dense kernel in the base parameters")
      continue
    down, up = slot["lora_down"], slot["lora_up"]
    if down.shape[1] != up.shape[0] or (down.shape[0], up.shape[1]) != tuple(kernel.shape):
      problems.append(f"{name}: down {down.shape} / up {up.shape} vs kernel {tuple(kernel.shape)}")
      continue
    out[(*module, "lora_down")] = down.astype(np.float32)
    out[(*module, "lora_up")] = up.astype(np.float32)
  if problems:
    raise ConversionError(f"{what} does not match the model:\n  " + "\n  ".join(problems))
  scale = 1.0
  if alphas:
    ranks = {out[(*m, "lora_down")].shape[1] for m in factors}
    values = set(alphas.values())
    if len(values) != 1 or len(ranks) != 1:
      raise ConversionError(f"{what}: per-layer alphas/ranks differ; only one scale is supported")
    scale = values.pop() / ranks.pop()
  return traverse_util.unflatten_dict(out), scale
