"""The whole DPMesh model: crop + 30 noisy 2D joints -> SMPL pose, shape and camera.

  config = DPMeshConfig()                       # the paper: SD 1.5 backbone, VQ pose codebook
  model = DPMesh(config)
  variables = with_pretrained(random_variables(model), vae=..., unet=..., codebook=...)
  out = model.apply(variables, images [B, S, S, 3] in [0, 1], keypoints [B, 30, 3] crop px + conf,
                    focal_length [B], train=True, rngs={'dropout': key})   # -> DPMeshOutput
  pred = predict(variables, crops, keypoints_2d, config=config, body_model=smpl)  # the library call

Composition (research/dpmesh.md sections 1-9):
  `DPMeshBackbone` (VAE latent ‖ heatmaps -> ControlNet -> SD U-Net, one step -> fused
  [B, 8, 8, 2048]) -> `DPMeshRegressor` (root 6D, pose code, betas, camera, per-layer
  joint_img) -> the frozen pose decoder -> 23 body rotation matrices -> axis-angle SMPL
  parameters.

Pose decoders (`DPMeshConfig.pose_decoder`), both frozen and applied functionally behind
`stop_gradient` (the gradient reaches the regressor's code, never the decoder), as the backbone's
VAE and U-Net base:
  'codebook' (the paper): 48 x 2048 pose-token logits -> the pose codebook's soft decode
    (`PoseTokenizer.soft_decode`: softmax(logits) @ codebook -> MLP-Mixer decoder -> 23 matrices,
    not orthonormalised, as DPMesh). Parameters `{'backbone', 'regressor', 'pose_codebook':
    {'params', 'codebook'}}`; the codebook (a `PoseTokenizer`'s whole variables) is pre-trained on
    mocap by `jhmr.train.codebook_task`.
  'vposer' (the released checkpoints; regressor `DPMESH_REGRESSOR_RELEASED`): a 32-D code ->
    VPoser **v1**'s decoder (`jhmr.models.vposer_v1`, in eval mode as DPMesh keeps it) -> 21
    body rotations, then two identity hand joints. Parameters `{'backbone', 'regressor',
    'vposer': {dec_fc1, dec_fc2, dec_out}}` (the decoder's params; the encoder is unused;
    `jhmr.convert.dpmesh` fills them from the checkpoint's `vposer.vposer.*`).

DPMesh's 30 input joints (`DPMESH30_NAMES`, SMPL-30 order of `common/utils/smpl.py`): the 24 SMPL
joints, then nose, left/right eye, left/right ear (SMPL face vertices 331/2802/6262/3489/3990)
and head top. The regressor's 15 joints (`DPMESH15_NAMES`, JOTR's graph joints) are indexed into
the 24 SMPL joints by `DPMESH15_FROM_SMPL24`, with SMPL `head` standing for JOTR's head top.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jhmr.body.joints import SMPL_JOINT_NAMES
from jhmr.geometry import rotations
from jhmr.models import dpmesh_backbone as backbone_lib
from jhmr.models.compile_options import sd_compiler_options
from jhmr.models.dpmesh_backbone import (
  DPMESH_PAPER,
  BackboneOutput,
  DPMeshBackbone,
  DPMeshBackboneConfig,
)
from jhmr.models.dpmesh_regressor import (
  DPMESH_REGRESSOR,
  DPMESH_REGRESSOR_RELEASED,
  DPMESH_REGRESSOR_TINY,
  DPMESH_REGRESSOR_TINY_PAPER,
  DPMeshRegressor,
  DPMeshRegressorConfig,
  DPMeshRegressorOutput,
)
from jhmr.models.pose_codebook import COLLECTION, PoseCodebookConfig, PoseTokenizer
from jhmr.models.vposer_v1 import (
  VPOSER_V1,
  VPoserV1,
  decoder_variables,
  dpmesh_body_rotmat,
)

Dtype = Any
POSE_DECODERS = ("codebook", "vposer")

DPMESH30_NAMES = (
  *SMPL_JOINT_NAMES,
  "nose",
  "left_eye",
  "right_eye",
  "left_ear",
  "right_ear",
  "head_top",
)
"""DPMesh's 30 input joints (canonical `jhmr.io.joint_maps` names), SMPL-30 order."""

