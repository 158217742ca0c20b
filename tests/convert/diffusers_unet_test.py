"""jhmr.convert.diffusers_unet: folders written by diffusers' save_pretrained, strict key checks."""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from jhmr.convert import diffusers_unet  # noqa: E402
from jhmr.convert.common import ConversionError  # noqa: E402

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


@pytest.fixture(scope="module")
def torch_unet():
  torch.manual_seed(0)
  return diffusers.UNet2DConditionModel(**TINY_UNET).eval()


@pytest.fixture(scope="module")
def unet_config():
  return diffusers_unet.unet_config_from_diffusers(TINY_UNET)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_flax_path_and_rule():
  assert diffusers_unet.flax_path("down_blocks.0.attentions.1.to_out.0.weight") == (
    "down_blocks_0",
    "attentions_1",
    "to_out_0",
    "weight",
  )
  conv = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
  path, kernel = diffusers_unet.torch_key_rule("conv_in.weight", conv)
  assert path == ("conv_in", "kernel") and kernel.shape == (3, 3, 3, 2)
  assert kernel[1, 2, 0, 1] == conv[1, 0, 1, 2]
  path, kernel = diffusers_unet.torch_key_rule("a.to_q.weight", np.zeros((4, 3)))
  assert path == ("a", "to_q", "kernel") and kernel.shape == (3, 4)
  assert diffusers_unet.torch_key_rule("norm.weight", np.zeros(4))[0] == ("norm", "scale")
  assert diffusers_unet.torch_key_rule("x.running_mean", np.zeros(4)) is None


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_load_unet_folder(tmp_path, torch_unet, unet_config, safe):
  torch_unet.save_pretrained(tmp_path, safe_serialization=safe)
  config, params = diffusers_unet.load_unet(tmp_path)
  assert config == unet_config
  _assert_trees_equal(
    params, diffusers_unet.convert_unet_state_dict(torch_unet.state_dict(), unet_config)
  )
  kernel = params["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"]
  ref = torch_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
  np.testing.assert_array_equal(kernel["kernel"], ref.detach().numpy().T)


def test_load_controlnet_folder(tmp_path, torch_unet):
  torch_cn = diffusers.ControlNetModel.from_unet(
    torch_unet, conditioning_embedding_out_channels=(16, 32)
  )
  torch_cn.save_pretrained(tmp_path)
  config, params = diffusers_unet.load_controlnet(tmp_path)
  assert config.conditioning_channels == 3 and config.in_channels == 4
  zero = params["controlnet_down_blocks_3"]["kernel"]
  assert zero.shape == (1, 1, 64, 64) and not np.any(zero)
  _assert_trees_equal(
    params, diffusers_unet.convert_controlnet_state_dict(torch_cn.state_dict(), config)
  )


def test_missing_extra_and_misshaped_keys_raise(torch_unet, unet_config):
  state = dict(torch_unet.state_dict())
  missing = {k: v for k, v in state.items() if k != "mid_block.resnets.1.conv1.weight"}
  with pytest.raises(ConversionError, match=r"1 missing: mid_block/resnets_1/conv1/kernel"):
    diffusers_unet.convert_unet_state_dict(missing, unet_config)
  extra = {**state, "down_blocks.0.resnets.7.conv1.weight": torch.zeros(32, 32, 3, 3)}
  with pytest.raises(ConversionError, match=r"unexpected: down_blocks_0/resnets_7/conv1"):
    diffusers_unet.convert_unet_state_dict(extra, unet_config)
  unknown = {**state, "conv_in.num_batches_tracked": torch.zeros(())}
  with pytest.raises(ConversionError, match="conv_in.num_batches_tracked"):
    diffusers_unet.convert_unet_state_dict(unknown, unet_config)
  bad = {**state, "conv_out.weight": torch.zeros(4, 32, 1, 1)}
  with pytest.raises(ConversionError, match=r"mis-shaped: conv_out/kernel .*got \(1, 1, 32, 4\)"):
    diffusers_unet.convert_unet_state_dict(bad, unet_config)


def test_unsupported_config_options_raise(tmp_path, torch_unet):
  with pytest.raises(ValueError, match="class_embed_type='timestep' is not supported"):
    diffusers_unet.unet_config_from_diffusers({**TINY_UNET, "class_embed_type": "timestep"})
  with pytest.raises(ValueError, match="unknown option 'frobnicate'"):
    diffusers_unet.unet_config_from_diffusers({**TINY_UNET, "frobnicate": 1})
  torch_unet.save_pretrained(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({**TINY_UNET, "addition_embed_type": "text"}))
  with pytest.raises(ValueError, match="addition_embed_type"):
    diffusers_unet.load_unet(tmp_path)


def test_missing_folder_or_weights_raise(tmp_path):
  with pytest.raises(FileNotFoundError):
    diffusers_unet.load_unet(tmp_path / "nope")
  (tmp_path / "config.json").write_text(json.dumps(TINY_UNET))
  with pytest.raises(FileNotFoundError, match="none of"):
    diffusers_unet.load_unet(tmp_path)
