"""DPMesh's VQ-VAE pose codebook: a PCT-style MLP-Mixer tokenizer (Pose as Compositional Tokens).

The paper (DPMesh, sec. 4 / supp.) regresses pose as 48 code-entry distributions over a 2048 x 256
codebook and decodes them with a pre-trained VQ-VAE. The release does not wire it in (it uses
VPoser), but ships the model (`common/vqvae/vae_utils/pctvqvae.py`, config `pct_vqvae.yaml`, see
research/dpmesh.md section 8). This module follows that code:

  pose  [B, J, 3, 3] joint rotation matrices (J = 23 body joints, root excluded: the regressor
        predicts the root as 6D separately; the paper's text says 24 x 9, `num_joints=24` gives it)
  encode:  Linear(9 -> H) -> depth x Mixer(H, H_inter, J, T_inter) -> LN
           -> token Linear(J -> N) (over the joint axis) -> Linear(H -> D)      = z [B, N, D]
  quantize: nearest code (squared L2), straight-through, e-latent (commitment) loss
           mse(sg(q), z), EMA codebook update (train only)
  decode:  token Linear(N -> J) -> Linear(D -> H_dec) -> depth_dec x Mixer -> LN -> Linear(-> 9)
           -> [B, J, 3, 3], NOT orthonormalised (DPMesh feeds it to axis-angle as is)
  soft_decode(logits [B, N, K]): softmax(logits) @ codebook -> decode (the regressor's path)

Mixer block (PCT `MixerLayer`): y = TokenMLP(LN1(x)) over the token axis,
z = ChannelMLP(LN2(x + y)), out = x + y + z; each MLP is Linear -> exact GELU -> Linear
(dropout 0 in every released config, so omitted). LayerNorm eps 1e-5; Linear layers are
initialised like PyTorch's, as in the torch module.
PCT's `drop_rate` (joint masking) is read but unused by DPMesh's forward, so it is left out.

EMA update (PCT / VQ-VAE appendix, with Laplace smoothing stored into the cluster sizes as PCT
does), with one-hot assignments E [M, K] and encodings z [M, D] of the *global* batch:

  cluster_size <- decay * cluster_size + (1 - decay) * sum_m E
  n = sum(cluster_size);  cluster_size <- (cluster_size + eps) / (n + K eps) * n
  ema_w        <- decay * ema_w + (1 - decay) * E^T z
  codebook     <- ema_w / cluster_size[:, None]

The codebook lookup in a step uses the codebook *before* its update. Initial state as in PCT:
codebook ~ N(0, 1), ema_w ~ N(0, 1) (independent draws), cluster_size = 0. All three live in the
mutable collection `"codebook"` (not trained by the optimiser).

Across devices: PCT all-reduces (sums) E and E^T z so every replica applies the update of the
global batch. Here the batch sums are global by construction under `jax.jit` with sharded inputs
(the shared trainer); under `shard_map` / `pmap` / `vmap` set `PoseCodebookConfig.axis_name` and
they are `psum`-ed over that axis. Either way the statistics equal those of the unsplit batch.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jhmr.models.score_net import Dense, gelu

LN_EPS = 1e-5
COLLECTION = "codebook"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoseCodebookConfig:
  """`pct_vqvae.yaml` (STAGE_I) by default; `tiny()` for tests.

  Loss defaults are PCT's `Tokenizer_loss` (joint smooth-L1 with beta 0.05, weight 1; e-latent
  loss weight 15), applied to the rotation-matrix entries (the paper: "reconstruction loss
  following [PCT]").
  """

  num_joints: int = 23
  input_dim: int = 9
  num_tokens: int = 48
  codebook_size: int = 2048
  code_dim: int = 256
  enc_depth: int = 4
  enc_hidden: int = 512
  enc_hidden_inter: int = 512
  enc_token_inter: int = 64
  dec_depth: int = 1
  dec_hidden: int = 32
  dec_hidden_inter: int = 64
  dec_token_inter: int = 64
  ema_decay: float = 0.9
  laplace_eps: float = 1e-5
  commitment_weight: float = 15.0
  reconstruction_beta: float = 0.05
  axis_name: str | None = None

  @classmethod
  def tiny(cls, **overrides) -> PoseCodebookConfig:
    kw = dict(
      num_tokens=8,
      codebook_size=64,
      code_dim=16,
      enc_depth=1,
      enc_hidden=32,
      enc_hidden_inter=32,
      enc_token_inter=16,
      dec_hidden=16,
      dec_hidden_inter=16,
      dec_token_inter=16,
    )
    return cls(**{**kw, **overrides})


class MLP(nn.Module):
  """PCT `MLPBlock`: Linear(dim -> inter) -> GELU -> Linear(inter -> dim)."""

  dim: int
  inter: int

  @nn.compact
  def __call__(self, x):
    h = gelu(Dense(self.inter, "fc1", self.dim)(x))
    return Dense(self.dim, "fc2", self.inter)(h)


class Mixer(nn.Module):
  """PCT `MixerLayer` over x [B, T, H]: token mixing then channel mixing, out = x + y + z."""

  hidden: int
  hidden_inter: int
  tokens: int
  token_inter: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(LN_EPS, name="ln1")(x)
    y = jnp.swapaxes(
      MLP(self.tokens, self.token_inter, name="token_mlp")(jnp.swapaxes(y, 1, 2)), 1, 2
    )
    z = nn.LayerNorm(LN_EPS, name="ln2")(x + y)
    z = MLP(self.hidden, self.hidden_inter, name="channel_mlp")(z)
    return x + y + z


def _global_sum(x, axis_name):
  x = jnp.sum(x, axis=0)
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def ema_codebook_update(stats, onehot, z, *, decay, eps, axis_name=None):
  """One EMA step of the codebook statistics (see the module docstring); pure.

  stats: {'cluster_size' [K], 'ema_w' [K, D], 'embedding' [K, D]}; onehot [M, K]; z [M, D] (this
  device's share of the batch; summed over `axis_name` when given). Returns the new stats.
  """
  counts = _global_sum(onehot, axis_name)
  dw = onehot.T @ z
  if axis_name is not None:
    dw = jax.lax.psum(dw, axis_name)
  size = decay * stats["cluster_size"] + (1 - decay) * counts
  n = jnp.sum(size)
  size = (size + eps) / (n + size.shape[0] * eps) * n
  ema_w = decay * stats["ema_w"] + (1 - decay) * dw
  return {"cluster_size": size, "ema_w": ema_w, "embedding": ema_w / size[:, None]}


class PoseTokenizer(nn.Module):
  """The VQ-VAE pose tokenizer. Methods (call through `apply(..., method=...)`):

  encode(rotmat [B, J, 3, 3]) -> z [B, N, D]
  quantize(z, train) -> dict(codes [B, N, D] straight-through, indices [B, N] int32,
      commitment_loss [], perplexity []); train=True with the `"codebook"` collection mutable
      updates the EMA codebook
  decode(codes [B, N, D]) -> rotmat [B, J, 3, 3] (not orthonormalised)
  soft_decode(logits [B, N, K]) -> rotmat [B, J, 3, 3]
  __call__(rotmat, train) -> quantize's dict + recon [B, J, 3, 3], z
  """

  config: PoseCodebookConfig = PoseCodebookConfig()

  def setup(self):
    c = self.config
    self.start_embed = Dense(c.enc_hidden, "start_embed", c.input_dim)
    self.encoder = [
      Mixer(c.enc_hidden, c.enc_hidden_inter, c.num_joints, c.enc_token_inter, name=f"encoder_{i}")
      for i in range(c.enc_depth)
    ]
    self.encoder_norm = nn.LayerNorm(LN_EPS, name="encoder_norm")
    self.token_mlp = Dense(c.num_tokens, "token_mlp", c.num_joints)
    self.feature_embed = Dense(c.code_dim, "feature_embed", c.enc_hidden)
    self.decoder_token_mlp = Dense(c.num_joints, "decoder_token_mlp", c.num_tokens)
    self.decoder_start = Dense(c.dec_hidden, "decoder_start", c.code_dim)
    self.decoder = [
      Mixer(c.dec_hidden, c.dec_hidden_inter, c.num_joints, c.dec_token_inter, name=f"decoder_{i}")
      for i in range(c.dec_depth)
    ]
    self.decoder_norm = nn.LayerNorm(LN_EPS, name="decoder_norm")
    self.recover_embed = Dense(c.input_dim, "recover_embed", c.dec_hidden)
    shape = (c.codebook_size, c.code_dim)
    normal = lambda: jax.random.normal(self.make_rng("params"), shape)
    self.embedding = self.variable(COLLECTION, "embedding", normal)
    self.ema_w = self.variable(COLLECTION, "ema_w", normal)
    self.cluster_size = self.variable(
      COLLECTION, "cluster_size", lambda: jnp.zeros((c.codebook_size,))
    )

  def encode(self, rotmat):
    b = rotmat.shape[0]
    h = self.start_embed(jnp.reshape(rotmat, (b, self.config.num_joints, self.config.input_dim)))
    for block in self.encoder:
      h = block(h)
    h = self.encoder_norm(h)
    h = jnp.swapaxes(self.token_mlp(jnp.swapaxes(h, 1, 2)), 1, 2)
    return self.feature_embed(h)

  def quantize(self, z, train: bool = False):
    c = self.config
    b, n, d = z.shape
    flat = jnp.reshape(z, (b * n, d))
    book = self.embedding.value
    dist = jnp.sum(flat**2, axis=1, keepdims=True) + jnp.sum(book**2, axis=1) - 2 * flat @ book.T
    indices = jnp.argmin(dist, axis=1)
    onehot = jax.nn.one_hot(indices, c.codebook_size, dtype=flat.dtype)
    q = book[indices]
    commitment = jnp.mean(jnp.square(jax.lax.stop_gradient(q) - flat))
    if c.axis_name is not None:
      commitment = jax.lax.pmean(commitment, c.axis_name)
    total = _global_sum(jnp.ones((b * n,)), c.axis_name)
    probs = _global_sum(onehot, c.axis_name) / total
    perplexity = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))
    if train and self.is_mutable_collection(COLLECTION) and not self.is_initializing():
      stats = {
        "cluster_size": self.cluster_size.value,
        "ema_w": self.ema_w.value,
        "embedding": book,
      }
      new = ema_codebook_update(
        stats,
        onehot,
        jax.lax.stop_gradient(flat),
        decay=c.ema_decay,
        eps=c.laplace_eps,
        axis_name=c.axis_name,
      )
      self.cluster_size.value = new["cluster_size"]
      self.ema_w.value = new["ema_w"]
      self.embedding.value = new["embedding"]
    codes = flat + jax.lax.stop_gradient(q - flat)
    return {
      "codes": jnp.reshape(codes, (b, n, d)),
      "indices": jnp.reshape(indices, (b, n)).astype(jnp.int32),
      "commitment_loss": commitment,
      "perplexity": perplexity,
    }

  def decode(self, codes):
    c = self.config
    h = jnp.swapaxes(self.decoder_token_mlp(jnp.swapaxes(codes, 1, 2)), 1, 2)
    h = self.decoder_start(h)
    for block in self.decoder:
      h = block(h)
    out = self.recover_embed(self.decoder_norm(h))
    return jnp.reshape(out, (codes.shape[0], c.num_joints, 3, 3))

  def soft_codes(self, logits):
    """softmax(logits [B, N, K]) @ codebook -> [B, N, D]."""
    return jax.nn.softmax(logits, axis=-1) @ self.embedding.value

  def soft_decode(self, logits):
    return self.decode(self.soft_codes(logits))

  def __call__(self, rotmat, train: bool = False):
    z = self.encode(rotmat)
    out = self.quantize(z, train)
    return dict(out, z=z, recon=self.decode(out["codes"]))


def smooth_l1(pred, target, beta: float):
  """PCT's `JointS1Loss` element-wise smooth L1 (Huber / beta), mean over all elements."""
  err = jnp.abs(pred - target)
  return jnp.mean(jnp.where(err < beta, 0.5 * err**2 / beta, err - 0.5 * beta))


def tokenizer_loss(config: PoseCodebookConfig, out: dict, rotmat):
  """PCT `Tokenizer_loss`: smooth-L1 reconstruction + commitment_weight x e-latent loss."""
  rec = smooth_l1(out["recon"], jnp.reshape(rotmat, out["recon"].shape), config.reconstruction_beta)
  total = rec + config.commitment_weight * out["commitment_loss"]
  return total, {"reconstruction": rec, "commitment": out["commitment_loss"]}