DPMESH15_NAMES = (
  "pelvis",
  "right_hip",
  "right_knee",
  "right_ankle",
  "left_hip",
  "left_knee",
  "left_ankle",
  "neck",
  "head",
  "left_shoulder",
  "left_elbow",
  "left_wrist",
  "right_shoulder",
  "right_elbow",
  "right_wrist",
)
"""The regressor's 15 joints (JOTR/3DCrowdNet graph joints; SMPL `head` for their head top)."""

DPMESH15_FROM_SMPL24 = tuple(SMPL_JOINT_NAMES.index(n) for n in DPMESH15_NAMES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMeshConfig:
  """The whole model. Defaults: the paper (SD 1.5 backbone with its MLP prompt, 48-token VQ pose
  codebook 2048 x 256); `tiny()` for tests.

  Attributes:
    backbone: `DPMeshBackboneConfig` (its `num_joints` must be 30).
    regressor: `DPMeshRegressorConfig` (in_channels = the fusion width; pose_tokens and
      pose_code_dim = the codebook's tokens and size; crop_size = the backbone's crop).
    codebook: `PoseCodebookConfig` of the frozen pose decoder (23 body joints; 'codebook').
    vposer: the `VPoserV1` sizes of the frozen pose decoder ('vposer'; released: 512 / 32).
    pose_decoder: 'codebook' (paper) or 'vposer' (released; the regressor must then predict one
      code of the VPoser's latent size: `pose_tokens` 0, `pose_code_dim` 32).
  """

  backbone: DPMeshBackboneConfig = DPMESH_PAPER
  regressor: DPMeshRegressorConfig = DPMESH_REGRESSOR
  codebook: PoseCodebookConfig = PoseCodebookConfig()
  vposer: VPoserV1 = VPOSER_V1
  pose_decoder: str = "codebook"

  def __post_init__(self):
    if self.pose_decoder not in POSE_DECODERS:
      raise ValueError(f"pose_decoder must be one of {POSE_DECODERS}, got {self.pose_decoder!r}")
    b, r, c = self.backbone, self.regressor, self.codebook
    if b.num_joints != len(DPMESH30_NAMES):
      raise ValueError(f"the backbone must take the 30 SMPL-30 joints, got {b.num_joints}")
    if r.in_channels != b.fusion_channels:
      raise ValueError(
        f"regressor.in_channels {r.in_channels} != backbone.fusion_channels {b.fusion_channels}"
      )
    if self.pose_decoder == "vposer":
      v = self.vposer
      if (r.pose_tokens, r.pose_code_dim) != (0, v.latent_dim):
        raise ValueError(
          f"with pose_decoder='vposer' the regressor must predict one {v.latent_dim}-D VPoser "
          f"code (pose_tokens 0, pose_code_dim {v.latent_dim}), got pose_tokens "
          f"{r.pose_tokens}, pose_code_dim {r.pose_code_dim}"
        )
      if v.num_joints != 21:
        raise ValueError(f"the VPoser must decode the 21 SMPL body joints, got {v.num_joints}")
    else:
      if (r.pose_tokens, r.pose_code_dim) != (c.num_tokens, c.codebook_size):
        raise ValueError(
          f"the regressor's pose code ({r.pose_tokens} tokens x {r.pose_code_dim}) must be the "
          f"codebook's logits ({c.num_tokens} tokens x {c.codebook_size} entries)"
        )
      if c.num_joints != 23 or c.input_dim != 9:
        raise ValueError("the pose codebook must decode 23 body-joint rotation matrices")
    if tuple(r.crop_size) != (b.image_size, b.image_size):
      raise ValueError(f"regressor.crop_size {r.crop_size} != the backbone's {b.image_size}² crop")
    if r.num_joints != len(DPMESH15_NAMES):
      raise ValueError(f"the regressor must predict the 15 DPMesh joints, got {r.num_joints}")

  @property
  def image_size(self) -> int:
    return self.backbone.image_size

  @classmethod
  def released(cls, **overrides) -> DPMeshConfig:
    """The released checkpoints' model: `DPMESH_RELEASED` backbone (the one-Linear prompt),
    `DPMESH_REGRESSOR_RELEASED` (one 32-D code) and VPoser v1 (512 / 32) as pose decoder."""
    fields = dict(
      backbone=backbone_lib.DPMESH_RELEASED,
      regressor=DPMESH_REGRESSOR_RELEASED,
      vposer=VPOSER_V1,
      pose_decoder="vposer",
    )
    return cls(**{**fields, **overrides})

  @classmethod
  def tiny(cls, **overrides) -> DPMeshConfig:
    """The tiny backbone (64² crops, 32-wide fusion), the tiny paper regressor and a tiny codebook
    (8 tokens x 64 entries): the whole structure, for tests. With `pose_decoder='vposer'`: the
    tiny released regressor (one 32-D code) and a 16-neuron VPoser v1."""
    backbone = overrides.get("backbone", DPMeshBackboneConfig.tiny())
    codebook = PoseCodebookConfig.tiny()
    vposer = VPoserV1(num_neurons=16)
    crop = (backbone.image_size, backbone.image_size)
    if overrides.get("pose_decoder", "codebook") == "vposer":
      regressor = dataclasses.replace(
        DPMESH_REGRESSOR_TINY,
        in_channels=backbone.fusion_channels,
        pose_code_dim=vposer.latent_dim,
        crop_size=crop,
      )
    else:
      regressor = dataclasses.replace(
        DPMESH_REGRESSOR_TINY_PAPER,
        in_channels=backbone.fusion_channels,
        pose_tokens=codebook.num_tokens,
        pose_code_dim=codebook.codebook_size,
        crop_size=crop,
      )
    fields = dict(backbone=backbone, regressor=regressor, codebook=codebook, vposer=vposer)
    return cls(**{**fields, **overrides})


@flax.struct.dataclass
class DPMeshOutput:
  """Attributes:
  global_orient: [B, 3] axis-angle root orientation as seen in the crop.
  body_pose: [B, 23, 3] axis-angle (from `body_rotmat`).
  body_rotmat: [B, 23, 3, 3] the pose decoder's matrices: the codebook's (not orthonormalised,
    as DPMesh) or VPoser v1's 21 rotations and two identity hand joints.
  betas: [B, 10].
  translation: [B, 3] camera translation (m), or None without a focal length.
  joint_img: [B, 15, 3] the last decoder layer's joints in [0, 1] (x, y on the crop, z depth bin).
  backbone: the `BackboneOutput` (`fused` [B, 8, 8, C] are NKR's features).
  regressor: the `DPMeshRegressorOutput` (all decoder layers, pose logits, volume, ...).
  """

  global_orient: jax.Array
  body_pose: jax.Array
  body_rotmat: jax.Array
  betas: jax.Array
  translation: jax.Array | None
  joint_img: jax.Array
  backbone: BackboneOutput
  regressor: DPMeshRegressorOutput


class DPMesh(nn.Module):
  """See the module docstring. `__call__(images [B, S, S, 3] in [0, 1], keypoints [B, 30, 3],
  focal_length [B] | None, train=False) -> DPMeshOutput`; training needs a 'dropout' rng."""

  config: DPMeshConfig = DPMeshConfig()
  attention_implementation: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False  # the backbone's U-Net and ControlNet blocks under nn.remat

  def dummy_inputs(self, batch: int = 1):
    s = self.config.image_size
    return (
      jnp.zeros((batch, s, s, 3)),
      jnp.zeros((batch, len(DPMESH30_NAMES), 3)),
      jnp.ones((batch,)),
    )

  @nn.compact
  def __call__(self, images, keypoints, focal_length=None, train: bool = False) -> DPMeshOutput:
    cfg = self.config
    feats = DPMeshBackbone(
      cfg.backbone,
      self.attention_implementation,
      remat=self.remat,
      name="backbone",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )(images, keypoints, train=train)
    decode = self._vposer_decoder() if cfg.pose_decoder == "vposer" else self._codebook_decoder()
    reg = DPMeshRegressor(cfg.regressor, pose_decoder=decode, dtype=self.dtype, name="regressor")(
      feats.fused, focal_length, train=train
    )
    body_rotmat = reg.body_pose.astype(jnp.float32)
    return DPMeshOutput(
      global_orient=reg.root_pose,
      body_pose=rotations.matrix_to_axis_angle(body_rotmat),
      body_rotmat=body_rotmat,
      betas=reg.betas,
      translation=reg.translation,
      joint_img=reg.joint_img[-1],
      backbone=feats,
      regressor=reg,
    )

  def _codebook_decoder(self):
    cfg = self.config
    tokenizer = PoseTokenizer(cfg.codebook, parent=None)
    codebook = self.param(
      "pose_codebook",
      lambda key: dict(tokenizer.init(key, jnp.zeros((1, cfg.codebook.num_joints, 3, 3)))),
    )

    def decode(logits):  # frozen: no gradient reaches the codebook, only the logits
      frozen = jax.lax.stop_gradient(codebook)
      variables = {"params": frozen["params"], COLLECTION: frozen[COLLECTION]}
      return tokenizer.apply(variables, logits, method=PoseTokenizer.soft_decode)

    return decode

  def _vposer_decoder(self):
    vposer = self.config.vposer.clone(parent=None)
    params = self.param(
      "vposer",
      lambda key: dict(
        vposer.init(key, jnp.zeros((1, vposer.latent_dim)), method=VPoserV1.decode)["params"]
      ),
    )
    return vposer_pose_decoder(vposer, params)


def vposer_pose_decoder(vposer: VPoserV1, params):
  """The released pose decoder as a function `code [B, 32] -> body rotmat [B, 23, 3, 3]`: VPoser
  v1's decoder with the frozen `params` (`{dec_fc1, dec_fc2, dec_out}`, behind stop_gradient) in
  eval mode (DPMesh's `vposer.eval()`: no dropout), then two identity hand joints."""

  def decode(code):
    frozen = jax.lax.stop_gradient(params)
    decoded = vposer.apply({"params": frozen}, code.astype(jnp.float32), method=VPoserV1.decode)
    return dpmesh_body_rotmat(decoded)

  return decode


# ----------------------------------------------------------------------------------------------
# Variables


@functools.lru_cache(maxsize=8)
def _variable_shapes(model: DPMesh):
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, {"params": jax.random.key(0)}, *model.dummy_inputs())


