"""jhmr.models.dpmesh_backbone vs diffusers (float32, tiny random configs with DPMesh's structure:
4 levels, 2 layers per block, 32² latent, so output blocks 1/4/7/11 and the 8²/16² maps exist).

The reference: diffusers `AutoencoderKL` (posterior mean), a `ControlNetModel` whose conv_in takes
latent ‖ heatmaps (hint encoder zeroed, as in controlnet_test), and a `UNet2DConditionModel`
whose LoRA update is merged into its weights, with an attention processor that records the
softmax cross-attention maps; the fusion convs are DPMesh's `outmodules` written in torch.
One jitted apply (training mode, joint dropout on) serves the whole comparison.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from jhmr.convert import diffusers_unet, diffusers_vae  # noqa: E402
from jhmr.models import lora as lora_lib  # noqa: E402
from jhmr.models.dpmesh_backbone import (  # noqa: E402
  DPMESH_PAPER,
  DPMESH_RELEASED,
  DPMeshBackbone,
  DPMeshBackboneConfig,
  Fusion,
  JointPrompt,
  dpmesh_heatmaps,
  joint_grid_coordinates,
  parameter_counts,
  trainable_mask,
  with_pretrained,
)
from tests.torch_reference import nchw, nhwc, randomize, rel_err  # noqa: E402

CFG = DPMeshBackboneConfig.tiny()
J = CFG.num_joints
TORCH_UNET = dict(
  sample_size=32,
  block_out_channels=CFG.unet.block_out_channels,
  layers_per_block=2,
  cross_attention_dim=CFG.token_dim,
  attention_head_dim=2,
  norm_num_groups=8,
)
TORCH_VAE = dict(
  block_out_channels=(8, 8),
  down_block_types=("DownEncoderBlock2D",) * 2,
  up_block_types=("UpDecoderBlock2D",) * 2,
  layers_per_block=1,
  norm_num_groups=4,
  sample_size=64,
)


def _torch_name(path) -> str:
  return re.sub(r"_(\d+)", r".\1", ".".join(path))


class RecordingProcessor:
  """diffusers' plain attention with the cross-attention softmax kept: `store` gets
  `[B, heads, L, S]` per call with a context."""

  def __init__(self, store: list):
    self.store = store

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    q = attn.head_to_batch_dim(attn.to_q(hidden_states))
    k = attn.head_to_batch_dim(attn.to_k(context))
    v = attn.head_to_batch_dim(attn.to_v(context))
    probs = attn.get_attention_scores(q, k, None)
    if encoder_hidden_states is not None:
      self.store.append(probs.reshape(-1, attn.heads, *probs.shape[1:]))
    out = attn.batch_to_head_dim(torch.bmm(probs, v))
    return attn.to_out[1](attn.to_out[0](out))


def _torch_fusion(params, groups):
  """DPMesh's outmodules (vpdencoder_useattn.py) with the jhmr fusion weights."""
  nn = torch.nn

  def conv(name, stride=2):
    k = np.asarray(params[name]["kernel"])
    m = nn.Conv2d(k.shape[2], k.shape[3], k.shape[0], stride=stride, padding=k.shape[0] // 2)
    m.weight.data = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    m.bias.data = torch.from_numpy(np.asarray(params[name]["bias"]).copy())
    return m

  def norm(name):
    m = nn.GroupNorm(groups, params[name]["scale"].shape[0])
    m.weight.data = torch.from_numpy(np.asarray(params[name]["scale"]).copy())
    m.bias.data = torch.from_numpy(np.asarray(params[name]["bias"]).copy())
    return m

  return [
    nn.Sequential(
      conv("outmodules_0_0"), norm("outmodules_0_1"), nn.ReLU(), conv("outmodules_0_3")
    ),
    nn.Sequential(conv("outmodules_1_0")),
    nn.Sequential(conv("outmodules_2_0", 1), norm("outmodules_2_1"), nn.ReLU()),
  ]


def _reference_heatmaps(keypoints, mask):
  """DPMesh's make_2d_gaussian_heatmap on the 32-grid (numpy), masked."""
  s = CFG.latent_size
  xy = keypoints[..., :2] * s / CFG.image_size
  grid = np.arange(s, dtype=np.float64)
  yy, xx = np.meshgrid(grid, grid, indexing="ij")
  d2 = (xx[None, None] - xy[..., 0, None, None]) ** 2 + (
    yy[None, None] - xy[..., 1, None, None]
  ) ** 2
  maps = np.exp(-d2 / (2 * CFG.heatmap_sigma**2)) * mask[..., None, None]
  return maps.transpose(0, 2, 3, 1)


def _reference_visible(keypoints):
  xy = keypoints[..., :2] * CFG.latent_size / CFG.image_size
  inside = np.all((xy >= 0) & (xy < CFG.latent_size), axis=-1)
  return inside & (keypoints[..., 2] > CFG.visibility_threshold)


def _inputs(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, CFG.image_size, CFG.image_size, 3)).astype(np.float32)
  xy = rng.uniform(-8, CFG.image_size + 8, size=(batch, J, 2))
  conf = rng.uniform(size=(batch, J, 1)) * (rng.uniform(size=(batch, J, 1)) > 0.2)
  return images, np.concatenate([xy, conf], -1).astype(np.float32)


