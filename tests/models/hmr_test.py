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