def random_variables(model: DPMesh, seed: int = 0, *, scale: float = 1.0) -> dict:
  """Random variables of `model`'s structure without compiling `model.init` (whose trace of the
  SD U-Net takes minutes to compile): shapes from `jax.eval_shape`, then numpy draws. Kernels
  ~ N(0, scale² / fan_in), biases 0, norm scales 1, the depth exponent its init, the codebook
  N(0, 1) with cluster sizes 1. Every leaf, LoRA-up and zero convs included, is non-zero where
  a kernel: a test/benchmark stand-in, not the training init (use `with_pretrained` on it)."""
  shapes = _variable_shapes(model)
  rng = np.random.default_rng(seed)
  exponent = model.config.regressor.exponent_init

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape, dtype = leaf.shape, leaf.dtype
    if name == "exponent":
      return jnp.full(shape, exponent, dtype)
    if name == "cluster_size":
      return jnp.ones(shape, dtype)
    if name in ("scale", "weight") and len(shape) == 1:
      return jnp.ones(shape, dtype)
    if name == "bias":
      return jnp.zeros(shape, dtype)
    if name in ("embedding", "ema_w") and path[-2:-1] and "codebook" in str(path):
      return jnp.asarray(rng.standard_normal(shape), dtype)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(shape) * scale / np.sqrt(max(fan_in, 1)), dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def with_pretrained(
  variables: Any,
  *,
  vae: Any = None,
  unet: Any = None,
  controlnet: Any = None,
  codebook: Any = None,
  regressor: Any = None,
  vposer: Any = None,
) -> dict:
  """`variables` with pretrained parts swapped in: `vae`, `unet`, `controlnet` as
  `dpmesh_backbone.with_pretrained` (converted diffusers trees), `codebook` a trained
  `PoseTokenizer`'s variables `{'params', 'codebook'}`, `regressor` regressor params, `vposer`
  VPoser v1 variables or params (e.g. `jhmr.convert.vposer_v1.load_vposer_v1`; the decoder's
  modules are kept)."""
  params = dict(variables["params"])
  params["backbone"] = backbone_lib.with_pretrained(
    params["backbone"], vae=vae, unet=unet, controlnet=controlnet
  )
  if codebook is not None:
    params["pose_codebook"] = {"params": codebook["params"], COLLECTION: codebook[COLLECTION]}
  if regressor is not None:
    params["regressor"] = regressor
  if vposer is not None:
    if "vposer" not in params:
      raise ValueError("these variables have no 'vposer' group (a pose_decoder='vposer' model's)")
    params["vposer"] = decoder_variables(vposer)["params"]
  return {**variables, "params": params}


