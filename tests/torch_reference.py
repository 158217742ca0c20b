"""Helpers shared by the tests that compare jhmr's ports with PyTorch reference modules."""

import numpy as np
import torch


def randomize(module, seed=0, scale=0.2):
  """Random values for every parameter (zero-initialised convs too), so no weight goes unchecked.

  Returns the module in eval mode.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * scale)
  return module.eval()


def randomize_conv_bn(module, seed=0):
  """He-scaled Conv2d / Linear weights, biases uniform in [-0.5, 0.5), and BatchNorm scale, shift,
  running mean and running variance all random (so a converter that drops BN statistics fails).
  Other parameter types are left as they are. Returns the module in eval mode."""
  g = torch.Generator().manual_seed(seed)
  rand = lambda shape: torch.rand(shape, generator=g)  # noqa: E731
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(rand(m.bias.shape) - 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(0.5 + rand(m.weight.shape))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + 1.5 * rand(m.running_var.shape))
  return module.eval()


def nchw(x):
  """NHWC array -> NCHW torch tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t):
  """NCHW torch tensor -> NHWC numpy array."""
  return t.detach().numpy().transpose(0, 2, 3, 1)


def rel_err(ours, ref):
  """max |ours - ref| / max |ref| in float64; the shapes must agree."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())
