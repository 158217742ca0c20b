"""PARE head (and whole PARE) vs a PyTorch oracle through `jhmr.convert.pare`; strict key checks;
ScoreHMR's crop preprocessing.

The head oracle is written here from the documented architecture (research/regressors.md
section 1; ScoreHMR's vendored `pare_head.py`, `layers/locallyconnected2d.py`,
`layers/keypoint_attention.py`) in ScoreHMR's configuration: two stride-1 conv3x3 + BN + ReLU
layers per branch (Sequential indices 0/1/3/4), 25-channel part logits with the background first,
softmax keypoint attention over all positions, a bias-free LocallyConnected2d pose MLP and linear
shape / camera MLPs on the channel-major flattened cam/shape features. Weights and BatchNorm
running statistics are random.
"""

import numpy as np
import pytest

from jhmr.convert.common import ConversionError
from jhmr.convert.pare import (
  IGNORED_KEYS,
  convert_pare,
  convert_pare_head,
  load_pare_checkpoint,
)
from jhmr.data.crops import crop_for_pare
from jhmr.errors import InputError
from jhmr.models.pare import IMAGENET_MEAN, IMAGENET_STD, Pare, PareHead

torch = pytest.importorskip("torch")

from tests.torch_reference import randomize_conv_bn, rel_err  # noqa: E402

nn = torch.nn
F = torch.nn.functional

IN_CHANNELS, SIZE = 24, 8  # a tiny backbone map: [B, 8, 8, 24]


# ----------------------------------------------------------------------------- PyTorch oracle


class LocallyConnected2d(nn.Module):
  """PARE's layer: weight [1, out, in, oh, ow, k*k], no bias, unfold + sum."""

  def __init__(self, in_channels, out_channels, output_size, kernel_size=1, stride=1):
    super().__init__()
    self.weight = nn.Parameter(
      torch.randn(1, out_channels, in_channels, *output_size, kernel_size**2)
    )
    self.kernel_size, self.stride = (kernel_size,) * 2, (stride,) * 2

  def forward(self, x):
    (kh, kw), (dh, dw) = self.kernel_size, self.stride
    x = x.unfold(2, kh, dh).unfold(3, kw, dw)
    x = x.contiguous().view(*x.size()[:-2], -1)
    return (x.unsqueeze(1) * self.weight).sum([2, -1])


def keypoint_attention(features, heatmaps):
  """PARE's KeypointAttention (softmax, no scale, no conv): -> [B, C, J]."""
  b, j, h, w = heatmaps.shape
  weights = F.softmax(heatmaps.reshape(b, j, -1), dim=-1)
  feats = features.reshape(b, -1, h * w)
  return torch.matmul(weights, feats.transpose(2, 1)).transpose(2, 1)


def rot6d_pare(x):
  """PARE / SPIN: reshape(3, 2), columns a1 = x[0::2], a2 = x[1::2]."""
  x = x.reshape(-1, 3, 2)
  b1 = F.normalize(x[:, :, 0])
  b2 = F.normalize(x[:, :, 1] - (b1 * x[:, :, 1]).sum(-1, keepdim=True) * b1)
  return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-1)


def rot6d_scorehmr(x):
  """ScoreHMR / HMR2: reshape(2, 3).permute, columns a1 = x[0:3], a2 = x[3:6]."""
  x = x.reshape(-1, 2, 3).permute(0, 2, 1)
  b1 = F.normalize(x[:, :, 0])
  b2 = F.normalize(x[:, :, 1] - (b1 * x[:, :, 1]).sum(-1, keepdim=True) * b1)
  return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-1)


class TorchPareHead(nn.Module):
  def __init__(self, in_channels=480, filters=128, smpl_features=64, num_layers=2):
    super().__init__()

    def branch():
      layers, cin = [], in_channels
      for _ in range(num_layers):
        layers += [nn.Conv2d(cin, filters, 3, 1, 1, bias=False), nn.BatchNorm2d(filters)]
        layers.append(nn.ReLU(inplace=True))
        cin = filters
      return nn.Sequential(*layers)

    self.keypoint_deconv_layers = branch()
    self.smpl_deconv_layers = branch()
    self.keypoint_final_layer = nn.Conv2d(filters, 25, 1, 1, 0)
    self.smpl_final_layer = nn.Conv2d(filters, smpl_features, 1, 1, 0)
    self.register_buffer("temperature", torch.tensor(1.0))
    self.register_buffer("init_pose", torch.randn(1, 144))
    self.register_buffer("init_shape", torch.randn(1, 10))
    self.register_buffer("init_cam", torch.randn(1, 3))
    self.shape_mlp = nn.Linear(24 * smpl_features, 10)
    self.cam_mlp = nn.Linear(24 * smpl_features, 3)
    self.pose_mlp = LocallyConnected2d(filters, 6, [24, 1])

  def forward(self, features):
    part_feats = self.keypoint_deconv_layers(features)
    segm = self.keypoint_final_layer(part_feats)
    heatmaps = segm[:, 1:]
    smpl_feats = self.smpl_deconv_layers(features)
    cam_shape = self.smpl_final_layer(smpl_feats)
    pose_feats = keypoint_attention(smpl_feats, heatmaps)
    cam_shape_feats = keypoint_attention(cam_shape, heatmaps)
    pose = self.pose_mlp(pose_feats.unsqueeze(-1)).squeeze(-1).transpose(2, 1)  # [B, 24, 6]
    flat = torch.flatten(cam_shape_feats, start_dim=1)
    return {
      "pred_segm_mask": segm,
      "pose_feats": pose_feats,
      "cam_shape_feats": cam_shape_feats,
      "pose": pose,
      "shape": self.shape_mlp(flat),
      "cam": self.cam_mlp(flat),
    }