# ----------------------------------------------------------------------------------------------
# The library call


@flax.struct.dataclass
class DPMeshPrediction:
  """`predict`'s result (numpy).

  Attributes:
    global_orient: [B, 3] axis-angle root orientation in the crop camera's frame.
    body_pose: [B, 23, 3] axis-angle.
    betas: [B, 10].
    translation: [B, 3] camera translation (m) for the crop camera (principal point at the crop
      centre, the given focal length).
    visible: [B, 30] bool, the joints the model used (conf > threshold, inside the crop, finite).
    vertices: [B, V, 3] camera-frame vertices, or None without a body model.
    joints: [B, 24, 3] camera-frame SMPL joints, or None without a body model.
  """

  global_orient: np.ndarray
  body_pose: np.ndarray
  betas: np.ndarray
  translation: np.ndarray
  visible: np.ndarray
  vertices: np.ndarray | None = None
  joints: np.ndarray | None = None


def prepare_inputs(crops, keypoints_2d, config: DPMeshConfig):
  """Validates and normalises `predict`'s inputs -> (images float32 [B, S, S, 3] in [0, 1],
  keypoints float32 [B, 30, 3], visible [B, 30] bool). See `predict` for the rules."""
  s, names = config.image_size, DPMESH30_NAMES
  crops = np.asarray(crops)
  if crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
    raise ValueError(f"crops must be [B, {s}, {s}, 3] (the model's crop size), got {crops.shape}")
  if crops.dtype == np.uint8:
    images = crops.astype(np.float32) / 255.0
  elif np.issubdtype(crops.dtype, np.floating):
    images = crops.astype(np.float32)
    if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
      raise ValueError("float crops must be finite and in [0, 1] (or pass uint8)")
  else:
    raise ValueError(f"crops must be uint8 or float in [0, 1], got dtype {crops.dtype}")
  kp = np.array(keypoints_2d, np.float32)
  if kp.shape != (len(crops), len(names), 3):
    raise ValueError(
      f"keypoints_2d must be [{len(crops)}, {len(names)}, 3] (x, y crop px, confidence; "
      f"SMPL-30 order), got {kp.shape}"
    )
  bad_conf = np.isnan(kp[..., 2])
  bad_xy = ~np.all(np.isfinite(kp[..., :2]), -1) & (np.nan_to_num(kp[..., 2]) > 0)
  bad = np.argwhere(bad_conf | bad_xy)
  if len(bad):
    b, j = bad[0]
    raise ValueError(
      f"keypoints_2d[{b}, {j}] ({names[j]}) is NaN/inf ({len(bad)} such joints); mark a missing "
      "joint with confidence 0"
    )
  xy = kp[..., :2]
  inside = np.all(np.isfinite(xy) & (xy >= 0) & (xy < s), -1)
  visible = inside & (kp[..., 2] > config.backbone.visibility_threshold)
  kp = np.where(visible[..., None], kp, 0.0).astype(np.float32)
  empty = np.flatnonzero(~visible.any(-1))
  if len(empty):
    warnings.warn(
      f"predict: no visible joint in crops {empty.tolist()}; their prediction uses the image only",
      stacklevel=3,
    )
  return images, kp, visible


