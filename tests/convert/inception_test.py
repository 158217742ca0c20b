"""FID Inception-V3: pytorch-fid's layout -> jhmr, proven against pytorch-fid's own network.

The oracle is pytorch-fid 0.3.0's `InceptionV3` (block wiring, pooling, resize, normalisation) with
its `FIDInceptionA/C/E_1/E_2` blocks, built with random weights: its weight download
(`load_state_dict_from_url`) is replaced by a random state dict in the key layout of
`pt_inception-2015-12-05-6726825d.pth` (torchvision `Inception3(num_classes=1008,
aux_logits=False)`), which is also what the converter reads. torchvision itself is a stand-in
(`tests/inception_reference.py`, which says why). float32, eval mode, random BN statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.convert import inception as convert
from jhmr.convert.common import ConversionError
from jhmr.models.inception import InceptionV3, preprocess
from tests.inception_reference import import_with_torchvision_stub
from tests.torch_reference import nchw, randomize_conv_bn, rel_err

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_fid")


@pytest.fixture(scope="module")
def pytorch_fid():
  return import_with_torchvision_stub("pytorch_fid.inception")


@pytest.fixture(scope="module")
def state(pytorch_fid):
  """A random state dict with the keys of pytorch-fid's weight file (num_batches_tracked too)."""
  torch.manual_seed(0)
  module = pytorch_fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  return {k: v.clone() for k, v in randomize_conv_bn(module, seed=0).state_dict().items()}


def reference(pytorch_fid, state, **kwargs):
  """pytorch-fid's `InceptionV3(output_blocks=[3], **kwargs)`, loading `state` (strictly)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pytorch_fid, "load_state_dict_from_url", lambda *a, **k: state)
    return pytorch_fid.InceptionV3([3], **kwargs).eval()


@pytest.fixture(scope="module")
def variables(state):
  return convert.convert_inception(state)


@pytest.fixture(scope="module")
def apply(variables):
  forward = jax.jit(InceptionV3().apply)
  return lambda x: forward(variables, x)


def _logits(state, pool):
  return torch.nn.functional.linear(pool, state["fc.weight"], state["fc.bias"])


def test_matches_pytorch_fid_inception_75px(pytorch_fid, state, apply):
  x = np.random.default_rng(0).uniform(-1, 1, (1, 75, 75, 3)).astype(np.float32)
  net = reference(pytorch_fid, state, resize_input=False, normalize_input=False)
  with torch.no_grad():
    pool = net(nchw(x))[0].flatten(1)
    logits = _logits(state, pool)
  out = apply(jnp.asarray(x))
  assert float(pool.abs().max()) > 0.1  # the features are not degenerate
  assert rel_err(out.pool, pool.numpy()) < 1e-4
  assert rel_err(out.logits, logits.numpy()) < 1e-4


@pytest.mark.slow
def test_matches_pytorch_fid_full_pipeline_299(pytorch_fid, state, apply):
  """uint8 images -> pytorch-fid's own resize (bilinear to 299) and 2x - 1 vs `preprocess`."""
  images = np.random.default_rng(1).integers(0, 256, (2, 131, 117, 3), dtype=np.uint8)
  net = reference(pytorch_fid, state, resize_input=True, normalize_input=True)
  with torch.no_grad():
    pool = net(nchw(images.astype(np.float32) / 255.0))[0].flatten(1)
  out = apply(preprocess(images, "pytorch_fid"))
  assert rel_err(out.pool, pool.numpy()) < 1e-4


def test_torch_key_names_every_weight(state):
  """The inverse rule lists exactly the file's keys (less num_batches_tracked)."""
  flat = jax.tree_util.tree_flatten_with_path(convert.inception_shapes())[0]
  paths = [tuple(getattr(k, "key", k) for k in path) for path, _ in flat]
  expected = {k for k in state if not k.endswith("num_batches_tracked")}
  assert sorted(convert.torch_key(p) for p in paths) == sorted(expected)


def test_file_round_trip(state, variables, tmp_path):
  """A `torch.save`d state dict is read by the restricted unpickler (no torch) and converted.

  Saved in torch's legacy (pre-1.6, non-zip) format, which a file released in 2019 most likely
  has; the zip format goes through the same reader (tests/convert/torch_pickle_test.py)."""
  path = tmp_path / convert.WEIGHTS_FILE
  torch.save(state, path, _use_new_zipfile_serialization=False)
  loaded = convert.load_inception(path)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(a, b)
  conv = state["Mixed_6b.branch7x7_2.conv.weight"].numpy()  # a 1x7 conv: [O, I, 1, 7]
  np.testing.assert_array_equal(
    loaded["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"], conv.transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    loaded["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
    state["Mixed_7c.branch_pool.bn.running_var"].numpy(),
  )


def test_refuses_missing_key(state):
  broken = {k: v for k, v in state.items() if k != "Mixed_5b.branch5x5_2.bn.running_mean"}
  with pytest.raises(
    ConversionError, match=r"missing keys: Mixed_5b\.branch5x5_2\.bn\.running_mean"
  ):
    convert.convert_inception(broken)


def test_refuses_extra_key(state):
  extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(1008, 768)})
  with pytest.raises(ConversionError, match=r"unexpected keys: AuxLogits\.fc\.weight"):
    convert.convert_inception(extra)


def test_refuses_mis_shaped_key(state):
  bad = dict(state, **{"Mixed_7b.branch3x3_2a.conv.weight": torch.zeros(384, 384, 3, 1)})
  with pytest.raises(
    ConversionError, match=r"mis-shaped keys: Mixed_7b\.branch3x3_2a\.conv\.weight"
  ):
    convert.convert_inception(bad)
