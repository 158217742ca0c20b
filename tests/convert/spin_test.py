"""SPIN's HMR vs a PyTorch oracle, through `jhmr.convert.spin`; 6D layout, strictness, file reading.

The oracle is written here, not imported: SPIN's `models/hmr.py` builds on torchvision (and its
`hmr()` downloads ImageNet weights), and torchvision cannot be installed beside the pinned CPU
torch of the test extras. `ResNet` below is torchvision's ResNet v1.5 (Bottleneck, stride on the
3x3 conv) with torchvision's module names (`conv1`, `bn1`, `layer1..4.{i}.{conv1..3, bn1..3,
downsample.0, downsample.1}`), so its state dict has the key layout of torchvision `resnet50`
minus `fc`; `SpinHMR` adds SPIN's head line for line (`fc1`, `drop1`, `fc2`, `drop2`, `decpose`,
`decshape`, `deccam`, buffers `init_pose/shape/cam`, `AvgPool2d(7, stride 1)`, 3 iterations,
the (3, 2) 6D layout). It is ResNet-50's block layout at width 4 (and head width 32) so it stays
fast; weights AND BatchNorm running statistics are random, evaluated in eval mode, float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.convert import spin
from jhmr.convert.common import ConversionError
from jhmr.geometry import rotations
from tests.torch_reference import nchw, rel_err

torch = pytest.importorskip("torch")
nn = torch.nn

WIDTH, HIDDEN, BATCH = 4, 32, 2


# ----------------------------------------------------------------------------- PyTorch oracle


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.downsample = downsample

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """torchvision ResNet (v1.5) trunk, torchvision names, no `fc`; `width` 64 = resnet50."""

  def __init__(self, layers=(3, 4, 6, 3), width=64):
    super().__init__()
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, blocks in enumerate(layers):
      setattr(self, f"layer{i + 1}", self._make_layer(width * 2**i, blocks, 1 if i == 0 else 2))

  def _make_layer(self, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != 4 * planes:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
      )
    layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
    self.inplanes = 4 * planes
    layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def trunk(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def spin_rot6d_to_rotmat(x):
  """SPIN `utils/geometry.py` rot6d_to_rotmat: the (3, 2) layout."""
  x = x.view(-1, 3, 2)
  a1, a2 = x[:, :, 0], x[:, :, 1]
  b1 = nn.functional.normalize(a1)
  b2 = nn.functional.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
  return torch.stack((b1, b2, torch.cross(b1, b2, dim=1)), dim=-1)


class SpinHMR(ResNet):
  """SPIN `models/hmr.py` HMR: ResNet + avgpool 7 + iterative regressor with mean buffers."""

  def __init__(self, mean_params, layers=(3, 4, 6, 3), width=64, hidden=1024):
    super().__init__(layers, width)
    npose = 24 * 6
    self.avgpool = nn.AvgPool2d(7, stride=1)
    self.fc1 = nn.Linear(32 * width + npose + 13, hidden)
    self.drop1 = nn.Dropout()
    self.fc2 = nn.Linear(hidden, hidden)
    self.drop2 = nn.Dropout()
    self.decpose = nn.Linear(hidden, npose)
    self.decshape = nn.Linear(hidden, 10)
    self.deccam = nn.Linear(hidden, 3)
    self.register_buffer("init_pose", torch.from_numpy(mean_params["pose"][:]).unsqueeze(0))
    shape = mean_params["shape"][:].astype("float32")
    self.register_buffer("init_shape", torch.from_numpy(shape).unsqueeze(0))
    self.register_buffer("init_cam", torch.from_numpy(mean_params["cam"]).unsqueeze(0))

  def forward(self, x, n_iter=3):
    b = x.shape[0]
    xf = self.avgpool(self.trunk(x)).view(b, -1)
    pose, shape, cam = (self.init_pose.expand(b, -1), self.init_shape.expand(b, -1),
                        self.init_cam.expand(b, -1))  # fmt: skip
    for _ in range(n_iter):
      xc = self.drop2(self.fc2(self.drop1(self.fc1(torch.cat([xf, pose, shape, cam], 1)))))
      pose, shape, cam = self.decpose(xc) + pose, self.decshape(xc) + shape, self.deccam(xc) + cam
    return spin_rot6d_to_rotmat(pose).view(b, 24, 3, 3), shape, cam, xf, pose


def random_means(seed):
  rng = np.random.default_rng(seed)
  return {
    "pose": rng.normal(size=144).astype(np.float32),
    "shape": rng.normal(size=10),  # float64 as in the npz; SPIN casts only this one
    "cam": np.array([0.9, 0.05, -0.1], np.float32),
  }


def randomize(model, seed=0):
  """Random conv/linear weights (fan-in scaled), BN affine AND running statistics; eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d | nn.Linear):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.2 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.num_batches_tracked.fill_(7)
    for dec in (model.decpose, model.decshape, model.deccam):
      dec.weight.mul_(0.3)
  return model.eval()


