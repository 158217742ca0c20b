"""CLIP text converter: prefixes, the position_ids buffer, strictness, config parsing."""

import jax
import numpy as np
import pytest

from jhmr.convert import clip_text as convert
from jhmr.convert.common import ConversionError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = dict(
  vocab_size=100, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
  num_attention_heads=2, max_position_embeddings=12,
)  # fmt: skip


@pytest.fixture(scope="module")
def ref():
  torch.manual_seed(0)
  return transformers.CLIPTextModel(transformers.CLIPTextConfig(**CFG))


def test_prefixed_keys_and_position_ids(ref):
  config = convert.clip_text_config_from_transformers(ref.config.to_dict())
  assert (config.num_layers, config.hidden_act) == (2, "quick_gelu")
  plain = convert.convert_clip_text_state_dict(ref.state_dict(), config)
  # checkpoints on disk use the `text_model.` prefix and may carry `position_ids`
  disk = {f"text_model.{k}": v for k, v in ref.state_dict().items()}
  disk["text_model.embeddings.position_ids"] = torch.arange(12)[None]
  jax.tree.map(
    np.testing.assert_array_equal, convert.convert_clip_text_state_dict(disk, config), plain
  )
  w = ref.state_dict()["encoder.layers.1.mlp.fc1.weight"].numpy()
  np.testing.assert_array_equal(plain["layers_1"]["mlp"]["fc1"]["kernel"], w.T)


def test_strict(ref):
  config = convert.clip_text_config_from_transformers(ref.config.to_dict())
  sd = dict(ref.state_dict())
  bad = dict(sd, **{"embeddings.position_ids": torch.arange(12).flip(0)})
  with pytest.raises(ConversionError, match="position_ids"):
    convert.convert_clip_text_state_dict(bad, config)
  with pytest.raises(ConversionError, match="unexpected"):
    convert.convert_clip_text_state_dict(
      dict(sd, **{"text_projection.weight": torch.zeros(4, 16)}), config
    )
  sd.pop("final_layer_norm.bias")
  with pytest.raises(ConversionError, match="final_layer_norm/bias"):
    convert.convert_clip_text_state_dict(sd, config)
  with pytest.raises(ValueError, match="hidden_act"):
    convert.clip_text_config_from_transformers({**CFG, "hidden_act": "relu"})


def test_load_text_encoder_folder(ref, tmp_path):
  ref.save_pretrained(tmp_path)
  config, params = convert.load_text_encoder(tmp_path)
  assert config.hidden_size == 16
  np.testing.assert_array_equal(
    params["token_embedding"]["embedding"], ref.embeddings.token_embedding.weight.detach().numpy()
  )
