"""Tests for the joint-map registry."""

import jax.numpy as jnp
import numpy as np
import pytest

import jhmr
from jhmr.io import joint_maps

# ScoreHMR demo/track.py: COCO-17 index i goes to BODY_25 slot m[i] (io_formats.md §2,
# scorehmr.md §6).
SCOREHMR_COCO_TO_BODY25 = [0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11]


def _random(k, seed=0, batch=(2, 3)):
  return np.random.default_rng(seed).uniform(0.1, 1.0, (*batch, k, 3)).astype(np.float32)


def test_set_sizes_and_canonical_names_unique():
  sizes = {"coco17": 17, "coco18": 18, "openpose25": 25, "h36m17": 17, "smpl24": 24}
  sizes |= {"lsp14": 14, "coco_wholebody_body": 23}
  assert {n: joint_maps.num_joints(n) for n in sizes} == sizes
  for name in joint_maps.JOINT_SETS:
    canonical = joint_maps.canonical_names(name)
    assert len(set(canonical)) == len(canonical), name


def test_orders_match_the_notes():
  # io_formats.md §1: COCO-18 puts right first and has Neck at 1; BODY_25 has MidHip at 8.
  assert joint_maps.JOINT_SETS["coco18"][8] == "RHip"
  assert joint_maps.JOINT_SETS["coco18"][13] == "LAnkle"
  assert joint_maps.JOINT_SETS["openpose25"][8] == "MidHip"
  assert joint_maps.JOINT_SETS["openpose25"][24] == "RHeel"
  body = joint_maps.canonical_names("coco_wholebody_body")
  assert body[:17] == joint_maps.canonical_names("coco17")
  assert body[17:] == (
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
    "right_heel",
  )  # fmt: skip
  # The feet match BODY_25's feet.
  src, dst = joint_maps.mapping("coco_wholebody_body", "openpose25")
  assert dict(zip(src.tolist(), dst.tolist(), strict=True))[17] == 19  # L big toe


def test_sets_agree_with_body_model_asset():
  model = jhmr.load_body_model("anny-tiny")
  for name in ("smpl24", "openpose25", "coco17", "h36m17", "lsp14"):
    assert tuple(model.joint_names(name)) == joint_maps.JOINT_SETS[name], name


def test_coco17_to_openpose25_is_scorehmr_slot_list():
  assert joint_maps.slots("coco17", "openpose25").tolist() == SCOREHMR_COCO_TO_BODY25
  coco = _random(17)
  body25 = joint_maps.convert(coco, "coco17", "openpose25")
  expected = np.zeros((2, 3, 25, 3), np.float32)
  expected[..., SCOREHMR_COCO_TO_BODY25, :] = coco
  np.testing.assert_array_equal(body25, expected)
  # Neck, MidHip and the feet keep confidence 0.
  assert np.all(body25[..., [1, 8, 19, 20, 21, 22, 23, 24], 2] == 0)


def test_round_trip_coco17_openpose25():
  coco = _random(17)
  back = joint_maps.convert(
    joint_maps.convert(coco, "coco17", "openpose25"), "openpose25", "coco17"
  )
  np.testing.assert_array_equal(back, coco)


def test_round_trip_openpose25_coco18_keeps_the_18_shared():
  body25 = _random(25)
  again = joint_maps.convert(
    joint_maps.convert(body25, "openpose25", "coco18"), "coco18", "openpose25"
  )
  shared = [i for i in range(25) if i not in (8, 19, 20, 21, 22, 23, 24)]
  assert len(shared) == 18
  np.testing.assert_array_equal(again[..., shared, :], body25[..., shared, :])
  assert np.all(again[..., [8, 19, 20, 21, 22, 23, 24], :] == 0)


def test_smpl24_h36m17_shared_joints():
  src, dst = joint_maps.mapping("smpl24", "h36m17")
  h36m = joint_maps.JOINT_SETS["h36m17"]
  smpl = joint_maps.JOINT_SETS["smpl24"]
  pairs = {h36m[d]: smpl[s] for s, d in zip(src, dst, strict=True)}
  assert pairs == {
    "Pelvis": "pelvis", "RHip": "right_hip", "RKnee": "right_knee", "RAnkle": "right_ankle",
    "LHip": "left_hip", "LKnee": "left_knee", "LAnkle": "left_ankle",
    "LShoulder": "left_shoulder", "LElbow": "left_elbow", "LWrist": "left_wrist",
    "RShoulder": "right_shoulder", "RElbow": "right_elbow", "RWrist": "right_wrist",
  }  # fmt: skip
  smpl_kp = _random(24)
  back = joint_maps.convert(joint_maps.convert(smpl_kp, "smpl24", "h36m17"), "h36m17", "smpl24")
  np.testing.assert_array_equal(back[..., src, :], smpl_kp[..., src, :])
  others = np.setdiff1d(np.arange(24), src)
  assert np.all(back[..., others, :] == 0)


def test_jax_input_gives_jax_output():
  coco = jnp.asarray(_random(17))
  out = joint_maps.convert(coco, "coco17", "openpose25")
  assert isinstance(out, type(coco))
  np.testing.assert_array_equal(
    np.asarray(out), joint_maps.convert(np.asarray(coco), "coco17", "openpose25")
  )


def test_unknown_set_lists_valid_names():
  with pytest.raises(ValueError, match=r"unknown joint set 'body25'.*coco17.*openpose25.*smpl24"):
    joint_maps.convert(_random(25), "body25", "coco17")
  with pytest.raises(ValueError, match="unknown joint set 'nope'"):
    joint_maps.mapping("coco17", "nope")


def test_wrong_joint_count_raises():
  with pytest.raises(ValueError, match="do not have 17 joints of set 'coco17'"):
    joint_maps.convert(_random(25), "coco17", "openpose25")