@pytest.fixture(scope="module")
def oracle():
  torch.manual_seed(0)
  model = randomize(SpinHMR(random_means(1), width=WIDTH, hidden=HIDDEN))
  images = np.random.default_rng(2).normal(size=(BATCH, 224, 224, 3)).astype(np.float32)
  with torch.no_grad():
    outputs = [o.numpy() for o in model(nchw(images))]
  return model, images, outputs


def tiny_hmr():
  return spin.spin_hmr().clone(width=WIDTH, hidden=HIDDEN)


@pytest.fixture(scope="module")
def converted(oracle):
  model, images, _ = oracle
  hmr, variables = spin.convert_spin(model.state_dict(), hmr=tiny_hmr())
  out = jax.jit(lambda v, x: hmr.apply(v, x))(variables, jnp.asarray(images))
  return hmr, variables, jax.tree.map(np.asarray, out)


# ----------------------------------------------------------------------------- tests


def test_matches_torchvision_resnet_and_spin_head(oracle, converted):
  _, _, (rotmat, betas, cam, features, pose) = oracle
  _, _, out = converted
  assert rel_err(out["features"], features) < 1e-4
  assert rel_err(out["rotmat"], rotmat) < 1e-4
  assert rel_err(out["betas"], betas) < 1e-4
  assert rel_err(out["cam"], cam) < 1e-4
  # jhmr's 6D is SPIN's pose vector with each joint's entries reordered
  spin_pose = pose.reshape(BATCH, 24, 6)
  assert rel_err(out["pose6d"], spin_pose[..., list(spin.SPIN_TO_JHMR_6D)]) < 1e-4
  # the test is not vacuous: the pose moved away from the means and is not the (2, 3) reading
  assert np.abs(rotmat - np.eye(3)).max() > 0.1
  wrong = np.asarray(rotations.rot6d_to_matrix(jnp.asarray(spin_pose)))
  assert np.abs(wrong - rotmat).max() > 0.1


def test_mean_parameters_and_6d_permutation(oracle, converted):
  model, _, _ = oracle
  hmr, _, _ = converted
  means = random_means(1)
  spin_pose = torch.from_numpy(means["pose"])[None]
  ours = rotations.rot6d_to_matrix(jnp.asarray(hmr.mean_pose6d, jnp.float32).reshape(24, 6))
  np.testing.assert_allclose(ours, spin_rot6d_to_rotmat(spin_pose).numpy(), atol=1e-6)
  np.testing.assert_array_equal(hmr.mean_betas, means["shape"].astype(np.float32))
  np.testing.assert_array_equal(hmr.mean_cam, means["cam"])
  assert model.init_shape.dtype == torch.float32


def test_npz_fills_missing_buffers_and_checkpoint_buffers_win(oracle, converted, tmp_path):
  model, _, _ = oracle
  hmr, variables, _ = converted
  other = random_means(5)
  np.savez(tmp_path / "smpl_mean_params.npz", **other)
  # SPIN: npz at construction, then load_state_dict overwrites the buffers -> checkpoint wins
  hmr2, _ = spin.convert_spin(model.state_dict(), tmp_path / "smpl_mean_params.npz", tiny_hmr())
  assert (hmr2.mean_pose6d, hmr2.mean_betas, hmr2.mean_cam) == (
    hmr.mean_pose6d, hmr.mean_betas, hmr.mean_cam,
  )  # fmt: skip
  state = {k: v for k, v in model.state_dict().items() if not k.startswith("init_")}
  hmr3, variables3 = spin.convert_spin(state, tmp_path / "smpl_mean_params.npz", tiny_hmr())
  assert hmr3.mean_cam == tuple(float(v) for v in other["cam"])
  assert hmr3.mean_pose6d == tuple(float(v) for v in other["pose"][spin._POSE_INDEX])
  jax.tree.map(np.testing.assert_array_equal, variables3, variables)
  with pytest.raises(ConversionError, match="init_cam"):
    spin.convert_spin(state, hmr=tiny_hmr())
  np.savez(tmp_path / "bad.npz", pose=other["pose"], shape=other["shape"])
  with pytest.raises(ConversionError, match="cam"):
    spin.read_mean_params(tmp_path / "bad.npz")


