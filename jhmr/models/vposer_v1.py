"""VPoser v1 (human_body_prior's cvpr19-era VPoser, `vposer_v1_0`): the frozen pose decoder of the
released DPMesh checkpoints (research/dpmesh.md section 8).

DPMesh loads it with the cvpr19 branch's `load_vposer(expr_dir, vp_model='snapshot')`, which builds
the `VPoser` class of the experiment folder's copy of `train/vposer_smpl.py` with the `.ini`'s
network settings (num_neurons 512, latentD 32, data_shape [1, 21, 3], use_cont_repr True) and
loads `snapshots/TR*_E*.pt`, a plain `state_dict()` (no `module.` prefix). Architecture (flat
attributes, no `Sequential`; the torch name is the Flax name with `bodyprior_` in front):

  encode: flatten [N, 63] -> enc_bn1 BatchNorm1d(63) -> enc_fc1 Linear(63, 512) -> LeakyReLU(0.2)
          -> enc_bn2 BatchNorm1d(512) -> Dropout(0.1) -> enc_fc2 Linear(512, 512) -> LeakyReLU(0.2)
          -> mu = enc_mu Linear(512, 32), scale = softplus(enc_logvar Linear(512, 32))
  decode: dec_fc1 Linear(32, 512) -> LeakyReLU(0.2) -> Dropout(0.1) -> dec_fc2 Linear(512, 512)
          -> LeakyReLU(0.2) -> dec_out Linear(512, 21 * 6) -> ContinousRotReprDecoder
          -> [N, 1, 21, 9]; `output_type='aa'` -> axis-angle [N, 1, 21, 3]

Differences from v2 (`jhmr.models.vposer`, V02_05): LeakyReLU slope 0.2 (v2: 0.01), a LeakyReLU
after the encoder's second Linear and no third encoder Linear (v2: Linear, Linear with nothing
between), and named attributes instead of `encoder_net` / `decoder_net` indices. The 6D decoder is
the same (`view(-1, 3, 2)`, Gram-Schmidt), so `vposer.rot6d_vposer_to_matrix` is reused.
Rotation matrices -> axis-angle use `rotations.matrix_to_axis_angle` (v1 uses torchgeometry's
quaternion route; both are the same map away from half-turns). The `use_cont_repr=False` variant
(tanh of 9 numbers per joint) is not ported: no released file uses it.

DPMesh (`common/nets/module.py` `Vposer`) keeps the model in eval mode (dropout off, BatchNorm
running statistics), decodes the regressor's 32-D code to the 21 body joints' axis-angle and
appends two zero hand joints (SMPL joints 22, 23): `dpmesh_body_rotmat`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jhmr.geometry import rotations
from jhmr.models.vposer import _flat_pose, rot6d_vposer_to_matrix

NUM_JOINTS = 21
LATENT_DIM = 32
NEGATIVE_SLOPE = 0.2  # F.leaky_relu(..., negative_slope=.2) throughout v1
SMPL_BODY_JOINTS = 23  # DPMesh's body pose: the 21 VPoser joints + 2 zero hand joints


class VPoserV1(nn.Module):
  """VPoser v1. Variables: {'params', 'batch_stats'} (the two encoder BatchNorms); the decoder
  alone needs only its three Linears (`init(..., method=VPoserV1.decode)` creates just those).

  `encode(pose_body) -> (mu, scale)`, `decode(z) -> {'pose_body', 'pose_body_matrot'}`, and
  `__call__(pose_body, noise)` = encode, z = mu + scale * noise (mu when noise is None), decode.
  `train=True` uses batch statistics (apply with mutable=['batch_stats']) and dropout (rng
  'dropout'); v1 shares one Dropout(0.1) between encoder and decoder.
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
    self.enc_bn1 = bn()
    self.enc_fc1 = nn.Dense(n)
    self.enc_bn2 = bn()
    self.enc_fc2 = nn.Dense(n)
    self.enc_mu = nn.Dense(self.latent_dim)
    self.enc_logvar = nn.Dense(self.latent_dim)
    self.dec_fc1 = nn.Dense(n)
    self.dec_fc2 = nn.Dense(n)
    self.dec_out = nn.Dense(self.num_joints * 6)
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, pose_body, *, train: bool = False):
    """pose_body [B, 63], [B, 21, 3] or v1's [B, 1, 21, 3] axis-angle -> (mu [B, 32],
    scale [B, 32]) of q(z | pose)."""
    x = _flat_pose(pose_body, self.num_joints)
    x = self.enc_bn1(x, use_running_average=not train)
    x = nn.leaky_relu(self.enc_fc1(x), NEGATIVE_SLOPE)
    x = self.enc_bn2(x, use_running_average=not train)
    x = self.dropout(x, deterministic=not train)
    x = nn.leaky_relu(self.enc_fc2(x), NEGATIVE_SLOPE)
    return self.enc_mu(x), nn.softplus(self.enc_logvar(x))

  def decode_6d(self, z, *, train: bool = False):
    """z [B, 32] -> the raw 6D per joint [B, 21, 6] (before `ContinousRotReprDecoder`)."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[-1] != self.latent_dim:
      raise ValueError(f"z must be [B, {self.latent_dim}], got shape {z.shape}")
    x = nn.leaky_relu(self.dec_fc1(z), NEGATIVE_SLOPE)
    x = self.dropout(x, deterministic=not train)
    x = nn.leaky_relu(self.dec_fc2(x), NEGATIVE_SLOPE)
    return self.dec_out(x).reshape(z.shape[0], self.num_joints, 6)

  def decode(self, z, *, train: bool = False):
    """z [B, 32] -> {'pose_body': [B, 21, 3] axis-angle, 'pose_body_matrot': [B, 21, 3, 3]}."""
    matrot = rot6d_vposer_to_matrix(self.decode_6d(z, train=train))
    return {"pose_body": rotations.matrix_to_axis_angle(matrot), "pose_body_matrot": matrot}

  def __call__(self, pose_body, noise=None, *, train: bool = False):
    """Encode, z = mu + scale * noise (noise [B, 32] ~ N(0, I); mu when None), decode.

    Returns decode's dict plus 'mu', 'scale', 'z'."""
    mu, scale = self.encode(pose_body, train=train)
    z = mu if noise is None else mu + scale * noise
    return {**self.decode(z, train=train), "mu": mu, "scale": scale, "z": z}


VPOSER_V1 = VPoserV1()
"""The released `vposer_v1_0` configuration (512 neurons, latent 32, 21 joints)."""


def decoder_variables(variables: dict) -> dict:
  """The decoder's part `{'params': {dec_fc1, dec_fc2, dec_out}}` of full VPoser v1 variables
  (or of its params alone)."""
  params = variables.get("params", variables)
  missing = [k for k in ("dec_fc1", "dec_fc2", "dec_out") if k not in params]
  if missing:
    raise ValueError(f"VPoser v1 params lack the decoder modules {missing}; got {sorted(params)}")
  return {"params": {k: params[k] for k in ("dec_fc1", "dec_fc2", "dec_out")}}


def dpmesh_body_rotmat(decoded: dict) -> jnp.ndarray:
  """DPMesh's body pose from `VPoserV1.decode`'s output: the 21 decoded rotations then two
  identity hand joints (DPMesh appends zero axis-angle) -> [B, 23, 3, 3] (SMPL joints 1..23)."""
  matrot = decoded["pose_body_matrot"]
  hands = jnp.broadcast_to(jnp.eye(3, dtype=matrot.dtype), (matrot.shape[0], 2, 3, 3))
  return jnp.concatenate([matrot, hands], axis=1)
