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
