"""VPoser v2 (human_body_prior V02_05): a VAE pose prior over the 21 SMPL body joints.

Architecture (human_body_prior `models/vposer_model.py`, config `V02_05.yaml`: 512 neurons,
latent 32); the torch `Sequential` index of each layer is what `jhmr.convert.vposer` maps:

  encoder_net: 0 BatchFlatten, 1 BatchNorm1d(63), 2 Linear(63,512), 3 LeakyReLU(0.01),
               4 BatchNorm1d(512), 5 Dropout(0.1), 6 Linear(512,512), 7 Linear(512,512)
               (no activation between 6 and 7), 8 NormalDistDecoder: mu = Linear(512,32),
               scale = softplus(logvar Linear(512,32)) (named "logvar", used as a softplus scale)
  decoder_net: 0 Linear(32,512), 1 LeakyReLU(0.01), 2 Dropout(0.1), 3 Linear(512,512),
               4 LeakyReLU(0.01), 5 Linear(512,126), 6 ContinousRotReprDecoder

The 6D decoder reads each joint's 6 numbers as a row-major 3x2 matrix (`view(-1, 3, 2)`: columns
a1 = x[0::2], a2 = x[1::2]); this is NOT `jhmr.geometry.rotations`' column-major layout
`[R00, R10, R20, R01, R11, R21]`, so `rot6d_vposer_to_matrix` reorders before the shared
Gram-Schmidt. Rotation matrices -> axis-angle use `rotations.matrix_to_axis_angle`.

Diffusion-HPC uses VPoser for (research/diffusion_hpc.md section 1, steps 4-5):
  * `hardness`: the squared norm of ONE random sample z ~ q(z | theta_body) (stochastic, seeded
    here), compared with tau = 30 (`is_hard`, strict >: "||e|| > tau" in the paper).
  * `augment_latent`: z <- z * multiplier, decoded again. Variants:
      "paper"    Eq. 9 (DAPA's `mul` noise): 1 + s * U[0, 1), s = 0.05 by default;
      "released" Diffusion-HPC's generate_dataset SPIN path (`hmr_utils.py:166-178`):
                 1.5 + s * N(0, 1), s = 0.3 by default;
      "bev"      the BEV path (`bev/bev/main.py:178-198`): 1 + s * N(0, 1), s = 1 by default.
  * `jitter_orient_betas`: "released" orient += N(0, (10 deg)^2) per axis-angle component and
    betas *= 1 + 0.1 N; "bev" orient *= 1 + 0.1 N and betas *= 1 + 0.1 N; "paper" (Eq. 9 touches
    the body pose only) leaves both unchanged.

`vposer_loss` is V02_05's training loss (`vposer_trainer.py` `_compute_loss`, weights from
`V02_05.yaml`): KL 0.005 * mean_b sum_d KL(q || N(0, I)) + 4 * L1(mesh_rec, mesh_orig), and for
the first 15 epochs (`keep_extra_loss_terms_until_epoch`) 2 * geodesic(R_rec, R_orig) +
2 * L1(joints_rec, joints_orig). The body model of the mesh terms is a `body_fn` argument.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jhmr.geometry import rotations
from jhmr.keys import KeySeq

NUM_JOINTS = 21
LATENT_DIM = 32
HARDNESS_THRESHOLD = 30.0
"""tau of Diffusion-HPC (`api.py:215-218`, paper section 3): hard poses score above it."""

AUGMENT_VARIANTS = {"paper": (1.0, 0.05), "released": (1.5, 0.3), "bev": (1.0, 1.0)}
"""variant -> (offset, default s): multiplier = offset + s * eps (eps ~ U[0,1) for "paper",
N(0,1) otherwise)."""
JITTER_VARIANTS = ("paper", "released", "bev")
ORIENT_JITTER_RAD = 10.0 * jnp.pi / 180.0  # the SPIN path's N(0, (10 deg)^2) per axis
BETAS_JITTER = 0.1  # betas * (1 + 0.1 N), both released paths
BEV_ORIENT_JITTER = 0.1  # orient * (1 + 0.1 N), the BEV path


def rot6d_vposer_to_matrix(x: jnp.ndarray) -> jnp.ndarray:
  """VPoser's 6D [..., 6] (a row-major 3x2 matrix [[a00, a01], [a10, a11], [a20, a21]], as
  `ContinousRotReprDecoder`'s `view(-1, 3, 2)`) -> rotation matrices [..., 3, 3] by Gram-Schmidt
  (b1 = a1/|a1|, b2 = normalize(a2 - (b1.a2) b1), b3 = b1 x b2; columns b1, b2, b3)."""
  column_major = jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
  return rotations.rot6d_to_matrix(column_major)


def _flat_pose(pose_body: jnp.ndarray, num_joints: int) -> jnp.ndarray:
  pose_body = jnp.asarray(pose_body)
  if pose_body.ndim < 2:
    raise ValueError(
      f"pose_body must be [B, {num_joints * 3}] or [B, {num_joints}, 3], got shape "
      f"{pose_body.shape}"
    )
  flat = pose_body.reshape(pose_body.shape[0], -1)  # BatchFlatten
  if flat.shape[-1] != num_joints * 3:
    raise ValueError(
      f"pose_body must be [B, {num_joints * 3}] or [B, {num_joints}, 3] axis-angle (SMPL joints "
      f"1..{num_joints}; see `vposer_input` for full SMPL poses), got shape {pose_body.shape}"
    )
  return flat


def vposer_input(pose: jnp.ndarray) -> jnp.ndarray:
  """The 63-D VPoser input [B, 63] from a full SMPL pose: [B, 72] or [B, 24, 3] (root first;
  joints 1..21, the BEV path's `thetas[3:-6]`), [B, 23, 3] (`body_pose`, joints 1..23) or
  already [B, 21, 3] / [B, 63]."""
  pose = jnp.asarray(pose)
  shape = pose.shape
  if pose.ndim == 2 and shape[-1] in (63, 72):
    return pose[:, 3:66] if shape[-1] == 72 else pose
  if pose.ndim == 3 and shape[-1] == 3 and shape[1] in (21, 23, 24):
    start = 1 if shape[1] == 24 else 0
    return pose[:, start : start + NUM_JOINTS].reshape(shape[0], -1)
  raise ValueError(
    "expected an SMPL pose [B, 72], [B, 24, 3], body_pose [B, 23, 3] or a VPoser input "
    f"[B, 21, 3] / [B, 63] (axis-angle), got shape {shape}"
  )


class VPoser(nn.Module):
  """VPoser v2. Variables: {'params', 'batch_stats'} (the two encoder BatchNorms).

  `encode(pose_body) -> (mu, scale)`, `decode(z) -> {'pose_body', 'pose_body_matrot'}`, and
  `__call__(pose_body, noise)` = encode, z = mu + scale * noise (mu when noise is None), decode.
  `train=True` uses batch statistics (apply with mutable=['batch_stats']) and dropout (rng
  'dropout').
  """

  num_neurons: int = 512
  latent_dim: int = LATENT_DIM
  num_joints: int = NUM_JOINTS
  dropout_rate: float = 0.1
  bn_momentum: float = 0.9  # torch BatchNorm1d momentum 0.1
  bn_epsilon: float = 1e-5

  def setup(self):
    bn = lambda: nn.BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
    n = self.num_neurons
    self.encoder_bn_in = bn()  # encoder_net.1
    self.encoder_fc1 = nn.Dense(n)  # encoder_net.2
    self.encoder_bn1 = bn()  # encoder_net.4
    self.encoder_fc2 = nn.Dense(n)  # encoder_net.6
    self.encoder_fc3 = nn.Dense(n)  # encoder_net.7
    self.encoder_mu = nn.Dense(self.latent_dim)  # encoder_net.8.mu
    self.encoder_logvar = nn.Dense(self.latent_dim)  # encoder_net.8.logvar
    self.decoder_fc1 = nn.Dense(n)  # decoder_net.0
    self.decoder_fc2 = nn.Dense(n)  # decoder_net.3
    self.decoder_out = nn.Dense(self.num_joints * 6)  # decoder_net.5
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, pose_body, *, train: bool = False):
    """pose_body [B, 63] or [B, 21, 3] axis-angle -> (mu [B, 32], scale [B, 32]) of q(z|pose)."""
    x = _flat_pose(pose_body, self.num_joints)
    x = self.encoder_bn_in(x, use_running_average=not train)
    x = nn.leaky_relu(self.encoder_fc1(x), 0.01)
    x = self.encoder_bn1(x, use_running_average=not train)
    x = self.dropout(x, deterministic=not train)
    x = self.encoder_fc3(self.encoder_fc2(x))
    return self.encoder_mu(x), nn.softplus(self.encoder_logvar(x))

  def decode(self, z, *, train: bool = False):
    """z [B, 32] -> {'pose_body': [B, 21, 3] axis-angle, 'pose_body_matrot': [B, 21, 3, 3]}."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[-1] != self.latent_dim:
      raise ValueError(f"z must be [B, {self.latent_dim}], got shape {z.shape}")
    x = nn.leaky_relu(self.decoder_fc1(z), 0.01)
    x = self.dropout(x, deterministic=not train)
    x = nn.leaky_relu(self.decoder_fc2(x), 0.01)
    x = self.decoder_out(x).reshape(z.shape[0], self.num_joints, 6)
    matrot = rot6d_vposer_to_matrix(x)
    return {"pose_body": rotations.matrix_to_axis_angle(matrot), "pose_body_matrot": matrot}

  def __call__(self, pose_body, noise=None, *, train: bool = False):
    """Encode, z = mu + scale * noise (noise [B, 32] ~ N(0, I); mu when None), decode.

    Returns decode's dict plus 'mu', 'scale', 'z'."""
    mu, scale = self.encode(pose_body, train=train)
    z = mu if noise is None else mu + scale * noise
    return {**self.decode(z, train=train), "mu": mu, "scale": scale, "z": z}


DEFAULT_MODEL = VPoser()
"""V02_05's configuration (512 neurons, latent 32), the default of the functions below."""


# -- training loss ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class VPoserLossWeights:
  """V02_05.yaml `loss_weights`; matrot and jtr only for the first 15 epochs there."""

  kl: float = 0.005
  mesh_rec: float = 4.0
  matrot: float = 2.0
  jtr: float = 2.0


V02_05_WEIGHTS = VPoserLossWeights()


def kl_to_standard_normal(mu, scale):
  """KL(N(mu, scale^2) || N(0, 1)) elementwise (torch.distributions' closed form)."""
  return 0.5 * (jnp.square(scale) + jnp.square(mu) - 1.0) - jnp.log(scale)


def geodesic_distance(r1, r2, eps: float = 1e-6):
  """Angle [..] of r1 r2^T for matrices [..., 3, 3]: acos((tr - 1) / 2), clipped to
  [-1 + eps, 1 - eps] so the gradient stays finite at zero error (human_body_prior's
  `geodesic_loss_R` clips to [-1, 1], whose acos gradient is infinite there)."""
  cos = (jnp.einsum("...ij,...ij->...", r1, r2) - 1.0) / 2.0
  return jnp.arccos(jnp.clip(cos, -1.0 + eps, 1.0 - eps))


def vposer_loss(
  out: dict,
  pose_body,
  *,
  weights: VPoserLossWeights = V02_05_WEIGHTS,
  body_fn: Callable | None = None,
  extra_terms=1.0,
):
  """V02_05's loss for a forward pass `out` (from `VPoser.__call__`) of `pose_body` [B, 63].

  Args:
    body_fn: rotation matrices [B, 21, 3, 3] -> (vertices [B, V, 3], joints [B, J, 3]) of the
      body model with zero shape and root (V02_05: SMPL-X neutral). None drops the mesh_rec and
      jtr terms; the geodesic term then is the reconstruction and is always on.
    extra_terms: multiplier (0 or 1, may be traced) of the matrot and jtr terms (V02_05: 1 for
      the first 15 epochs, then 0).

  Returns:
    (total, terms): terms are the UNweighted kl (mean over the batch of the sum over latents),
    mesh_rec (L1, mean over elements), matrot (mean geodesic, rad) and jtr (L1).
  """
  b = out["mu"].shape[0]
  target = rotations.axis_angle_to_matrix(_flat_pose(pose_body, NUM_JOINTS).reshape(b, -1, 3))
  rec = out["pose_body_matrot"]
  terms = {
    "kl": jnp.mean(jnp.sum(kl_to_standard_normal(out["mu"], out["scale"]), axis=-1)),
    "matrot": jnp.mean(geodesic_distance(rec, target)),
  }
  total = weights.kl * terms["kl"]
  if body_fn is None:
    total = total + weights.matrot * terms["matrot"]
  else:
    v_orig, j_orig = jax.lax.stop_gradient(body_fn(target))
    v_rec, j_rec = body_fn(rec)
    terms["mesh_rec"] = jnp.mean(jnp.abs(v_rec - v_orig))
    terms["jtr"] = jnp.mean(jnp.abs(j_rec - j_orig))
    extra = weights.matrot * terms["matrot"] + weights.jtr * terms["jtr"]
    total = total + weights.mesh_rec * terms["mesh_rec"] + extra_terms * extra
  return total, terms


# -- Diffusion-HPC: hardness and latent augmentation ---------------------------------------------


def _check_variables(variables):
  if not isinstance(variables, dict) or not {"params", "batch_stats"} <= set(variables):
    got = sorted(variables) if hasattr(variables, "keys") else type(variables).__name__
    raise ValueError(
      "VPoser needs its full variables {'params', 'batch_stats'} (e.g. from "
      f"`jhmr.convert.vposer.convert_vposer`), got {got}"
    )


def sample_latent(variables, pose_body, key, *, model: VPoser = DEFAULT_MODEL):
  """One reparameterised sample z = mu + scale * N(0, I) [B, 32] of q(z | pose_body), eval mode."""
  _check_variables(variables)
  return _sample_latent(model, variables, pose_body, key)


@functools.partial(jax.jit, static_argnums=0)
def _sample_latent(model, variables, pose_body, key):
  mu, scale = model.apply(variables, pose_body, method=VPoser.encode)
  return mu + scale * jax.random.normal(key, mu.shape, mu.dtype)


def hardness(variables, pose_body, key, *, model: VPoser = DEFAULT_MODEL):
  """Diffusion-HPC's VPoser score [B]: ||z||^2 of ONE sample z ~ q(z | pose_body).

  pose_body: [B, 63] / [B, 21, 3] (see `vposer_input` for full SMPL poses). The same key gives
  the same scores."""
  z = sample_latent(variables, pose_body, key, model=model)
  return jnp.sum(jnp.square(z), axis=-1)


@flax.struct.dataclass
class VPoserPrior:
  """VPoser as a pose prior for fitting: `weight * ||mu(theta_body)||^2` per sample, mu the
  encoder mean of q(z | theta_body) (the latent-norm prior of SMPLify-X, which optimises z
  itself; here the fitted pose stays the variable and the encoder maps it to z).

  `__call__(pose [B, 24, 3, 3] rotation matrices, root first) -> [B]`. A pytree (the variables
  and the weight are leaves, the module is static), so it passes through `jax.jit` as an
  argument: `jhmr.guidance.smplify.fit(obs, pose_prior=VPoserPrior(...))`.
  """

  variables: dict
  weight: jnp.ndarray | float = 1.0
  model: VPoser = flax.struct.field(pytree_node=False, default=DEFAULT_MODEL)

  def __call__(self, pose: jnp.ndarray) -> jnp.ndarray:
    if pose.ndim != 4 or pose.shape[-2:] != (3, 3) or pose.shape[1] < NUM_JOINTS + 1:
      raise ValueError(
        f"VPoserPrior needs SMPL rotations [B, 24, 3, 3] (root first), got shape {pose.shape}"
      )
    body = rotations.matrix_to_axis_angle(pose[:, 1 : NUM_JOINTS + 1])
    mu, _ = self.model.apply(self.variables, body, method=VPoser.encode)
    return self.weight * jnp.sum(jnp.square(mu), axis=-1)


def is_hard(score, tau: float = HARDNESS_THRESHOLD):
  """score > tau (evaluation keeps hard poses only; the demo names files easy_/hard_)."""
  return jnp.asarray(score) > tau


def latent_multiplier(key, shape, variant: str = "paper", s: float | None = None):
  """The elementwise factor of the latent augmentation (see the module docstring)."""
  if variant not in AUGMENT_VARIANTS:
    raise ValueError(f"variant must be one of {tuple(AUGMENT_VARIANTS)}, got {variant!r}")
  offset, default_s = AUGMENT_VARIANTS[variant]
  s = default_s if s is None else s
  if variant == "paper":
    eps = jax.random.uniform(key, shape)
  else:
    eps = jax.random.normal(key, shape)
  return offset + s * eps


def augment_latent(
  variables,
  pose_body,
  key,
  s: float | None = None,
  variant: str = "paper",
  *,
  model: VPoser = DEFAULT_MODEL,
) -> dict:
  """Latent pose augmentation: z ~ q(z | pose_body), z_aug = z * multiplier, decode(z_aug).

  Returns {'pose_body' [B, 21, 3], 'pose_body_matrot' [B, 21, 3, 3], 'z', 'z_aug' [B, 32]}."""
  if variant not in AUGMENT_VARIANTS:
    raise ValueError(f"variant must be one of {tuple(AUGMENT_VARIANTS)}, got {variant!r}")
  _check_variables(variables)
  s = AUGMENT_VARIANTS[variant][1] if s is None else s
  return _augment_latent(model, variant, variables, pose_body, key, s)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _augment_latent(model, variant, variables, pose_body, key, s):
  keys = KeySeq(key)
  mu, scale = model.apply(variables, pose_body, method=VPoser.encode)
  z = mu + scale * jax.random.normal(keys("sample"), mu.shape, mu.dtype)
  z_aug = z * latent_multiplier(keys("multiplier"), z.shape, variant, s)
  decoded = model.apply(variables, z_aug, method=VPoser.decode)
  return {**decoded, "z": z, "z_aug": z_aug}


def jitter_orient_betas(key, global_orient, betas, variant: str = "released"):
  """Global orientation [B, 3] (axis-angle) and betas [B, NB] jitter of the released drivers.

  "released": orient + N(0, (10 deg)^2) per component, betas * (1 + 0.1 N);
  "bev": orient * (1 + 0.1 N), betas * (1 + 0.1 N); "paper": unchanged."""
  if variant not in JITTER_VARIANTS:
    raise ValueError(f"variant must be one of {JITTER_VARIANTS}, got {variant!r}")
  global_orient, betas = jnp.asarray(global_orient), jnp.asarray(betas)
  if global_orient.shape[-1] != 3:
    raise ValueError(f"global_orient must be [..., 3] axis-angle, got shape {global_orient.shape}")
  if variant == "paper":
    return global_orient, betas
  keys = KeySeq(key)
  n_orient = jax.random.normal(keys("orient"), global_orient.shape, global_orient.dtype)
  n_betas = jax.random.normal(keys("betas"), betas.shape, betas.dtype)
  if variant == "released":
    orient = global_orient + ORIENT_JITTER_RAD * n_orient
  else:
    orient = global_orient * (1.0 + BEV_ORIENT_JITTER * n_orient)
  return orient, betas * (1.0 + BETAS_JITTER * n_betas)
