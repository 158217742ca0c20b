"""ViTPose ViT backbone: equivalence with transformers' `VitPoseBackbone`, shapes, bad inputs,
full-size parameter counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.convert.common import strict_fill
from jhmr.models.vit import VIT_B, VIT_H, VIT_TINY, ViT, ViTConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def hf_backbone(cfg: ViTConfig):
  torch.manual_seed(0)
  hf_cfg = transformers.VitPoseBackboneConfig(
    image_size=list(cfg.img_size), patch_size=[cfg.patch_size] * 2, hidden_size=cfg.embed_dim,
    num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads, mlp_ratio=int(cfg.mlp_ratio),
    qkv_bias=cfg.qkv_bias, layer_norm_eps=cfg.layer_norm_eps, out_indices=[cfg.depth],
  )  # fmt: skip
  model = transformers.VitPoseBackbone(hf_cfg).eval()
  with torch.no_grad():  # non-trivial norms, biases and position rows (incl. the folded row 0)
    for name, p in model.named_parameters():
      if "layernorm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias") or "position" in name:
        p.copy_(0.1 * torch.randn_like(p))
  return model


def original_state(model) -> dict:
  """transformers VitPoseBackbone keys -> original mmpose `backbone.*` keys, written from the
  notes' table (research/regressors.md §4), independently of the converter."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  out = {
    "backbone.patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
    "backbone.patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
    "backbone.pos_embed": sd["embeddings.position_embeddings"],  # (1, N + 1, C) unfolded
    "backbone.last_norm.weight": sd["layernorm.weight"],
    "backbone.last_norm.bias": sd["layernorm.bias"],
    "backbone.cls_token": np.zeros((1, 1, sd["layernorm.weight"].shape[0]), np.float32),
  }
  i = 0
  while f"encoder.layer.{i}.mlp.fc1.weight" in sd:
    hf, og = f"encoder.layer.{i}.", f"backbone.blocks.{i}."
    for leaf in ("weight", "bias"):
      att = hf + "attention.attention."
      qkv = [sd[f"{att}{w}.{leaf}"] for w in ("query", "key", "value")]
      out[f"{og}attn.qkv.{leaf}"] = np.concatenate(qkv, 0)
      out[f"{og}attn.proj.{leaf}"] = sd[f"{hf}attention.output.dense.{leaf}"]
      out[f"{og}norm1.{leaf}"] = sd[f"{hf}layernorm_before.{leaf}"]
      out[f"{og}norm2.{leaf}"] = sd[f"{hf}layernorm_after.{leaf}"]
      out[f"{og}mlp.fc1.{leaf}"] = sd[f"{hf}mlp.fc1.{leaf}"]
      out[f"{og}mlp.fc2.{leaf}"] = sd[f"{hf}mlp.fc2.{leaf}"]
    i += 1
  return out


def vit_params(cfg: ViTConfig, state: dict):
  from jhmr.convert.vitpose import vit_rules

  flat, sources = vit_rules(state, prefix="backbone.")
  model = ViT(cfg)
  target = jax.eval_shape(model.init, jax.random.key(0), model.dummy_input())["params"]
  return strict_fill(flat, target, source_keys=sources)


@pytest.mark.parametrize("eps", [1e-6, 1e-12])
def test_matches_transformers_backbone(eps):
  cfg = dataclasses.replace(VIT_TINY, layer_norm_eps=eps)
  ref = hf_backbone(cfg)
  params = vit_params(cfg, original_state(ref))
  assert params["pos_embed"].shape == (1, 12, 32)  # folded: 4x3 tokens, no row 0
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 48)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).feature_maps[-1].numpy()  # [B, N, C] after layernorm
  got = ViT(cfg).apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert got.shape == (2, 4, 3, 32)
  np.testing.assert_allclose(np.asarray(got).reshape(2, 12, 32), want, rtol=1e-4, atol=1e-4)


def test_patch_padding_and_pos_fold_matter():
  """The padding 2 shifts the patch grid; zero padding or an unfolded row 0 would differ."""
  cfg = VIT_TINY
  ref = hf_backbone(cfg)
  state = original_state(ref)
  params = vit_params(cfg, state)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 64, 48, 3)), jnp.float32)
  base = ViT(cfg).apply({"params": params}, x)
  nopad = dataclasses.replace(cfg, patch_padding=0)
  assert nopad.grid == (4, 3)
  assert float(jnp.abs(ViT(nopad).apply({"params": params}, x) - base).max()) > 1e-3
  unfolded = dict(state)
  unfolded["backbone.pos_embed"] = state["backbone.pos_embed"].copy()
  unfolded["backbone.pos_embed"][:, 0] = 0
  other = ViT(cfg).apply({"params": vit_params(cfg, unfolded)}, x)
  assert float(jnp.abs(other - base).max()) > 1e-3


def test_bad_inputs():
  model = ViT(VIT_TINY)
  params = model.init(jax.random.key(0), model.dummy_input())["params"]
  with pytest.raises(ValueError, match=r"\[B, 64, 48, 3\].*got shape \(1, 64, 64, 3\)"):
    model.apply({"params": params}, jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match="NHWC"):
    model.apply({"params": params}, jnp.zeros((1, 3, 64, 48)))
  with pytest.raises(ValueError, match="divisible"):
    ViTConfig(embed_dim=30, num_heads=4)


def test_full_size_parameter_counts():
  for cfg, want in ((VIT_H, 630_912_000), (VIT_B, 85_794_816)):
    model = ViT(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.dummy_input())["params"]
    # the notes count the original (1, 193, C) table; the folded one has one row fewer
    assert n_params(shapes) + cfg.embed_dim == want
    assert shapes["pos_embed"].shape == (1, 192, cfg.embed_dim)
    assert cfg.grid == (16, 12)
  assert n_params(shapes["blocks_0"]) == 7_087_872  # ViT-B block (ViT-H: 19,677,440)
