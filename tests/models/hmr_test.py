"""HMR regressor: torchvision-equal parameter counts, mean-parameter start, shapes, BN state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.geometry import rotations
from jhmr.models import MODELS
from jhmr.models.hmr import HMR, ResNet, feature_dim


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,expected", [(18, 11_176_512), (34, 21_284_672), (50, 23_508_032)])
def test_backbone_parameter_count_matches_torchvision(depth, expected):
  # torchvision resnet{18,34,50} minus the 1000-way classifier (fc weight + bias).
  variables = jax.eval_shape(
    lambda: ResNet(depth).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  )
  assert _count(variables["params"]) == expected


@pytest.fixture(scope="module")
def tiny():
  model = HMR(depth=18, width=8, hidden=32, num_betas=4, dropout=0.5)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = jax.jit(lambda k: model.init(k, images))(jax.random.PRNGKey(0))
  return model, variables, images


def test_outputs_and_mean_parameter_start(tiny):
  model, variables, images = tiny
  assert MODELS["hmr"] is HMR
  out = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
  assert out["pose6d"].shape == (2, 24, 6) and out["rotmat"].shape == (2, 24, 3, 3)
  assert out["betas"].shape == (2, 4) and out["cam"].shape == (2, 3)
  assert out["features"].shape == (2, feature_dim(18, 8)) == (2, 64)
  np.testing.assert_allclose(out["rotmat"], rotations.rot6d_to_matrix(out["pose6d"]), atol=1e-6)
  # zeroed decoders: every iteration adds nothing, so the output is exactly the mean parameters.
  zeroed = jax.tree_util.tree_map_with_path(
    lambda p, x: jnp.zeros_like(x) if "dec_" in jax.tree_util.keystr(p) else x, variables
  )
  out0 = jax.jit(lambda v, x: model.apply(v, x))(zeroed, images)
  root = np.asarray(out0["rotmat"][:, 0])
  np.testing.assert_allclose(
    root, np.broadcast_to(np.diag([1.0, -1.0, -1.0]), root.shape), atol=1e-6
  )
  np.testing.assert_allclose(
    out0["rotmat"][:, 1:], np.broadcast_to(np.eye(3), (2, 23, 3, 3)), atol=1e-6
  )
  np.testing.assert_allclose(out0["cam"], [[0.9, 0.0, 0.0]] * 2)
  # small-gain decoders keep the untrained prediction near the mean, yet not equal to it.
  assert 0 < np.abs(out["pose6d"] - out0["pose6d"]).max() < 0.5


def test_train_mode_updates_batch_stats_and_uses_dropout(tiny):
  model, variables, images = tiny

  @jax.jit
  def run(v, key):
    return model.apply(v, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

  out_a, state = run(variables, jax.random.PRNGKey(2))
  out_b, _ = run(variables, jax.random.PRNGKey(3))
  assert not np.allclose(out_a["pose6d"], out_b["pose6d"])  # dropout is active
  before = variables["batch_stats"]["backbone"]["bn1"]["mean"]
  assert not np.allclose(state["batch_stats"]["backbone"]["bn1"]["mean"], before)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\]"):
    HMR(depth=18, width=8).init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32)))
  with pytest.raises(ValueError, match="unsupported ResNet depth 20"):
    ResNet(20).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_matches_a_pytorch_resnet_and_spin_head():
  """Same weights in a torchvision-style PyTorch ResNet-18 + SPIN regressor -> same outputs."""
  torch = pytest.importorskip("torch")
  tnn = torch.nn
  model = HMR(depth=18, width=8, hidden=32, num_betas=4)
  images = jax.random.normal(jax.random.PRNGKey(5), (2, 32, 32, 3))
  variables = jax.jit(lambda k: model.init(k, images))(jax.random.PRNGKey(6))
  # non-trivial BatchNorm statistics and affine parameters
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  leaves = [
    x + 0.1 * jax.random.uniform(k, x.shape) if x.ndim == 1 else x for x, k in zip(leaves, keys)
  ]
  variables = jax.tree.unflatten(treedef, leaves)
  out = jax.jit(lambda v, x: model.apply(v, x))(variables, images)

  params, stats = variables["params"], variables["batch_stats"]
  t = lambda x: torch.tensor(np.asarray(x))

  def conv(p, stride, pad):
    k = np.asarray(p["kernel"])
    c = tnn.Conv2d(k.shape[2], k.shape[3], k.shape[0], stride, pad, bias=False)
    c.weight.data = t(k.transpose(3, 2, 0, 1))
    return c

  def bn(p, s):
    b = tnn.BatchNorm2d(len(p["scale"]), eps=1e-5)
    b.weight.data, b.bias.data = t(p["scale"]), t(p["bias"])
    b.running_mean.data, b.running_var.data = t(s["mean"]), t(s["var"])
    return b

  class Block(tnn.Module):
    def __init__(self, p, s, stride):
      super().__init__()
      self.c1, self.b1 = conv(p["conv1"], stride, 1), bn(p["bn1"], s["bn1"])
      self.c2, self.b2 = conv(p["conv2"], 1, 1), bn(p["bn2"], s["bn2"])
      self.down = None
      if "downsample_conv" in p:
        self.down = tnn.Sequential(
          conv(p["downsample_conv"], stride, 0), bn(p["downsample_bn"], s["downsample_bn"])
        )

    def forward(self, x):
      y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
      return torch.relu((x if self.down is None else self.down(x)) + y)

  bp, bs = params["backbone"], stats["backbone"]
  layers = [conv(bp["conv1"], 2, 3), bn(bp["bn1"], bs["bn1"]), tnn.ReLU(), tnn.MaxPool2d(3, 2, 1)]
  for i in range(4):
    for j in range(2):
      name = f"layer{i + 1}_{j}"
      layers.append(Block(bp[name], bs[name], 2 if i > 0 and j == 0 else 1))
  trunk = tnn.Sequential(*layers).eval()

  def dense(p):
    k = np.asarray(p["kernel"])
    d = tnn.Linear(*k.shape)
    d.weight.data, d.bias.data = t(k.T), t(p["bias"])
    return d

  rp = params["regressor"]
  fc1, fc2 = dense(rp["fc1"]), dense(rp["fc2"])
  decs = [dense(rp[k]) for k in ("dec_pose", "dec_betas", "dec_cam")]
  with torch.no_grad():
    feats = trunk(t(images).permute(0, 3, 1, 2)).mean(dim=(2, 3))
    pose = t(np.tile(np.array(model.mean_pose6d, np.float32), (2, 1)))
    betas, cam = torch.zeros(2, 4), t(np.tile(np.array([0.9, 0.0, 0.0], np.float32), (2, 1)))
    for _ in range(3):  # SPIN's iterative error feedback (dropout off in eval)
      h = fc2(fc1(torch.cat([feats, pose, betas, cam], 1)))
      pose, betas, cam = pose + decs[0](h), betas + decs[1](h), cam + decs[2](h)
  np.testing.assert_allclose(out["features"], feats.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["pose6d"].reshape(2, 144), pose.numpy(), atol=1e-5)
  np.testing.assert_allclose(out["betas"], betas.numpy(), atol=1e-5)
  np.testing.assert_allclose(out["cam"], cam.numpy(), atol=1e-5)
