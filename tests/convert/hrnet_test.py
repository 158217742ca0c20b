"""PARE's HRNet backbone vs a PyTorch oracle, through `jhmr.convert.hrnet`; strict key checks.

The oracle is written here, not imported: PARE's own module needs yacs/loguru and a pretrained
file, and timm (whose `hrnet_w32` feature model has exactly PARE's trunk keys, research note
`regressors.md` section 1) needs torchvision, which cannot be installed beside the pinned CPU torch
of the test extras. It follows ScoreHMR's vendored `score_hmr/models/pare/backbone/hrnet.py`
(= PARE's) line for line where it matters: module names and Sequential indices, the fuse rule,
the transitions (including that every non-identity transition reads the last previous branch),
stage 4 with all outputs, the "conv" upsampling, the unused `final_layer`. Its weights AND its
BatchNorm running statistics are random, so the BN conversion is really tested.
"""

import numpy as np
import pytest

from jhmr.convert.common import ConversionError
from jhmr.convert.hrnet import IGNORED_KEYS, convert_hrnet, hrnet_rules, torch_key
from jhmr.models.hrnet import HRNET_W32, HRNet, HRNetConfig

torch = pytest.importorskip("torch")

from tests.torch_reference import randomize_conv_bn, rel_err  # noqa: E402

nn = torch.nn

TINY = HRNetConfig(
  widths=(4, 8, 12, 16), stem_width=8, layer1_blocks=2, num_modules=(1, 2, 1), num_blocks=(1, 2, 1)
)


# ----------------------------------------------------------------------------- PyTorch oracle


def conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
  def __init__(self, planes):
    super().__init__()
    self.conv1, self.bn1 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(x + self.bn2(self.conv2(y)))


class Bottleneck(nn.Module):
  def __init__(self, inplanes, planes):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
    self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.downsample = None
    if inplanes != 4 * planes:
      self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
      )

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu((x if self.downsample is None else self.downsample(x)) + y)


class HighResolutionModule(nn.Module):
  def __init__(self, channels, num_blocks):
    super().__init__()
    self.branches = nn.ModuleList(
      nn.Sequential(*[BasicBlock(c) for _ in range(num_blocks)]) for c in channels
    )
    fuse_layers = []
    for i, ci in enumerate(channels):
      layer = []
      for j, cj in enumerate(channels):
        if j > i:
          layer.append(
            nn.Sequential(
              nn.Conv2d(cj, ci, 1, 1, 0, bias=False),
              nn.BatchNorm2d(ci),
              nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
            )
          )
        elif j == i:
          layer.append(None)
        else:
          convs = []
          for k in range(i - j):
            if k == i - j - 1:
              convs.append(nn.Sequential(conv3x3(cj, ci, 2), nn.BatchNorm2d(ci)))
            else:
              convs.append(nn.Sequential(conv3x3(cj, cj, 2), nn.BatchNorm2d(cj), nn.ReLU()))
          layer.append(nn.Sequential(*convs))
      fuse_layers.append(nn.ModuleList(layer))
    self.fuse_layers = nn.ModuleList(fuse_layers)

  def forward(self, x):
    x = [branch(xi) for branch, xi in zip(self.branches, x)]
    out = []
    for i in range(len(self.fuse_layers)):
      y = x[0] if i == 0 else self.fuse_layers[i][0](x[0])
      for j in range(1, len(x)):
        y = y + (x[j] if i == j else self.fuse_layers[i][j](x[j]))
      out.append(torch.relu(y))
    return out


def transition(pre, cur):
  layers = []
  for i, c in enumerate(cur):
    if i < len(pre):
      layers.append(
        nn.Sequential(conv3x3(pre[i], c), nn.BatchNorm2d(c), nn.ReLU()) if c != pre[i] else None
      )
    else:
      convs = []
      for j in range(i + 1 - len(pre)):
        cout = c if j == i - len(pre) else pre[-1]
        convs.append(nn.Sequential(conv3x3(pre[-1], cout, 2), nn.BatchNorm2d(cout), nn.ReLU()))
      layers.append(nn.Sequential(*convs))
  return nn.ModuleList(layers)


def upsample_layer(num_layers, channels):
  layers = []
  for _ in range(num_layers):
    layers += [
      nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
      conv3x3(channels, channels),
      nn.BatchNorm2d(channels),
      nn.ReLU(),
    ]
  return nn.Sequential(*layers)


