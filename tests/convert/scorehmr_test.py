"""Official ScoreHMR checkpoint conversion, proven against a PyTorch `FC` written here from the
documented architecture (research/scorehmr.md sections 1 and 7)."""

import math

import jax
import numpy as np
import pytest
import torch
from torch import nn

from jhmr.convert.common import ConversionError
from jhmr.convert.scorehmr import (
  SCHEDULE_BUFFERS,
  convert_checkpoint,
  convert_network,
  load_checkpoint,
  target_params,
)
from jhmr.diffusion.schedules import cosine_betas, linear_betas
from jhmr.models.score_net import ScoreNet, count_params, denoise_cached, encode_condition


class TorchSinusoidalPosEmb(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.dim = dim

  def forward(self, t):
    half = self.dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class TorchMLP(nn.Module):
  def __init__(self, inp, hidden, out):
    super().__init__()
    self.layer_norm1 = nn.LayerNorm(inp)
    self.linear_layer1 = nn.Linear(inp, hidden)
    self.layer_norm2 = nn.LayerNorm(hidden)
    self.linear_layer2 = nn.Linear(hidden, out)
    self.act = nn.GELU()

  def forward(self, z):
    h = self.act(self.linear_layer1(self.layer_norm1(z)))
    return self.act(self.linear_layer2(self.layer_norm2(h)))


class TorchResMLPBlock(nn.Module):
  def __init__(self, dim, time_dim, hidden, cond_dim):
    super().__init__()
    self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * dim))
    self.block = TorchMLP(dim + cond_dim, hidden, dim)

  def forward(self, x, tau, c):
    scale, shift = self.mlp(tau).chunk(2, dim=-1)
    x = x * (scale + 1) + shift
    z = torch.cat([x, c], dim=-1) if c is not None else x
    return x + self.block(z)


class TorchFC(nn.Module):
  def __init__(
    self,
    d=144,
    cond=3072,
    hidden=1024,
    blocks=3,
    use_betas=False,
    bd=10,
    bcond=1536,
    bblocks=2,
    shared=False,
  ):
    super().__init__()
    self.d, self.cond, self.use_betas, self.shared = d, cond, use_betas, shared
    self.time_mlp = nn.Sequential(
      TorchSinusoidalPosEmb(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, 4 * d)
    )
    self.init_mlp = nn.Linear(d, d)
    self.blocks = nn.ModuleList([TorchResMLPBlock(d, 4 * d, hidden, cond) for _ in range(blocks)])
    self.final_mlp = nn.Linear(d, d)
    if use_betas:
      self.time_mlp_betas = nn.Sequential(
        TorchSinusoidalPosEmb(bd), nn.Linear(bd, 4 * bd), nn.GELU(), nn.Linear(4 * bd, 4 * bd)
      )
      self.init_mlp_betas = nn.Linear(bd, bd)
      self.blocks_betas = nn.ModuleList(
        [TorchResMLPBlock(bd, 4 * bd, hidden, bcond) for _ in range(bblocks)]
      )
      self.final_mlp_betas = nn.Linear(bd, bd)

  def forward(self, x, t, c=None):
    cp, cb = c, c
    if self.use_betas and not self.shared and c is not None:
      cp, cb = c[:, : self.cond], c[:, self.cond :]
    tau = self.time_mlp(t)
    h = self.init_mlp(x[:, : self.d])
    for blk in self.blocks:
      h = blk(h, tau, cp if self.cond else None)
    out = self.final_mlp(h)
    if not self.use_betas:
      return out
    taub = self.time_mlp_betas(t)
    hb = self.init_mlp_betas(x[:, self.d :])
    for blk in self.blocks_betas:
      hb = blk(hb, taub, cb)
    return torch.cat([out, self.final_mlp_betas(hb)], dim=-1)


def _inputs(net, batch=5, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, net.input_dim)).astype(np.float32)
  t = rng.integers(0, 1000, size=(batch,))
  c = (
    rng.normal(size=(batch, net.total_cond_dim)).astype(np.float32) if net.total_cond_dim else None
  )
  return x, t, c


def _torch_fc(net: ScoreNet, seed=0):
  torch.manual_seed(seed)
  fc = TorchFC(
    d=net.pose_dim,
    cond=net.cond_dim,
    hidden=net.hidden,
    blocks=net.num_blocks,
    use_betas=net.use_betas,
    bd=net.betas_dim,
    bcond=net.betas_cond_dim,
    bblocks=net.num_blocks_betas,
    shared=net.shared_cond,
  )
  # Non-trivial LayerNorm affine parameters so a scale/bias mix-up cannot pass.
  with torch.no_grad():
    for name, p in fc.named_parameters():
      if "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return fc.eval()


def _torch_eps(fc, x, t, c):
  with torch.no_grad():
    out = fc(torch.from_numpy(x), torch.from_numpy(t), None if c is None else torch.from_numpy(c))
  return out.numpy()


TINY = {
  "pare": dict(cond_dim=24, hidden=32),
  "unconditional": dict(cond_dim=0, hidden=32, num_blocks=2),
  "betas": dict(cond_dim=24, hidden=32, use_betas=True, betas_cond_dim=12),
  "betas_shared": dict(cond_dim=20, hidden=32, use_betas=True, betas_cond_dim=20, shared_cond=True),
}


