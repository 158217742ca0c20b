"""LoRA as a parameter-tree transform: no model code changes.

A LoRA tree mirrors the base parameter tree at the targeted Dense layers, holding
`lora_down [in, r]` and `lora_up [r, out]`; the effective kernel is
`kernel + scale * lora_down @ lora_up` (Hu et al. 2021; cloneofsimo's `lora_diffusion`, which
DPMesh uses with r = 64 and scale 1). Training keeps the base frozen:

  lora = init_lora(key, unet_params, LoRAConfig(rank=64))
  trainable = {'base': unet_params, 'lora': lora}
  tx = freeze_base(optax.adamw(1e-4), trainable)      # multi_transform: base gets zero updates
  loss = lambda t: f(model.apply({'params': merge(t['base'], t['lora'], cfg.scale)}, ...))

`merge` / `unmerge` fold the update into the kernels and back (for inference or export).
Targets are regular expressions matched against the '/'-joined module path of each Dense layer.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

# DPMesh / cloneofsimo default on the SD U-Net: every Linear of self- and cross-attention and the
# GEGLU input projection (the feed-forward output Linear is not adapted).
UNET_ATTENTION_AND_GEGLU = (
  r"(.*/)?attn[12]/(to_q|to_k|to_v|to_out_0)",
  r"(.*/)?ff/net_0/proj",
)
# diffusers' attention-processor LoRA (`load_attn_procs`, Diffusion-HPC's fine-tuned U-Nets).
UNET_ATTENTION = (r"(.*/)?attn[12]/(to_q|to_k|to_v|to_out_0)",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
  """rank r; scale multiplies `down @ up` (cloneofsimo: 1.0; diffusers: network_alpha / r);
  targets: regexes over Dense module paths ('down_blocks_0/attentions_0/.../attn1/to_q')."""

  rank: int = 4
  scale: float = 1.0
  targets: tuple[str, ...] = UNET_ATTENTION_AND_GEGLU

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")


def target_paths(params: Any, targets: tuple[str, ...]) -> list[tuple[str, ...]]:
  """Module paths (tuples) of the Dense layers whose '/'-joined path fully matches a target.

  Raises:
    ValueError: a target matches a non-Dense kernel (e.g. a conv), or nothing matches at all.
  """
  patterns = [re.compile(t) for t in targets]
  found = []
  for path, leaf in traverse_util.flatten_dict(_plain(params)).items():
    if path[-1] != "kernel":
      continue
    module = path[:-1]
    if not any(p.fullmatch("/".join(module)) for p in patterns):
      continue
    if len(leaf.shape) != 2:
      raise ValueError(f"LoRA target {'/'.join(module)} has a {len(leaf.shape)}-D kernel; only "
                       "Dense (2-D) kernels are supported")  # fmt: skip
    found.append(module)
  if not found:
    raise ValueError(f"LoRA targets {targets} match no Dense layer of the parameter tree")
  return sorted(found)


def init_lora(key: jax.Array, params: Any, config: LoRAConfig, dtype=jnp.float32) -> dict:
  """A LoRA tree for `params`: `lora_down ~ N(0, 1/r^2)` (std 1/r), `lora_up = 0`, so the
  adapted model starts exactly at the base model."""
  paths = target_paths(params, config.targets)
  flat = traverse_util.flatten_dict(_plain(params))
  out = {}
  for i, module in enumerate(paths):
    d_in, d_out = flat[(*module, "kernel")].shape
    k = jax.random.fold_in(key, i)
    out[(*module, "lora_down")] = jax.random.normal(k, (d_in, config.rank), dtype) / config.rank
    out[(*module, "lora_up")] = jnp.zeros((config.rank, d_out), dtype)
  return traverse_util.unflatten_dict(out)


def _delta(lora_flat, module, scale, dtype):
  down, up = lora_flat[(*module, "lora_down")], lora_flat[(*module, "lora_up")]
  return (scale * (down.astype(jnp.float32) @ up.astype(jnp.float32))).astype(dtype)


def _fold(params: Any, lora: Any, scale: float, sign: float) -> dict:
  flat = traverse_util.flatten_dict(_plain(params))
  lora_flat = traverse_util.flatten_dict(_plain(lora))
  modules = sorted({p[:-1] for p in lora_flat})
  for module in modules:
    if set(lora_flat) >= {(*module, "lora_down"), (*module, "lora_up")}:
      kernel_path = (*module, "kernel")
      if kernel_path not in flat:
        raise ValueError(f"LoRA layer {'/'.join(module)} has no kernel in the base parameters")
      kernel = flat[kernel_path]
      delta = _delta(lora_flat, module, scale, kernel.dtype)
      if delta.shape != kernel.shape:
        raise ValueError(
          f"LoRA layer {'/'.join(module)}: update {delta.shape} vs kernel {kernel.shape}"
        )
      flat[kernel_path] = kernel + sign * delta
    else:
      raise ValueError(f"LoRA layer {'/'.join(module)} needs both lora_down and lora_up")
  return traverse_util.unflatten_dict(flat)


def merge(params: Any, lora: Any, scale: float = 1.0) -> dict:
  """Base params with every adapted kernel replaced by `kernel + scale * down @ up`."""
  return _fold(params, lora, scale, 1.0)


def unmerge(params: Any, lora: Any, scale: float = 1.0) -> dict:
  """Inverse of `merge` (subtracts the same update; exact up to float rounding)."""
  return _fold(params, lora, scale, -1.0)


def trainable_mask(tree: dict) -> dict:
  """For `{'base': ..., 'lora': ...}`: a bool pytree, True on LoRA leaves, False on the base."""
  _check_split(tree)
  return {
    "base": jax.tree.map(lambda _: False, tree["base"]),
    "lora": jax.tree.map(lambda _: True, tree["lora"]),
  }


def freeze_base(tx: optax.GradientTransformation, tree: dict) -> optax.GradientTransformation:
  """`tx` on the LoRA leaves, zero updates on the base (optax.multi_transform).

  (`optax.masked(tx, mask)` alone is not enough: it passes masked-out gradients through
  unchanged, so `apply_updates` would still move the base.)
  """
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable_mask(tree))
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def count(lora: Any) -> int:
  """Number of LoRA parameters."""
  return sum(int(x.size) for x in jax.tree.leaves(lora))


def _check_split(tree):
  if not isinstance(tree, dict) or set(tree) != {"base", "lora"}:
    raise ValueError("expected a {'base': params, 'lora': lora_params} tree")


def _plain(tree):
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree
