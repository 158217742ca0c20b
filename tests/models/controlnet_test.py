"""jhmr.models.controlnet vs diffusers' ControlNetModel (float32, tiny random configs)."""

import copy
import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from jhmr.convert import diffusers_unet  # noqa: E402
from jhmr.models.controlnet import (  # noqa: E402
  SD15_CONTROLNET,
  ControlNet,
  ControlNetConfig,
  controlnet_params_from_unet,
)
from tests import torch_reference  # noqa: E402
from tests.torch_reference import nchw, nhwc, rel_err  # noqa: E402

randomize = functools.partial(torch_reference.randomize, scale=0.15)

TINY_UNET = dict(
  sample_size=16,
  block_out_channels=(32, 64),
  layers_per_block=1,
  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
  cross_attention_dim=32,
  attention_head_dim=8,
  norm_num_groups=8,
)
HEATMAPS = 6  # DPMesh uses 30 joint heatmaps; any count works


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
  t = np.array([1.0, 640.0], np.float32)
  ctx = rng.standard_normal((2, 7, 32)).astype(np.float32)
  return rng, x, t, ctx


def _assert_residuals_match(ours, ref):
  down, mid = ours
  ref_down, ref_mid = ref
  assert len(down) == len(ref_down)
  for a, b in zip(down, ref_down):
    assert rel_err(a, nhwc(b)) < 1e-5
  assert rel_err(mid, nhwc(ref_mid)) < 1e-5


@pytest.fixture(scope="module")
def torch_unet():
  return randomize(diffusers.UNet2DConditionModel(**TINY_UNET))


def test_hint_encoder_controlnet_matches_diffusers(torch_unet):
  ref_model = randomize(
    diffusers.ControlNetModel.from_unet(torch_unet, conditioning_embedding_out_channels=(16, 32)),
    seed=1,
  )
  config = diffusers_unet.controlnet_config_from_diffusers(dict(ref_model.config))
  assert config.conditioning_embedding_out_channels == (16, 32) and not config.direct
  params = diffusers_unet.convert_controlnet_state_dict(ref_model.state_dict(), config)
  rng, x, t, ctx = _inputs()
  cond = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)  # hint image at 2x the latent
  with torch.no_grad():
    ref = ref_model(
      nchw(x),
      torch.from_numpy(t),
      torch.from_numpy(ctx),
      nchw(cond),
      conditioning_scale=0.7,
      return_dict=False,
    )
  model = ControlNet(config)
  ours = jax.jit(lambda p, *a: model.apply({"params": p}, *a, conditioning_scale=0.7))(
    params, x, t, ctx, cond
  )
  _assert_residuals_match(ours, ref)


@pytest.fixture(scope="module")
def direct():
  """DPMesh's variant (latent and heatmaps concatenated into conv_in) and its torch twin: a
  diffusers ControlNet with a widened conv_in whose hint encoder outputs exactly zero."""
  ref_model = randomize(
    diffusers.ControlNetModel(
      **{k: v for k, v in TINY_UNET.items() if k not in ("sample_size", "up_block_types")},
      in_channels=4 + HEATMAPS,
      conditioning_embedding_out_channels=(16, 32),
    ),
    seed=2,
  )
  with torch.no_grad():
    ref_model.controlnet_cond_embedding.conv_out.weight.zero_()
    ref_model.controlnet_cond_embedding.conv_out.bias.zero_()
  unet_config = diffusers_unet.unet_config_from_diffusers(TINY_UNET)
  config = ControlNetConfig.from_unet(
    unet_config, conditioning_channels=HEATMAPS, conditioning_embedding_out_channels=None
  )
  state = {
    k: v
    for k, v in ref_model.state_dict().items()
    if not k.startswith("controlnet_cond_embedding.")
  }
  model = ControlNet(config)
  return dict(
    ref_model=ref_model,
    config=config,
    params=diffusers_unet.convert_controlnet_state_dict(state, config),
    model=model,
    apply=jax.jit(lambda p, *a: model.apply({"params": p}, *a)),
  )


