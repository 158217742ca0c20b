"""diffusers VAE converter: strict keys, config parsing, legacy attention names."""

import jax
import numpy as np
import pytest

from jhmr.convert import diffusers_vae

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def ref():
  torch.manual_seed(0)
  return diffusers.AutoencoderKL(
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
  )


def test_config_parsing(ref):
  config = diffusers_vae.vae_config_from_diffusers(dict(ref.config))
  assert config.block_out_channels == (32, 64) and config.norm_num_groups == 8
  assert config.scaling_factor == 0.18215
  with pytest.raises(ValueError, match="UpDecoderBlock2D"):
    diffusers_vae.vae_config_from_diffusers({**ref.config, "up_block_types": ["X", "Y"]})
  with pytest.raises(ValueError, match="unknown option"):
    diffusers_vae.vae_config_from_diffusers({**ref.config, "new_thing": 1})


def test_converter_is_strict(ref):
  config = diffusers_vae.vae_config_from_diffusers(dict(ref.config))
  sd = dict(ref.state_dict())
  sd.pop("decoder.mid_block.attentions.0.to_q.bias")
  sd["decoder.extra.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match="to_q/bias"):
    diffusers_vae.convert_vae_state_dict(sd, config)
  with pytest.raises(ValueError, match="shift_factor"):
    diffusers_vae.vae_config_from_diffusers({**ref.config, "shift_factor": 0.1})


def test_legacy_attention_names_convert(ref):
  config = diffusers_vae.vae_config_from_diffusers(dict(ref.config))
  params = diffusers_vae.convert_vae_state_dict(ref.state_dict(), config)
  legacy = {}
  new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  for k, v in ref.state_dict().items():
    for new, old in new_to_old.items():
      k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    legacy[k] = v[:, :, None, None] if "proj_attn.weight" in k else v
  got = diffusers_vae.convert_vae_state_dict(legacy, config)
  jax.tree.map(np.testing.assert_array_equal, got, params)
