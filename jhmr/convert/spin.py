"""SPIN's HMR (`data/model_checkpoint.pt`, `data/smpl_mean_params.npz`) -> jhmr `HMR`, and SPIN's
camera.

SPIN (nkolot/SPIN `models/hmr.py`) is torchvision's ResNet-50 (v1.5, stride on the 3x3) without
`fc`, `AvgPool2d(7, stride 1)` on the 7x7 map of a 224 input (= jhmr's global mean), and a head
run 3 times on xc = [xf, pose 144, shape 10, cam 3]: fc1 -> drop -> fc2 -> drop (no nonlinearity),
then residual updates from `decpose` / `decshape` / `deccam`, starting from the buffers
`init_pose` / `init_shape` / `init_cam` [1, n] -- exactly jhmr's `HMR` (`spin_hmr()`).

Key rule (the model is not wrapped, so there is no `module.` prefix):
  conv1 / bn1                              -> backbone/conv1, backbone/bn1
  layer{i}.{j}.{conv,bn}{k}                -> backbone/layer{i}_{j}/{conv,bn}{k}
  layer{i}.{j}.downsample.0 / .1           -> backbone/layer{i}_{j}/downsample_conv / downsample_bn
  fc1, fc2, decpose, decshape, deccam      -> regressor/fc1, fc2, dec_pose, dec_betas, dec_cam
  init_pose, init_shape, init_cam          -> HMR.mean_pose6d, mean_betas, mean_cam (module fields)
  conv `weight` -> `kernel` [kh, kw, I, O]; Linear `weight` -> `kernel` [I, O]; BN `weight` ->
  `scale`; BN `running_mean` / `running_var` -> batch_stats `mean` / `var`; every
  `num_batches_tracked` is skipped. Any other key, a missing key or a wrong shape raises
  `ConversionError` naming the PyTorch key.

6D layout. SPIN reads each joint's 6 numbers as `view(3, 2)`: a1 = x[0::2], a2 = x[1::2]; jhmr's
`HMR` (ScoreHMR / HMR 2.0) reads a1 = x[0:3], a2 = x[3:6]. The two differ by a fixed
permutation of the 6 entries, so the converter reorders the `decpose` rows and bias, the 144
pose columns of `fc1` and `init_pose` by `SPIN_TO_JHMR_6D` (jhmr entry k = SPIN entry
`SPIN_TO_JHMR_6D[k]`). Since the head is linear in the pose it feeds back, jhmr's `pose6d` is
SPIN's pose vector permuted and the rotation matrices are identical; no model option is needed.

Mean parameters. SPIN builds the model from `smpl_mean_params.npz` (keys `pose` 144, `shape` 10,
`cam` 3), then `load_state_dict(checkpoint['model'], strict=False)`, which overwrites the three
buffers with the checkpoint's. So here the state dict's `init_*` win; the npz fills in only the
buffers a state dict lacks (a buffer absent from both is a missing key).

Checkpoint file. `model_checkpoint.pt` is `torch.save({'model': state_dict, 'optimizer': Adam
state_dict, 'epoch', 'batch_idx', 'batch_size', 'dataset_perm' (a list of ints),
'total_step_count'})` (SPIN `utils/saver.py`): tensors, OrderedDicts and builtins only, so it is
read with `jhmr.convert.torch_io.load_torch_file(path, "tensors")` (the restricted unpickler; a
foreign global is refused by name). No new checkpoint kind is needed.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jhmr.convert.common import ConversionError, conv_kernel, linear_kernel, strict_fill, to_numpy
from jhmr.convert.torch_io import load_torch_file
from jhmr.geometry import cameras
from jhmr.models.hmr import HMR

CHECKPOINT_KIND = "tensors"  # a `jhmr.convert.torch_pickle.CHECKPOINT_KINDS` name
INPUT_SIZE = 224  # SPIN's AvgPool2d(7) needs a 7x7 final map; jhmr's mean pool takes any size
FOCAL_LENGTH = 5000.0  # SPIN's `constants.FOCAL_LENGTH`, in pixels of the 224 crop
NUM_POSE = 24 * 6
MEAN_PARAM_KEYS = {"pose": NUM_POSE, "shape": 10, "cam": 3}
_BUFFERS = {"init_pose": "pose", "init_shape": "shape", "init_cam": "cam"}

# jhmr 6D entry k (a1 = [0:3], a2 = [3:6]) = SPIN 6D entry SPIN_TO_JHMR_6D[k] (a1 = 0::2, a2 = 1::2)
SPIN_TO_JHMR_6D = (0, 2, 4, 1, 3, 5)
_POSE_INDEX = np.array([6 * j + k for j in range(24) for k in SPIN_TO_JHMR_6D])

_HEAD = {"fc1": "fc1", "fc2": "fc2", "decpose": "dec_pose", "decshape": "dec_betas"}
_HEAD["deccam"] = "dec_cam"
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias")}
_BN_LEAVES |= {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def spin_hmr(mean_params: Mapping[str, Any] | None = None) -> HMR:
  """jhmr's `HMR` configured as SPIN: ResNet-50 (width 64), 10 betas, 3 iterations, hidden 1024,
  dropout 0.5; input `INPUT_SIZE` (224) ImageNet-normalised RGB crops.

  Args:
    mean_params: optional `{'pose' (144, SPIN's 6D layout), 'shape' (10), 'cam' (3)}` (the npz
      contents); jhmr's defaults otherwise (use `convert_spin`'s model for SPIN's own values).
  """
  model = HMR(depth=50, width=64, num_betas=10, num_iterations=3, hidden=1024, dropout=0.5)
  if mean_params is None:
    return model
  return _with_means(model, {k: _mean_vector(mean_params, k) for k in MEAN_PARAM_KEYS})


def read_mean_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """`smpl_mean_params.npz` -> `{'pose' (144,), 'shape' (10,), 'cam' (3,)}` float32 (no pickles)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"SMPL mean parameters not found: {path}")
  with np.load(path, allow_pickle=False) as npz:
    missing = [k for k in MEAN_PARAM_KEYS if k not in npz.files]
    if missing:
      raise ConversionError(f"{path}: missing keys {missing}; has {sorted(npz.files)}")
    return {k: _mean_vector(npz, k) for k in MEAN_PARAM_KEYS}


