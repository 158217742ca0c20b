"""jhmr.models.dpmesh: the whole tiny model end to end through `predict` (random variables from
`random_variables`, no `model.init` compile), and `predict`'s input rules.

The backbone is `DPMeshBackboneConfig.tiny` with one layer per U-Net block (`light_config`), so
the one compiled predict program stays small; the two-layer structure is covered by
dpmesh_backbone_test. Every predict call has the same shapes and a body model, so it compiles once.
"""

import dataclasses

import jax
import numpy as np
import pytest

from jhmr.models.controlnet import ControlNetConfig
from jhmr.models.dpmesh import (
  DPMESH15_FROM_SMPL24,
  DPMESH15_NAMES,
  DPMESH30_NAMES,
  DPMesh,
  DPMeshConfig,
  predict,
  random_variables,
)
from jhmr.models.dpmesh_backbone import DPMeshBackboneConfig
from jhmr.models.unet import UNetConfig
from tests.guidance.conftest import make_tiny_body


def light_config() -> DPMeshConfig:
  unet = UNetConfig(
    block_out_channels=(16, 32, 32, 32),
    num_attention_heads=(2, 2, 2, 2),
    cross_attention_dim=32,
    norm_num_groups=8,
    layers_per_block=1,
  )
  backbone = DPMeshBackboneConfig.tiny(
    unet=unet,
    controlnet=ControlNetConfig.from_unet(
      unet, conditioning_channels=30, conditioning_embedding_out_channels=None
    ),
    feature_blocks=(0, 2, 4, 6),
  )
  return DPMeshConfig.tiny(backbone=backbone)


CFG = light_config()
S = CFG.image_size


def _inputs(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  crops = rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8)
  xy = rng.uniform(4, S - 4, (batch, 30, 2))
  conf = rng.uniform(0.5, 1.0, (batch, 30, 1))
  return crops, np.concatenate([xy, conf], -1).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
  variables = random_variables(DPMesh(CFG), seed=0)
  body = make_tiny_body()
  crops, kp = _inputs()
  pred = predict(variables, crops, kp, config=CFG, body_model=body)
  return dict(variables=variables, body=body, crops=crops, kp=kp, pred=pred)


def test_names():
  assert len(DPMESH30_NAMES) == 30 and DPMESH30_NAMES[24:] == (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "head_top",
  )
  assert len(DPMESH15_NAMES) == 15 and DPMESH15_FROM_SMPL24[0] == 0


def test_predict_shapes_and_finite(setup):
  p, body = setup["pred"], setup["body"]
  assert p.global_orient.shape == (2, 3)
  assert p.body_pose.shape == (2, 23, 3)
  assert p.betas.shape == (2, 10)
  assert p.translation.shape == (2, 3)
  assert p.vertices.shape == (2, body.num_vertices, 3)
  assert p.joints.shape == (2, 24, 3)
  assert p.visible.all()
  for v in (p.global_orient, p.body_pose, p.betas, p.translation, p.vertices, p.joints):
    assert np.all(np.isfinite(v))
  assert np.all(p.translation[:, 2] > 0)


def test_float_crops_match_uint8(setup):
  p = predict(
    setup["variables"],
    setup["crops"].astype(np.float32) / 255.0,
    setup["kp"],
    config=CFG,
    body_model=setup["body"],
  )
  np.testing.assert_allclose(p.betas, setup["pred"].betas, atol=1e-5)


def test_outside_keypoints_are_invisible(setup):
  kp_out, kp_missing = setup["kp"].copy(), setup["kp"].copy()
  kp_out[0, 3] = (-5.0, 2.0 * S, 0.9)  # outside the crop, confident
  kp_out[1, 7] = (S + 1.0, 5.0, 0.9)
  kp_missing[0, 3] = 0.0  # the same joints marked missing
  kp_missing[1, 7] = 0.0
  a = predict(setup["variables"], setup["crops"], kp_out, config=CFG, body_model=setup["body"])
  b = predict(setup["variables"], setup["crops"], kp_missing, config=CFG, body_model=setup["body"])
  assert not a.visible[0, 3] and not a.visible[1, 7] and a.visible.sum() == 58
  np.testing.assert_array_equal(a.visible, b.visible)
  np.testing.assert_allclose(a.body_pose, b.body_pose, atol=1e-6)
  assert not np.allclose(a.betas, setup["pred"].betas, atol=1e-6)  # the joints mattered


def test_all_joints_invisible_predicts_from_image(setup):
  kp = setup["kp"].copy()
  kp[1, :, 2] = 0.0
  with pytest.warns(UserWarning, match=r"no visible joint in crops \[1\]"):
    p = predict(setup["variables"], setup["crops"], kp, config=CFG, body_model=setup["body"])
  assert not p.visible[1].any() and p.visible[0].all()
  assert np.all(np.isfinite(p.vertices))
  np.testing.assert_allclose(p.betas[0], setup["pred"].betas[0], atol=1e-5)


def test_input_errors(setup):
  v, crops, kp = setup["variables"], setup["crops"], setup["kp"]
  with pytest.raises(ValueError, match=rf"crops must be \[B, {S}, {S}, 3\]"):
    predict(v, crops[:, :32], kp, config=CFG)
  with pytest.raises(ValueError, match=r"in \[0, 1\]"):
    predict(v, crops.astype(np.float32), kp, config=CFG)
  with pytest.raises(ValueError, match=r"keypoints_2d must be \[2, 30, 3\]"):
    predict(v, crops, kp[:, :24], config=CFG)
  bad = kp.copy()
  bad[1, 20, 0] = np.nan
  with pytest.raises(ValueError, match=r"keypoints_2d\[1, 20\] \(left_wrist\) is NaN"):
    predict(v, crops, bad, config=CFG)
  bad = kp.copy()
  bad[0, 5, 2] = np.nan
  with pytest.raises(ValueError, match=r"\(right_knee\)"):
    predict(v, crops, bad, config=CFG)


def test_config_validation():
  full = DPMeshConfig.released()
  assert full.pose_decoder == "vposer" and full.vposer.num_neurons == 512
  assert full.backbone.prompt == "released" and full.regressor.pose_code_dim == 32
  released = DPMeshConfig.tiny(pose_decoder="vposer")  # the released checkpoints' decoder
  assert (released.regressor.pose_tokens, released.regressor.pose_code_dim) == (0, 32)
  with pytest.raises(ValueError, match="one 32-D VPoser code"):
    dataclasses.replace(released, regressor=DPMeshConfig.tiny().regressor)
  with pytest.raises(ValueError, match="21 SMPL body joints"):
    dataclasses.replace(released, vposer=dataclasses.replace(released.vposer, num_joints=23))
  with pytest.raises(ValueError, match="pose_decoder"):
    DPMeshConfig.tiny(pose_decoder="vqvae")
  cfg = DPMeshConfig.tiny()
  with pytest.raises(ValueError, match="in_channels"):
    dataclasses.replace(cfg, regressor=dataclasses.replace(cfg.regressor, in_channels=8))
  with pytest.raises(ValueError, match="codebook's logits"):
    dataclasses.replace(cfg, regressor=dataclasses.replace(cfg.regressor, pose_tokens=3))


def test_random_variables_structure(setup):
  params = setup["variables"]["params"]
  assert set(params) == {"backbone", "regressor", "pose_codebook"}
  assert set(params["pose_codebook"]) == {"params", "codebook"}
  assert sum(x.size for x in jax.tree.leaves(params["regressor"])) > 0