def test_direct_controlnet_matches_diffusers(direct):
  rng, x, t, ctx = _inputs(seed=4)
  heat = rng.uniform(size=(2, 16, 16, HEATMAPS)).astype(np.float32)
  assert direct["config"].direct
  with torch.no_grad():
    ref = direct["ref_model"](
      nchw(np.concatenate([x, heat], axis=-1)),
      torch.from_numpy(t),
      torch.from_numpy(ctx),
      torch.zeros(2, 3, 32, 32),
      return_dict=False,
    )
  _assert_residuals_match(direct["apply"](direct["params"], x, t, ctx, heat), ref)


def test_fresh_controlnet_outputs_exact_zeros():
  """Zero-initialised output convs (and hint-encoder conv_out): a new ControlNet leaves the U-Net
  untouched. A one-level config and an rbg key keep the compile short; neither matters here."""
  config = ControlNetConfig(
    down_block_types=("CrossAttnDownBlock2D",),
    block_out_channels=(8,),
    layers_per_block=1,
    num_attention_heads=(2,),
    cross_attention_dim=8,
    norm_num_groups=4,
    transformer_layers_per_block=(1,),
    conditioning_channels=3,
    conditioning_embedding_out_channels=(4, 8),
  )
  model = ControlNet(config)
  inputs = model.dummy_inputs(batch=1, size=4)
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), *inputs)["params"]
  assert not np.any(np.asarray(params["controlnet_cond_embedding"]["conv_out"]["kernel"]))
  rng = np.random.default_rng(5)
  inputs = [rng.standard_normal(a.shape).astype(np.float32) for a in inputs]
  down, mid = jax.jit(model.apply)({"params": params}, *inputs)
  assert len(down) == 2
  assert all(not np.any(np.asarray(d)) for d in down) and not np.any(np.asarray(mid))
  # ... while the encoder it copies is not trivially zero.
  assert np.abs(np.asarray(params["conv_in"]["kernel"])).max() > 0


def test_controlnet_params_from_unet_matches_diffusers_from_unet(torch_unet):
  ref_model = diffusers.ControlNetModel.from_unet(
    torch_unet, conditioning_embedding_out_channels=(16, 32)
  )
  config = diffusers_unet.controlnet_config_from_diffusers(dict(ref_model.config))
  expected = diffusers_unet.convert_controlnet_state_dict(ref_model.state_dict(), config)
  unet_params = diffusers_unet.convert_unet_state_dict(
    torch_unet.state_dict(), diffusers_unet.unet_config_from_diffusers(TINY_UNET)
  )
  random_cn = diffusers_unet.convert_controlnet_state_dict(
    randomize(copy.deepcopy(ref_model), seed=9).state_dict(), config
  )
  copied = controlnet_params_from_unet(random_cn, unet_params)
  for name in ("conv_in", "time_embedding", "down_blocks_0", "down_blocks_1", "mid_block"):
    jax.tree.map(np.testing.assert_array_equal, copied[name], expected[name])
  for name in ("controlnet_cond_embedding", "controlnet_mid_block", "controlnet_down_blocks_0"):
    jax.tree.map(np.testing.assert_array_equal, copied[name], random_cn[name])


def test_condition_shape_is_checked(direct):
  rng, x, t, ctx = _inputs()
  with pytest.raises(ValueError, match="condition must have shape"):
    jax.eval_shape(
      lambda p: direct["model"].apply({"params": p}, x, t, ctx, np.zeros((2, 32, 32, 6))),
      direct["params"],
    )


@pytest.mark.slow
def test_full_size_parameter_count_equals_diffusers():
  with torch.device("meta"):
    ref = diffusers.ControlNetModel(cross_attention_dim=768)
  config = diffusers_unet.controlnet_config_from_diffusers(dict(ref.config))
  assert config == SD15_CONTROLNET
  shapes = diffusers_unet.controlnet_param_shapes(config)
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert count == sum(p.numel() for p in ref.parameters())
