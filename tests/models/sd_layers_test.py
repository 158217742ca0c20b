"""jhmr.models.sd_layers vs the diffusers PyTorch blocks (float32, random weights)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers.models.downsampling import Downsample2D as TorchDownsample  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D as TorchResnet  # noqa: E402
from diffusers.models.transformers.transformer_2d import (  # noqa: E402
  Transformer2DModel as TorchTransformer,
)
from diffusers.models.upsampling import Upsample2D as TorchUpsample  # noqa: E402

from jhmr.convert.common import convert_state_dict  # noqa: E402
from jhmr.convert.diffusers_unet import torch_key_rule  # noqa: E402
from jhmr.models import sd_layers  # noqa: E402
from tests import torch_reference  # noqa: E402
from tests.torch_reference import nchw, nhwc  # noqa: E402

randomize = functools.partial(torch_reference.randomize, scale=0.3)


def _port(torch_module, flax_module, *inputs, **kwargs):
  """Converts the torch weights into `flax_module` and returns the jitted flax output."""
  init = lambda *a: flax_module.init(jax.random.key(0), *a, **kwargs)
  target = jax.eval_shape(init, *inputs)["params"]
  params = convert_state_dict(torch_module.state_dict(), [torch_key_rule], target)
  return jax.jit(lambda p, *a: flax_module.apply({"params": p}, *a, **kwargs))(params, *inputs)


def _assert_close(ours, ref, rtol=1e-5):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  scale = max(np.abs(ref).max(), 1e-6)
  np.testing.assert_allclose(ours / scale, ref / scale, atol=rtol, rtol=0)


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("dim,shift", [(320, 0), (33, 1)])
def test_timestep_embedding_matches_diffusers(flip, dim, shift):
  t = np.array([0.0, 1.0, 37.5, 999.0], np.float32)
  ref = get_timestep_embedding(
    torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift
  ).numpy()
  ours = sd_layers.timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
  # Angles reach t rad: sin/cos can only agree to a few float32 ulps of t (6e-5 at t=999).
  ulp = np.spacing(np.maximum(t, 1.0))[:, None]
  assert np.all(np.abs(np.asarray(ours) - ref) <= 4 * ulp)


def test_timestep_embedding_rejects_matrix():
  with pytest.raises(ValueError, match="timesteps"):
    sd_layers.timestep_embedding(np.zeros((2, 2)), 8)


@pytest.mark.parametrize(
  "c_in,c_out,temb",
  [(16, 16, 12), (16, 24, 12), (16, 24, None)],
  ids=["same-width", "shortcut", "no-time"],
)
def test_resnet_block_matches_diffusers(c_in, c_out, temb):
  eps = 1e-5 if temb else 1e-6
  ref_block = randomize(
    TorchResnet(in_channels=c_in, out_channels=c_out, temb_channels=temb, groups=4, eps=eps)
  )
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 6, c_in)).astype(np.float32)
  t = rng.standard_normal((2, temb)).astype(np.float32) if temb else None
  with torch.no_grad():
    ref = ref_block(nchw(x), None if t is None else torch.from_numpy(t))
  block = sd_layers.ResnetBlock2D(c_out, use_time_embedding=temb is not None, groups=4, eps=eps)
  ours = _port(ref_block, block, x, t)
  _assert_close(ours, nhwc(ref))


@pytest.mark.parametrize("size", [(3, 5), (8, 8), (9, 12)], ids=["im2col", "im2col-64", "conv"])
def test_conv3x3_and_group_norm_match_flax(size):
  """Same parameters (names, shapes, initial values) and outputs as nn.Conv / nn.GroupNorm; on
  CPU images of <= 64 pixels take the patches-matmul path, larger ones lax.conv."""
  import flax.linen as nn

  x = jax.random.normal(jax.random.key(0), (2, *size, 16)) * 3 + 1
  for ours, ref in [
    (sd_layers.Conv3x3(24), nn.Conv(24, (3, 3), padding=((1, 1), (1, 1)))),
    (sd_layers.GroupNorm(4, epsilon=1e-6), nn.GroupNorm(num_groups=4, epsilon=1e-6)),
  ]:
    params = ours.init(jax.random.key(1), x)
    ref_params = ref.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)  # also the tree
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="not divisible by 5 groups"):
    sd_layers.GroupNorm(5).init(jax.random.key(0), x)


def test_resnet_block_time_embedding_mismatch_raises():
  x = jnp.zeros((1, 4, 4, 8))
  with pytest.raises(ValueError, match="needs a time embedding"):
    sd_layers.ResnetBlock2D(8, groups=4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="got a time embedding"):
    sd_layers.ResnetBlock2D(8, use_time_embedding=False, groups=4).init(
      jax.random.key(0), x, jnp.zeros((1, 3))
    )


def test_down_and_upsample_match_diffusers():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 8, 6, 8)).astype(np.float32)
  for padding in (1, 0):  # U-Net (1) and VAE encoder (0, asymmetric pad)
    ref_down = randomize(
      TorchDownsample(8, use_conv=True, out_channels=12, padding=padding, name="op")
    )
    with torch.no_grad():
      ref = ref_down(nchw(x))
    _assert_close(_port(ref_down, sd_layers.Downsample2D(12, padding=padding), x), nhwc(ref))
  ref_up = randomize(TorchUpsample(8, use_conv=True, out_channels=12))
  with torch.no_grad():
    ref = ref_up(nchw(x))
  _assert_close(_port(ref_up, sd_layers.Upsample2D(12), x), nhwc(ref))


@pytest.mark.parametrize("linear", [False, True], ids=["conv-proj", "linear-proj"])
def test_transformer_2d_matches_diffusers(linear):
  heads, head_dim, channels, ctx_dim = 2, 8, 16, 12
  ref_model = randomize(
    TorchTransformer(
      num_attention_heads=heads,
      attention_head_dim=head_dim,
      in_channels=channels,
      num_layers=2,
      cross_attention_dim=ctx_dim,
      norm_num_groups=4,
      use_linear_projection=linear,
    ),
    scale=0.2,
  )
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 4, 6, channels)).astype(np.float32)
  ctx = rng.standard_normal((2, 5, ctx_dim)).astype(np.float32)
  with torch.no_grad():
    ref = ref_model(nchw(x), encoder_hidden_states=torch.from_numpy(ctx)).sample
  model = sd_layers.Transformer2DModel(
    heads, head_dim, depth=2, use_linear_projection=linear, groups=4
  )
  if not linear:
    _assert_close(_port(ref_model, model, x, ctx), nhwc(ref))
    return
  # With the maps requested (explicit softmax path) the output is the same, and each map is a
  # softmax over the context tokens (their values are checked against diffusers in unet_test).
  out, probs = _port(ref_model, model, x, ctx, return_probs=True)
  _assert_close(out, nhwc(ref))
  assert len(probs) == 2 and probs[0].shape == (2, heads, 24, 5)
  np.testing.assert_allclose(np.asarray(probs[1]).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "chunked", "auto", "cudnn"])
def test_attention_implementations_agree_with_explicit_softmax(implementation):
  # float32 inputs: 'cudnn' (half precision only) falls back to 'auto', also on CPU.
  kq, kk, kv = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(kq, (2, 96, 3, 8))
  k = jax.random.normal(kk, (2, 40, 3, 8))
  v = jax.random.normal(kv, (2, 40, 3, 8))
  probs = sd_layers.attention_probabilities(q, k)
  ref = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  out = jax.jit(
    lambda q, k, v: sd_layers.attention(q, k, v, implementation=implementation, query_chunk_size=32)
  )(q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6)


def test_chunked_attention_bounds_the_logits_block():
  """The compiled chunked attention holds no [B, H, L_q, L_kv] buffer; xla does."""
  q = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)
  kv = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)

  def temp_bytes(implementation):
    fn = lambda q, k, v: sd_layers.attention(
      q, k, v, implementation=implementation, query_chunk_size=128
    )
    return jax.jit(fn).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

  full_logits = 1 * 2 * 1024 * 1024 * 4
  assert temp_bytes("xla") >= full_logits
  assert temp_bytes("chunked") < full_logits / 2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the per-sample steps are CPU's")
def test_chunked_attention_on_cpu_runs_one_sample_at_a_time():
  """On CPU a chunk step holds one sample's [H, chunk, L_kv] logits, not the whole batch's."""
  q = jax.ShapeDtypeStruct((4, 1024, 2, 8), jnp.float32)
  fn = lambda q, k, v: sd_layers.attention(q, k, v, implementation="chunked", query_chunk_size=128)
  temp = jax.jit(fn).lower(q, q, q).compile().memory_analysis().temp_size_in_bytes
  batch_chunk_logits = 4 * 2 * 128 * 1024 * 4  # what a batch-wide chunk would hold
  assert temp < batch_chunk_logits * 0.6  # one sample's logits and exponentials, and the outputs
  kq, kk, kv = jax.random.split(jax.random.key(5), 3)
  q, k, v = (jax.random.normal(key, (3, 64, 2, 8)) for key in (kq, kk, kv))
  ref = jnp.einsum("bhqk,bkhd->bqhd", sd_layers.attention_probabilities(q, k), v)
  out = sd_layers.attention(q, k, v, implementation="chunked", query_chunk_size=16)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6)


def test_attention_rejects_unknown_implementation():
  x = jnp.zeros((1, 4, 1, 8))
  with pytest.raises(ValueError, match="flash"):
    sd_layers.attention(x, x, x, implementation="flash")


def test_chunked_attention_gradient_equals_xla():
  kq, kk, kv, kw = jax.random.split(jax.random.key(4), 4)
  q = jax.random.normal(kq, (2, 64, 2, 8))  # batch 2: on CPU the chunks also step over samples
  k = jax.random.normal(kk, (2, 24, 2, 8))
  v = jax.random.normal(kv, (2, 24, 2, 8))
  w = jax.random.normal(kw, q.shape)

  def grads(implementation):
    loss = lambda q, k, v: jnp.sum(
      w * sd_layers.attention(q, k, v, implementation=implementation, query_chunk_size=16)
    )
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for ours, ref in zip(grads("chunked"), grads("xla")):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5)
