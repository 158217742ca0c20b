"""Image -> mesh without PyTorch: ViTPose keypoints, HMR 2.0 estimate, PARE features, ScoreHMR.

The library call (ScoreHMR's `demo_image.py`, research/scorehmr.md section 6):

  models = load_image_models(vitpose=..., hmr2=..., pare=..., pare_stats=..., score_hmr=...)
  result = image_to_mesh(image uint8 [H, W, 3], models, boxes=[[x1, y1, x2, y2], ...])
  result.refined.cam_t, result.refined_vertices [P, V, 3], result.keypoints [P, 25, 3], ...

Stages, each skipped when its output is given (its model may then be None in `ImageModels`):
  1. person boxes: given (`boxes` [P, 4] x1, y1, x2, y2 px), else the extent of the given
     keypoints, else ViTPose on the whole image (one person): the tight box of its keypoints with
     score > `ImageToMeshConfig.person_threshold` (0.3; at least `min_keypoints` = 4 of them),
     enlarged `box_expand` = 1.2 about its centre. No box and no confident keypoint -> InputError
     "no person found in <image>".
  2. keypoints (`keypoints` [P, 25, 3] OpenPose BODY_25 x, y, confidence px): ViTPose on the
     boxes (UDP crops 256x192, flip test, DARK-UDP decoding), COCO-17 -> BODY_25 slots
     (`to_openpose25`; neck, mid-hip and feet stay 0, as the demo).
  3. initial estimate (`initial`: `Estimate`): HMR 2.0 on its 256 crops (no blur, ScoreHMR's
     copy of the step), camera `cam_crop_to_full` at focal 5000 px with the principal point at
     the image centre (ScoreHMR's demo).
  4. features (`features` [P, C], standardised): PARE on ScoreHMR's 224 crops, `features` then
     `standardise` with `pare_feat_stats.npz`.
  5. `jhmr.guidance.refine(task="keypoints")` with the official keypoint settings (t* 50, step 2,
     10 iterations, weight 0.003) and no early stopping, as the image demo.
Every crop is a preset of `jhmr.data.crops` (one `warp_affine`).

`load_image_models` reads the released checkpoints (ViTPose-H `.pth`, HMR 2.0 `.ckpt`, PARE
`.ckpt`, `pare_feat_stats.npz`, ScoreHMR `model-100.pt`); `random_image_models` builds RANDOM
weights of any configs (tests, benchmarks, the program's default run): its outputs are not
estimates of anything.

The program (`config.program = "image_to_mesh"`, stage `all`; configs/image_to_mesh.py) runs the
call on an image or a folder and writes per image `overlay_<name>.png` (input | initial |
ScoreHMR), `meshes/<name>_<person>.obj` (refined, camera frame, metres), and one `results.npz`
(frame = image index, track_id = person index; `jhmr.io.results`) plus `summary.md`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import crops
from jhmr.errors import InputError
from jhmr.geometry import cameras, rotations
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import RefineConfig, RefineResult, refine, task_config
from jhmr.models import hmr2 as hmr2_lib
from jhmr.models import pare as pare_lib
from jhmr.models import vitpose as vitpose_lib
from jhmr.models.hrnet import HRNetConfig
from jhmr.models.score_net import ScoreNet
from jhmr.pipelines.scorehmr import refine_config_for
from jhmr.pipelines.stages import Stage

JOINT_SET = "openpose25"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
RANDOM_NOTE = "RANDOM WEIGHTS: not an estimate of anything (pass weights='official' and the files)"

# -- models -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelConfigs:
  """Architectures of the four networks and PARE's crop size."""

  vitpose: vitpose_lib.VitPoseConfig = vitpose_lib.VITPOSE_H
  hmr2: hmr2_lib.HMR2Config = hmr2_lib.HMR2_FULL
  pare: pare_lib.Pare = pare_lib.Pare()
  pare_size: int = pare_lib.INPUT_SIZE
  score_net: ScoreNet = ScoreNet()  # cond_dim 3072: PARE's pose features