@pytest.mark.parametrize(
  "edit,names",
  [
    (lambda s: s.pop("layer3.1.bn2.running_var"), ["missing", "layer3.1.bn2.running_var"]),
    (lambda s: s.pop("layer2.0.downsample.0.weight"), ["missing", "layer2.0.downsample.0.weight"]),
    (lambda s: s.pop("decshape.bias"), ["missing", "decshape.bias"]),
    (lambda s: s.update({"fc.weight": np.zeros((1000, 128))}), ["unexpected", "fc.weight"]),
    (lambda s: s.update({"layer1.0.conv1.bias": np.zeros(4)}), ["unexpected", "conv1.bias"]),
    (lambda s: s.update({"decshape.bias": np.zeros(11)}), ["mis-shaped", "decshape.bias"]),
    (lambda s: s.update({"layer4.2.conv2.weight": np.zeros((32, 32, 1, 1))}), ["conv2.weight"]),
  ],
)
def test_refusals_name_the_key(oracle, edit, names):
  model, _, _ = oracle
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  edit(state)
  with pytest.raises(ConversionError) as info:
    spin.convert_spin(state, hmr=tiny_hmr())
  for name in names:
    assert name in str(info.value)


def test_torch_key_inverts_the_rule(converted):
  _, variables, _ = converted
  paths = jax.tree_util.tree_flatten_with_path(variables)[0]
  names = {spin.torch_key(tuple(k.key for k in path)) for path, _ in paths}
  assert {"layer2.0.downsample.1.running_var", "fc1.weight", "decpose.bias", "bn1.weight"} < names


@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_file_through_restricted_reader(oracle, converted, tmp_path, legacy):
  model, _, _ = oracle
  _, variables, _ = converted
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
  for p in model.parameters():
    p.grad = torch.zeros_like(p)
  state = {k: v.clone() for k, v in model.state_dict().items()}
  optimizer.step()  # fills Adam's state (step, exp_avg, exp_avg_sq); zero grads: no change
  checkpoint = {
    "model": state,
    "optimizer": optimizer.state_dict(),
    "epoch": 3,
    "batch_idx": 17,
    "batch_size": 64,
    "dataset_perm": torch.randperm(50).tolist(),
    "total_step_count": 1234,
  }
  path = tmp_path / "model_checkpoint.pt"
  torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
  np.savez(tmp_path / "smpl_mean_params.npz", **random_means(9))
  hmr, loaded = spin.load_spin_checkpoint(path, tmp_path / "smpl_mean_params.npz", tiny_hmr())
  assert hmr.mean_cam == tuple(float(v) for v in random_means(1)["cam"])
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)

  import datetime

  torch.save({**checkpoint, "saved_at": datetime.date(2020, 1, 1)}, path)
  with pytest.raises(Exception, match="datetime.date"):
    spin.read_spin_checkpoint(path)
  torch.save({"state_dict": state}, path)
  with pytest.raises(ConversionError, match="no 'model' entry"):
    spin.read_spin_checkpoint(path)


def test_full_size_parameter_count():
  model = spin.spin_hmr()
  assert (model.depth, model.width, model.hidden, model.num_iterations) == (50, 64, 1024, 3)
  assert (model.dropout, model.num_betas, spin.INPUT_SIZE) == (0.5, 10, 224)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert count == 26_977_501


def test_cameras():
  cam = np.array([[0.8, 0.1, -0.2], [1.1, -0.05, 0.3]], np.float32)
  t = np.asarray(spin.spin_camera_translation(cam))
  expected = np.stack([cam[:, 1], cam[:, 2], 2 * 5000 / (224 * cam[:, 0] + 1e-9)], -1)
  np.testing.assert_allclose(t, expected, rtol=1e-6)
  # a 224 box centred in a 224 image is the crop itself
  full = spin.spin_camera_to_full(cam, [112.0, 112.0], 224.0, [224.0, 224.0])
  np.testing.assert_allclose(full, t, rtol=1e-6)
  # a box off-centre in a larger image: the root projects to the box centre + the crop's shift
  full = np.asarray(spin.spin_camera_to_full(cam, [300.0, 200.0], 150.0, [640.0, 480.0]))
  uv = 5000 * full[:, :2] / full[:, 2:] + np.array([320.0, 240.0])
  np.testing.assert_allclose(uv - 5000 * cam[:, 1:] / full[:, 2:], [[300, 200]] * 2, rtol=1e-5)