def randomize(module, seed=0):
  """`randomize_conv_bn` (Conv / Linear / BatchNorm incl. running statistics) plus random
  LocallyConnected2d weights."""
  randomize_conv_bn(module, seed)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, LocallyConnected2d):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
  return module.eval()


def lightning(state):
  """A Lightning checkpoint's `state_dict`: PARE under `model.` plus the non-model keys."""
  out = {f"model.{k}": v for k, v in state.items()}
  out.update(
    {
      "loss_fn.criterion_keypoints.weight": torch.ones(3),
      "smpl.smpl.shapedirs": torch.zeros(6, 3, 10),
      "smpl_native.J_regressor": torch.zeros(24, 6),
      "model.smpl.smpl.v_template": torch.zeros(6, 3),
      "K": torch.eye(3),
      "R": torch.eye(3),
      "smpl_faces": torch.zeros(4, 3, dtype=torch.int64),
    }
  )
  return out


def head_state(oracle):
  return {f"head.{k}": v for k, v in oracle.state_dict().items()}


def compare(ours, ref):
  """Every PareOutput field against the oracle's, at 1e-4 relative."""
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  pairs = {
    "part_logits": nhwc(ref["pred_segm_mask"]),
    "pose_feats": ref["pose_feats"].numpy(),
    "cam_shape_feats": ref["cam_shape_feats"].numpy(),
    "pose_6d": ref["pose"].numpy(),
    "betas": ref["shape"].numpy(),
    "cam": ref["cam"].numpy(),
  }
  for name, want in pairs.items():
    assert rel_err(getattr(ours, name), want) < 1e-4, name


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def oracle():
  torch.manual_seed(0)
  return randomize(TorchPareHead(IN_CHANNELS))