OFFICIAL_CONFIGS = ModelConfigs()
_TINY_PARE = pare_lib.Pare(
  hrnet=HRNetConfig(widths=(4, 8, 12, 16), stem_width=8, layer1_blocks=1, num_modules=(1, 1, 1)),
  num_deconv_filters=8,
  num_features_smpl=4,
)
TINY_CONFIGS = ModelConfigs(
  vitpose=vitpose_lib.VITPOSE_TINY,
  hmr2=hmr2_lib.HMR2_TINY,
  pare=_TINY_PARE,
  pare_size=64,
  score_net=ScoreNet(cond_dim=8 * 24, hidden=16, num_blocks=1),
)
CONFIGS = {"official": OFFICIAL_CONFIGS, "tiny": TINY_CONFIGS}
_HMR2_READOUTS = ("decpose", "decshape", "deccam")


@dataclasses.dataclass(frozen=True)
class Net:
  """A Flax module with its variables."""

  module: Any
  variables: Any


@dataclasses.dataclass(frozen=True)
class ImageModels:
  """What `image_to_mesh` runs. A network may be None when its stage's output is always given.

  Attributes:
    vitpose, hmr2, pare: `Net`s (or None). pare_stats: `FeatureStats` (with pare).
    pare_size: PARE's crop side. score_params: the ScoreHMR network's parameters.
    body_model: the `jhmr.body.BodyModel` refined with.
    weights: 'official' (released checkpoints) or 'random' (RANDOM: outputs mean nothing).
    jit: compile the networks (worth it for the real ones; op by op is faster for tiny ones).
  """

  vitpose: Net | None
  hmr2: Net | None
  pare: Net | None
  pare_stats: pare_lib.FeatureStats | None
  pare_size: int
  score_params: Any
  body_model: Any
  weights: str = "official"
  jit: bool = True  # compile each network (False: op by op, no compilation)


