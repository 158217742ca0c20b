"""ViTPose converters: original (mmpose) layout via a key round trip written from the notes' table,
the transformers layout, `vit_rules` for HMR 2.0, checkpoint files and strict refusals."""

import dataclasses

import jax
import numpy as np
import pytest

from jhmr.convert import vitpose as convert
from jhmr.convert.common import ConversionError
from jhmr.models import vitpose as vp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY_HF = dict(
  image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
  num_attention_heads=2, mlp_ratio=4, layer_norm_eps=1e-6, out_indices=[2],
)  # fmt: skip
CLASSIC = vp.VITPOSE_TINY
SIMPLE = dataclasses.replace(vp.VITPOSE_TINY, head="simple")


def hf_state(simple: bool) -> dict:
  torch.manual_seed(0)
  config = transformers.VitPoseConfig(
    backbone_config=transformers.VitPoseBackboneConfig(**TINY_HF),
    use_simple_decoder=simple,
    num_labels=17,
  )
  model = transformers.VitPoseForPoseEstimation(config)
  with torch.no_grad():
    for name, b in model.named_buffers():
      if name.endswith(("running_mean", "running_var")):
        b.copy_(torch.rand_like(b) + 0.5)
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# research/regressors.md §4 key table (transformers -> original), written here independently.
NOTES_TABLE = [
  ("backbone.embeddings.patch_embeddings.projection.", "backbone.patch_embed.proj."),
  ("backbone.embeddings.position_embeddings", "backbone.pos_embed"),
  ("attention.output.dense.", "attn.proj."),
  ("layernorm_before.", "norm1."),
  ("layernorm_after.", "norm2."),
  ("backbone.encoder.layer.", "backbone.blocks."),
  ("backbone.layernorm.", "backbone.last_norm."),
  ("head.deconv1.", "keypoint_head.deconv_layers.0."),
  ("head.batchnorm1.", "keypoint_head.deconv_layers.1."),
  ("head.deconv2.", "keypoint_head.deconv_layers.3."),
  ("head.batchnorm2.", "keypoint_head.deconv_layers.4."),
  ("head.conv.", "keypoint_head.final_layer."),
]


def to_original(hf: dict) -> dict:
  out, qkv = {}, {}
  for key, value in hf.items():
    if ".attention.attention." in key:  # rows [0:C] q, [C:2C] k, [2C:3C] v of attn.qkv
      block, rest = key.split(".attention.attention.")
      which, leaf = rest.split(".")
      qkv.setdefault(f"{block}.attn.qkv.{leaf}", {})[which] = value
      continue
    for old, new in NOTES_TABLE:
      key = key.replace(old, new)
    out[key] = value
  for key, parts in qkv.items():
    key = key.replace("backbone.encoder.layer.", "backbone.blocks.")
    out[key] = np.concatenate([parts["query"], parts["key"], parts["value"]], 0)
  out["backbone.cls_token"] = np.zeros((1, 1, 32), np.float32)  # unused, in every original file
  return out


@pytest.mark.parametrize("config", [CLASSIC, SIMPLE], ids=["classic", "simple"])
def test_original_and_transformers_layouts_agree(config):
  hf = hf_state(config.head == "simple")
  from_hf = convert.convert_vitpose_hf(hf, config)
  original = to_original(hf)
  if config.head == "classic":
    assert "keypoint_head.deconv_layers.1.num_batches_tracked" in original
  from_og = convert.convert_vitpose({"state_dict": original, "meta": {}}, config)
  jax.tree.map(np.testing.assert_array_equal, from_og, from_hf)
  params = from_og["params"]
  pos = hf["backbone.embeddings.position_embeddings"]
  np.testing.assert_allclose(params["backbone"]["pos_embed"], pos[:, 1:] + pos[:, :1])
  qkv = original["backbone.blocks.1.attn.qkv.weight"]
  np.testing.assert_array_equal(params["backbone"]["blocks_1"]["attn"]["qkv"]["kernel"], qkv.T)
  if config.head == "classic":
    w = hf["head.deconv2.weight"]  # (in, out, kh, kw) -> flipped (kh, kw, in, out)
    np.testing.assert_array_equal(params["head"]["deconv2"]["kernel"][0, 1], w[:, :, 3, 2])
    var = hf["head.batchnorm1.running_var"]
    np.testing.assert_array_equal(from_og["batch_stats"]["head"]["batchnorm1"]["var"], var)
  else:
    assert "batch_stats" not in from_og


