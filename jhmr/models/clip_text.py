"""CLIP text tower as Stable Diffusion uses it (transformers `CLIPTextModel`).

  model = CLIPTextModel(CLIP_VIT_L14_TEXT)          # SD 1.x
  params = model.init(key, *model.dummy_inputs())['params']
  out = model.apply({'params': params}, input_ids [B, 77])
  out.last_hidden_state [B, 77, 768]  (the U-Net's cross-attention context)

Configurations:
- `CLIP_VIT_L14_TEXT`: OpenAI CLIP ViT-L/14 text encoder of SD 1.x (12 layers, width 768,
  quick-GELU).
- `OPENCLIP_VIT_H14_TEXT`: OpenCLIP ViT-H/14 text encoder of SD 2.x (width 1024, exact GELU). SD 2
  conditions on the *penultimate* layer of the 24-layer OpenCLIP tower followed by the final
  LayerNorm; diffusers' SD 2 checkpoints store that as a 23-layer `CLIPTextModel` whose last
  hidden state is exactly this, so the config has `num_layers=23` and no special casing.
  `clip_skip=k` additionally reproduces diffusers' `clip_skip` (output of layer L-k, then the
  final LayerNorm).

Parameter names mirror transformers without the `text_model.embeddings.` / `text_model.encoder.`
prefixes, `.N` -> `_N` (`layers_3/self_attn/q_proj/kernel`, `token_embedding/embedding`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

Dtype = Any
ACTIVATIONS = {
  "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Architecture of a CLIP text tower (transformers `CLIPTextConfig` names in comments).

  `eos_token_id` selects the pooled token: 2 means "the position of the largest id" (legacy
  transformers behaviour, SD 2 checkpoints); otherwise the first position equal to it.
  """

  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12  # num_hidden_layers
  num_heads: int = 12  # num_attention_heads
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r}; valid: {sorted(ACTIVATIONS)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} must divide by num_heads {self.num_heads}")


CLIP_VIT_L14_TEXT = CLIPTextConfig()
OPENCLIP_VIT_H14_TEXT = CLIPTextConfig(
  hidden_size=1024,
  intermediate_size=4096,
  num_layers=23,
  num_heads=16,
  hidden_act="gelu",
  eos_token_id=2,
)


@struct.dataclass
class CLIPTextOutput:
  """`last_hidden_state [B, L, D]` (after the final LayerNorm), `pooled [B, D]` (EOS token),
  `hidden_states`: embeddings then every layer's output `[B, L, D]` (empty unless requested)."""

  last_hidden_state: jax.Array
  pooled: jax.Array
  hidden_states: tuple[jax.Array, ...] = ()


def attention_bias(input_ids_shape, attention_mask=None, dtype=jnp.float32) -> jax.Array:
  """Causal (+ optional key padding) additive bias `[B, 1, L, L]`: 0 where allowed, else min."""
  b, length = input_ids_shape
  allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if attention_mask is not None:
    allowed = allowed & (attention_mask[:, None, None, :] > 0)
  allowed = jnp.broadcast_to(allowed, (b, 1, length, length))
  return jnp.where(allowed, 0.0, jnp.finfo(dtype).min).astype(dtype)


class CLIPAttention(nn.Module):
  """Multi-head self-attention with `q_proj/k_proj/v_proj/out_proj` (all with bias)."""

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, length, d = x.shape
    head_dim = d // self.num_heads
    split = lambda t: t.reshape(b, length, self.num_heads, head_dim)
    q = split(nn.Dense(d, name="q_proj", **kw)(x))
    k = split(nn.Dense(d, name="k_proj", **kw)(x))
    v = split(nn.Dense(d, name="v_proj", **kw)(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * head_dim**-0.5 + bias, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, d)
    return nn.Dense(d, name="out_proj", **kw)(out)


class CLIPEncoderLayer(nn.Module):
  """Pre-LayerNorm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  config: CLIPTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name, **kw)
    x = x + CLIPAttention(cfg.num_heads, name="self_attn", **kw)(norm("layer_norm1")(x), bias)
    return x + CLIPMLP(cfg, name="mlp", **kw)(norm("layer_norm2")(x))


class CLIPMLP(nn.Module):
  """`fc1 -> activation -> fc2`."""

  config: CLIPTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = ACTIVATIONS[cfg.hidden_act](nn.Dense(cfg.intermediate_size, name="fc1", **kw)(x))
    return nn.Dense(cfg.hidden_size, name="fc2", **kw)(h)


class CLIPTextModel(nn.Module):
  """`__call__(input_ids [B, L] int, attention_mask [B, L] or None, *, clip_skip=0,
  output_hidden_states=False) -> CLIPTextOutput`. L <= max_position_embeddings."""

  config: CLIPTextConfig = CLIP_VIT_L14_TEXT
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def dummy_inputs(self, batch: int = 1):
    return (jnp.zeros((batch, self.config.max_position_embeddings), jnp.int32),)

  @nn.compact
  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    clip_skip: int = 0,
    output_hidden_states: bool = False,
  ) -> CLIPTextOutput:
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
      raise ValueError(f"input_ids must be integer [B, L], got {input_ids.dtype} {input_ids.shape}")
    length = input_ids.shape[1]
    if length > cfg.max_position_embeddings:
      raise ValueError(
        f"{length} tokens exceed max_position_embeddings={cfg.max_position_embeddings}"
      )
    if not 0 <= clip_skip < cfg.num_layers:
      raise ValueError(f"clip_skip must be in [0, {cfg.num_layers}), got {clip_skip}")
    tok = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding", **kw)
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding", **kw)
    x = tok(input_ids) + pos(jnp.arange(length))[None]
    bias = attention_bias(input_ids.shape, attention_mask)
    hidden = [x]
    for i in range(cfg.num_layers - clip_skip):
      x = CLIPEncoderLayer(cfg, name=f"layers_{i}", **kw)(x, bias)
      hidden.append(x)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="final_layer_norm", **kw)(x)
    if cfg.eos_token_id == 2:
      eos = jnp.argmax(input_ids, axis=-1)
    else:
      eos = jnp.argmax(input_ids == cfg.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]
    return CLIPTextOutput(
      last_hidden_state=x,
      pooled=pooled,
      hidden_states=tuple(hidden) if output_hidden_states else (),
    )
