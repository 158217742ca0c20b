"""PARE head: parameter counts, output layout, 6D layouts, attention, ScoreHMR features and their
statistics files. (Equivalence with PyTorch: tests/convert/pare_test.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.errors import InputError
from jhmr.geometry import rotations
from jhmr.models.pare import (
  FeatureStats,
  Pare,
  PareHead,
  features,
  load_feature_stats,
  normalise_crop,
  part_attention,
  rot6d_to_matrix,
  standardise,
)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts_match_the_research_note():
  head = jax.eval_shape(PareHead().init, jax.random.key(0), jnp.zeros((1, 56, 56, 480)))
  assert _count(head["params"]) == 1_451_750
  assert head["params"]["pose_mlp"].shape == (24, 128, 6)
  model = jax.eval_shape(Pare().init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  # PARE's 32,861,502 less the 792 of HRNet's never-used final_layer (not part of jhmr's HRNet)
  assert _count(model["params"]) == 32_861_502 - 792
  assert set(model["params"]) == set(model["batch_stats"]) == {"backbone", "head"}
  assert _count(model["params"]["head"]) == 1_451_750


@pytest.fixture(scope="module")
def tiny_head():
  head = PareHead(in_channels=8, num_deconv_filters=16, num_features_smpl=4)
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
  variables = jax.jit(head.init)(jax.random.key(0), x)
  return head, variables, x, jax.jit(head.apply)(variables, x)  # the output is a pytree


def test_output_layout(tiny_head):
  head, variables, x, out = tiny_head
  assert out.pose_feats.shape == (2, 16, 24) and out.cam_shape_feats.shape == (2, 4, 24)
  assert out.part_logits.shape == (2, 6, 6, 25) and out.pose_6d.shape == (2, 24, 6)
  assert out.rotmat.shape == (2, 24, 3, 3) and out.betas.shape == (2, 10)
  assert out.cam.shape == (2, 3)
  np.testing.assert_allclose(out.rotmat, rot6d_to_matrix(out.pose_6d, "pare"), atol=1e-6)
  other = PareHead(
    in_channels=8, num_deconv_filters=16, num_features_smpl=4, rot6d_layout="scorehmr"
  )
  rotmat = jax.jit(other.apply)(variables, x).rotmat
  np.testing.assert_allclose(rotmat, rotations.rot6d_to_matrix(out.pose_6d), atol=1e-6)
  # betas come from the channel-major flatten of cam_shape_feats (index c * 24 + j)
  flat = out.cam_shape_feats.reshape(2, -1)
  k, b = variables["params"]["shape_mlp"]["kernel"], variables["params"]["shape_mlp"]["bias"]
  np.testing.assert_allclose(out.betas, flat @ k + b, rtol=1e-5, atol=1e-6)


def test_part_attention_is_a_softmax_over_positions():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(1, 3, 4, 5)).astype(np.float32)
  logits = np.full((1, 3, 4, 2), -1e4, np.float32)
  logits[0, 1, 2, 0] = 0.0  # part 0 attends to a single position
  logits[..., 1] = 0.0  # part 1: uniform
  out = np.asarray(part_attention(jnp.asarray(feats), jnp.asarray(logits)))
  assert out.shape == (1, 5, 2)
  np.testing.assert_allclose(out[0, :, 0], feats[0, 1, 2], rtol=1e-6)
  np.testing.assert_allclose(out[0, :, 1], feats[0].mean((0, 1)), rtol=1e-5)


def test_rot6d_layouts():
  rng = np.random.default_rng(0)
  mats = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(rng.normal(size=(5, 3)))))
  cols = mats[..., :, :2]  # [5, 3, 2]
  pare = cols.reshape(5, 6)  # row-major (3, 2): a1 = x[0::2], a2 = x[1::2]
  scorehmr = cols.transpose(0, 2, 1).reshape(5, 6)  # (2, 3): a1 = x[0:3], a2 = x[3:6]
  np.testing.assert_allclose(rot6d_to_matrix(pare, "pare"), mats, atol=1e-6)
  np.testing.assert_allclose(rot6d_to_matrix(scorehmr, "scorehmr"), mats, atol=1e-6)
  with pytest.raises(ValueError, match="rot6d_layout must be one of"):
    rot6d_to_matrix(pare, "spin")
  with pytest.raises(ValueError, match="rot6d_layout must be one of"):
    PareHead(in_channels=8, rot6d_layout="hmr2").init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))
  with pytest.raises(ValueError, match=r"must be \[B, H, W, 480\]"):
    PareHead().init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))


def test_features_follow_scorehmrs_flatten(tiny_head):
  head, variables, x, out = tiny_head
  pose, cam_shape = np.asarray(out.pose_feats), np.asarray(out.cam_shape_feats)
  np.testing.assert_array_equal(features(out), pose.reshape(2, -1))
  # ScoreHMR: torch.cat((pose_feats, cam_shape_feats), dim=1).reshape(B, -1)
  want = np.concatenate([pose, cam_shape], axis=1).reshape(2, -1)
  np.testing.assert_array_equal(features(out, use_betas=True), want)
  assert features(out).shape == (2, 16 * 24)


def _pare_stats(path, c_pose=128, c_shape=64):
  rng = np.random.default_rng(0)
  arrays = {
    "pose_feats_mean": rng.normal(size=(c_pose, 24)),
    "pose_feats_std": rng.uniform(0.5, 2, size=(c_pose, 24)),
    "cam_shape_feats_mean": rng.normal(size=(c_shape, 24)),
    "cam_shape_feats_std": rng.uniform(0.5, 2, size=(c_shape, 24)),
  }
  np.savez(path, **arrays)
  return arrays


def test_feature_stats_files(tmp_path):
  arrays = _pare_stats(tmp_path / "pare_feat_stats.npz")
  stats = load_feature_stats(tmp_path / "pare_feat_stats.npz")
  assert isinstance(stats, FeatureStats) and stats.mean.shape == (3072,)
  np.testing.assert_allclose(stats.mean, arrays["pose_feats_mean"].reshape(-1), rtol=1e-6)
  both = load_feature_stats(tmp_path / "pare_feat_stats.npz", use_betas=True)
  assert both.std.shape == (3072 + 1536,)
  np.testing.assert_allclose(both.std[3072:], arrays["cam_shape_feats_std"].reshape(-1), rtol=1e-6)
  feats = jnp.ones((2, 3072))
  mean, std = stats
  np.testing.assert_allclose(
    standardise(feats, stats), np.tile((1 - mean) / std, (2, 1)), rtol=1e-6
  )
  with pytest.raises(ValueError, match="features have 3072 dimensions but the statistics 4608"):
    standardise(feats, both)

  np.savez(tmp_path / "prohmr_feat_stats.npz", mean=np.zeros(2048), std=np.ones(2048))
  assert load_feature_stats(tmp_path / "prohmr_feat_stats.npz").mean.shape == (2048,)
  with pytest.raises(InputError, match="use_betas needs the PARE keys"):
    load_feature_stats(tmp_path / "prohmr_feat_stats.npz", use_betas=True)


def test_feature_stats_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="feature statistics not found"):
    load_feature_stats(tmp_path / "missing.npz")
  np.savez(tmp_path / "odd.npz", feat_mean=np.zeros(3), feat_std=np.ones(3))
  with pytest.raises(InputError, match=r"found \['feat_mean', 'feat_std'\]"):
    load_feature_stats(tmp_path / "odd.npz")
  np.savez(tmp_path / "sizes.npz", mean=np.zeros(3), std=np.ones(4))
  with pytest.raises(InputError, match="mean has 3 values but std has 4"):
    load_feature_stats(tmp_path / "sizes.npz")
  np.savez(tmp_path / "zero.npz", mean=np.zeros(3), std=np.array([1.0, 0.0, 1.0]))
  with pytest.raises(InputError, match="finite and positive"):
    load_feature_stats(tmp_path / "zero.npz")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(InputError, match="not a readable .npz"):
    load_feature_stats(tmp_path / "junk.npz")


def test_normalise_crop():
  crop = np.array([[[0, 128, 255]]], np.uint8)
  want = (np.array([0, 128, 255]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(normalise_crop(crop)[0, 0], want, rtol=1e-6)