@pytest.mark.parametrize("variant", sorted(TINY))
def test_converted_tiny_network_matches_torch(variant):
  net = ScoreNet(**TINY[variant])
  fc = _torch_fc(net)
  params = convert_network(fc.state_dict(), net)
  x, t, c = _inputs(net)
  got = jax.jit(net.apply)(params, x, t, c)
  np.testing.assert_allclose(got, _torch_eps(fc, x, t, c), atol=2e-5, rtol=1e-5)


def test_cached_path_matches_torch():
  net = ScoreNet(**TINY["pare"])
  fc = _torch_fc(net, seed=3)
  params = convert_network(fc.state_dict(), net)
  x, _, c = _inputs(net, batch=4)
  t = np.full((4,), 37)
  got = denoise_cached(params, x, 37, encode_condition(params, c, net), net)
  np.testing.assert_allclose(got, _torch_eps(fc, x, t, c), atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def full_size():
  net = ScoreNet()
  return net, _torch_fc(net, seed=1)


def test_full_size_key_set_and_forward(full_size):
  net, fc = full_size
  state = fc.state_dict()
  assert sum(v.numel() for v in state.values()) == 11_307_024
  params = convert_network(state, net)
  assert count_params(params) == 11_307_024
  x, t, c = _inputs(net, batch=2)
  got = jax.jit(net.apply)(params, x, t, c)
  np.testing.assert_allclose(got, _torch_eps(fc, x, t, c), atol=5e-5, rtol=1e-4)


def _diffusion_state(fc, prefix):
  betas = cosine_betas(1000)
  buffers = {name: torch.zeros(1000) for name in SCHEDULE_BUFFERS}
  buffers["betas"] = torch.tensor(betas, dtype=torch.float32)
  buffers["alphas_cumprod"] = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
  state = {f"{prefix}model.{k}": v for k, v in fc.state_dict().items()}
  state.update({f"{prefix}{k}": v for k, v in buffers.items()})
  return state


def test_checkpoint_file_round_trip(tmp_path):
  net = ScoreNet(**TINY["pare"])
  fc = _torch_fc(net, seed=5)
  ema = {"initted": torch.tensor(True), "step": torch.tensor(1000)}
  ema.update(_diffusion_state(fc, "ema_model."))
  ema.update(_diffusion_state(_torch_fc(net, seed=6), "online_model."))
  path = tmp_path / "model-100.pt"
  torch.save({"step": 10, "model": _diffusion_state(_torch_fc(net, seed=7), ""), "ema": ema}, path)
  params = load_checkpoint(path, net)
  x, t, c = _inputs(net)
  np.testing.assert_allclose(net.apply(params, x, t, c), _torch_eps(fc, x, t, c), atol=2e-5)
  online = load_checkpoint(path, net, entry="model")
  assert not np.allclose(
    online["params"]["init_mlp"]["kernel"], params["params"]["init_mlp"]["kernel"]
  )


def _mutated(state, fn):
  state = dict(state)
  fn(state)
  return state


@pytest.mark.parametrize(
  "mutation, message",
  [
    (lambda s: s.pop("blocks.1.block.linear_layer2.bias"), "missing"),
    (lambda s: s.__setitem__("blocks.3.mlp.1.bias", torch.zeros(288)), "unexpected"),
    (lambda s: s.__setitem__("init_mlp.bias", torch.zeros(7)), "mis-shaped"),
    (lambda s: s.__setitem__("mystery.weight", torch.zeros(3)), "unexpected"),
  ],
)
def test_bad_network_keys_raise(mutation, message):
  net = ScoreNet(**TINY["pare"])
  state = _mutated(_torch_fc(net).state_dict(), mutation)
  with pytest.raises(ConversionError, match=message):
    convert_network(state, net)


def test_wrong_variant_raises():
  net = ScoreNet(**TINY["betas"])
  with pytest.raises(ConversionError, match="missing"):
    convert_network(_torch_fc(ScoreNet(**TINY["pare"])).state_dict(), net)


def test_bad_checkpoint_structure_raises():
  net = ScoreNet(**TINY["pare"])
  fc = _torch_fc(net)
  good = _diffusion_state(fc, "ema_model.")
  with pytest.raises(ConversionError, match="no 'ema' entry"):
    convert_checkpoint({"model": good}, net)
  with pytest.raises(ConversionError, match="unexpected keys in the EMA"):
    convert_checkpoint({"ema": {**good, "stray": torch.zeros(1)}}, net)
  missing = {k: v for k, v in good.items() if not k.endswith("p2_loss_weight")}
  with pytest.raises(ConversionError, match="missing schedule buffers"):
    convert_checkpoint({"ema": missing}, net)
  linear = dict(good)
  linear["ema_model.alphas_cumprod"] = torch.tensor(
    np.cumprod(1 - linear_betas(1000)), dtype=torch.float32
  )
  with pytest.raises(ConversionError, match="cosine"):
    convert_checkpoint({"ema": linear}, net)


def test_target_tree_shapes_match_torch_full_size(full_size):
  net, fc = full_size
  flat = jax.tree_util.tree_flatten_with_path(target_params(net))[0]
  assert len(flat) == len(fc.state_dict())