def _mean_vector(source: Mapping[str, Any], key: str) -> np.ndarray:
  value = to_numpy(source[key]).astype(np.float32).reshape(-1)
  if value.shape != (MEAN_PARAM_KEYS[key],):
    raise ConversionError(
      f"mean parameter {key!r}: got {value.size} values, expected {MEAN_PARAM_KEYS[key]}"
    )
  return value


def _with_means(model: HMR, means: Mapping[str, np.ndarray]) -> HMR:
  """`model` with SPIN-layout mean parameters (pose permuted to jhmr's 6D layout)."""
  if means["shape"].size != model.num_betas:
    raise ConversionError(f"init_shape has {means['shape'].size} betas, model {model.num_betas}")
  return model.clone(
    mean_pose6d=tuple(float(v) for v in means["pose"][_POSE_INDEX]),
    mean_betas=tuple(float(v) for v in means["shape"]),
    mean_cam=tuple(float(v) for v in means["cam"]),
  )


def _backbone_path(names: list[str]) -> tuple[str, ...] | None:
  """`['layer2', '0', 'downsample', '1']` -> `('backbone', 'layer2_0', 'downsample_bn')`."""
  if names in (["conv1"], ["bn1"]):
    return ("backbone", names[0])
  if len(names) >= 3 and names[0].startswith("layer") and names[1].isdigit():
    block = f"{names[0]}_{names[1]}"
    rest = names[2:]
    if rest in (["downsample", "0"], ["downsample", "1"]):
      return ("backbone", block, "downsample_conv" if rest[1] == "0" else "downsample_bn")
    if len(rest) == 1:
      return ("backbone", block, rest[0])
  return None


