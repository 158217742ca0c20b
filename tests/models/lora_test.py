"""LoRA tree transform: targeting, zero-init identity, merge/unmerge, frozen-base optax step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jhmr.models import lora as L
from jhmr.models.sd_layers import BasicTransformerBlock
from jhmr.models.unet import SD15_UNET, UNet, UNetConfig

BLOCK = BasicTransformerBlock(heads=2, head_dim=8)
X = jax.random.normal(jax.random.key(0), (2, 10, 16))
CTX = jax.random.normal(jax.random.key(1), (2, 5, 12))


@pytest.fixture(scope="module")
def base():
  return jax.jit(BLOCK.init)(jax.random.key(2), X, CTX)["params"]


apply = jax.jit(lambda p, x, c: BLOCK.apply({"params": p}, x, c))


def _randomized_lora(base, rank=3):
  lora = L.init_lora(jax.random.key(3), base, L.LoRAConfig(rank=rank))
  return jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape), lora)


def test_targets_every_attention_linear_and_geglu(base):
  paths = ["/".join(p) for p in L.target_paths(base, L.UNET_ATTENTION_AND_GEGLU)]
  want = [f"attn{i}/{n}" for i in (1, 2) for n in ("to_k", "to_out_0", "to_q", "to_v")]
  assert paths == sorted(want + ["ff/net_0/proj"])
  assert "ff/net_2" not in paths  # the FF output Linear is not adapted (cloneofsimo default)


def test_zero_init_lora_leaves_outputs_unchanged(base):
  lora = L.init_lora(jax.random.key(3), base, L.LoRAConfig(rank=4))
  assert float(jnp.abs(lora["attn1"]["to_q"]["lora_down"]).max()) > 0
  merged = L.merge(base, lora, 1.0)
  jax.tree.map(np.testing.assert_array_equal, merged, base)
  np.testing.assert_array_equal(np.asarray(apply(merged, X, CTX)), np.asarray(apply(base, X, CTX)))


def test_merge_equals_explicit_lora_forward_and_unmerge_round_trips(base):
  lora = _randomized_lora(base)
  scale = 0.5
  merged = L.merge(base, lora, scale)
  # the merged kernel acts as W x + scale * up(down(x)) on any input
  x = jax.random.normal(jax.random.key(5), (4, 16))
  q = lora["attn1"]["to_q"]
  want = x @ base["attn1"]["to_q"]["kernel"] + scale * (x @ q["lora_down"]) @ q["lora_up"]
  got = x @ merged["attn1"]["to_q"]["kernel"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert float(jnp.abs(apply(merged, X, CTX) - apply(base, X, CTX)).max()) > 1e-3
  back = L.unmerge(merged, lora, scale)
  # subtraction undoes the addition up to float32 rounding of the sum (|W| ~ 0.3: ulp ~ 3e-8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), back, base)
  assert back["norm1"]["scale"] is base["norm1"]["scale"]  # unadapted leaves pass through


def test_only_lora_params_change_after_an_optax_step(base):
  tree = {"base": base, "lora": L.init_lora(jax.random.key(3), base, L.LoRAConfig(rank=2))}
  tx = L.freeze_base(optax.adam(1e-2), tree)
  state = tx.init(tree)

  def loss(t):
    return jnp.mean(apply(L.merge(t["base"], t["lora"]), X, CTX) ** 2)

  @jax.jit
  def step(tree, state):
    grads = jax.grad(loss)(tree)
    updates, state = tx.update(grads, state, tree)
    return optax.apply_updates(tree, updates), grads

  new, grads = step(tree, state)
  assert float(jnp.abs(grads["base"]["attn1"]["to_q"]["kernel"]).max()) > 0  # base has grads
  jax.tree.map(np.testing.assert_array_equal, new["base"], tree["base"])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new["lora"], tree["lora"])
  assert all(v for k, v in jax.tree_util.tree_leaves_with_path(changed) if "lora_up" in str(k))
  mask = L.trainable_mask(tree)
  assert not any(jax.tree.leaves(mask["base"])) and all(jax.tree.leaves(mask["lora"]))


def test_unet_targets_and_sd15_lora_size():
  """DPMesh's r = 64 LoRA on the SD 1.5 U-Net: 16 transformer blocks x 9 Linears, ~19.9M."""
  model = UNet(SD15_UNET)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]
  paths = L.target_paths(shapes, L.UNET_ATTENTION_AND_GEGLU)
  assert len(paths) == 16 * 9
  lora = jax.eval_shape(lambda: L.init_lora(jax.random.key(0), shapes, L.LoRAConfig(rank=64)))
  assert L.count(lora) == 64 * (23 * (5 * 320 + 5 * 640 + 6 * 1280) + 16 * 1536) == 19_943_424
  assert len(L.target_paths(shapes, L.UNET_ATTENTION)) == 16 * 8


def test_errors():
  tiny = UNetConfig(block_out_channels=(32,), down_block_types=("CrossAttnDownBlock2D",),
                    up_block_types=("CrossAttnUpBlock2D",), num_attention_heads=(2,),
                    transformer_layers_per_block=(1,), norm_num_groups=8)  # fmt: skip
  model = UNet(tiny)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *model.dummy_inputs())["params"]
  with pytest.raises(ValueError, match="4-D kernel"):
    L.target_paths(shapes, (r".*/proj_in",))  # SD 1.x proj_in is a 1x1 conv
  with pytest.raises(ValueError, match="match no Dense"):
    L.target_paths(shapes, (r"nothing",))
  with pytest.raises(ValueError, match="rank"):
    L.LoRAConfig(rank=0)
  with pytest.raises(ValueError, match="'base'"):
    L.trainable_mask({"params": {}})
