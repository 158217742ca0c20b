"""pytorch-fid and clean-fid as test oracles, without torchvision.

pytorch-fid 0.3.0 (`pytorch_fid.inception`) and clean-fid 0.1.35 (`cleanfid.fid`) import
torchvision, which cannot be installed beside the pinned CPU torch of the test extras (PyPI's
torchvision 0.28.0 wheel, the one for torch 2.13, is built against CUDA torch and fails at import
with "operator torchvision::nms does not exist"). Both use only a small part of it:
`torchvision.models.inception.{InceptionA, InceptionC, InceptionE}` as base classes of their FID
blocks (whose `forward`s are theirs), `torchvision.models.inception_v3(num_classes=1008,
aux_logits=False, init_weights=False)` for the trunk, `torchvision.__version__`, and (clean-fid's
`utils`) `torchvision.transforms` at runtime only.

`import_with_torchvision_stub(name)` imports such a module with a stand-in `torchvision` in
`sys.modules` for the duration of the import only, so no other test sees it. The stand-in's
Inception3 trunk is written here from torchvision's documented architecture (module names, kernel
sizes, strides, paddings, BatchNorm eps 0.001, conv without bias); the FID-specific parts (the
blocks' pooling, pytorch-fid's block wiring, resize and normalisation, clean-fid's FID and KID
formulas) are the packages' own code. Where a real torchvision imports, it is used instead.
"""

import importlib
import sys
import types

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class BasicConv2d(nn.Module):
  def __init__(self, in_channels, out_channels, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
  def __init__(self, in_channels, pool_features, conv_block=None):
    super().__init__()
    self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)


class InceptionB(nn.Module):
  def __init__(self, in_channels, conv_block=None):
    super().__init__()
    self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return torch.cat([self.branch3x3(x), branch3x3dbl, pool], 1)


class InceptionC(nn.Module):
  def __init__(self, in_channels, channels_7x7, conv_block=None):
    super().__init__()
    c7 = channels_7x7
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, **row)
    self.branch7x7_3 = BasicConv2d(c7, 192, **col)
    self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)


class InceptionD(nn.Module):
  def __init__(self, in_channels, conv_block=None):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
    branch7x7x3 = self.branch7x7x3_1(x)
    for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      branch7x7x3 = layer(branch7x7x3)
    return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
  def __init__(self, in_channels, conv_block=None):
    super().__init__()
    row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
    self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, **row)
    self.branch3x3_2b = BasicConv2d(384, 384, **col)
    self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, **col)
    self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)


class Inception3(nn.Module):
  """The trunk's modules in torchvision's order and names (no aux head); pytorch-fid calls its
  blocks itself, so no `forward` is needed."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
    self.Mixed_5b = InceptionA(192, pool_features=32)
    self.Mixed_5c = InceptionA(256, pool_features=64)
    self.Mixed_5d = InceptionA(288, pool_features=64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, channels_7x7=128)
    self.Mixed_6c = InceptionC(768, channels_7x7=160)
    self.Mixed_6d = InceptionC(768, channels_7x7=160)
    self.Mixed_6e = InceptionC(768, channels_7x7=192)
    self.AuxLogits = None
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280)
    self.Mixed_7c = InceptionE(2048)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout(p=0.5)
    self.fc = nn.Linear(2048, num_classes)


def inception_v3(*, num_classes=1000, aux_logits=True, weights=None, pretrained=False, **_):
  if weights is not None or pretrained:
    raise RuntimeError("the torchvision stand-in has no pretrained weights (no downloads)")
  if aux_logits:
    raise NotImplementedError("the torchvision stand-in builds no aux head")
  return Inception3(num_classes)


def _stub_modules() -> dict[str, types.ModuleType]:
  root = types.ModuleType("torchvision")
  root.__version__ = "0.28.0"
  models = types.ModuleType("torchvision.models")
  inception = types.ModuleType("torchvision.models.inception")
  for cls in (BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE, Inception3):
    setattr(inception, cls.__name__, cls)
  models.inception, models.inception_v3 = inception, inception_v3
  root.models = models
  return {"torchvision": root, models.__name__: models, inception.__name__: inception}


def import_with_torchvision_stub(name: str) -> types.ModuleType:
  """Imports module `name` (e.g. "pytorch_fid.inception"), with the stand-in torchvision if the
  real one does not import; the stand-in leaves `sys.modules` when the import is done, and so
  does `name` (the caller keeps the module object)."""
  try:
    import torchvision  # noqa: F401

    return importlib.import_module(name)
  except (ImportError, RuntimeError):
    pass
  top = name.split(".")[0]
  ours = lambda module_name: module_name == top or module_name.startswith(top + ".")
  saved = {m: sys.modules.pop(m) for m in list(sys.modules) if ours(m)}
  stubs = _stub_modules()
  sys.modules.update(stubs)
  try:
    return importlib.import_module(name)
  finally:
    for module_name in [m for m in sys.modules if ours(m) or m in stubs]:
      del sys.modules[module_name]
    sys.modules.update(saved)
