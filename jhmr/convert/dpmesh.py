"""DPMesh's official checkpoints and the SD 1.5 initialisation -> `jhmr` DPMesh variables.

(a) `convert_dpmesh_checkpoint` / `load_dpmesh_checkpoint`: the released
`checkpoints/{3dpw,3dpw-oc,3dpw-pc,3dpw-crowd}_best_ckpt.pth.tar` (research/dpmesh.md §17): a
DataParallel state dict (`module.` prefix, stripped), bare or wrapped as `{'network': ...}` (the
training save, with `epoch` / `optimizer` beside it) or `{'state_dict': ...}`. Keys of DPMesh's
`common/model.py` `Model` (after `module.`):

  backbone.sd_model.model.diffusion_model.*   U-Net, ldm names; the LoRA-injected Linears
                                              (cloneofsimo `lora_diffusion`, r 64, DPMesh issue #7)
                                              as `M.linear.{weight,bias}`, `M.lora_down.weight
                                              [r, in]`, `M.lora_up.weight [out, r]`
                                              -> `unet` (base W) and `unet_lora` (down/up)
  backbone.sd_model.control_model.*           ControlNet, cldm names, direct variant (no
                                              `input_hint_block`; `input_blocks.0.0` is the
                                              (4 + 30) -> 320 conv) -> `controlnet`
  backbone.sd_model.first_stage_model.*       VAE, ldm names: `encoder.*`, `quant_conv` -> `vae`;
                                              `post_quant_conv` / `decoder.*` / `loss.*` skipped
  backbone.outmodules.{0.0,0.1,0.3,1.0,2.0,2.1} fusion -> `fusion/outmodules_{i}_{j}`
  kp_lifting.{weight,bias}                    the released joint prompt -> `prompt/kp_lifting`
  everything else outside the parts below     regressor (`convert_dpmesh_regressor`, strict)
  vposer.vposer.bodyprior_*                   VPoser v1 (see below) -> `vposer`

Aliases: `VPDEncoder` registers the same modules twice (`encoder_vq` is
`sd_model.first_stage_model`, `unet.unet` is `sd_model`), so a full `state_dict()` repeats them as
`backbone.encoder_vq.*` and `backbone.unet.unet.*`. An alias is read as its canonical key; when
both are present they must hold equal values (else `ConversionError` naming both).

Skipped and listed in the result's `skipped` (no jhmr parameter): the diffusion schedule buffers
of `sd_model` (`betas`, `alphas_cumprod`, ..., `logvar`, `scale_factor`), `sd_model.model_ema.*`,
the frozen, never-called CLIP `sd_model.cond_stage_model.*`, the VAE decoder side, and the SMPL
layer buffers `human_model_layer.*` (jhmr loads SMPL from its own files). Any other key, and any
missing or mis-shaped weight of a part, raises `ConversionError` naming it.

VPoser v1: DPMesh's `Model.vposer` is a wrapper (`common/nets/module.py` `Vposer`) whose
`.vposer` is human_body_prior's cvpr19 `VPoser`, frozen; the checkpoint holds its whole state dict
(encoder, decoder, BatchNorm statistics) under `vposer.vposer.`. It is converted strictly by
`jhmr.convert.vposer_v1.convert_vposer_v1` (sizes of `vposer_model`, default the release's 512 /
32): `DPMeshCheckpoint.vposer_v1` holds the full `VPoserV1` variables, and `variables` puts the
decoder's params under `params/vposer`, the group a `DPMeshConfig(pose_decoder='vposer')` model
reads. A checkpoint without VPoser keys converts with a note (give the decoder with
`jhmr.models.dpmesh.with_pretrained(..., vposer=load_vposer_v1(snapshot))`); `vposer='error'`
refuses one that has them.

LoRA scale: `lora_diffusion` computes `W x + 1.0 * up(down(x))`; jhmr merges
`kernel + lora_scale * down @ up`, so `lora_up` is divided by `backbone_config.lora_scale`
(1.0 for DPMesh: unchanged).

(b) `init_from_sd15`: the backbone's parameters for training from scratch: VAE and U-Net from
SD 1.5 (a diffusers folder with `unet/` and `vae/`, or an ldm single file `.ckpt` /
`.safetensors` / `.pth`, e.g. lllyasviel's `control_sd15_openpose.pth`, which also holds the
openpose ControlNet), the ControlNet from ControlNet-openpose (diffusers folder or cldm single
file; None: the U-Net's encoder copy, as `ControlNetModel.from_unet`). The openpose ControlNet's
hint encoder (`controlnet_cond_embedding` / `input_hint_block`) is dropped and its `conv_in`
(cldm `control_model.input_blocks.0.0`, the conv DPMesh widens, notes §2) goes from 4 to 4 + 30
input channels: the 4 latent channels are copied, the 30 heatmap channels start at zero, so with
empty heatmaps the widened ControlNet computes what the openpose ControlNet computes with no hint.
(DPMesh's own commented-out init drops that conv and leaves it random; the paper's widening is
followed here.) LoRA: `init_lora` (down random, up zero: the adapted U-Net starts at SD 1.5);
prompt and fusion: their modules' initialisers.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jhmr.convert import diffusers_unet, diffusers_vae, torch_pickle
from jhmr.convert.common import (
  DDPM_SCHEDULE_BUFFERS,
  ConversionError,
  conv_kernel,
  convert_state_dict,
  linear_kernel,
  strict_fill,
  to_numpy,
)
from jhmr.convert.dpmesh_regressor import convert_dpmesh_regressor
from jhmr.convert.sd_single_file import (
  CONTROLNET_PREFIX,
  convert_ldm_controlnet,
  convert_ldm_unet,
  convert_ldm_unet_lora,
  convert_sd_checkpoint,
  ldm_vae_key,
  split_lora,
)
from jhmr.convert.torch_io import flat_arrays, load_torch_file
from jhmr.convert.vposer_v1 import convert_vposer_v1
from jhmr.models import lora as lora_lib
from jhmr.models.controlnet import ControlNetConfig
from jhmr.models.dpmesh_backbone import (
  DPMESH_RELEASED,
  DPMeshBackboneConfig,
  Fusion,
  JointPrompt,
  with_pretrained,
)
from jhmr.models.dpmesh_regressor import DPMESH_REGRESSOR_RELEASED, DPMeshRegressorConfig
from jhmr.models.vposer_v1 import VPOSER_V1, VPoserV1, decoder_variables

__all__ = [
  "DPMeshCheckpoint",
  "convert_dpmesh_checkpoint",
  "dpmesh_state_dict",
  "init_from_sd15",
  "load_dpmesh_checkpoint",
  "widen_conv_in",
]

SD = "backbone.sd_model."
UNET = SD + "model.diffusion_model."
CONTROLNET = SD + CONTROLNET_PREFIX
VAE = SD + "first_stage_model."
CLIP = SD + "cond_stage_model."
OUTMODULES = "backbone.outmodules."
PROMPT = "kp_lifting."
VPOSER = "vposer."
VPOSER_MODEL = VPOSER + "vposer."  # the `Vposer` wrapper's human_body_prior `VPoser`
SMPL_BUFFERS = "human_model_layer."
ALIASES = {"backbone.unet.unet.": SD, "backbone.encoder_vq.": VAE}
WRAPPERS = ("network", "state_dict", "model")

_SD_BUFFERS = frozenset(SD + b for b in (*DDPM_SCHEDULE_BUFFERS, "logvar", "scale_factor"))
_SKIPPED_PREFIXES = (CLIP, SD + "model_ema.", SMPL_BUFFERS)
_VAE_SKIPPED = re.compile(r"(post_quant_conv|decoder|loss)\.")
_OUTMODULE = re.compile(r"outmodules\.(\d+)\.(\d+)\.(weight|bias)")


@dataclasses.dataclass(frozen=True)
class DPMeshCheckpoint:
  """A converted DPMesh checkpoint (nested dicts of float32 numpy arrays).

  Attributes:
    backbone: `DPMeshBackbone` params `{'vae', 'unet', 'unet_lora', 'controlnet', 'prompt',
      'fusion'}`.
    regressor: `DPMeshRegressor` params (no `pose_decoder`).
    vposer_v1: the checkpoint's VPoser v1 as `VPoserV1` variables `{'params', 'batch_stats'}`,
      or None when the checkpoint has none.
    skipped: checkpoint keys deliberately not converted (see the module docstring).
    notes: what the caller must know (no VPoser in the checkpoint, aliases read).
  """

  backbone: dict
  regressor: dict
  vposer_v1: dict | None
  skipped: tuple[str, ...]
  notes: tuple[str, ...]

  @property
  def variables(self) -> dict:
    """`{'params': {'backbone', 'regressor'[, 'vposer']}}`: a `DPMesh` model's variables
    (`pose_decoder='vposer'` when the VPoser decoder is there)."""
    params = {"backbone": self.backbone, "regressor": self.regressor}
    if self.vposer_v1 is not None:
      params["vposer"] = decoder_variables(self.vposer_v1)["params"]
    return {"params": params}


def dpmesh_state_dict(
  state_dict: Mapping[str, Any], *, what: str = "DPMesh checkpoint"
) -> tuple[dict[str, np.ndarray], list[str]]:
  """The flat `{key: array}` of a DPMesh checkpoint: wrapper (`network` / `state_dict` /
  `model`) unwrapped, `module.` stripped, aliases resolved. Returns `(state, alias_keys)`.

  Raises:
    ConversionError: a non-array entry, two keys equal after stripping `module.`, or an alias
      whose value differs from its canonical key's.
  """
  for wrapper in WRAPPERS:
    if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
      state_dict = state_dict[wrapper]
      break
  state, origin = {}, {}
  for key, value in state_dict.items():
    if not hasattr(value, "shape"):
      raise ConversionError(f"{what}: entry {key!r} is no tensor ({type(value).__name__})")
    name = key.removeprefix("module.")
    if name in state:
      raise ConversionError(f"{what}: {origin[name]!r} and {key!r} are the same key")
    state[name], origin[name] = to_numpy(value), key
  aliases = []
  for key in [k for k in state if k.startswith(tuple(ALIASES))]:
    alias = next(a for a in ALIASES if key.startswith(a))
    canonical = ALIASES[alias] + key[len(alias) :]
    value = state.pop(key)
    aliases.append(key)
    if canonical not in state:
      state[canonical] = value
    elif state[canonical].shape != value.shape or not np.array_equal(state[canonical], value):
      raise ConversionError(f"{what}: {key!r} differs from {canonical!r} (the same module)")
  return state, aliases


def _strip(group: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix) :]: v for k, v in group.items()}


def _convert_vae(state, config: DPMeshBackboneConfig, what: str) -> dict:
  num_blocks = len(config.vae.block_out_channels)
  renamed, unknown = {}, []
  for key, value in state.items():
    new = ldm_vae_key(key, num_blocks)
    if new is None:
      unknown.append(VAE + key)
    else:
      renamed[new] = value
  if unknown:
    raise ConversionError(f"{what} (VAE): {len(unknown)} unexpected keys: " + ", ".join(unknown))
  shapes = diffusers_vae.vae_param_shapes(config.vae)
  target = {k: shapes[k] for k in ("encoder", "quant_conv")}
  return convert_state_dict(renamed, [diffusers_vae._vae_rule], target, what=f"{what} (VAE)")


def _fusion_shapes(config: DPMeshBackboneConfig) -> Any:
  s = config.latent_size
  inputs = tuple(
    jax.ShapeDtypeStruct((1, s // f, s // f, c), jnp.float32)
    for f, c in zip((8, 4, 2, 1), config.fusion_in_channels(), strict=True)
  )
  fusion = Fusion(config.fusion_channels, config.fusion_groups)
  return jax.eval_shape(fusion.init, jax.random.key(0), inputs)["params"]


def _prompt_module(config: DPMeshBackboneConfig):
  module = JointPrompt(config.token_dim, config.prompt, config.prompt_hidden)
  args = (jnp.zeros((1, config.num_joints, 2)), jnp.ones((1, config.num_joints), bool))
  return module, args


def _convert_fusion(state, config: DPMeshBackboneConfig, what: str) -> dict:
  converted, source, unknown = {}, {}, []
  for key, value in state.items():
    m = _OUTMODULE.fullmatch(key)
    if m is None:
      unknown.append(OUTMODULES + key[len("outmodules.") :])
      continue
    module = f"outmodules_{m[1]}_{m[2]}"
    if m[3] == "bias":
      path, value = (module, "bias"), value
    elif value.ndim == 4:
      path, value = (module, "kernel"), conv_kernel(value)
    else:  # GroupNorm
      path = (module, "scale")
    converted[path], source[path] = value, "backbone." + key
  if unknown:
    raise ConversionError(f"{what} (fusion): unexpected keys: " + ", ".join(unknown))
  return strict_fill(converted, _fusion_shapes(config), source_keys=source, what=f"{what} (fusion)")


def _convert_prompt(state, config: DPMeshBackboneConfig, what: str) -> dict:
  if config.prompt != "released":
    raise ConversionError(
      f"{what}: the checkpoint's joint prompt is `kp_lifting` (one Linear); convert it with a "
      f"backbone config whose prompt is 'released', not {config.prompt!r}"
    )
  converted, source = {}, {}
  for key, value in state.items():
    leaf = {"weight": "kernel", "bias": "bias"}.get(key)
    path = ("kp_lifting", leaf or key)
    converted[path] = linear_kernel(value) if leaf == "kernel" else value
    source[path] = PROMPT + key
  module, args = _prompt_module(config)
  target = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
  return strict_fill(converted, target, source_keys=source, what=f"{what} (prompt)")


def _convert_unet_and_lora(state, config: DPMeshBackboneConfig, what: str) -> tuple[dict, dict]:
  prefix = "model.diffusion_model."
  base, lora = split_lora({prefix + k: v for k, v in state.items()})
  unet = convert_ldm_unet(base, config.unet, prefix=prefix, what=f"{what} (U-Net)")
  tree = convert_ldm_unet_lora(lora, config.unet, prefix=prefix, what=f"{what} (U-Net LoRA)")
  if config.lora_scale == 0:
    raise ValueError("lora_scale 0 cannot represent lora_diffusion's scale-1 LoRA")
  flat = {
    p: (v / config.lora_scale if p[-1] == "lora_up" else v)
    for p, v in traverse_util.flatten_dict(tree).items()
  }
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), unet)
  target = jax.eval_shape(
    lambda: lora_lib.init_lora(jax.random.key(0), shapes, config.lora_config())
  )
  source = {p: f"{UNET}{'.'.join(p[:-1])}.{p[-1]} (LoRA)" for p in flat}
  lora_params = strict_fill(flat, target, source_keys=source, what=f"{what} (U-Net LoRA)")
  return unet, lora_params


def convert_dpmesh_checkpoint(
  state_dict: Mapping[str, Any],
  backbone_config: DPMeshBackboneConfig = DPMESH_RELEASED,
  regressor_config: DPMeshRegressorConfig = DPMESH_REGRESSOR_RELEASED,
  *,
  vposer: str = "convert",
  vposer_model: VPoserV1 = VPOSER_V1,
  what: str = "DPMesh checkpoint",
) -> DPMeshCheckpoint:
  """Converts an official DPMesh state dict (layout in the module docstring).

  Args:
    state_dict: torch tensors or numpy arrays by key, as saved (`module.`, optional wrapper).
    backbone_config: the backbone (released checkpoints: `DPMESH_RELEASED`, prompt 'released').
    regressor_config: the regressor (released: `DPMESH_REGRESSOR_RELEASED`); its `in_channels`
      must be the backbone's `fusion_channels`.
    vposer: 'convert' (the VPoser v1 keys, if any, strictly) or 'error' (refuse them).
    vposer_model: the VPoser v1 sizes to expect (release: `VPOSER_V1`); with the released
      regressor (`pose_tokens` 0) its latent size must be the regressor's `pose_code_dim`.
    what: the source's name in error messages.

  Raises:
    ConversionError: naming every unexpected key, and every missing or mis-shaped weight of
      each part (the first failing part's list); a mismatched alias; VPoser v1 keys with
      `vposer='error'`.
  """
  if vposer not in ("convert", "error"):
    raise ValueError(f"vposer must be 'convert' or 'error', got {vposer!r}")
  if regressor_config.in_channels != backbone_config.fusion_channels:
    raise ValueError(
      f"regressor in_channels {regressor_config.in_channels} != backbone fusion_channels "
      f"{backbone_config.fusion_channels}"
    )
  if regressor_config.pose_tokens == 0 and regressor_config.pose_code_dim != (
    vposer_model.latent_dim
  ):
    raise ValueError(
      f"regressor pose_code_dim {regressor_config.pose_code_dim} != the VPoser's latent size "
      f"{vposer_model.latent_dim}"
    )
  state, aliases = dpmesh_state_dict(state_dict, what=what)
  prefixes = {
    "unet": UNET,
    "controlnet": CONTROLNET,
    "vae": VAE,
    "fusion": "backbone.",
    "prompt": PROMPT,
    "vposer": VPOSER,
  }
  groups: dict[str, dict[str, np.ndarray]] = {k: {} for k in (*prefixes, "regressor")}
  skipped, unknown = [], []
  for key, value in state.items():
    if key in _SD_BUFFERS or key.startswith(_SKIPPED_PREFIXES):
      skipped.append(key)
    elif key.startswith(VAE) and _VAE_SKIPPED.match(key[len(VAE) :]):
      skipped.append(key)
    elif key.startswith(OUTMODULES):
      groups["fusion"][key[len("backbone.") :]] = value
    elif key.startswith("backbone."):
      part = next((p for p in ("unet", "controlnet", "vae") if key.startswith(prefixes[p])), None)
      if part is None:
        unknown.append(key)
      else:
        groups[part][key[len(prefixes[part]) :]] = value
    elif key.startswith(PROMPT):
      groups["prompt"][key[len(PROMPT) :]] = value
    elif key.startswith(VPOSER):
      groups["vposer"][key] = value
    else:
      groups["regressor"][key] = value
  if unknown:
    raise ConversionError(
      f"{what}: {len(unknown)} backbone keys of no known part: " + ", ".join(unknown)
    )
  for part in ("unet", "controlnet", "vae", "fusion", "prompt"):
    if not groups[part]:
      raise ConversionError(f"{what}: no {part} weights found ({prefixes[part]}*)")
  if groups["vposer"] and vposer == "error":
    raise ConversionError(
      f"{what}: {len(groups['vposer'])} VPoser v1 keys (vposer.*) and vposer='error'"
    )

  # Cheap parts first, so their errors come without tracing the U-Net.
  vposer_v1 = None
  if groups["vposer"]:
    vposer_v1 = convert_vposer_v1(
      groups["vposer"], vposer_model, prefix=VPOSER_MODEL, what=f"{what} (VPoser v1)"
    )
  prompt = _convert_prompt(groups["prompt"], backbone_config, what)
  fusion = _convert_fusion(groups["fusion"], backbone_config, what)
  side = backbone_config.attention_sizes[0]
  regressor = convert_dpmesh_regressor(
    groups["regressor"], regressor_config, feature_hw=(side, side), what=f"{what} (regressor)"
  )["params"]
  vae = _convert_vae(groups["vae"], backbone_config, what)
  controlnet = convert_ldm_controlnet(
    {CONTROLNET_PREFIX + k: v for k, v in groups["controlnet"].items()},
    backbone_config.controlnet,
    what=f"{what} (ControlNet)",
  )
  unet, unet_lora = _convert_unet_and_lora(groups["unet"], backbone_config, what)
  backbone = {
    "vae": vae,
    "unet": unet,
    "unet_lora": unet_lora,
    "controlnet": controlnet,
    "prompt": prompt,
    "fusion": fusion,
  }
  notes = []
  if vposer_v1 is None:
    notes.append(
      "no VPoser v1 (vposer.vposer.*) in the checkpoint: give a pose_decoder='vposer' model the "
      "decoder with `with_pretrained(..., vposer=jhmr.convert.vposer_v1.load_vposer_v1(path))`"
    )
  if aliases:
    notes.append(f"{len(aliases)} alias keys (backbone.encoder_vq.*, backbone.unet.unet.*) read")
  return DPMeshCheckpoint(backbone, regressor, vposer_v1, tuple(skipped), tuple(notes))


def load_dpmesh_checkpoint(path: str | pathlib.Path, *args, **kwargs) -> DPMeshCheckpoint:
  """`convert_dpmesh_checkpoint` on a `.pth.tar` / `.pth` / `.safetensors` file, read with jhmr's
  restricted unpickler (tensors, state dicts and builtins only: the `epoch` / `optimizer` entries
  of a training save qualify)."""
  path = pathlib.Path(path)
  if path.suffix == ".tar":  # `torch.save` format despite the name; load_torch_file keys on suffix
    state = torch_pickle.load_checkpoint(path, "tensors")
  else:
    state = load_torch_file(path, "tensors")
  return convert_dpmesh_checkpoint(state, *args, what=str(path), **kwargs)


# ----------------------------------------------------------------------------------------------
# (b) initialisation from SD 1.5 + ControlNet-openpose


def widen_conv_in(kernel: np.ndarray, in_channels: int) -> np.ndarray:
  """A conv kernel `[kh, kw, c, out]` -> `[kh, kw, in_channels, out]`: the `c` existing input
  channels copied, the new ones zero."""
  kernel = np.asarray(kernel)
  c = kernel.shape[2]
  if in_channels < c:
    raise ValueError(f"cannot widen a {c}-channel conv to {in_channels} channels")
  pad = np.zeros((*kernel.shape[:2], in_channels - c, kernel.shape[3]), kernel.dtype)
  return np.concatenate([kernel, pad], axis=2)


def _read_single_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  state = load_torch_file(path, "tensors")
  if "state_dict" in state and isinstance(state["state_dict"], Mapping):
    state = state["state_dict"]
  return flat_arrays(state)


def _openpose_config(config: DPMeshBackboneConfig) -> ControlNetConfig:
  return ControlNetConfig.from_unet(config.unet)  # 3-channel hint, lllyasviel's hint encoder


def _sd_parts(path: pathlib.Path, config: DPMeshBackboneConfig):
  """(unet params, vae params, cldm ControlNet entries of the same file or {})."""
  if path.is_dir():
    unet_cfg, unet = diffusers_unet.load_unet(path / "unet")
    vae_cfg, vae = diffusers_vae.load_vae(path / "vae")
    for name, got, want in (("unet", unet_cfg, config.unet), ("vae", vae_cfg, config.vae)):
      if got != want:
        raise ConversionError(f"{path / name}: config {got} is not the backbone's {want}")
    return unet, vae, {}
  state = _read_single_file(path)
  control = {k: v for k, v in state.items() if k.startswith(CONTROLNET_PREFIX)}
  rest = {k: v for k, v in state.items() if not k.startswith(CONTROLNET_PREFIX)}
  ckpt = convert_sd_checkpoint(
    rest,
    parts=("unet", "vae"),
    unet_config=config.unet,
    vae_config=config.vae,
    what=str(path),
  )
  return ckpt.unet, ckpt.vae, control


def _openpose_params(path, control_in_sd, config: DPMeshBackboneConfig) -> dict | None:
  if path is None:
    if not control_in_sd:
      return None
    return convert_ldm_controlnet(control_in_sd, _openpose_config(config), what="SD file")
  path = pathlib.Path(path)
  if path.is_dir():
    cn_cfg, params = diffusers_unet.load_controlnet(path)
    if cn_cfg.in_channels != config.controlnet.in_channels:
      raise ConversionError(
        f"{path}: latent channels {cn_cfg.in_channels}, expected {config.controlnet.in_channels}"
      )
    return params
  return convert_ldm_controlnet(_read_single_file(path), _openpose_config(config), what=str(path))


def init_from_sd15(
  sd_path_or_folder: str | pathlib.Path,
  controlnet_openpose_path: str | pathlib.Path | None = None,
  backbone_config: DPMeshBackboneConfig = DPMESH_RELEASED,
  *,
  key: jax.Array | None = None,
) -> dict:
  """DPMesh backbone params for training from SD 1.5 (see the module docstring, part (b)).

  Args:
    sd_path_or_folder: a diffusers SD folder (`unet/`, `vae/`) or an ldm single file (which may
      also hold a cldm ControlNet, as `control_sd15_openpose.pth`).
    controlnet_openpose_path: a diffusers ControlNet folder or a cldm single file; None: the
      ControlNet in the SD single file if any, else the U-Net's encoder copy.
    backbone_config: the backbone's sizes (must match the files).
    key: PRNG key for the LoRA down-weights, prompt and fusion (default `key(0)`).

  Returns:
    `{'vae', 'unet', 'unet_lora', 'controlnet', 'prompt', 'fusion'}` of numpy / jax arrays.

  Raises:
    ConversionError: a file does not match the backbone's config (named).
  """
  cfg = backbone_config
  key = jax.random.key(0) if key is None else key
  k_lora, k_prompt, k_fusion = jax.random.split(key, 3)
  unet, vae, control_in_sd = _sd_parts(pathlib.Path(sd_path_or_folder), cfg)
  openpose = _openpose_params(controlnet_openpose_path, control_in_sd, cfg)
  target = diffusers_unet.controlnet_param_shapes(cfg.controlnet)
  if openpose is None:
    source = {k: v for k, v in unet.items() if k in target}
  else:
    source = {k: v for k, v in openpose.items() if k != "controlnet_cond_embedding"}
  source = dict(source)
  conv_in = dict(source["conv_in"])
  conv_in["kernel"] = widen_conv_in(conv_in["kernel"], target["conv_in"]["kernel"].shape[2])
  source["conv_in"] = conv_in
  if openpose is None:  # zero convs of a fresh ControlNet
    for name, sub in target.items():
      if name.startswith("controlnet_") and name not in source:
        source[name] = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), sub)
  controlnet = strict_fill(
    traverse_util.flatten_dict(source),
    target,
    what=f"ControlNet from {controlnet_openpose_path or sd_path_or_folder}",
  )
  prompt, args = _prompt_module(cfg)
  s = cfg.latent_size
  fusion_inputs = tuple(
    jnp.zeros((1, s // f, s // f, c)) for f, c in zip((8, 4, 2, 1), cfg.fusion_in_channels())
  )
  params = {
    "vae": {},
    "unet": {},
    "unet_lora": lora_lib.init_lora(k_lora, unet, cfg.lora_config()),
    "controlnet": {},
    "prompt": prompt.init(k_prompt, *args)["params"],
    "fusion": Fusion(cfg.fusion_channels, cfg.fusion_groups).init(k_fusion, fusion_inputs)[
      "params"
    ],
  }
  return with_pretrained(params, vae=vae, unet=unet, controlnet=controlnet)