def random_variables(module, *inputs, seed: int = 0, zero=()):
  """RANDOM variables of `module` for `inputs` without running its init (fast on a CPU: only
  the shapes, from `jax.eval_shape`): kernels N(0, 1 / fan_in), other weights N(0, 0.02^2),
  biases 0, norm scales 1, BatchNorm running mean 0 / var 1, other collections 0; parameters
  under a name in `zero` are zeros."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)

  def fill(path, leaf):
    names = [str(getattr(k, "key", k)) for k in path]
    shape, last = leaf.shape, names[-1]
    if names[0] == "batch_stats":
      return np.full(shape, 1.0 if last == "var" else 0.0, np.float32)
    if names[0] != "params":
      return np.zeros(shape, np.float32)
    if any(n in zero for n in names) or last == "bias":
      return np.zeros(shape, np.float32)
    if last == "scale":
      return np.ones(shape, np.float32)
    if last == "kernel" and len(shape) > 1:
      std = 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1]))))
    else:
      std = 0.02
    return (rng.standard_normal(shape) * std).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def random_image_models(
  configs: ModelConfigs = TINY_CONFIGS, seed: int = 0, body_model=None, jit: bool = False
):
  """`ImageModels` with RANDOM weights of `configs` (`random_variables`; tests, benchmarks, the
  program's default run): their outputs are not estimates of anything.

  HMR 2.0's readouts (decpose, decshape, deccam) are zeros, so its estimate is the mean-init
  body in front of the camera (random readouts can put it behind); PARE's statistics are
  mean 0, std 1. `jit=False` runs the networks op by op (no compilation: faster for tiny ones).
  """
  vp = vitpose_lib.VitPose(configs.vitpose)
  hmr = hmr2_lib.HMR2(configs.hmr2)
  size = configs.pare_size
  feat_dim = configs.pare.num_deconv_filters * hmr2_lib.NUM_JOINTS
  net = configs.score_net
  cond = jnp.zeros((1, net.cond_dim)) if net.cond_dim else None
  score_x = (jnp.zeros((1, net.pose_dim)), jnp.zeros((1,), jnp.int32), cond)
  score = random_variables(net, *score_x, seed=seed + 3)
  hmr_vars = random_variables(hmr, hmr.dummy_input(), seed=seed + 1, zero=_HMR2_READOUTS)
  head = configs.hmr2.head  # the mean-init buffers keep their config values
  mean_betas = head.mean_betas if head.mean_betas is not None else (0.0,) * head.num_betas
  hmr_vars["buffers"]["head"] = {
    "init_body_pose": np.asarray(head.mean_pose_6d, np.float32),
    "init_betas": np.asarray(mean_betas, np.float32),
    "init_cam": np.asarray(head.mean_cam, np.float32),
  }
  return ImageModels(
    vitpose=Net(vp, random_variables(vp, vp.dummy_input(), seed=seed)),
    hmr2=Net(hmr, hmr_vars),
    pare=Net(
      configs.pare, random_variables(configs.pare, jnp.zeros((1, size, size, 3)), seed=seed + 2)
    ),
    pare_stats=pare_lib.FeatureStats(np.zeros(feat_dim, np.float32), np.ones(feat_dim, np.float32)),
    pare_size=size,
    score_params=score,
    body_model=body_model if body_model is not None else load_body_model(),
    weights="random",
    jit=jit,
  )


def load_model_file(what: str, path, loader):
  """Runs `loader(path)`; a missing file or a checkpoint of another model -> InputError."""
  if not path or not pathlib.Path(path).is_file():
    raise InputError(f"{what}: file {str(path)!r} not found")
  try:
    return loader(path)
  except InputError as e:
    raise InputError(f"{path}: not a usable {what} ({e})") from e
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path}: not a {what} ({type(e).__name__}: {e})") from e


def load_image_models(
  *,
  vitpose,
  hmr2,
  pare,
  pare_stats,
  score_hmr,
  configs: ModelConfigs = OFFICIAL_CONFIGS,
  body_model=None,
) -> ImageModels:
  """The released checkpoints -> `ImageModels` (every path checked before anything is read).

  Args:
    vitpose: ViTPose-H `vitpose-h-multi-coco.pth` (or a transformers checkpoint).
    hmr2: HMR 2.0 `epoch=35-step=1000000.ckpt`. pare: `pare_checkpoint.ckpt`.
    pare_stats: `data/stats/pare_feat_stats.npz`. score_hmr: `model_weights/score_hmr/model-100.pt`.
    configs: the architectures (official by default). body_model: a `load_body_model` name/path
      (None: the free default body; SMPL is what the released model was trained with).

  Raises InputError naming the first missing file, or a file that is not the named model.
  """
  from jhmr.convert.hmr2 import load_hmr2_checkpoint  # noqa: PLC0415 (torch-file readers)
  from jhmr.convert.pare import load_pare_checkpoint  # noqa: PLC0415
  from jhmr.convert.scorehmr import load_checkpoint  # noqa: PLC0415
  from jhmr.convert.vitpose import load_vitpose_checkpoint  # noqa: PLC0415

  paths = dict(vitpose=vitpose, hmr2=hmr2, pare=pare, pare_stats=pare_stats, score_hmr=score_hmr)
  for name, path in paths.items():
    if not path or not pathlib.Path(path).is_file():
      raise InputError(f"checkpoints.{name}: file {str(path or '')!r} not found")
  c = configs
  vp_vars = load_model_file(
    "ViTPose checkpoint", vitpose, lambda p: load_vitpose_checkpoint(p, c.vitpose)
  )
  hmr_vars = load_model_file(
    "HMR 2.0 checkpoint", hmr2, lambda p: load_hmr2_checkpoint(p, c.hmr2.head, c.hmr2.vit)
  )
  pare_vars = load_model_file("PARE checkpoint", pare, lambda p: load_pare_checkpoint(p, c.pare))
  stats = load_model_file("PARE feature statistics", pare_stats, pare_lib.load_feature_stats)
  score = load_model_file(
    "ScoreHMR checkpoint", score_hmr, lambda p: load_checkpoint(p, c.score_net)
  )
  return ImageModels(
    vitpose=Net(vitpose_lib.VitPose(c.vitpose), vp_vars),
    hmr2=Net(hmr2_lib.HMR2(c.hmr2), hmr_vars),
    pare=Net(c.pare, pare_vars),
    pare_stats=stats,
    pare_size=c.pare_size,
    score_params=score,
    body_model=load_body_model(body_model),
    weights="official",
  )


# -- the call -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageToMeshConfig:
  """Settings of `image_to_mesh` (defaults: ScoreHMR's image demo)."""

  focal_length: float = hmr2_lib.FOCAL_LENGTH  # 5000 px, principal point at the image centre
  person_threshold: float = 0.3  # keypoint score counted in a person's extent (no boxes)
  min_keypoints: int = 4  # confident keypoints needed for a person
  box_expand: float = 1.2  # the extent's enlargement about its centre
  flip_test: bool = True  # ViTPose's flip test
  hmr2_blur: bool = False  # 4D-Humans' blur (ScoreHMR's demo does not blur)
  refine: RefineConfig = dataclasses.field(
    default_factory=lambda: task_config("keypoints").replace(early_stopping=False)
  )


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Body parameters of P people: `pose` [P, 24, 3, 3] rotations (global orient first, camera
  frame), `betas` [P, NB], `cam_t` [P, 3] metres (camera R = I, OpenCV axes)."""

  pose: np.ndarray
  betas: np.ndarray
  cam_t: np.ndarray


@dataclasses.dataclass(frozen=True)
class ImageResult:
  """One image's people (P rows each).

  Attributes:
    boxes: [P, 4] (x1, y1, x2, y2) px. keypoints: [P, 25, 3] BODY_25 (x, y, confidence) px.
    features: [P, C] standardised image features. initial, refined: `Estimate`s.
    initial_vertices, refined_vertices: [P, V, 3] camera-frame metres.
    image_size: (W, H). focal_length: px. refinement: the `RefineResult`. weights: the models'.
  """

  boxes: np.ndarray
  keypoints: np.ndarray
  features: np.ndarray
  initial: Estimate
  refined: Estimate
  initial_vertices: np.ndarray
  refined_vertices: np.ndarray
  image_size: tuple[int, int]
  focal_length: float
  refinement: RefineResult
  weights: str


def _apply_fn(module, variables, x, flip_test=None):
  kwargs = {} if flip_test is None else {"flip_test": flip_test}
  return module.apply(variables, x, **kwargs)


_apply_jit = jax.jit(_apply_fn, static_argnames=("module", "flip_test"))


def _apply(net: Net, x, jit: bool, flip_test=None):
  return (_apply_jit if jit else _apply_fn)(net.module, net.variables, x, flip_test)


def check_input(what: str, crops_: np.ndarray, size_hw) -> None:
  """InputError unless `crops_` is [B, h, w, 3] with (h, w) = `size_hw`, naming the model."""
  shape = np.shape(crops_)
  if len(shape) != 4 or tuple(shape[1:]) != (*size_hw, 3):
    raise InputError(
      f"{what} takes crops of {size_hw[0]}x{size_hw[1]}x3 (h x w x 3), got shape {shape}"
    )


def _need(net, stage: str, skip: str):
  if net is None:
    raise InputError(f"no {stage} model in ImageModels: give {skip} or load the model")
  return net


def run_vitpose(net: Net, image, boxes, flip_test: bool = True, jit: bool = True):
  """ViTPose on person boxes [P, 4] (x1, y1, x2, y2) -> BODY_25 keypoints [P, 25, 3] px."""
  config = net.module.config
  xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
  center, scale = vitpose_lib.boxes_to_center_scale(xywh, config.vit.img_size)
  x = crops.crop_for_vitpose(image, center, scale, config.vit.img_size)
  check_input("ViTPose", x, config.vit.img_size)
  heatmaps = _apply(net, jnp.asarray(x), jit, flip_test)
  coco = vitpose_lib.decode_heatmaps(heatmaps, center, scale)
  return np.asarray(vitpose_lib.to_openpose25(coco), np.float32)


def run_hmr2(net: Net, image, boxes, focal_length: float, blur=False, jit=True) -> Estimate:
  """HMR 2.0 on person boxes [P, 4] -> `Estimate` in the full image (`cam_crop_to_full`)."""
  h, w = net.module.config.vit.img_size
  size = h
  cs = [crops.crop_for_hmr2(image, b, blur=blur, size=size) for b in boxes]
  x = np.stack([c.image for c in cs])
  check_input("HMR 2.0 (square crop)", x, (size, size))
  x = hmr2_lib.hmr2_input(jnp.asarray(x))
  check_input("HMR 2.0", x, (h, w))
  out = _apply(net, x, jit)
  cam = np.asarray(out.cam, np.float64)
  bad = np.flatnonzero(~(cam[:, 0] > 0))
  if len(bad):
    raise InputError(f"HMR 2.0 put person {int(bad[0])} behind the camera (scale {cam[bad[0], 0]})")
  cam_t = hmr2_lib.cam_crop_to_full(
    cam,
    np.stack([c.box_center for c in cs]),
    np.array([c.box_size for c in cs]),
    np.stack([c.image_size for c in cs]),
    focal_length,
  )
  return Estimate(np.asarray(out.rotmat), np.asarray(out.betas), np.asarray(cam_t, np.float32))


def run_pare(net: Net, stats, image, boxes, size: int, jit: bool = True) -> np.ndarray:
  """PARE on person boxes [P, 4] -> standardised ScoreHMR features [P, C]."""
  if size % 32:
    raise InputError(f"PARE takes square crops whose side is a multiple of 32, got {size}")
  x = np.stack([crops.crop_for_pare(image, b, size) for b in boxes])
  check_input("PARE", x, (size, size))
  out = _apply(net, jnp.asarray(x), jit)
  return np.asarray(pare_lib.standardise(pare_lib.features(out), stats), np.float32)


def keypoint_boxes(keypoints, threshold: float, min_keypoints: int, expand: float, name: str):
  """Person boxes [P, 4] from keypoints [P, K, 3]: the tight box of the points with score >
  `threshold`, enlarged `expand` about its centre; InputError if a person has < `min_keypoints`
  such points ("no person found in <name>")."""
  boxes = []
  for p, kp in enumerate(np.asarray(keypoints, np.float64)):
    seen = kp[kp[:, 2] > threshold, :2]
    if len(seen) < max(1, min_keypoints):
      raise InputError(
        f"no person found in {name}: person {p} has {len(seen)} keypoints with score > "
        f"{threshold} (needs {min_keypoints}); give boxes"
      )
    lo, hi = seen.min(0), seen.max(0)
    c, half = (lo + hi) / 2, np.maximum((hi - lo) * expand / 2, 1.0)
    boxes.append(np.concatenate([c - half, c + half]))
  return np.asarray(boxes, np.float64).reshape(-1, 4)


def _rows(name: str, x, p: int | None, tail: tuple, what: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 1 + len(tail) or (p is not None and x.shape[0] != p):
    want = f"[{p if p is not None else 'P'}, {', '.join(map(str, tail))}]"
    raise InputError(f"{name}: {what} must be {want}, got shape {x.shape}")
  if tail and any(t is not None and s != t for s, t in zip(x.shape[1:], tail)):
    raise InputError(f"{name}: {what} must be [P, {', '.join(map(str, tail))}], got {x.shape}")
  return x


def image_to_mesh(
  image: np.ndarray,
  models: ImageModels,
  *,
  boxes=None,
  keypoints=None,
  initial: Estimate | None = None,
  features=None,
  config: ImageToMeshConfig | None = None,
  name: str = "the image",
) -> ImageResult:
  """One image -> the refined meshes of its people (see the module docstring for the stages).

  Args:
    image: uint8 RGB [H, W, 3].
    models: `ImageModels` (a network may be None when its stage's output is given).
    boxes: [P, 4] (x1, y1, x2, y2) px, or None.
    keypoints: [P, 25, 3] BODY_25 (x, y, confidence) px, or None (ViTPose).
    initial: `Estimate` of P people, or None (HMR 2.0).
    features: [P, C] standardised features, or None (PARE).
    config: `ImageToMeshConfig` (default: ScoreHMR's image demo).
    name: the image's name in error messages.

  Raises:
    InputError: a bad image, no person, a box outside the image, inputs of different P, a
      missing model for a stage that must run, a wrong-size crop for a model.
  """
  config = config or ImageToMeshConfig()
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or 0 in image.shape:
    raise InputError(
      f"{name}: the image must be uint8 RGB [H, W, 3], got {image.dtype} {image.shape}"
    )
  height, width = image.shape[:2]
  p = None
  if keypoints is not None:
    keypoints = _rows(name, keypoints, None, (25, 3), "keypoints (BODY_25)")
    p = len(keypoints)
  if boxes is not None:
    boxes = _rows(name, boxes, p, (4,), "boxes (x1, y1, x2, y2)").astype(np.float64)
    boxes = np.stack([crops.check_box(b, (width, height)) for b in boxes]).reshape(-1, 4)
    p = len(boxes)
  elif keypoints is not None:
    boxes = keypoint_boxes(
      keypoints, config.person_threshold, config.min_keypoints, config.box_expand, name
    )
  else:
    net = _need(models.vitpose, "ViTPose", "boxes or keypoints")
    whole = np.array([[0.0, 0.0, width, height]])
    found = run_vitpose(net, image, whole, config.flip_test, models.jit)
    boxes = keypoint_boxes(
      found, config.person_threshold, config.min_keypoints, config.box_expand, name
    )
    boxes = np.clip(boxes, 0, [width, height, width, height])
    boxes = np.stack([crops.check_box(b, (width, height)) for b in boxes])
  p = len(boxes)
  if p == 0:
    raise InputError(f"no person found in {name}: no boxes")
  if keypoints is None:
    net = _need(models.vitpose, "ViTPose", "keypoints")
    keypoints = run_vitpose(net, image, boxes, config.flip_test, models.jit)
  if initial is None:
    net = _need(models.hmr2, "HMR 2.0", "initial")
    initial = run_hmr2(net, image, boxes, config.focal_length, config.hmr2_blur, models.jit)
  initial = Estimate(
    _rows(name, initial.pose, p, (24, 3, 3), "initial.pose"),
    _rows(name, initial.betas, p, (None,), "initial.betas"),
    _rows(name, initial.cam_t, p, (3,), "initial.cam_t"),
  )
  if features is None:
    net = _need(models.pare, "PARE", "features")
    if models.pare_stats is None:
      raise InputError("ImageModels.pare_stats is missing: PARE features need the statistics")
    features = run_pare(net, models.pare_stats, image, boxes, models.pare_size, models.jit)
  features = _rows(name, features, p, (None,), "features")

  body_model = models.body_model
  nb = body_model.num_betas
  betas = np.pad(initial.betas, ((0, 0), (0, max(0, nb - initial.betas.shape[1]))))[:, :nb]
  try:
    obs = Observation.create(
      initial.pose, betas, initial.cam_t, keypoints[..., :2], keypoints[..., 2],
      image_size=(width, height), focal_length=config.focal_length, features=features,
      group=np.arange(p), body_model=body_model,
    )  # fmt: skip
    result = refine(models.score_params, obs, task="keypoints", config=config.refine)
  except InputError:
    raise
  except ValueError as e:
    raise InputError(f"{name}: {e}") from e
  refined = Estimate(
    np.asarray(result.pose), np.asarray(result.betas), np.asarray(result.cam_t, np.float32)
  )
  return ImageResult(
    boxes=np.asarray(boxes, np.float32),
    keypoints=keypoints,
    features=features,
    initial=Estimate(np.asarray(obs.init_pose), np.asarray(obs.init_betas), initial.cam_t),
    refined=refined,
    initial_vertices=_vertices(body_model, Estimate(obs.init_pose, obs.init_betas, initial.cam_t)),
    refined_vertices=_vertices(body_model, refined),
    image_size=(width, height),
    focal_length=float(config.focal_length),
    refinement=result,
    weights=models.weights,
  )


def _axis_angle(pose) -> np.ndarray:
  return np.asarray(rotations.matrix_to_axis_angle(jnp.asarray(pose)), np.float32)


def _vertices(body_model, est: Estimate) -> np.ndarray:
  from jhmr.body.posing import posed_vertices  # noqa: PLC0415

  aa = _axis_angle(est.pose)
  return posed_vertices(body_model, aa[:, 0], aa[:, 1:], est.betas, est.cam_t)


# -- the program --------------------------------------------------------------------------------


def _image_files(path: str) -> list[pathlib.Path]:
  p = pathlib.Path(path)
  if p.is_file():
    return [p]
  if p.is_dir():
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if files:
      return files
    raise InputError(f"config.inputs.images: no {'/'.join(IMAGE_SUFFIXES)} image in {p}")
  raise InputError(f"config.inputs.images: {path!r} not found")


def _read_boxes(path: str) -> dict[str, np.ndarray]:
  if not path:
    return {}
  p = pathlib.Path(path)
  if not p.is_file():
    raise InputError(f"config.inputs.boxes: {path!r} not found")
  try:
    data = json.loads(p.read_text())
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: not a JSON file ({e})") from None
  if not isinstance(data, dict):
    raise InputError(f"{path}: expected {{image name: [[x1, y1, x2, y2], ...]}}")
  out = {}
  for key, value in data.items():
    arr = np.asarray(value, np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
      raise InputError(f"{path}: boxes of {key!r} must be [[x1, y1, x2, y2], ...]")
    out[str(key)] = arr
  return out


def _read_keypoints(path: str) -> dict[str, np.ndarray]:
  if not path:
    return {}
  from jhmr.io import joint_maps, keypoints  # noqa: PLC0415

  if not pathlib.Path(path).is_dir():
    raise InputError(f"config.inputs.keypoints: {path!r} is not an OpenPose JSON folder")
  frames = keypoints.read_openpose(path)
  kp = np.asarray(joint_maps.convert(frames.keypoints, frames.joint_set, JOINT_SET), np.float32)
  out = {}
  for i, f in enumerate(frames.paths):
    stem = pathlib.Path(f).name.removesuffix(".json").removesuffix("_keypoints")
    out[stem] = kp[i, : frames.num_people[i]]
  return out


def _lookup(table: dict, image: pathlib.Path):
  return table.get(image.name, table.get(image.stem))


def example_image(workdir: pathlib.Path, config) -> tuple[str, str]:
  """The default input: one frame of `refine_example`'s clip of the free body, as example/
  image.png, with its people's boxes (from the clip's keypoints) in example/boxes.json."""
  from jhmr.io import video as video_io  # noqa: PLC0415
  from jhmr.pipelines import refine_example  # noqa: PLC0415 (renders: only for the example)

  ex = config.example
  files = refine_example.make_example(
    workdir / "example" / "clip", body_model=config.body_model, num_people=ex.num_people,
    num_frames=2, image_size=tuple(ex.image_size), seed=config.seed,
  )  # fmt: skip
  frames, _ = video_io.read_video_or_images(files.video)
  kp = _read_keypoints(str(files.openpose_dir))
  people = kp[sorted(kp)[0]]
  boxes = keypoint_boxes(people, 0.0, 1, 1.2, "the example")
  boxes = np.clip(boxes, 0, [*ex.image_size, *ex.image_size])
  image = workdir / "example" / "image.png"
  from PIL import Image  # noqa: PLC0415

  Image.fromarray(frames[0]).save(image)
  box_file = workdir / "example" / "boxes.json"
  box_file.write_text(json.dumps({"image.png": boxes.tolist()}))
  return str(image), str(box_file)


def models_from_config(config) -> ImageModels:
  """`config.weights`: 'official' (config.checkpoints.*) or 'random' (config.random_configs)."""
  if config.weights == "random":
    logging.warning("image_to_mesh: %s", RANDOM_NOTE)
    return random_image_models(
      CONFIGS[config.random_configs], config.seed, load_body_model(config.body_model)
    )
  if config.weights != "official":
    raise InputError(f"config.weights must be 'official' or 'random', got {config.weights!r}")
  c = config.checkpoints
  return load_image_models(
    vitpose=c.vitpose, hmr2=c.hmr2, pare=c.pare, pare_stats=c.pare_stats,
    score_hmr=c.score_hmr, body_model=config.body_model,
  )  # fmt: skip


def _overlay(image, res: ImageResult, faces, title: str) -> np.ndarray:
  from PIL import Image, ImageDraw  # noqa: PLC0415

  from jhmr.render.people import person_colors, render_people  # noqa: PLC0415

  h, w = image.shape[:2]
  p = res.refined_vertices.shape[0]
  panels = [image]
  for verts in (res.initial_vertices, res.refined_vertices):
    out = render_people(
      jnp.asarray(verts)[None], jnp.ones((1, p), bool), faces,
      jnp.full((1, 2), res.focal_length), jnp.asarray([[w / 2, h / 2]]),
      jnp.asarray(image)[None], person_colors(p), image_size=(h, w),
    )  # fmt: skip
    panels.append(np.asarray(out[0]))
  strip = np.concatenate(panels, 1)
  bar = Image.new("RGB", (strip.shape[1], 14), (0, 0, 0))
  ImageDraw.Draw(bar).text((2, 1), title, fill=(255, 80, 80) if "RANDOM" in title else "white")
  return np.concatenate([np.asarray(bar), strip], 0)


def _results(rows: list, body_model, metadata):
  from jhmr.io import results as results_lib  # noqa: PLC0415

  frame = np.concatenate([np.full(len(r.boxes), i) for i, r in rows])
  track = np.concatenate([np.arange(len(r.boxes)) for _, r in rows])
  pose = np.concatenate([_axis_angle(r.refined.pose) for _, r in rows])
  betas = np.concatenate([r.refined.betas for _, r in rows])
  cam_t = np.concatenate([r.refined.cam_t for _, r in rows])
  size = np.concatenate([np.tile(r.image_size, (len(r.boxes), 1)) for _, r in rows])
  focal = np.concatenate([np.full((len(r.boxes), 2), r.focal_length) for _, r in rows])
  kp = np.concatenate([r.keypoints for _, r in rows])
  out = body_model.joints_only(
    jnp.asarray(betas), jnp.asarray(pose[:, 1:]), jnp.asarray(pose[:, 0]), joint_set=JOINT_SET
  )
  shift = cam_t[:, None]
  return results_lib.Results(
    track_id=track, frame=frame, global_orient=pose[:, 0], body_pose=pose[:, 1:], betas=betas,
    cam_t=cam_t, intrinsics=np.asarray(cameras.intrinsics_matrix(focal, size / 2)),
    image_size=size.astype(np.int32),
    joints={"smpl24": np.asarray(out.joints) + shift, JOINT_SET: np.asarray(out.keypoints) + shift},
    keypoints_2d={JOINT_SET: kp}, metadata=metadata,
  )  # fmt: skip


def run(config, workdir) -> dict:
  """Reads the images (or makes the example), runs `image_to_mesh` on each, writes the outputs;
  returns {'images': [...], 'people': P total, 'weights': ..., 'summary': path}."""
  from jhmr.data.crops import read_image  # noqa: PLC0415
  from jhmr.io import results as results_lib  # noqa: PLC0415
  from jhmr.render.mesh_io import export_obj  # noqa: PLC0415

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  images_path, boxes_path = config.inputs.images, config.inputs.boxes
  if not images_path:
    if config.weights != "random":
      raise InputError("config.inputs.images is required with weights='official'")
    images_path, boxes_path = example_image(workdir, config)
  files = _image_files(images_path)
  boxes, kps = _read_boxes(boxes_path), _read_keypoints(config.inputs.keypoints)
  models = models_from_config(config)
  call_config = ImageToMeshConfig(refine=refine_config_for("keypoints", config.refine.to_dict()))
  title = ("RANDOM WEIGHTS - NOT A REAL ESTIMATE | " if models.weights == "random" else "") + (
    "input | initial | ScoreHMR"
  )
  faces = np.asarray(models.body_model.faces)
  rows, lines = [], []
  (workdir / "meshes").mkdir(exist_ok=True)
  for i, f in enumerate(files):
    try:
      image = read_image(f)
    except ValueError as e:
      raise InputError(str(e)) from None
    res = image_to_mesh(
      image, models, boxes=_lookup(boxes, f), keypoints=_lookup(kps, f), config=call_config,
      name=str(f),
    )  # fmt: skip
    rows.append((i, res))
    overlay = _overlay(image, res, faces, title)
    from PIL import Image  # noqa: PLC0415

    Image.fromarray(overlay).save(workdir / f"overlay_{f.stem}.png")
    for k, verts in enumerate(res.refined_vertices):
      export_obj(workdir / "meshes" / f"{f.stem}_{k}.obj", verts, faces)
    lines.append(f"- {f.name}: {len(res.boxes)} people")
  metadata = results_lib.make_metadata(
    "image_to_mesh", config=config.to_dict(), body_model=config.body_model,
    note=RANDOM_NOTE if models.weights == "random" else "", weights=models.weights,
    images=[str(f) for f in files],
  )  # fmt: skip
  results_lib.save_results(workdir / "results.npz", _results(rows, models.body_model, metadata))
  header = f"**{RANDOM_NOTE}**\n\n" if models.weights == "random" else ""
  summary = workdir / "summary.md"
  summary.write_text(f"# image_to_mesh ({models.weights} weights)\n\n{header}" + "\n".join(lines))
  msg = (
    f"image_to_mesh: {len(files)} images, {sum(len(r.boxes) for _, r in rows)} people -> {workdir}"
  )
  print(msg + (f"  [{RANDOM_NOTE}]" if models.weights == "random" else ""))
  return {
    "images": [str(f) for f in files],
    "people": sum(len(r.boxes) for _, r in rows),
    "weights": models.weights,
    "summary": str(summary),
  }


STAGES = {"all": Stage(run)}