def test_vit_rules_for_hmr2():
  original = to_original(hf_state(False))
  hmr2 = {k: v for k, v in original.items() if k.startswith("backbone.")}
  hmr2["smpl_head.decpose.weight"] = np.zeros((144, 1024), np.float32)  # not the ViT's
  flat, sources = convert.vit_rules(hmr2, prefix="backbone.")
  assert ("blocks_0", "mlp", "fc2", "kernel") in flat
  assert sources[("last_norm", "scale")] == "backbone.last_norm.weight"
  assert flat[("pos_embed",)].shape == (1, 12, 32)
  assert len(flat) == 5 + 2 * 12  # patch_embed x2, pos_embed, last_norm x2; 12 per block
  with pytest.raises(ConversionError, match=r"backbone\.blocks\.0\.attn\.rel_pos"):
    convert.vit_rules(dict(hmr2, **{"backbone.blocks.0.attn.rel_pos": np.zeros(3)}))


def without(state: dict, key: str) -> dict:
  return {k: v for k, v in state.items() if k != key}


def test_refusals():
  hf = hf_state(False)
  original = to_original(hf)
  with pytest.raises(ConversionError, match=r"missing: params/backbone/blocks_1/norm2/bias"):
    convert.convert_vitpose(without(original, "backbone.blocks.1.norm2.bias"), CLASSIC)
  with pytest.raises(ConversionError, match=r"unexpected keys: neck\.x"):
    convert.convert_vitpose(dict(original, **{"neck.x": np.zeros(1)}), CLASSIC)
  with pytest.raises(ConversionError, match=r"keypoint_head\.deconv_layers\.7\.weight"):
    convert.convert_vitpose(
      dict(original, **{"keypoint_head.deconv_layers.7.weight": np.zeros(1)}), CLASSIC
    )
  # a 3x3 simple-head conv offered to the classic head: mis-shaped, named with its source key
  simple = to_original(hf_state(True))
  with pytest.raises(ConversionError, match=r"final_layer\.weight'\): got \(3, 3, 32, 17\)"):
    convert.convert_vitpose(simple, CLASSIC)
  # transformers messages name transformers keys
  bad = dict(hf, **{"backbone.layernorm.bias": np.zeros(5, np.float32)})
  with pytest.raises(ConversionError, match=r"from 'backbone\.layernorm\.bias'\): got \(5,\)"):
    convert.convert_vitpose_hf(bad, CLASSIC)
  no_key = without(hf, "backbone.encoder.layer.0.attention.attention.key.bias")
  with pytest.raises(ConversionError, match=r"layer\.0\.attention\.attention\.key\.bias"):
    convert.convert_vitpose_hf(no_key, CLASSIC)
  with pytest.raises(ConversionError, match=r"pos_embed: expected \(1, N \+ 1, C\)"):
    convert.convert_vitpose(dict(original, **{"backbone.pos_embed": np.zeros((12, 32))}), CLASSIC)


def test_load_checkpoint_files(tmp_path):
  hf = hf_state(False)
  want = convert.convert_vitpose_hf(hf, CLASSIC)
  pth = tmp_path / "vitpose.pth"
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in to_original(hf).items()}}, pth)
  jax.tree.map(np.testing.assert_array_equal, convert.load_vitpose_checkpoint(pth, CLASSIC), want)
  from safetensors.numpy import save_file

  st = tmp_path / "model.safetensors"
  save_file({k: np.ascontiguousarray(v) for k, v in hf.items()}, str(st))
  jax.tree.map(np.testing.assert_array_equal, convert.load_vitpose_checkpoint(st, CLASSIC), want)