class PoseHighResolutionNet(nn.Module):
  """PARE's backbone (`hrnet_w32-conv`) for an `HRNetConfig`: returns (features, branches)."""

  def __init__(self, cfg: HRNetConfig):
    super().__init__()
    w, stem = cfg.widths, cfg.stem_width
    self.conv1, self.bn1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem)
    self.conv2, self.bn2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem)
    self.layer1 = nn.Sequential(
      *[Bottleneck(stem if b == 0 else 4 * stem, stem) for b in range(cfg.layer1_blocks)]
    )
    pre = [4 * stem]
    for s in range(3):
      cur = list(w[: s + 2])
      setattr(self, f"transition{s + 1}", transition(pre, cur))
      modules = [HighResolutionModule(cur, cfg.num_blocks[s]) for _ in range(cfg.num_modules[s])]
      setattr(self, f"stage{s + 2}", nn.Sequential(*modules))
      pre = cur
    self.final_layer = nn.Conv2d(w[0], 24, 1, 1, 0)  # built by PARE, never called
    for k in (1, 2, 3):
      setattr(self, f"upsample_stage_{k + 1}", upsample_layer(k, w[k]))

  def forward(self, x):
    x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
    xs = [self.layer1(x)]
    for s, (trans, stage) in enumerate(
      [(self.transition1, self.stage2), (self.transition2, self.stage3)]
      + [(self.transition3, self.stage4)]
    ):
      xs = [t(xs[-1]) if t is not None else xs[i] for i, t in enumerate(trans)]
      assert len(xs) == s + 2
      xs = stage(xs)
    ups = [self.upsample_stage_2(xs[1]), self.upsample_stage_3(xs[2])]
    ups.append(self.upsample_stage_4(xs[3]))
    return torch.cat([xs[0], *ups], 1), xs


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def tiny():
  torch.manual_seed(0)
  return randomize_conv_bn(PoseHighResolutionNet(TINY))


def test_matches_the_pytorch_oracle(tiny):
  import jax

  images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    ref, ref_branches = tiny(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  variables = convert_hrnet(tiny.state_dict(), TINY)
  ours, branches = jax.jit(lambda v, x: HRNet(TINY).apply(v, x, return_branches=True))(
    variables, images
  )
  assert ours.shape == (2, 16, 24, sum(TINY.widths))
  assert rel_err(ours, ref.numpy().transpose(0, 2, 3, 1)) < 1e-4
  for k, (b, r) in enumerate(zip(branches, ref_branches, strict=True)):
    assert b.shape == (2, 16 >> k, 24 >> k, TINY.widths[k])
    assert rel_err(b, r.numpy().transpose(0, 2, 3, 1)) < 1e-4, k


def test_w32_oracle_converts_under_a_prefix():
  """The full-size key set and shapes agree with `HRNet()`; counts agree with the research note."""
  net = PoseHighResolutionNet(HRNET_W32)  # default init, no forward pass
  count = lambda prefix: sum(
    p.numel() for name, p in net.named_parameters() if name.startswith(prefix)
  )
  upsample = sum(count(f"upsample_stage_{s}.") for s in (2, 3, 4))
  total = count("")
  assert (total, count("final_layer."), upsample) == (31_409_752, 792, 2_103_424)
  assert total - 792 - upsample == 29_305_536  # trunk
  state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
  state["head.keypoint_final_layer.weight"] = torch.zeros(25, 128, 1, 1)  # outside the prefix
  variables = convert_hrnet(state, HRNET_W32, "backbone.")
  params, stats, sources = hrnet_rules(state, "backbone.")
  assert len(params) + len(stats) == len(sources)
  consumed = {k for k in state if k.startswith("backbone.")} - set(sources.values())
  assert all(k.endswith("num_batches_tracked") or k[9:] in IGNORED_KEYS for k in consumed)
  assert all(prefix_key == "backbone." + torch_key(path) for path, prefix_key in sources.items())
  np.testing.assert_array_equal(
    variables["params"]["stage4_2"]["fuse_layers_3_0_2_0"]["kernel"],
    net.stage4[2].fuse_layers[3][0][2][0].weight.detach().numpy().transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
    variables["batch_stats"]["upsample_stage_4_10"]["var"],
    net.upsample_stage_4[10].running_var.numpy(),
  )


def test_converter_refuses_missing_unexpected_and_mis_shaped_keys(tiny):
  state = dict(tiny.state_dict())
  broken = dict(state)
  broken.pop("stage3.1.fuse_layers.2.0.0.1.running_var")
  with pytest.raises(ConversionError, match=r"stage3\.1\.fuse_layers\.2\.0\.0\.1\.running_var"):
    convert_hrnet(broken, TINY)
  broken = dict(state)
  broken.pop("transition1.1.0.0.weight")
  with pytest.raises(ConversionError, match=r"missing PyTorch keys: transition1\.1\.0\.0\.weight"):
    convert_hrnet(broken, TINY)
  for extra in ("stage2.0.extra.weight", "final_layer.other", "upsample_stage_4.13.weight"):
    with pytest.raises(ConversionError, match=rf"unexpected: .*{extra.replace('.', '[.]')}"):
      convert_hrnet({**state, extra: torch.zeros(3)}, TINY)
  broken = {**state, "upsample_stage_3.5.weight": torch.zeros(12, 12, 1, 1)}
  with pytest.raises(ConversionError, match=r"mis-shaped: .*'upsample_stage_3\.5\.weight'"):
    convert_hrnet(broken, TINY)
  with pytest.raises(ConversionError, match="both map to layer1_0/conv1/kernel"):
    convert_hrnet({**state, "layer1_0.conv1.weight": state["layer1.0.conv1.weight"]}, TINY)
  with pytest.raises(ConversionError, match="missing"):  # a tiny checkpoint is not a W32 one
    convert_hrnet(state, HRNET_W32)
