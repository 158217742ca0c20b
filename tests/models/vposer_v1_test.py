"""VPoser v1 (human_body_prior cvpr19 `vposer_smpl.py`): equality with a PyTorch oracle written here
from the documented architecture (research/dpmesh.md section 8; named `bodyprior_*` attributes,
LeakyReLU 0.2, `ContinousRotReprDecoder`), weights converted from its `state_dict()` key layout;
the snapshot file through the restricted unpickler; strict conversion; DPMesh's hand padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.convert.common import ConversionError
from jhmr.convert.vposer_v1 import convert_vposer_v1, load_vposer_v1
from jhmr.models.vposer_v1 import VPOSER_V1, VPoserV1, decoder_variables, dpmesh_body_rotmat
from tests.torch_reference import rel_err

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
APPLY = jax.jit(VPOSER_V1.apply, static_argnames="method")


# -- the oracle: the cvpr19 VPoser's module names and forward ------------------------------------


def rot_repr_decode(x):
  """ContinousRotReprDecoder: [N, 6] read as view(-1, 3, 2) -> Gram-Schmidt columns [N, 3, 3]."""
  x = x.view(-1, 3, 2)
  b1 = F.normalize(x[:, :, 0], dim=1)
  b2 = F.normalize(x[:, :, 1] - torch.sum(b1 * x[:, :, 1], dim=1, keepdim=True) * b1, dim=-1)
  return torch.stack([b1, b2, torch.cross(b1, b2, dim=1)], dim=-1)


class TorchVPoserV1(nn.Module):
  def __init__(self, num_neurons=512, latentD=32, num_joints=21):
    super().__init__()
    n_features = num_joints * 3
    self.num_joints = num_joints
    self.bodyprior_enc_bn1 = nn.BatchNorm1d(n_features)
    self.bodyprior_enc_fc1 = nn.Linear(n_features, num_neurons)
    self.bodyprior_enc_bn2 = nn.BatchNorm1d(num_neurons)
    self.bodyprior_enc_fc2 = nn.Linear(num_neurons, num_neurons)
    self.bodyprior_enc_mu = nn.Linear(num_neurons, latentD)
    self.bodyprior_enc_logvar = nn.Linear(num_neurons, latentD)
    self.dropout = nn.Dropout(p=0.1)
    self.bodyprior_dec_fc1 = nn.Linear(latentD, num_neurons)
    self.bodyprior_dec_fc2 = nn.Linear(num_neurons, num_neurons)
    self.bodyprior_dec_out = nn.Linear(num_neurons, num_joints * 6)

  def encode(self, pose):
    x = self.bodyprior_enc_bn1(pose.view(pose.size(0), -1))
    x = self.bodyprior_enc_bn2(F.leaky_relu(self.bodyprior_enc_fc1(x), negative_slope=0.2))
    x = F.leaky_relu(self.bodyprior_enc_fc2(self.dropout(x)), negative_slope=0.2)
    return self.bodyprior_enc_mu(x), F.softplus(self.bodyprior_enc_logvar(x))

  def decode_6d(self, z):
    x = F.leaky_relu(self.bodyprior_dec_fc1(z), negative_slope=0.2)
    x = F.leaky_relu(self.bodyprior_dec_fc2(self.dropout(x)), negative_slope=0.2)
    return self.bodyprior_dec_out(x)

  def decode(self, z):
    """z [N, latent] -> matrot [N, 1, J, 9] (v1's output layout)."""
    return rot_repr_decode(self.decode_6d(z)).view(-1, 1, self.num_joints, 9)


def make_oracle(seed=0, **sizes):
  """A TorchVPoserV1 with random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  model = TorchVPoserV1(**sizes)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm1d):
        m.running_mean.normal_(0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  return model.eval()


def scipy_axis_angle(matrot):
  """Reference log map in float64 [..., 3, 3] -> [..., 3]."""
  flat = np.asarray(matrot, np.float64).reshape(-1, 3, 3)
  return Rotation.from_matrix(flat).as_rotvec().reshape(*np.shape(matrot)[:-2], 3)


@pytest.fixture(scope="module")
def oracle():
  model = make_oracle()
  state = model.state_dict()
  return model, state, convert_vposer_v1(state)


def _poses(n, seed=0, scale=0.4):
  return np.random.default_rng(seed).normal(scale=scale, size=(n, 63)).astype(np.float32)


def test_encode_decode_match_torch(oracle):
  tv, _, variables = oracle
  x = _poses(8)
  z = np.random.default_rng(1).normal(size=(8, 32)).astype(np.float32)
  with torch.no_grad():
    mu, scale = tv.encode(torch.from_numpy(x).view(8, 1, 21, 3))
    rot = tv.decode(torch.from_numpy(z)).numpy().reshape(8, 21, 3, 3)
    six = tv.decode_6d(torch.from_numpy(z)).numpy()
  got_mu, got_scale = APPLY(variables, x.reshape(8, 1, 21, 3), method=VPoserV1.encode)
  assert rel_err(got_mu, mu.numpy()) < 1e-5
  assert rel_err(got_scale, scale.numpy()) < 1e-5
  # The network to 1e-5; Gram-Schmidt then amplifies float32 rounding by up to 1 / |a2 - proj|
  # on the random weights' ill-conditioned 6D pairs (measured: 6e-6 .. 1.2e-5 over seeds).
  got_6d = APPLY(variables, z, method=VPoserV1.decode_6d)
  assert rel_err(got_6d, six.reshape(8, 21, 6)) < 1e-5
  out = APPLY(variables, z, method=VPoserV1.decode)
  assert rel_err(out["pose_body_matrot"], rot) < 5e-5
  aa = scipy_axis_angle(rot)
  ok = np.linalg.norm(aa, axis=-1) < np.pi - 1e-2  # away from the half-turn ambiguity
  assert ok.mean() > 0.9
  assert rel_err(np.asarray(out["pose_body"])[ok], aa[ok]) < 5e-5
  # the forward pass: z = mu + scale * noise, decoded
  noise = np.random.default_rng(2).normal(size=(8, 32)).astype(np.float32)
  fwd = APPLY(variables, x, noise)
  zz = mu.numpy() + scale.numpy() * noise
  assert rel_err(fwd["z"], zz) < 1e-5
  with torch.no_grad():
    ref = tv.decode(torch.from_numpy(zz)).numpy().reshape(8, 21, 3, 3)
  assert rel_err(fwd["pose_body_matrot"], ref) < 5e-5


def test_decoder_alone_and_dpmesh_hands(oracle):
  tv, _, variables = oracle
  z = np.random.default_rng(3).normal(size=(4, 32)).astype(np.float32)
  dec = decoder_variables(variables)
  assert set(dec["params"]) == {"dec_fc1", "dec_fc2", "dec_out"}
  init_decoder = functools.partial(VPOSER_V1.init, method=VPoserV1.decode)
  init = jax.eval_shape(init_decoder, jax.random.key(0), z)
  assert set(init) == {"params"} and set(init["params"]) == set(dec["params"])
  out = APPLY(dec, z, method=VPoserV1.decode)
  rotmat = np.asarray(dpmesh_body_rotmat(out))
  with torch.no_grad():
    ref = tv.decode(torch.from_numpy(z)).numpy().reshape(4, 21, 3, 3)
  assert rotmat.shape == (4, 23, 3, 3)
  assert rel_err(rotmat[:, :21], ref) < 5e-5
  np.testing.assert_array_equal(rotmat[:, 21:], np.broadcast_to(np.eye(3), (4, 2, 3, 3)))
  with pytest.raises(ValueError, match="decoder modules"):
    decoder_variables({"params": {"enc_fc1": {}}})


def test_snapshot_file_and_folder(oracle, tmp_path):
  _, state, variables = oracle
  snapshots = tmp_path / "vposer_v1_0" / "snapshots"
  snapshots.mkdir(parents=True)
  path = snapshots / "TR00_E096.pt"
  torch.save(state, path)  # the trainer's `torch.save(model.state_dict(), ...)`
  for source in (path, tmp_path / "vposer_v1_0"):
    jax.tree.map(np.testing.assert_array_equal, load_vposer_v1(source), variables)
  # the 2019 release predates torch 1.6's zip format: the legacy format reads the same
  legacy = tmp_path / "TR00_E096_legacy.pt"
  torch.save(state, legacy, _use_new_zipfile_serialization=False)
  jax.tree.map(np.testing.assert_array_equal, load_vposer_v1(legacy), variables)
  assert set(variables) == {"params", "batch_stats"}
  (snapshots / "TR00_E097.pt").write_bytes(b"")
  with pytest.raises(ConversionError, match="expected one VPoser v1 snapshot"):
    load_vposer_v1(tmp_path / "vposer_v1_0")


def test_converter_refusals(oracle):
  _, state, _ = oracle
  missing = {k: v for k, v in state.items() if k != "bodyprior_dec_out.bias"}
  with pytest.raises(ConversionError, match="missing: params/dec_out/bias"):
    convert_vposer_v1(missing)
  with pytest.raises(ConversionError, match="missing: batch_stats/enc_bn2/var"):
    convert_vposer_v1({k: v for k, v in state.items() if k != "bodyprior_enc_bn2.running_var"})
  with pytest.raises(ConversionError, match="unexpected keys: bodyprior_dec_fc3.weight"):
    convert_vposer_v1({**state, "bodyprior_dec_fc3.weight": torch.zeros(3)})
  with pytest.raises(ConversionError, match="unexpected keys: module.bodyprior_enc_mu.weight"):
    convert_vposer_v1({**state, "module.bodyprior_enc_mu.weight": torch.zeros(3)})
  with pytest.raises(ConversionError, match="mis-shaped.*enc_mu/kernel.*bodyprior_enc_mu"):
    convert_vposer_v1({**state, "bodyprior_enc_mu.weight": torch.zeros(16, 512)})
  # sizes come from the model: a 16-neuron model refuses the 512-neuron snapshot
  with pytest.raises(ConversionError, match="mis-shaped.*dec_fc1/kernel"):
    convert_vposer_v1(state, VPoserV1(num_neurons=16))
  # BatchNorm counters are optional (torch < 0.4.1 saved none)
  assert any(k.endswith("num_batches_tracked") for k in state)
  counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  jax.tree.map(np.testing.assert_array_equal, convert_vposer_v1(counters), convert_vposer_v1(state))
  # a prefix must be on every key
  prefixed = {f"vposer.vposer.{k}": v for k, v in state.items()}
  convert_vposer_v1(prefixed, prefix="vposer.vposer.")
  with pytest.raises(ConversionError, match="1 unexpected keys: bodyprior_enc_fc1.weight$"):
    bare = {**prefixed, "bodyprior_enc_fc1.weight": torch.zeros(3)}
    convert_vposer_v1(bare, prefix="vposer.vposer.")


def test_bad_inputs(oracle):
  _, _, variables = oracle
  with pytest.raises(ValueError, match=r"\[B, 63\] or \[B, 21, 3\]"):
    VPOSER_V1.apply(variables, np.zeros((2, 23, 3)), method=VPoserV1.encode)
  with pytest.raises(ValueError, match=r"z must be \[B, 32\]"):
    VPOSER_V1.apply(variables, jnp.zeros((2, 16)), method=VPoserV1.decode)
