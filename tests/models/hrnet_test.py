"""PARE's HRNet backbone: parameter counts, shapes, align_corners bilinear, BN state.

The equivalence with a PyTorch oracle (random weights and BN statistics) is in
`tests/convert/hrnet_test.py`, next to the converter it goes through.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jhmr.models.hrnet import HRNET_W32, HRNet, HRNetConfig, upsample_bilinear_x2

TINY = HRNetConfig(widths=(4, 8, 12, 16), stem_width=8, layer1_blocks=1, num_modules=(1, 1, 1))


def _count(tree, keep=lambda path: True):
  flat = traverse_util.flatten_dict(tree)
  return sum(int(np.prod(x.shape)) for path, x in flat.items() if keep(path))


def test_w32_parameter_counts_and_shapes():
  # regressors.md section 1: trunk 29,305,536; final_layer 792; upsample 2,103,424; backbone
  # 31,409,752 *including* the never-used final_layer, which HRNet does not build. Learnable
  # parameters only (BN running statistics are in batch_stats). Shapes only: nothing allocated.
  model = HRNet(HRNET_W32)
  (features, branches), variables = jax.eval_shape(
    lambda x: model.init_with_output(jax.random.key(0), x, return_branches=True),
    jnp.zeros((2, 224, 224, 3)),
  )
  params = variables["params"]
  upsample = _count(params, lambda p: p[0].startswith("upsample_stage_"))
  assert upsample == 2_103_424
  assert _count(params) - upsample == 29_305_536
  assert _count(params) == 31_409_752 - 792
  assert _count(variables["batch_stats"]) == 2 * _count(params, lambda p: p[-1] == "scale")
  assert features.shape == (2, 56, 56, 480) == (2, 56, 56, HRNET_W32.out_channels)
  assert [b.shape for b in branches] == [
    (2, 56, 56, 32),
    (2, 28, 28, 64),
    (2, 14, 14, 128),
    (2, 7, 7, 256),
  ]


def test_bilinear_x2_is_align_corners_true():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 1, 3, 5)).astype(np.float32)  # NCHW
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=True
  )
  ours = upsample_bilinear_x2(jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-6)
  np.testing.assert_array_equal(upsample_bilinear_x2(jnp.ones((1, 1, 1, 2))), np.ones((1, 2, 2, 2)))


def test_train_mode_updates_batch_stats_and_input_checks():
  model = HRNet(TINY)
  images = jax.random.normal(jax.random.key(1), (2, 32, 64, 3))
  # random variables from the shapes: compiling `init` costs more than the test itself
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  variables = traverse_util.unflatten_dict(
    {
      p: np.ones(s.shape, np.float32) if p[-1] == "var" else rng.normal(0, 0.3, s.shape)
      for p, s in traverse_util.flatten_dict(shapes).items()
    }
  )
  train_step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  out, updates = train_step(variables, images)
  assert out.shape == (2, 8, 16, 40)
  before = variables["batch_stats"]["stage4_0"]["branches_3_0"]["bn2"]["mean"]
  after = updates["batch_stats"]["stage4_0"]["branches_3_0"]["bn2"]["mean"]
  assert not np.allclose(before, after)
  with pytest.raises(ValueError, match="multiples of 32"):
    model.apply(variables, jnp.zeros((1, 48, 64, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    model.apply(variables, jnp.zeros((1, 64, 64)))