@pytest.mark.parametrize("layout", ["pare", "scorehmr"])
def test_head_matches_the_pytorch_oracle(oracle, layout):
  import jax

  x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, IN_CHANNELS)).astype(np.float32)
  with torch.no_grad():
    ref = oracle(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  head = PareHead(in_channels=IN_CHANNELS, rot6d_layout=layout)
  variables = convert_pare_head(lightning(head_state(oracle)), head)
  ours = jax.jit(head.apply)(variables, x)
  compare(ours, ref)
  assert ours.pose_feats.shape == (2, 128, 24) and ours.cam_shape_feats.shape == (2, 64, 24)
  decode = rot6d_pare if layout == "pare" else rot6d_scorehmr
  want = decode(ref["pose"].reshape(-1, 6)).reshape(2, 24, 3, 3).numpy()
  np.testing.assert_allclose(ours.rotmat, want, atol=1e-5)
  # the two layouts really differ on this output
  other = (rot6d_scorehmr if layout == "pare" else rot6d_pare)(ref["pose"].reshape(-1, 6))
  assert np.abs(other.reshape(2, 24, 3, 3).numpy() - np.asarray(ours.rotmat)).max() > 0.1


def test_head_converter_refuses_missing_unexpected_and_mis_shaped_keys(oracle):
  state = lightning(head_state(oracle))
  broken = dict(state)
  broken.pop("model.head.cam_mlp.bias")
  with pytest.raises(ConversionError, match=r"1 missing: params/cam_mlp/bias"):
    convert_pare_head(broken, PareHead(in_channels=IN_CHANNELS))
  broken = dict(state)
  broken.pop("model.head.smpl_deconv_layers.4.running_var")
  with pytest.raises(ConversionError, match=r"batch_stats/smpl_deconv_layers_4/var"):
    convert_pare_head(broken, PareHead(in_channels=IN_CHANNELS))
  with pytest.raises(ConversionError, match=r"head\.keypoint_attention\.conv1x1_pose\.weight"):
    convert_pare_head(
      {**state, "model.head.keypoint_attention.conv1x1_pose.weight": torch.zeros(128, 128, 1)},
      PareHead(in_channels=IN_CHANNELS),
    )
  with pytest.raises(ConversionError, match=r"1 unexpected keys: optimizer_step"):
    convert_pare_head({**state, "optimizer_step": torch.zeros(())}, PareHead(IN_CHANNELS))
  broken = {**state, "model.head.shape_mlp.weight": torch.zeros(10, 24 * 32)}
  with pytest.raises(ConversionError, match=r"'head\.shape_mlp\.weight'\): got \(768, 10\)"):
    convert_pare_head(broken, PareHead(in_channels=IN_CHANNELS))
  broken = {**state, "model.head.pose_mlp.weight": torch.zeros(6, 128, 24)}
  with pytest.raises(ConversionError, match=r"head\.pose_mlp\.weight: expected a Locally"):
    convert_pare_head(broken, PareHead(in_channels=IN_CHANNELS))
  # the wrong input width is a mis-shaped first conv, named by its PyTorch key
  with pytest.raises(ConversionError, match=r"'head\.keypoint_deconv_layers\.0\.weight'"):
    convert_pare_head(state, PareHead(in_channels=IN_CHANNELS + 1))
  # without the `model.` prefix and without the non-model keys it converts as well
  bare = {k: v for k, v in head_state(oracle).items() if k not in IGNORED_KEYS}
  assert convert_pare_head(bare, PareHead(in_channels=IN_CHANNELS))["params"]


def test_whole_pare_matches_the_oracle_and_checkpoint_file(tmp_path):
  """HRNet oracle (tests/convert/hrnet_test.py) + head oracle, converted from a Lightning file."""
  import jax

  from tests.convert.hrnet_test import TINY, PoseHighResolutionNet

  backbone = randomize_conv_bn(PoseHighResolutionNet(TINY), seed=1)
  head = randomize(TorchPareHead(sum(TINY.widths), filters=16, smpl_features=8), seed=2)
  state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
  state.update({f"head.{k}": v for k, v in head.state_dict().items()})
  path = tmp_path / "pare_checkpoint.ckpt"
  torch.save({"state_dict": lightning(state), "epoch": 3}, path)

  images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    ref = head(backbone(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0])
  model = Pare(TINY, num_deconv_filters=16, num_features_smpl=8)
  variables = load_pare_checkpoint(path, model)
  ours = jax.jit(model.apply)(variables, images)
  assert ours.part_logits.shape == (2, 16, 16, 25)
  compare(ours, ref)

  broken = dict(state)
  broken.pop("backbone.stage3.0.fuse_layers.2.0.1.1.running_var")
  with pytest.raises(
    ConversionError, match=r"batch_stats/backbone/stage3_0/fuse_layers_2_0_1_1/var"
  ):
    convert_pare(broken, model)
  with pytest.raises(ConversionError, match=r"PARE: 1 unexpected keys: discriminator\.w"):
    convert_pare({**state, "discriminator.w": torch.zeros(1)}, model)
  with pytest.raises(ConversionError, match=r"'backbone\.stage2\.0\.extra\.weight'"):
    convert_pare({**state, "backbone.stage2.0.extra.weight": torch.zeros(1)}, model)


def test_crop_lands_pixels_where_scorehmr_does():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
  cx, cy = 200, 140
  # 448-pixel square (the box's larger side) -> 224: crop index u samples image 2 (u - 112) + c,
  # exact pixels in cv2's convention (no blend with a neighbour).
  box = (cx - 224, cy - 100, cx + 224, cy + 100)
  crop = crop_for_pare(image, box)
  assert crop.shape == (224, 224, 3) and crop.dtype == np.float32
  pixels = crop * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
  u = np.arange(224)
  x, y = 2 * (u - 112) + cx, 2 * (u - 112) + cy
  inside_x, inside_y = (x >= 0) & (x < 400), (y >= 0) & (y < 300)
  want = image[y[inside_y]][:, x[inside_x]] / 255.0
  got = pixels[np.ix_(inside_y, inside_x)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  # far outside the image: zeros before normalisation
  np.testing.assert_allclose(pixels[:30], 0.0, atol=1e-5)
  # scale 1 (224 box), half-integer centre in box terms: a shifted copy
  crop1 = crop_for_pare(image, (50, 20, 274, 60))  # centre (162, 40), side 224
  pixels1 = crop1 * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
  np.testing.assert_allclose(pixels1[112, 112], image[40, 162] / 255.0, atol=1e-5)
  np.testing.assert_allclose(pixels1[120, 10], image[48, 60] / 255.0, atol=1e-5)


def test_crop_refuses_bad_boxes_and_images():
  image = np.zeros((100, 120, 3), np.uint8)
  with pytest.raises(InputError, match="degenerate box"):
    crop_for_pare(image, (10, 10, 10, 50))
  with pytest.raises(InputError, match="degenerate box"):
    crop_for_pare(image, (30, 10, 20, 50))
  with pytest.raises(InputError, match="outside the 120x100 image"):
    crop_for_pare(image, (130, 10, 150, 50))
  with pytest.raises(InputError, match="outside the 120x100 image"):
    crop_for_pare(image, (10, -50, 50, -1))
  with pytest.raises(InputError, match="4 finite numbers"):
    crop_for_pare(image, (10, 10, np.nan, 50))
  with pytest.raises(InputError, match="uint8"):
    crop_for_pare(image.astype(np.float32), (10, 10, 50, 50))
  with pytest.raises(InputError, match=r"\[H, W, 3\]"):
    crop_for_pare(image[..., 0], (10, 10, 50, 50))
  # a box that only overlaps the image is fine
  assert crop_for_pare(image, (-20, -20, 30, 30)).shape == (224, 224, 3)
