"""The official ScoreHMR checkpoint (`model-100.pt`) -> `jhmr.models.score_net.ScoreNet` params.

The file is a `torch.save` dict with `step`, `model`, `opt` and `ema`; inference uses `ema`, an
ema-pytorch state dict: `initted`, `step`, `ema_model.<GaussianDiffusion keys>` and (depending on
the ema-pytorch version) `online_model.<GaussianDiffusion keys>`. GaussianDiffusion holds the
network under `model.` plus 13 schedule buffers (research/scorehmr.md section 7).

Network keys map one to one (`blocks.0.block.linear_layer1.weight` -> `blocks_0/block/
linear_layer1/kernel`, transposed; LayerNorm `weight` -> `scale`); any missing, extra or
mis-shaped key raises `ConversionError`. The schedule buffers are checked against the cosine
schedule that `jhmr.diffusion` uses, so a checkpoint trained with another schedule is refused.
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
  DDPM_SCHEDULE_BUFFERS,
  ConversionError,
  convert_state_dict,
  linear_kernel,
  to_numpy,
)
from jhmr.convert.torch_io import load_torch_file
from jhmr.diffusion.schedules import make_alphas_cumprod
from jhmr.models.score_net import ScoreNet

SCHEDULE_BUFFERS = (*DDPM_SCHEDULE_BUFFERS, "p2_loss_weight")

_BLOCK = re.compile(r"^(blocks(?:_betas)?)\.(\d+)\.(.*)$")
_TIME = re.compile(r"^(time_mlp(?:_betas)?)\.([13])\.(weight|bias)$")


def _flax_path(key: str) -> tuple[str, ...] | None:
  """Torch FC key -> flax path (without the leaf rename), or None if the key is unknown."""
  if m := _TIME.match(key):
    return (m.group(1), m.group(2), m.group(3))
  if m := _BLOCK.match(key):
    head, rest = f"{m.group(1)}_{m.group(2)}", m.group(3)
    if rest in ("mlp.1.weight", "mlp.1.bias"):
      return (head, "mlp_1", rest.rsplit(".", 1)[1])
    parts = rest.split(".")
    if (
      len(parts) == 3
      and parts[0] == "block"
      and parts[1] in ("layer_norm1", "layer_norm2", "linear_layer1", "linear_layer2")
      and parts[2] in ("weight", "bias")
    ):
      return (head, *parts)
    return None
  parts = key.split(".")
  if len(parts) == 2 and parts[0] in (
    "init_mlp",
    "final_mlp",
    "init_mlp_betas",
    "final_mlp_betas",
  ):
    return tuple(parts)
  return None


def _rule(key: str, array: np.ndarray):
  path = _flax_path(key)
  if path is None:
    return None
  *module, leaf = path
  if leaf == "bias":
    return ("params", *module, "bias"), array
  if module[-1].startswith("layer_norm"):
    return ("params", *module, "scale"), array
  if array.ndim != 2:
    raise ConversionError(f"{key}: a Linear weight must be 2-D, got shape {array.shape}")
  return ("params", *module, "kernel"), linear_kernel(array)


def target_params(net: ScoreNet):
  """The parameter tree (ShapeDtypeStructs) `net` expects."""
  x = jnp.zeros((1, net.input_dim), jnp.float32)
  c = jnp.zeros((1, net.total_cond_dim), jnp.float32) if net.total_cond_dim else None
  return jax.eval_shape(net.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32), c)


def convert_network(state_dict: Mapping[str, Any], net: ScoreNet | None = None):
  """The official `FC` state dict (keys like `init_mlp.weight`) -> `{'params': ...}` for `net`.

  Raises:
    ConversionError: any unknown, missing or mis-shaped key.
  """
  net = net or ScoreNet()
  return convert_state_dict(state_dict, [_rule], target_params(net), what="ScoreHMR network")


def check_schedule(buffers: Mapping[str, Any], *, what: str = "checkpoint") -> None:
  """Raises unless `alphas_cumprod` is the cosine schedule (T=1000, s=0.008) jhmr samples with."""
  if "alphas_cumprod" not in buffers:
    raise ConversionError(f"{what}: no alphas_cumprod buffer")
  got = to_numpy(buffers["alphas_cumprod"]).astype(np.float64)
  want = make_alphas_cumprod("cosine", 1000)
  if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-7):
    raise ConversionError(
      f"{what}: alphas_cumprod {got.shape} is not the cosine T=1000 schedule jhmr uses"
    )


def convert_diffusion_state(state: Mapping[str, Any], net: ScoreNet | None = None, *, prefix=""):
  """A GaussianDiffusion state dict (under `prefix`) -> network params; checks the schedule.

  Every key under `prefix` must be `model.*` or one of the 13 schedule buffers.
  """
  sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
  if not sub:
    raise ConversionError(f"no keys under {prefix!r}; found e.g. {sorted(state)[:5]}")
  network = {k[len("model.") :]: v for k, v in sub.items() if k.startswith("model.")}
  buffers = {k: v for k, v in sub.items() if not k.startswith("model.")}
  unknown = sorted(set(buffers) - set(SCHEDULE_BUFFERS))
  if unknown:
    raise ConversionError(f"{len(unknown)} unexpected keys under {prefix!r}: {unknown}")
  missing = sorted(set(SCHEDULE_BUFFERS) - set(buffers))
  if missing:
    raise ConversionError(f"missing schedule buffers under {prefix!r}: {missing}")
  check_schedule(buffers, what=prefix or "state dict")
  return convert_network(network, net)


def convert_checkpoint(ckpt: Mapping[str, Any], net: ScoreNet | None = None, *, entry="ema"):
  """A loaded `model-100.pt` dict -> params of its `entry` ('ema', the default, or 'model')."""
  if entry not in ckpt:
    raise ConversionError(f"checkpoint has no {entry!r} entry; keys: {sorted(ckpt)}")
  state = ckpt[entry]
  if entry == "model":
    return convert_diffusion_state(state, net)
  allowed = {"initted", "step"}
  prefixes = ("ema_model.", "online_model.")
  stray = sorted(k for k in state if k not in allowed and not k.startswith(prefixes))
  if stray:
    raise ConversionError(f"unexpected keys in the EMA state: {stray}")
  return convert_diffusion_state(state, net, prefix="ema_model.")


def load_checkpoint(path: str | pathlib.Path, net: ScoreNet | None = None, *, entry="ema"):
  """Reads `model-100.pt` (restricted unpickler, `jhmr.convert.torch_pickle`, kind "scorehmr")
  and converts its `entry`."""
  return convert_checkpoint(load_torch_file(path, "scorehmr"), net, entry=entry)
