"""Tests of the strict converter core shared by every PyTorch -> Flax converter."""

import numpy as np
import pytest
import torch

from jhmr.convert import common


def _target():
  return {"dense": {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros((2,), np.float32)}}


def _rules():
  def linear(key, value):
    if key == "fc.weight":
      return ("dense", "kernel"), common.linear_kernel(value)
    if key == "fc.bias":
      return ("dense", "bias"), value
    return None

  return [linear]


def _state(fc):
  return torch.nn.ModuleDict({"fc": fc}).state_dict()


def test_converts_and_transposes_linear():
  fc = torch.nn.Linear(3, 2)
  params = common.convert_state_dict(_state(fc), _rules(), _target())
  np.testing.assert_array_equal(params["dense"]["kernel"], fc.weight.detach().numpy().T)
  np.testing.assert_array_equal(params["dense"]["bias"], fc.bias.detach().numpy())


def test_converted_params_do_not_alias_the_torch_module():
  fc = torch.nn.Linear(3, 2)
  params = common.convert_state_dict(_state(fc), _rules(), _target())
  before = params["dense"]["bias"].copy()
  with torch.no_grad():
    fc.bias.add_(1.0)
  np.testing.assert_array_equal(params["dense"]["bias"], before)


def test_conv_kernel_layout():
  w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # [out, in, kh, kw]
  k = common.conv_kernel(w)
  assert k.shape == (4, 5, 3, 2)
  assert k[1, 2, 0, 1] == w[1, 0, 1, 2]


@pytest.mark.parametrize(
  "state, message",
  [
    ({"fc.weight": np.zeros((2, 3))}, "1 missing: dense/bias"),
    ({"fc.weight": np.zeros((2, 3)), "fc.bias": np.zeros(2), "fc.extra": np.zeros(1)}, "fc.extra"),
    ({"fc.weight": np.zeros((2, 4)), "fc.bias": np.zeros(2)}, "mis-shaped: dense/kernel"),
  ],
)
def test_raises_naming_the_problem(state, message):
  with pytest.raises(common.ConversionError, match=message):
    common.convert_state_dict(state, _rules(), _target())


def test_two_keys_onto_one_path_is_an_error():
  rules = [lambda key, value: (("dense", "bias"), value)]
  with pytest.raises(common.ConversionError, match="both map to dense/bias"):
    common.convert_state_dict({"a": np.zeros(2), "b": np.zeros(2)}, rules, _target())