@pytest.fixture(scope="module")
def port():
  tvae = randomize(diffusers.AutoencoderKL(**TORCH_VAE), seed=0)
  tunet = randomize(diffusers.UNet2DConditionModel(**TORCH_UNET), seed=1, scale=0.15)
  tcn = randomize(
    diffusers.ControlNetModel(
      **{k: v for k, v in TORCH_UNET.items() if k != "sample_size"},
      in_channels=4 + J,
      conditioning_embedding_out_channels=(16, 32),
    ),
    seed=2,
    scale=0.15,
  )
  with torch.no_grad():
    tcn.controlnet_cond_embedding.conv_out.weight.zero_()
    tcn.controlnet_cond_embedding.conv_out.bias.zero_()
  vae_cfg = diffusers_vae.vae_config_from_diffusers(dict(tvae.config))
  unet_cfg = diffusers_unet.unet_config_from_diffusers(dict(tunet.config))
  assert vae_cfg == CFG.vae and unet_cfg == CFG.unet
  cn_state = {
    k: v for k, v in tcn.state_dict().items() if not k.startswith("controlnet_cond_embedding.")
  }
  unet_params = diffusers_unet.convert_unet_state_dict(tunet.state_dict(), CFG.unet)
  # A non-zero LoRA, merged into the torch U-Net's weights.
  lora = lora_lib.init_lora(jax.random.key(3), unet_params, CFG.lora_config())
  rng = np.random.default_rng(4)
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape), lora)
  flat = traverse_util.flatten_dict(lora)
  state = tunet.state_dict()
  for module in sorted({k[:-1] for k in flat}):
    delta = flat[(*module, "lora_down")] @ flat[(*module, "lora_up")] * CFG.lora_scale
    state[_torch_name(module) + ".weight"] += torch.from_numpy(delta.T.astype(np.float32))
  tunet.load_state_dict(state)
  model = DPMeshBackbone(CFG)
  images, keypoints = _inputs()
  xy01 = np.zeros((1, J, 2), np.float32)
  prompt = JointPrompt(CFG.token_dim, CFG.prompt)
  c = CFG.fusion_in_channels()
  s = CFG.latent_size
  fusion_inputs = tuple(
    jnp.zeros((1, s // f, s // f, ch)) for f, ch in zip((8, 4, 2, 1), c, strict=True)
  )
  fusion = Fusion(CFG.fusion_channels, CFG.fusion_groups)
  fusion_params = jax.tree.map(
    lambda x: np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(np.float32),
    fusion.init(jax.random.key(5), fusion_inputs)["params"],
  )
  params = {
    "vae": {},
    "unet": {},
    "unet_lora": jax.tree.map(lambda x: x.astype(np.float32), lora),
    "controlnet": {},
    "prompt": prompt.init(jax.random.key(6), xy01, np.ones((1, J), bool))["params"],
    "fusion": fusion_params,
  }
  params = with_pretrained(
    params,
    vae=diffusers_vae.convert_vae_state_dict(tvae.state_dict(), vae_cfg),
    unet=unet_params,
    controlnet=diffusers_unet.convert_controlnet_state_dict(cn_state, CFG.controlnet),
  )
  apply = jax.jit(
    lambda p, i, k, key: model.apply({"params": p}, i, k, train=True, rngs={"dropout": key})
  )
  out = apply(params, images, keypoints, jax.random.key(7))
  return dict(
    tvae=tvae, tunet=tunet, tcn=tcn, params=params, images=images, keypoints=keypoints, out=out
  )


def _reference(port):
  """The torch feature path on the backbone's own heatmaps and prompt tokens."""
  out, tunet = port["out"], port["tunet"]
  maps, feats, handles = [], {}, []
  tunet.set_attn_processor({k: RecordingProcessor(maps) for k in tunet.attn_processors})

  def feat_hook(index):
    def hook(module, args, output):
      output = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
      feats[index] = nhwc(output)

    return hook

  layers = CFG.unet.layers_per_block + 1
  for i, block in enumerate(tunet.up_blocks):
    for j in range(layers):
      if j == layers - 1 and block.upsamplers is not None:
        module = block.upsamplers[0]
      elif hasattr(block, "attentions"):
        module = block.attentions[j]
      else:
        module = block.resnets[j]
      handles.append(module.register_forward_hook(feat_hook(i * layers + j)))
  x = 2.0 * port["images"] - 1.0
  with torch.no_grad():
    latent = port["tvae"].encode(nchw(x)).latent_dist.mode() * CFG.latent_scale
    t = torch.ones(2)
    ctx = torch.from_numpy(np.array(out.context))
    down, mid = port["tcn"](
      torch.cat([latent, nchw(out.heatmaps)], 1),
      t,
      ctx,
      torch.zeros(2, 3, 64, 64),
      return_dict=False,
    )
    maps.clear()  # the ControlNet's own attention is not recorded (it has default processors)
    tunet(
      latent,
      t,
      ctx,
      down_block_additional_residuals=down,
      mid_block_additional_residual=mid,
    )
  for h in handles:
    h.remove()
  return latent, feats, maps


def test_feature_path_matches_diffusers(port):
  out = port["out"]
  latent, feats, maps = _reference(port)
  assert rel_err(out.latent, nhwc(latent)) < 1e-4
  for block, feature in zip(CFG.feature_blocks, out.decoder_features, strict=True):
    assert rel_err(feature, feats[block]) < 1e-4, block
  # Cross maps in call order: down (2 per level x 3 levels), mid (1), up (3 per level x 3).
  assert len(maps) == 6 + 1 + 9
  by_side = {}
  for i, p in enumerate(maps):
    if i == 6:  # the middle block's map (4x4) is excluded, as DPMesh's selector does
      continue
    side = int(round(p.shape[2] ** 0.5))
    by_side.setdefault(side, []).append(p.mean(1).numpy())
  assert {k: len(v) for k, v in by_side.items()} == {32: 5, 16: 5, 8: 5}
  for side in (8, 16):
    ref = np.mean(by_side[side], axis=0).reshape(2, side, side, J)
    assert out.attention_maps[side].shape == (2, side, side, J)
    assert rel_err(out.attention_maps[side], ref) < 1e-4
  f1, f4, f7, f11 = feats[1], feats[4], feats[7], feats[11]
  ref8 = np.mean(by_side[8], axis=0).reshape(2, 8, 8, J)
  ref16 = np.mean(by_side[16], axis=0).reshape(2, 16, 16, J)
  m0, m1, m2 = _torch_fusion(port["params"]["fusion"], CFG.fusion_groups)
  with torch.no_grad():
    up = torch.nn.functional.interpolate(nchw(f1), scale_factor=2)
    y = torch.cat(
      [
        m0(nchw(f11)),
        m1(nchw(np.concatenate([f7, ref16], -1))),
        torch.cat([nchw(np.concatenate([f4, ref8], -1)), up], 1),
      ],
      1,
    )
    fused = nhwc(m2(y))
  assert out.fused.shape == (2, 8, 8, CFG.fusion_channels)
  assert rel_err(out.fused, fused) < 1e-4


def test_heatmaps_visibility_and_dropout(port):
  out, keypoints = port["out"], port["keypoints"]
  visible = _reference_visible(keypoints)
  np.testing.assert_array_equal(np.asarray(out.visible), visible)
  assert 0 < visible.sum() < visible.size
  heat = np.asarray(out.heatmaps)
  assert heat.shape == (2, CFG.latent_size, CFG.latent_size, J)
  kept = heat.reshape(2, -1, J).max(axis=1) > 0
  assert not np.any(kept & ~visible)  # invisible joints give empty maps
  dropped = visible & ~kept
  assert dropped.sum() <= 0.4 * visible.sum()  # 10% dropout in training (a few joints here)
  np.testing.assert_allclose(heat, _reference_heatmaps(keypoints, kept), atol=1e-6)
  # Outside training nothing is dropped.
  xy, vis = joint_grid_coordinates(keypoints, CFG.image_size, CFG.latent_size, 0.05)
  full = dpmesh_heatmaps(xy, vis, CFG.latent_size, CFG.heatmap_sigma)
  np.testing.assert_allclose(full, _reference_heatmaps(keypoints, visible), atol=1e-6)
  assert np.isclose(float(np.max(full)), 1.0, atol=0.01)


def test_paper_prompt_masks_invisible_joints(port):
  out, keypoints = port["out"], port["keypoints"]
  p = port["params"]["prompt"]
  xy01 = keypoints[..., :2] / CFG.image_size
  h = np.maximum(xy01 @ p["mlp_0"]["kernel"] + p["mlp_0"]["bias"], 0)
  ref = (h @ p["mlp_1"]["kernel"] + p["mlp_1"]["bias"]) * out.visible[..., None]
  assert out.context.shape == (2, J, CFG.token_dim)
  np.testing.assert_allclose(out.context, ref, rtol=1e-5, atol=1e-5)
  assert not np.any(np.asarray(out.context)[~np.asarray(out.visible)])


def test_released_prompt_is_one_linear_on_unmasked_xy():
  prompt = JointPrompt(768, "released")
  rng = np.random.default_rng(8)
  xy01 = rng.uniform(size=(2, J, 2)).astype(np.float32)
  visible = rng.uniform(size=(2, J)) > 0.5
  params = prompt.init(jax.random.key(0), xy01, visible)["params"]
  assert jax.tree.map(np.shape, params) == {"kp_lifting": {"kernel": (2, 768), "bias": (768,)}}
  out = prompt.apply({"params": params}, xy01, visible)
  ref = xy01 @ params["kp_lifting"]["kernel"] + params["kp_lifting"]["bias"]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert DPMESH_RELEASED.image_range == "unit" and DPMESH_RELEASED.latent_scale == 1.0
  assert DPMESH_PAPER.prompt == "paper" and DPMESH_PAPER.timestep == DPMESH_RELEASED.timestep == 1


def test_trainable_partition(port):
  params = port["params"]
  mask = trainable_mask(params)
  for group in ("vae", "unet"):
    assert not any(jax.tree.leaves(mask[group]))
  for group in ("unet_lora", "controlnet", "prompt", "fusion"):
    assert all(jax.tree.leaves(mask[group]))
  assert jax.tree.structure(mask) == jax.tree.structure(jax.tree.map(lambda x: 0, params))
  counts = parameter_counts(params)
  assert counts["trainable"] + counts["frozen"] == sum(
    int(np.size(x)) for x in jax.tree.leaves(params)
  )
  # LoRA on every attn1/attn2 Dense and GEGLU.proj: 16 transformer blocks x 9 layers.
  assert len(lora_lib.target_paths(params["unet"], CFG.lora_targets)) == 16 * 9
  with pytest.raises(ValueError, match="unknown backbone parameter groups"):
    trainable_mask({**params, "clip": {}})


def test_config_validation():
  with pytest.raises(ValueError, match="prompt must be"):
    DPMeshBackboneConfig(prompt="clip")
  with pytest.raises(ValueError, match="feature_blocks"):
    DPMeshBackboneConfig(feature_blocks=(2, 4, 7, 11))
  assert DPMESH_PAPER.latent_size == 32 and DPMESH_PAPER.attention_sizes == (8, 16)
  assert DPMESH_PAPER.fusion_in_channels() == (1280, 1310, 670, 320)


@pytest.mark.slow
def test_full_size_parameter_counts():
  model = DPMeshBackbone(DPMESH_PAPER)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]
  counts = parameter_counts(shapes)
  assert counts["unet"] == 859_520_964
  c0, c1, c = 320, 670, 3580
  conv = lambda i, o, k: i * o * k * k + o
  fusion = 2 * conv(c0, c0, 3) + 2 * c0 + conv(c1, c1, 3) + conv(c, 2048, 1) + 2 * 2048
  assert counts["fusion"] == fusion
  assert counts["trainable"] == sum(
    counts[k] for k in ("unet_lora", "controlnet", "prompt", "fusion")
  )