def convert_spin(
  state_dict: Mapping[str, Any],
  mean_params: Mapping[str, Any] | str | os.PathLike | None = None,
  hmr: HMR | None = None,
) -> tuple[HMR, dict[str, Any]]:
  """A SPIN HMR state dict (`checkpoint['model']`) -> `(model, variables)` for jhmr's `HMR`.

  Args:
    state_dict: SPIN's keys (torch tensors or numpy arrays).
    mean_params: `smpl_mean_params.npz` (a path or its `{'pose', 'shape', 'cam'}` contents); used
      only for the `init_*` buffers the state dict lacks (see the module docstring).
    hmr: the architecture to fill (default `spin_hmr()`); its mean parameters are replaced.

  Returns:
    `model`: `hmr` with `mean_pose6d` / `mean_betas` / `mean_cam` from the buffers (pose in jhmr's
    6D layout); `variables`: `{'params', 'batch_stats'}` for `model.apply(variables, images)`.

  Raises:
    ConversionError: a missing, unexpected or mis-shaped key, named.
  """
  hmr = hmr or spin_hmr()
  if mean_params is not None and not isinstance(mean_params, Mapping):
    mean_params = read_mean_params(mean_params)
  converted: dict[tuple[str, ...], np.ndarray] = {}
  sources: dict[tuple[str, ...], str] = {}
  means: dict[str, np.ndarray] = {}
  unexpected = []
  arrays = {k: to_numpy(v) for k, v in state_dict.items()}
  for key, array in arrays.items():
    names = key.split(".")
    if names[-1] == "num_batches_tracked":
      continue
    if key in _BUFFERS:
      means[_BUFFERS[key]] = array
      continue
    module, leaf = names[:-1], names[-1]
    if len(module) == 1 and module[0] in _HEAD and leaf in ("weight", "bias"):
      value = linear_kernel(array) if leaf == "weight" and array.ndim == 2 else array
      if module[0] == "decpose" and value.shape[-1:] == (NUM_POSE,):
        value = value[..., _POSE_INDEX]  # output entries -> jhmr's 6D layout
      if module[0] == "fc1" and leaf == "weight" and value.ndim == 2:
        value = _permute_fc1_pose_rows(value, key)
      path = ("params", "regressor", _HEAD[module[0]], "kernel" if leaf == "weight" else "bias")
    else:
      base = _backbone_path(module)
      if base is None:
        unexpected.append(key)
        continue
      if base[-1].startswith("conv") or base[-1] == "downsample_conv":
        if leaf != "weight":
          unexpected.append(key)
          continue
        path, value = ("params", *base, "kernel"), conv_kernel(array) if array.ndim == 4 else array
      elif leaf in _BN_LEAVES:
        collection, name = _BN_LEAVES[leaf]
        path, value = (collection, *base, name), array
      else:
        unexpected.append(key)
        continue
    converted[path], sources[path] = value, key
  absent = []
  for buffer, name in _BUFFERS.items():
    if name not in means:
      if mean_params is None or name not in mean_params:
        absent.append(buffer)
      else:
        means[name] = mean_params[name]
  # the target's shapes do not depend on the mean parameters: `hmr` serves when some are absent
  target = jax.eval_shape(hmr.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  flat_target = traverse_util.flatten_dict(jax.tree.map(lambda x: x, dict(target)))
  missing = sorted(torch_key(p) for p in flat_target if p not in converted)
  problems = []
  if missing or absent:
    problems.append(f"{len(missing) + len(absent)} missing keys: {missing + absent}")
    if absent:
      problems[-1] += " (no smpl_mean_params given for the buffers)"
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected keys: {unexpected}")
  if problems:
    raise ConversionError("SPIN checkpoint does not match the model:\n  " + "\n  ".join(problems))
  model = _with_means(model=hmr, means={k: _mean_vector(means, k) for k in MEAN_PARAM_KEYS})
  variables = strict_fill(converted, target, source_keys=sources, what="SPIN checkpoint")
  return model, variables


def torch_key(path: tuple[str, ...]) -> str:
  """The inverse of the key rule: `('params', 'backbone', 'layer2_0', 'downsample_bn', 'scale')`
  -> `'layer2.0.downsample.1.weight'`."""
  _, top, *modules, leaf = path
  if top == "regressor":
    inverse = {v: k for k, v in _HEAD.items()}
    return f"{inverse[modules[0]]}.{'weight' if leaf == 'kernel' else 'bias'}"
  names = []
  for module in modules:
    if module in ("downsample_conv", "downsample_bn"):
      names += ["downsample", "0" if module == "downsample_conv" else "1"]
    else:
      names += module.split("_")
  leaves = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean"}
  return ".".join([*names, (leaves | {"var": "running_var"})[leaf]])


def _permute_fc1_pose_rows(kernel: np.ndarray, key: str) -> np.ndarray:
  """fc1 kernel [C + 157, H]: rows C..C+143 (the fed-back pose) -> jhmr's 6D layout."""
  features = kernel.shape[0] - NUM_POSE - 13
  if features < 0:
    raise ConversionError(f"SPIN checkpoint: {key} has {kernel.shape[0]} inputs, < 157")
  out = kernel.copy()
  out[features : features + NUM_POSE] = kernel[features + _POSE_INDEX]
  return out


def read_spin_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
  """`model_checkpoint.pt` -> its `model` state dict (numpy), read by the restricted unpickler."""
  checkpoint = load_torch_file(path, CHECKPOINT_KIND)
  if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
    keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ConversionError(f"{path}: not a SPIN checkpoint (no 'model' entry; has {keys})")
  return dict(checkpoint["model"])


def load_spin_checkpoint(
  path: str | os.PathLike,
  mean_params_path: str | os.PathLike | None = None,
  hmr: HMR | None = None,
) -> tuple[HMR, dict[str, Any]]:
  """SPIN's `model_checkpoint.pt` (+ optional `smpl_mean_params.npz`) -> `(model, variables)`."""
  return convert_spin(read_spin_checkpoint(path), mean_params_path, hmr)


def spin_camera_translation(cam, focal_length: float = FOCAL_LENGTH, crop_size: int = INPUT_SIZE):
  """SPIN / Diffusion-HPC crop camera: (s, tx, ty) -> t = (tx, ty, 2 f / (crop_size s + 1e-9)).

  The body translation for a renderer of the crop itself (`crop_size`^2, focal `focal_length`,
  principal point at the crop centre), as Diffusion-HPC's SPIN path renders its depth at 224
  with f = 5000 (its input is the whole image or the mask box, resized to 224).
  """
  return cameras.weak_perspective_to_translation(cam, focal_length, crop_size)


def spin_camera_to_full(cam, box_center, box_size, image_size, focal: float = FOCAL_LENGTH):
  """SPIN's crop camera (s, tx, ty) -> translation in the full image the square box was cut from.

  Args:
    cam: [..., 3] SPIN's weak-perspective camera on the crop.
    box_center: [..., 2] box centre (cx, cy) in full-image pixels.
    box_size: scalar or [...] box side in full-image pixels.
    image_size: [..., 2] full image (W, H).
    focal: focal length in full-image pixels, principal point at the image centre.

  With `box_size = crop_size`, `box_center = image_size / 2` this is `spin_camera_translation`.
  """
  return cameras.crop_to_full_translation(cam, box_center, box_size, image_size, focal)
