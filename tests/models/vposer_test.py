"""VPoser v2 (V02_05): equality with a PyTorch oracle written here from the documented architecture
(weights converted from the V02_05 key layout), strict conversion, hardness, latent augmentation,
orientation / betas jitter, and a short training run on CMU poses through the shared trainer."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.convert.common import ConversionError
from jhmr.convert.vposer import convert_vposer, load_vposer
from jhmr.geometry import rotations
from jhmr.models import vposer as vp
from jhmr.models.vposer import VPoser

ROOT = pathlib.Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
APPLY = jax.jit(VPoser().apply, static_argnames="method")


# -- the oracle: human_body_prior V02_05's module tree (names and Sequential indices) ------------


class BatchFlatten(nn.Module):
  def forward(self, x):
    return x.view(x.shape[0], -1)


class NormalDistDecoder(nn.Module):
  def __init__(self, num_feat_in, latent_dim):
    super().__init__()
    self.mu = nn.Linear(num_feat_in, latent_dim)
    self.logvar = nn.Linear(num_feat_in, latent_dim)

  def forward(self, x):
    return torch.distributions.normal.Normal(self.mu(x), F.softplus(self.logvar(x)))


class ContinousRotReprDecoder(nn.Module):
  def forward(self, x):
    x = x.view(-1, 3, 2)
    b1 = F.normalize(x[:, :, 0], dim=1)
    b2 = F.normalize(x[:, :, 1] - torch.sum(b1 * x[:, :, 1], dim=1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=1)], dim=-1)


class TorchVPoser(nn.Module):
  def __init__(self, n=512, latent=32, joints=21):
    super().__init__()
    self.encoder_net = nn.Sequential(
      BatchFlatten(),
      nn.BatchNorm1d(joints * 3),
      nn.Linear(joints * 3, n),
      nn.LeakyReLU(),
      nn.BatchNorm1d(n),
      nn.Dropout(0.1),
      nn.Linear(n, n),
      nn.Linear(n, n),
      NormalDistDecoder(n, latent),
    )
    self.decoder_net = nn.Sequential(
      nn.Linear(latent, n),
      nn.LeakyReLU(),
      nn.Dropout(0.1),
      nn.Linear(n, n),
      nn.LeakyReLU(),
      nn.Linear(n, joints * 6),
      ContinousRotReprDecoder(),
    )

  def decode(self, z):
    return self.decoder_net(z).view(z.shape[0], -1, 3, 3)


class Trainer(nn.Module):  # the Lightning module: the model sits under `vp_model.`
  def __init__(self):
    super().__init__()
    self.vp_model = TorchVPoser()


@pytest.fixture(scope="module")
def oracle():
  torch.manual_seed(0)
  trainer = Trainer()
  with torch.no_grad():
    for module in trainer.modules():
      if isinstance(module, nn.BatchNorm1d):
        module.running_mean.normal_(0, 0.3)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
  trainer.eval()
  state = trainer.state_dict()
  return trainer.vp_model, state, convert_vposer(state)


def _poses(n, seed=0, scale=0.4):
  return np.random.default_rng(seed).normal(scale=scale, size=(n, 63)).astype(np.float32)


def test_encode_decode_match_torch(oracle):
  tv, _, variables = oracle
  x = _poses(8)
  with torch.no_grad():
    q = tv.encoder_net(torch.from_numpy(x))
    z = torch.from_numpy(np.random.default_rng(1).normal(size=(8, 32)).astype(np.float32))
    rot = tv.decode(z).numpy()
  mu, scale = APPLY(variables, x.reshape(8, 21, 3), method=VPoser.encode)
  np.testing.assert_allclose(mu, q.mean.numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(scale, q.scale.numpy(), atol=1e-4, rtol=1e-4)
  out = APPLY(variables, z.numpy(), method=VPoser.decode)
  np.testing.assert_allclose(out["pose_body_matrot"], rot, atol=1e-4)
  # axis-angle (matrot2aa): scipy's log map in float64, away from the half-turn ambiguity
  aa = Rotation.from_matrix(rot.reshape(-1, 3, 3).astype(np.float64)).as_rotvec()
  ok = np.linalg.norm(aa, axis=-1) < np.pi - 1e-2
  np.testing.assert_allclose(np.asarray(out["pose_body"]).reshape(-1, 3)[ok], aa[ok], atol=1e-4)
  assert out["pose_body"].shape == (8, 21, 3) and ok.mean() > 0.9
  # the forward pass: z = mu + scale * noise
  noise = np.random.default_rng(2).normal(size=(8, 32)).astype(np.float32)
  fwd = APPLY(variables, x, noise)
  np.testing.assert_allclose(fwd["z"], q.mean.numpy() + q.scale.numpy() * noise, atol=1e-4)


def test_checkpoint_file_and_stripped_keys(oracle, tmp_path):
  _, state, variables = oracle
  path = tmp_path / "V02_05_epoch=08_val_loss=0.03.ckpt"
  torch.save({"epoch": 8, "global_step": 10, "state_dict": state}, path)
  loaded = load_vposer(path)
  stripped = convert_vposer({k.removeprefix("vp_model."): v for k, v in state.items()})
  for tree in (loaded, stripped):
    jax.tree.map(np.testing.assert_array_equal, tree, variables)
  assert set(variables) == {"params", "batch_stats"}


def test_converter_refusals(oracle):
  _, state, _ = oracle
  missing = {k: v for k, v in state.items() if "decoder_net.5.bias" not in k}
  with pytest.raises(ConversionError, match="missing: params/decoder_out/bias"):
    convert_vposer(missing)
  with pytest.raises(ConversionError, match="unexpected keys: vp_model.extra.weight"):
    convert_vposer({**state, "vp_model.extra.weight": torch.zeros(3)})
  with pytest.raises(ConversionError, match="both map to"):
    convert_vposer({**state, "encoder_net.2.weight": state["vp_model.encoder_net.2.weight"]})
  bad = dict(state, **{"vp_model.encoder_net.8.mu.weight": torch.zeros(16, 512)})
  with pytest.raises(ConversionError, match="mis-shaped.*encoder_mu/kernel"):
    convert_vposer(bad)
  # the trainer's body-model buffers and BatchNorm counters are skipped
  convert_vposer({**state, "bm_train.init_v_template": torch.zeros(1, 10, 3)})


def test_bad_inputs(oracle):
  _, _, variables = oracle
  model = VPoser()
  with pytest.raises(ValueError, match=r"\[B, 63\] or \[B, 21, 3\]"):
    model.apply(variables, np.zeros((2, 23, 3)), method=VPoser.encode)
  with pytest.raises(ValueError, match=r"z must be \[B, 32\]"):
    model.apply(variables, np.zeros((2, 16)), method=VPoser.decode)
  with pytest.raises(ValueError, match="batch_stats"):
    vp.hardness(variables["params"], _poses(2), jax.random.key(0))
  with pytest.raises(ValueError, match="variant"):
    vp.augment_latent(variables, _poses(2), jax.random.key(0), variant="dapa")
  with pytest.raises(ValueError, match="SMPL pose"):
    vp.vposer_input(np.zeros((2, 22, 3)))
  with pytest.raises(ValueError, match="global_orient"):
    vp.jitter_orient_betas(jax.random.key(0), np.zeros((2, 6)), np.zeros((2, 10)))


def test_vposer_input_selects_joints_1_to_21():
  full = np.arange(2 * 72, dtype=np.float32).reshape(2, 72)
  expected = full[:, 3:66]
  np.testing.assert_array_equal(vp.vposer_input(full), expected)
  np.testing.assert_array_equal(vp.vposer_input(full.reshape(2, 24, 3)), expected)
  np.testing.assert_array_equal(vp.vposer_input(full.reshape(2, 24, 3)[:, 1:]), expected)


def test_hardness_is_one_seeded_sample(oracle):
  tv, _, variables = oracle
  x = _poses(16, scale=0.8)
  key = jax.random.key(3)
  score = vp.hardness(variables, x, key)
  np.testing.assert_array_equal(score, vp.hardness(variables, x, key))
  assert not np.allclose(score, vp.hardness(variables, x, jax.random.key(4)))
  with torch.no_grad():
    q = tv.encoder_net(torch.from_numpy(x))
  eps = np.asarray(jax.random.normal(key, (16, 32)))
  z = q.mean.numpy() + q.scale.numpy() * eps
  np.testing.assert_allclose(score, np.sum(z**2, -1), rtol=1e-4)
  assert score.shape == (16,)
  np.testing.assert_array_equal(vp.is_hard(np.array([29.0, 30.0, 30.5])), [False, False, True])
  np.testing.assert_array_equal(vp.is_hard(np.array([5.0, 12.0]), tau=10), [False, True])


def test_vposer_prior_is_the_weighted_encoder_mean_norm(oracle):
  tv, _, variables = oracle
  x = _poses(6, seed=5, scale=0.6)
  root = np.zeros((6, 1, 3), np.float32)
  hands = np.random.default_rng(6).normal(scale=0.5, size=(6, 2, 3)).astype(np.float32)
  full = np.concatenate([root, x.reshape(6, 21, 3), hands], 1)  # [6, 24, 3], root first
  pose = rotations.axis_angle_to_matrix(jnp.asarray(full))
  prior = vp.VPoserPrior(variables, 2.5)
  with torch.no_grad():
    mu = tv.encoder_net(torch.from_numpy(x)).mean.numpy()
  np.testing.assert_allclose(prior(pose), 2.5 * np.sum(mu**2, -1), rtol=1e-4)
  # a pytree: the weight and the variables are traced leaves, the module is static
  doubled = jax.jit(lambda p, r: p(r))(prior.replace(weight=5.0), pose)
  np.testing.assert_allclose(doubled, 2 * np.asarray(prior(pose)), rtol=1e-5)
  with pytest.raises(ValueError, match=r"\[B, 24, 3, 3\]"):
    prior(pose[:, :10])


def test_latent_multiplier_statistics():
  key, n = jax.random.key(0), (20000, 32)
  paper = np.asarray(vp.latent_multiplier(key, n, "paper"))
  assert paper.min() >= 1.0 and paper.max() < 1.05
  assert abs(paper.mean() - 1.025) < 1e-3 and abs(paper.std() - 0.05 / np.sqrt(12)) < 1e-3
  released = np.asarray(vp.latent_multiplier(key, n, "released"))
  assert abs(released.mean() - 1.5) < 0.01 and abs(released.std() - 0.3) < 0.01
  bev = np.asarray(vp.latent_multiplier(key, n, "bev"))
  assert abs(bev.mean() - 1.0) < 0.02 and abs(bev.std() - 1.0) < 0.02
  custom = np.asarray(vp.latent_multiplier(key, n, "paper", s=0.5))
  assert custom.max() < 1.5 and custom.max() > 1.49


def test_augment_latent(oracle):
  tv, _, variables = oracle
  x = _poses(8)
  key = jax.random.key(5)
  out = vp.augment_latent(variables, x, key, variant="paper")
  again = vp.augment_latent(variables, x, key, variant="paper")
  np.testing.assert_array_equal(out["pose_body"], again["pose_body"])
  ratio = np.asarray(out["z_aug"] / out["z"])
  assert ratio.min() >= 1.0 - 1e-6 and ratio.max() < 1.05 + 1e-6
  with torch.no_grad():
    rot = tv.decode(torch.from_numpy(np.asarray(out["z_aug"]))).numpy()
  np.testing.assert_allclose(out["pose_body_matrot"], rot, atol=1e-4)
  # the same sample z for every variant (keys by name); only the multiplier differs
  rel = vp.augment_latent(variables, x, key, variant="released")
  np.testing.assert_array_equal(rel["z"], out["z"])
  assert float(np.mean(rel["z_aug"] / rel["z"])) == pytest.approx(1.5, abs=0.1)
  zero = vp.augment_latent(variables, x, key, s=0.0, variant="bev")
  np.testing.assert_allclose(zero["z_aug"], out["z"], atol=0)


def test_jitter_orient_betas():
  key = jax.random.key(7)
  orient = np.tile(np.array([[0.3, -1.0, 2.0]], np.float32), (20000, 1))
  betas = np.ones((20000, 10), np.float32)
  o, b = vp.jitter_orient_betas(key, orient, betas, "released")
  d = np.asarray(o - orient)
  assert abs(d.std() - np.deg2rad(10)) < 2e-3 and abs(d.mean()) < 2e-3
  assert abs(float(np.std(b)) - 0.1) < 2e-3 and abs(float(np.mean(b)) - 1.0) < 2e-3
  o, b = vp.jitter_orient_betas(key, orient, betas, "bev")
  np.testing.assert_allclose(np.std(np.asarray(o) / orient, 0), 0.1, atol=3e-3)
  o, b = vp.jitter_orient_betas(key, orient, betas, "paper")
  np.testing.assert_array_equal(o, orient)
  np.testing.assert_array_equal(b, betas)


def test_loss_terms_and_gradient():
  model = VPoser(num_neurons=32)
  x = jnp.asarray(_poses(4))
  variables = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((4, 32)))
  out = jax.jit(model.apply)(variables, x, jnp.zeros((4, 32)))
  total, terms = jax.jit(vp.vposer_loss)(out, x)
  kl = 0.5 * (out["scale"] ** 2 + out["mu"] ** 2 - 1) - jnp.log(out["scale"])
  np.testing.assert_allclose(terms["kl"], np.mean(np.sum(kl, -1)), rtol=1e-5)
  np.testing.assert_allclose(total, 0.005 * terms["kl"] + 2 * terms["matrot"], rtol=1e-6)
  # exact reconstruction: zero geodesic error with a finite gradient
  target = vp.rotations.axis_angle_to_matrix(x.reshape(4, 21, 3))
  g = jax.jit(jax.grad(lambda r: jnp.mean(vp.geodesic_distance(r, target))))(target)
  assert np.all(np.isfinite(g))
  assert float(jnp.mean(vp.geodesic_distance(target, target))) < 2e-3
  # with a body model: mesh + joints terms, extra terms switchable
  body_fn = lambda r: (r.reshape(4, -1, 3), r[:, :, 0])
  loss = jax.jit(lambda out, x: vp.vposer_loss(out, x, body_fn=body_fn, extra_terms=0.0))
  total, terms = loss(out, x)
  np.testing.assert_allclose(total, 0.005 * terms["kl"] + 4 * terms["mesh_rec"], rtol=1e-6)


def test_training_on_cmu_decreases_loss(shared_data_dir, tmp_path):
  sys.path.insert(0, str(ROOT))  # the `configs` package
  from configs.common import trainer_config
  from jhmr.data.cmu_mocap.dummy_data_generator import SKELETON
  from jhmr.train import trainer
  from jhmr.train.metrics import read_metrics
  from jhmr.train.vposer_task import cmu_vposer_poses, make_vposer_task

  root = shared_data_dir / "cmu_mocap"
  poses = cmu_vposer_poses(root, "train", subjects=["10", "11"], body_model=SKELETON, fps=10)
  held_out = cmu_vposer_poses(root, "test", subjects=["03"], body_model=SKELETON, fps=10)
  assert poses.shape[1:] == (63,) and len(poses) > 100 and len(held_out) > 10
  with pytest.raises(ValueError, match="none of the subjects"):
    cmu_vposer_poses(root, "train", subjects=["03"], body_model=SKELETON)

  model = VPoser(num_neurons=64)
  task = make_vposer_task(model, poses, extra_terms_until_step=20)
  config = trainer_config(steps=30, batch_size=32, learning_rate=3e-3)
  config.seed = 0
  config.train.update(log_every=10, checkpoint_every=30, progress=False, tensorboard=False)
  state = trainer.train(config, tmp_path, task)
  rows = [r for r in read_metrics(tmp_path) if "loss" in r]
  assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
  assert int(state.model_state["counters"]["step"]) == 30
  stats = state.model_state["batch_stats"]["encoder_bn_in"]["mean"]
  assert float(jnp.abs(stats).max()) > 0  # BatchNorm statistics were updated
  variables = {"params": state.params, "batch_stats": state.model_state["batch_stats"]}
  assert vp.hardness(variables, held_out, jax.random.key(0), model=model).shape == (len(held_out),)
  with pytest.raises(ValueError, match=r"poses must be \[N, 63\]"):
    make_vposer_task(model, poses[:, :60])
