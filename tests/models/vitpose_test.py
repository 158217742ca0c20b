"""ViTPose: heatmaps against transformers' `VitPoseForPoseEstimation`, crops and decoding against
`VitPoseImageProcessorPil`, hand-built heatmaps, flip test, parameter counts, bad inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.data import crops
from jhmr.io import joint_maps
from jhmr.models import vitpose as vp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_HF = dict(
  image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
  num_attention_heads=2, mlp_ratio=4, layer_norm_eps=1e-6, out_indices=[2],
)  # fmt: skip
FLIP_PAIRS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]


def hf_model(simple: bool):
  torch.manual_seed(0)
  config = transformers.VitPoseConfig(
    backbone_config=transformers.VitPoseBackboneConfig(**TINY_HF),
    use_simple_decoder=simple,
    num_labels=17,
  )
  model = transformers.VitPoseForPoseEstimation(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "position" in name:
        p.copy_(0.1 * torch.randn_like(p))
      elif "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn_like(b))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand_like(b))
  return model


@pytest.fixture(scope="module", params=["classic", "simple"])
def pair(request):
  from jhmr.convert.vitpose import convert_vitpose_hf

  simple = request.param == "simple"
  ref = hf_model(simple)
  config = dataclasses.replace(vp.VITPOSE_TINY, head=request.param)
  return ref, config, convert_vitpose_hf(ref.state_dict(), config)


def test_heatmaps_match_transformers(pair):
  ref, config, variables = pair
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 48)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).heatmaps.numpy()
    # transformers' flip test: the caller mirrors the input, `flip_pairs` mirrors back
    flipped = ref(torch.from_numpy(x).flip(-1), flip_pairs=torch.tensor(FLIP_PAIRS)).heatmaps
    want_flip = 0.5 * (want + flipped.numpy())
  model = vp.VitPose(config)
  nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  got = model.apply(variables, nhwc)
  assert got.shape == (2, 16, 12, 17) and config.heatmap_size == (16, 12)
  scale = np.abs(want).max()
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-4 * scale)
  got_flip = model.apply(variables, nhwc, flip_test=True)
  np.testing.assert_allclose(
    np.asarray(got_flip).transpose(0, 3, 1, 2), want_flip, atol=1e-4 * scale
  )


def test_wrong_crop_size_raises(pair):
  _, config, variables = pair
  with pytest.raises(ValueError, match=r"ViT expects images \[B, 64, 48, 3\]"):
    vp.VitPose(config).apply(variables, jnp.zeros((1, 48, 64, 3)))
  with pytest.raises(ValueError, match="head"):
    vp.VitPoseConfig(head="deconv")


def gaussian_maps(peaks, h=64, w=48, sigma=2.0):
  """[1, h, w, K] Gaussians centred on sub-pixel `peaks` [K, 2] (x, y)."""
  ys, xs = np.mgrid[0:h, 0:w]
  maps = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in peaks]
  return np.stack(maps, -1)[None].astype(np.float32)


def identity_box(h=64, w=48):
  """centre / scale for which heatmap pixel (x, y) is image point (x, y): s 200 = (w-1, h-1)."""
  center = np.array([[(w - 1) / 2, (h - 1) / 2]], np.float32)
  scale = np.array([[(w - 1) / 200, (h - 1) / 200]], np.float32)
  return center, scale


def test_decode_subpixel_refinement():
  rng = np.random.default_rng(0)
  peaks = np.stack([rng.uniform(8, 40, 17), rng.uniform(8, 56, 17)], -1)
  maps = gaussian_maps(peaks)
  center, scale = identity_box()
  coarse = np.asarray(vp.decode_heatmaps(maps, center, scale, refine=False))[0]
  fine = np.asarray(vp.decode_heatmaps(maps, center, scale))[0]
  np.testing.assert_array_equal(coarse[:, :2], np.round(peaks))  # integer argmax
  np.testing.assert_allclose(fine[:, 2], maps[0].reshape(-1, 17).max(0))  # raw maximum
  # a blurred Gaussian stays a Gaussian: one Newton step on its log lands on the true peak
  np.testing.assert_allclose(fine[:, :2], peaks, atol=2e-3)
  assert np.all(np.abs(fine[:, :2] - peaks) < np.abs(coarse[:, :2] - peaks) + 1e-6)


def test_decode_maps_heatmap_to_image_udp():
  # heatmap pixel (x, y) -> x (s 200) / (w - 1) + c - s 100, per axis
  peaks = np.array([[0.0, 0.0], [47.0, 63.0], [12.0, 30.0]] + [[24.0, 32.0]] * 14)
  maps = gaussian_maps(peaks)
  center, scale = np.array([[300.0, 200.0]]), np.array([[0.9, 1.2]])
  out = np.asarray(vp.decode_heatmaps(maps, center, scale, refine=False))[0]
  want = peaks * np.array([180.0 / 47, 240.0 / 63]) + center - scale * 100
  np.testing.assert_allclose(out[:, :2], want, rtol=1e-5)
  # a non-positive maximum gives (-1, -1) before the transform, as mmpose
  out = np.asarray(vp.decode_heatmaps(-maps, center, scale))[0]
  want = -np.array([180.0 / 47, 240.0 / 63]) + [210, 80]
  np.testing.assert_allclose(out[0, :2], want, rtol=1e-6)


def test_flip_test_symmetry():
  rng = np.random.default_rng(1)
  maps = gaussian_maps(np.stack([rng.uniform(4, 44, 17), rng.uniform(4, 60, 17)], -1))
  back = np.asarray(vp.flip_back(jnp.asarray(maps)))
  np.testing.assert_array_equal(np.asarray(vp.flip_back(back)), maps)  # an involution
  # left shoulder (5) of the mirrored crop is the right shoulder (6) at x -> w - 1 - x
  np.testing.assert_array_equal(back[0, :, :, 6], maps[0, :, ::-1, 5])
  np.testing.assert_array_equal(back[0, :, :, 0], maps[0, :, ::-1, 0])
  # a mirror-symmetric model returns flip_back(maps) for the mirrored crop: the flip test is a
  # no-op, and the decode of merged heatmaps equals the decode of the plain ones
  center, scale = identity_box()
  plain = vp.decode_heatmaps(maps, center, scale)
  merged = vp.decode_heatmaps(maps, center, scale, flip_heatmaps=back)
  np.testing.assert_allclose(np.asarray(merged), np.asarray(plain), atol=1e-5)
  shifted = vp.merge_flip(maps, back, shift_heatmap=True)
  np.testing.assert_allclose(
    np.asarray(shifted)[..., 1:, :], (maps[..., 1:, :] + maps[..., :-1, :]) / 2, atol=1e-7
  )


def test_decode_matches_transformers_processor():
  from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil
  from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

  rng = np.random.default_rng(2)
  peaks = np.stack([rng.uniform(3, 45, (2, 17)), rng.uniform(3, 61, (2, 17))], -1)
  maps = np.concatenate([gaussian_maps(p, sigma=1.5) for p in peaks])
  maps = maps * rng.uniform(0.3, 1.0, (2, 1, 1, 17)) + 0.02 * rng.random(maps.shape)
  boxes = np.array([[[40.0, 30.0, 120.0, 250.0]], [[10.0, 5.0, 300.0, 90.0]]], np.float32)
  processor = VitPoseImageProcessorPil()
  out = VitPoseEstimatorOutput(heatmaps=torch.from_numpy(maps.transpose(0, 3, 1, 2).copy()))
  ref = processor.post_process_pose_estimation(out, boxes=boxes)
  want = np.stack([np.asarray(r[0]["keypoints"]) for r in ref])
  want_score = np.stack([np.asarray(r[0]["scores"]) for r in ref])
  center, scale = vp.boxes_to_center_scale(boxes.reshape(-1, 4))
  # transformers blurs with scipy gaussian_filter (sigma 0.8, radius 5, half-sample symmetric)
  got = np.asarray(vp.decode_heatmaps(maps, center, scale, sigma=0.8, border="symmetric"))
  np.testing.assert_allclose(got[..., :2], want, atol=1e-3)  # measured 6e-5 px
  np.testing.assert_allclose(got[..., 2], want_score, rtol=1e-6)


def test_crops_match_transformers_processor():
  from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (90, 120, 3)).astype(np.uint8)
  boxes = np.array([[20.0, 10.0, 40.0, 70.0], [60.0, 30.0, 50.0, 30.0]], np.float32)
  processor = VitPoseImageProcessorPil()
  want = processor(image, boxes=[boxes], return_tensors="np")["pixel_values"]
  center, scale = vp.boxes_to_center_scale(boxes)
  got = np.asarray(crops.crop_for_vitpose(image, center, scale)).transpose(0, 3, 1, 2)
  assert got.shape == want.shape == (2, 3, 256, 192)
  # both round the warp to uint8; a rounding tie may fall either way (one grey level = 0.0175)
  diff = np.abs(got - want)
  assert np.median(diff) < 1e-5 and np.mean(diff > 1e-3) < 0.01 and diff.max() < 0.02
  with pytest.raises(ValueError, match="RGB"):
    crops.crop_for_vitpose(image[..., 0], center, scale)


def test_boxes_to_center_scale():
  center, scale = vp.boxes_to_center_scale([[10, 20, 30, 80], [0, 0, 150, 40]])
  np.testing.assert_allclose(center, [[25, 60], [75, 20]])
  # w:h enlarged to 192:256, then x1.25, in units of 200 px
  np.testing.assert_allclose(
    scale, [[60 * 1.25 / 200, 80 * 1.25 / 200], [150 * 1.25 / 200, 200 * 1.25 / 200]]
  )


def test_openpose25_slots_match_scorehmr():
  scorehmr = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]  # demo_image.py:114
  np.testing.assert_array_equal(joint_maps.slots("coco17", "openpose25"), scorehmr)
  kp = np.random.default_rng(4).random((2, 17, 3)).astype(np.float32)
  want = np.zeros((2, 25, 3), np.float32)
  want[:, scorehmr] = kp
  np.testing.assert_array_equal(vp.to_openpose25(kp), want)
  np.testing.assert_array_equal(np.asarray(vp.to_openpose25(jnp.asarray(kp))), want)


def test_full_size_parameter_counts():
  counts = {}
  for name, config in (
    ("H", vp.VITPOSE_H),
    ("B", vp.VITPOSE_B),
    ("B-simple", vp.VITPOSE_B_SIMPLE),
    ("H-simple", dataclasses.replace(vp.VITPOSE_H, head="simple")),
  ):
    model = vp.VitPose(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.dummy_input())
    # + C: the original position table keeps the row that our folded table absorbs
    counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    counts[name] += config.vit.embed_dim
    head = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]["head"]))
    if name == "H":
      assert head == 6_296_849
      assert shapes["batch_stats"]["head"]["batchnorm1"]["mean"].shape == (256,)
  assert counts == {
    "H": 637_208_849,
    "B": 89_994_513,
    "B-simple": 85_912_337,
    "H-simple": 631_107_857,
  }
