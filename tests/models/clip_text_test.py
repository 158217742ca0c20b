"""CLIP text tower vs transformers' CLIPTextModel (tiny SD1- and SD2-style configs, float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.convert import clip_text as convert
from jhmr.models.clip_text import CLIP_VIT_L14_TEXT, OPENCLIP_VIT_H14_TEXT, CLIPTextModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(
  vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
  num_attention_heads=4, max_position_embeddings=77,
)  # fmt: skip
STYLES = {
  # SD 1.x: quick-GELU, eos = the real eos id (first occurrence pooled)
  "sd1": dict(BASE, hidden_act="quick_gelu", bos_token_id=998, eos_token_id=999, pad_token_id=999),
  # SD 2 (OpenCLIP-H as diffusers stores it): exact GELU, legacy eos_token_id=2 (argmax pooling)
  "sd2": dict(BASE, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1),
}


def _ref(style):
  torch.manual_seed(1)
  ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**STYLES[style])).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  return ref


def _ids(style, batch=3, length=77):
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 990, (batch, length))
  cfg = STYLES[style]
  ids[:, 0] = cfg["bos_token_id"]
  for row, n in enumerate([5, 20, 75][:batch]):
    ids[row, n] = 999  # the eos (the largest id: argmax pooling agrees for SD 2)
    ids[row, n + 1 :] = cfg["pad_token_id"] if style == "sd1" else 0
  return ids


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def setup(request):
  style = request.param
  ref = _ref(style)
  config = convert.clip_text_config_from_transformers(ref.config.to_dict())
  params = convert.convert_clip_text_state_dict(ref.state_dict(), config)
  model = CLIPTextModel(config)
  apply = jax.jit(
    lambda p, ids, skip: model.apply({"params": p}, ids, clip_skip=skip, output_hidden_states=True),
    static_argnums=2,
  )
  return style, ref, params, apply


def _rel(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def test_matches_transformers(setup):
  style, ref, params, apply = setup
  ids = _ids(style)
  with torch.no_grad():
    want = ref(torch.from_numpy(ids), output_hidden_states=True)
  got = apply(params, jnp.asarray(ids, jnp.int32), 0)
  assert got.last_hidden_state.shape == (3, 77, 32)
  assert _rel(got.last_hidden_state, want.last_hidden_state.numpy()) < 1e-4
  assert _rel(got.pooled, want.pooler_output.numpy()) < 1e-4
  assert len(got.hidden_states) == len(want.hidden_states) == 4
  for g, w in zip(got.hidden_states, want.hidden_states):
    assert _rel(g, w.numpy()) < 1e-4


def test_clip_skip_is_penultimate_layer_plus_final_norm(setup):
  """diffusers' clip_skip=1: final_layer_norm(hidden_states[-2])."""
  style, ref, params, apply = setup
  ids = _ids(style)
  with torch.no_grad():
    hidden = ref(torch.from_numpy(ids), output_hidden_states=True).hidden_states[-2]
    want = ref.final_layer_norm(hidden).numpy()
  got = apply(params, jnp.asarray(ids, jnp.int32), 1)
  assert _rel(got.last_hidden_state, want) < 1e-4


def test_attention_mask_matches_transformers():
  ref = _ref("sd1")
  config = convert.clip_text_config_from_transformers(ref.config.to_dict())
  params = convert.convert_clip_text_state_dict(ref.state_dict(), config)
  ids = _ids("sd1", batch=2, length=24)
  mask = np.ones_like(ids)
  mask[0, 6:] = 0
  with torch.no_grad():
    want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
  got = jax.jit(lambda p, i, m: CLIPTextModel(config).apply({"params": p}, i, m))(
    params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)
  )
  # padded query rows see only masked keys in transformers too; compare the valid ones
  assert _rel(got.last_hidden_state[0, :6], want[0, :6].numpy()) < 1e-4
  assert _rel(got.last_hidden_state[1], want[1].numpy()) < 1e-4


def test_bad_inputs_raise(setup):
  _, _, params, apply = setup
  with pytest.raises(ValueError, match="max_position_embeddings"):
    apply(params, jnp.zeros((1, 78), jnp.int32), 0)
  with pytest.raises(ValueError, match="integer"):
    apply(params, jnp.zeros((1, 7)), 0)
  with pytest.raises(ValueError, match="clip_skip"):
    apply(params, jnp.zeros((1, 7), jnp.int32), 3)


def _count_meta(**cfg):
  with torch.device("meta"):
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg))
  return sum(p.numel() for p in ref.parameters())


def _count_ours(config):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(convert.clip_text_param_shapes(config)))


def test_full_size_parameter_counts_match_transformers():
  vit_l = _count_meta(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, hidden_act="quick_gelu")  # fmt: skip
  assert _count_ours(CLIP_VIT_L14_TEXT) == vit_l == 123_060_480
  vit_h = _count_meta(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                      num_attention_heads=16, hidden_act="gelu")  # fmt: skip
  assert _count_ours(OPENCLIP_VIT_H14_TEXT) == vit_h == 340_387_840