def _predict(model, variables, images, keypoints, focal_length, body_model):
  out = model.apply(variables, images, keypoints, focal_length, train=False)
  result = dict(
    global_orient=out.global_orient,
    body_pose=out.body_pose,
    betas=out.betas,
    translation=out.translation,
  )
  if body_model is not None:
    nb = min(body_model.num_betas, out.betas.shape[-1])
    body = body_model(out.betas[:, :nb], out.body_pose, out.global_orient, out.translation)
    result.update(vertices=body.vertices, joints=body.joints)
  return result


@functools.cache
def _compiled_predict():
  """`_predict` under `jax.jit` with `sd_compiler_options` (built on first use: the options
  depend on the backend, which must not be initialised at import)."""
  return jax.jit(_predict, static_argnums=0, compiler_options=sd_compiler_options() or None)


def predict(
  variables,
  crops,
  keypoints_2d,
  *,
  config: DPMeshConfig,
  body_model=None,
  focal_length=None,
) -> DPMeshPrediction:
  """DPMesh on person crops with their 2D joints (inference: no dropout, no joint masking).

  Args:
    variables: `DPMesh(config)` variables (`{'params': ...}`).
    crops: [B, S, S, 3] uint8, or float in [0, 1]; S = `config.image_size` (256 for the paper),
      else ValueError.
    keypoints_2d: [B, 30, 3] (x, y in crop pixels, confidence) in SMPL-30 order
      (`DPMESH30_NAMES`). A joint is used when its confidence exceeds the backbone's threshold
      (0.05) and it lies inside the crop; joints outside the crop are treated as invisible
      (confidence and coordinates set to 0, exactly as a missing joint). A NaN/inf coordinate on
      a joint with confidence > 0, or a NaN confidence, raises ValueError naming the joint.
      A crop with no visible joint is predicted from the image alone (zero heatmaps and, with
      the paper's prompt, zero joint tokens) and a UserWarning names it.
    config: the model's `DPMeshConfig`.
    body_model: optional `jhmr.body.BodyModel`; then `vertices` and `joints` are returned
      (betas truncated to the model's count).
    focal_length: [B] or scalar focal length in crop pixels; default the crop diagonal
      S * sqrt(2) (DPMesh's full-image diagonal when the crop is the whole image).

  Returns:
    `DPMeshPrediction` (numpy).
  """
  images, kp, visible = prepare_inputs(crops, keypoints_2d, config)
  if focal_length is None:
    focal_length = config.image_size * np.sqrt(2.0)
  focal = np.broadcast_to(np.asarray(focal_length, np.float32), (len(images),))
  out = _compiled_predict()(DPMesh(config), variables, images, kp, focal, body_model)
  out = {k: np.asarray(v) for k, v in out.items()}
  return DPMeshPrediction(visible=visible, **out)
