"""jhmr.models.unet vs diffusers' UNet2DConditionModel (float32, tiny random configs).

Weights go through jhmr's converter (`convert_unet_state_dict`); inputs are NHWC for jhmr and
transposed to NCHW for diffusers.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from jhmr.convert import diffusers_unet  # noqa: E402
from jhmr.models.unet import SD2_DEPTH_UNET, SD15_UNET, UNet, UNetConfig  # noqa: E402
from tests.torch_reference import nchw, nhwc, randomize, rel_err  # noqa: E402

TINY_SD1 = dict(
  sample_size=16,
  block_out_channels=(32, 64),
  layers_per_block=1,
  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
  cross_attention_dim=32,
  attention_head_dim=8,
  norm_num_groups=8,
)
# SD 2 depth-style: 5 input channels, linear projections, per-block head counts, 2 layers.
TINY_SD2_DEPTH = dict(
  sample_size=16,
  in_channels=5,
  out_channels=4,
  block_out_channels=(32, 64),
  layers_per_block=2,
  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
  cross_attention_dim=24,
  attention_head_dim=(2, 4),
  use_linear_projection=True,
  norm_num_groups=8,
)


def _inputs(cfg: dict, seed=0, batch=2, size=16, tokens=7):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, size, size, cfg.get("in_channels", 4))).astype(np.float32)
  t = np.array([3.0, 801.0][:batch], np.float32)
  ctx = rng.standard_normal((batch, tokens, cfg["cross_attention_dim"])).astype(np.float32)
  return x, t, ctx


class _Port:
  """A torch reference U-Net and its jhmr port (params converted, apply jitted)."""

  def __init__(self, cfg: dict, seed=0):
    self.torch_model = randomize(diffusers.UNet2DConditionModel(**cfg), seed)
    self.config = diffusers_unet.unet_config_from_diffusers(dict(self.torch_model.config))
    self.params = diffusers_unet.convert_unet_state_dict(self.torch_model.state_dict(), self.config)
    self.model = UNet(self.config)

  def reference(self, x, t, ctx, down=None, mid=None):
    with torch.no_grad():
      return self.torch_model(
        nchw(x),
        torch.from_numpy(t),
        torch.from_numpy(ctx),
        down_block_additional_residuals=None if down is None else [nchw(d) for d in down],
        mid_block_additional_residual=None if mid is None else nchw(mid),
      ).sample


@pytest.fixture(scope="module")
def sd1():
  return _Port(TINY_SD1)


@pytest.fixture(scope="module")
def sd1_apply(sd1):
  return jax.jit(lambda p, x, t, c: sd1.model.apply({"params": p}, x, t, c))


def test_sd1_matches_diffusers(sd1, sd1_apply):
  x, t, ctx = _inputs(TINY_SD1)
  out = sd1_apply(sd1.params, x, t, ctx)
  assert rel_err(out, nhwc(sd1.reference(x, t, ctx))) < 1e-5


def test_sd2_depth_style_matches_diffusers():
  port = _Port(TINY_SD2_DEPTH, seed=1)
  assert port.config.in_channels == 5 and port.config.num_attention_heads == (2, 4)
  x, t, ctx = _inputs(TINY_SD2_DEPTH, seed=1)
  out = jax.jit(lambda p, *a: port.model.apply({"params": p}, *a))(port.params, x, t, ctx)
  assert rel_err(out, nhwc(port.reference(x, t, ctx))) < 1e-5


def _torch_name(path: str) -> str:
  return re.sub(r"_(\d+)", r".\1", path.replace("/", "."))


def test_residuals_features_and_attention_maps_match_diffusers(sd1):
  """ControlNet-style residuals are added like diffusers; decoder features and
  cross-attention maps equal the ones read from the torch model with forward hooks; a scalar
  timestep is broadcast over the batch."""
  x, _, ctx = _inputs(TINY_SD1, seed=2)
  t = np.full((2,), 250.0, np.float32)
  rng = np.random.default_rng(3)
  skip_shapes = [(2, 16, 16, 32)] * 2 + [(2, 8, 8, 32), (2, 8, 8, 64)]
  down = [rng.standard_normal(s).astype(np.float32) for s in skip_shapes]
  mid = rng.standard_normal((2, 8, 8, 64)).astype(np.float32)

  tm = sd1.torch_model
  maps, feats, handles = {}, {}, []

  def attn_hook(name):
    def hook(attn, args, kwargs, output):
      q = attn.head_to_batch_dim(attn.to_q(args[0]))
      k = attn.head_to_batch_dim(attn.to_k(kwargs["encoder_hidden_states"]))
      p = attn.get_attention_scores(q, k)
      maps[name] = p.reshape(-1, attn.heads, *p.shape[1:]).numpy()

    return hook

  def feat_hook(index):
    def hook(module, args, output):
      out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
      feats[index] = nhwc(out)

    return hook

  for name, module in tm.named_modules():
    if name.endswith("attn2"):
      handles.append(module.register_forward_hook(attn_hook(name), with_kwargs=True))
  layers = sd1.config.layers_per_block + 1
  for i, block in enumerate(tm.up_blocks):
    for j in range(layers):
      if j == layers - 1 and block.upsamplers is not None:
        module = block.upsamplers[0]
      elif hasattr(block, "attentions"):
        module = block.attentions[j]
      else:
        module = block.resnets[j]
      handles.append(module.register_forward_hook(feat_hook(i * layers + j)))
  try:
    ref = sd1.reference(x, t, ctx, down, mid)
  finally:
    for h in handles:
      h.remove()

  apply = jax.jit(
    lambda p, x, t, c, d, m: sd1.model.apply(
      {"params": p}, x, t, c, down_residuals=d, mid_residual=m, return_features=True
    )
  )
  out = apply(sd1.params, x, np.float32(250.0), ctx, tuple(down), mid)
  assert rel_err(out.sample, nhwc(ref)) < 1e-5
  assert len(out.up_features) == len(feats) == 4
  for index, feature in enumerate(out.up_features):
    assert rel_err(feature, feats[index]) < 1e-5
  assert {_torch_name(k) + ".attn2" for k in out.cross_attention_probs} == set(maps)
  for key, probs in out.cross_attention_probs.items():
    ref_probs = maps[_torch_name(key) + ".attn2"]
    assert probs.shape == ref_probs.shape and probs.shape[-1] == 7
    np.testing.assert_allclose(np.asarray(probs), ref_probs, atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_stays_close(sd1):
  """dtype=bfloat16 (params stored in bf16 too) tracks the float32 reference."""
  x, t, ctx = _inputs(TINY_SD1)
  model = UNet(sd1.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  params = diffusers_unet.cast_params(sd1.params, jnp.bfloat16)
  out = jax.jit(lambda p, *a: model.apply({"params": p}, *a))(params, x, t, ctx)
  assert out.dtype == jnp.bfloat16
  assert rel_err(out.astype(jnp.float32), nhwc(sd1.reference(x, t, ctx))) < 5e-2


def test_bad_inputs_raise_clear_errors(sd1):
  x, t, ctx = _inputs(TINY_SD1)
  shape = lambda *a, **k: jax.eval_shape(
    lambda p: sd1.model.apply({"params": p}, *a, **k), sd1.params
  )
  with pytest.raises(ValueError, match="NHWC"):
    shape(x.transpose(0, 3, 1, 2), t, ctx)
  with pytest.raises(ValueError, match="multiples of 2"):
    shape(x[:, :15, :15], t, ctx)
  with pytest.raises(ValueError, match="context must be"):
    shape(x, t, ctx[..., :8])
  with pytest.raises(ValueError, match="down_residuals: got 2"):
    shape(x, t, ctx, down_residuals=(x, x))
  with pytest.raises(ValueError, match="mid_residual has shape"):
    shape(x, t, ctx, mid_residual=x)


def test_config_validation():
  with pytest.raises(ValueError, match="num_attention_heads"):
    UNetConfig(num_attention_heads=(8, 8))
  with pytest.raises(ValueError, match="unsupported down block"):
    UNetConfig(down_block_types=("AttnDownBlock2D",) * 4)
  with pytest.raises(ValueError, match="must divide"):
    UNetConfig(num_attention_heads=(7, 8, 8, 8))


@pytest.mark.slow
@pytest.mark.parametrize(
  "ours,theirs",
  [
    (SD15_UNET, dict(cross_attention_dim=768)),
    (
      SD2_DEPTH_UNET,
      dict(
        in_channels=5,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
      ),
    ),
  ],
  ids=["sd15", "sd2-depth"],
)
def test_full_size_parameter_count_equals_diffusers(ours, theirs):
  with torch.device("meta"):
    ref = diffusers.UNet2DConditionModel(**theirs)
  assert diffusers_unet.unet_config_from_diffusers(dict(ref.config)) == ours
  shapes = diffusers_unet.unet_param_shapes(ours)
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert count == sum(p.numel() for p in ref.parameters())
  assert count == {4: 859_520_964, 5: 865_913_604}[ours.in_channels]


@pytest.mark.slow
def test_gradients_match_diffusers(sd1):
  """d/d(sample, context) of a weighted sum of the output (DPMesh trains through the U-Net)."""
  x, t, ctx = _inputs(TINY_SD1, seed=6)
  w = np.random.default_rng(7).standard_normal(x.shape[:3] + (4,)).astype(np.float32)
  loss = lambda x, c: jnp.sum(w * sd1.model.apply({"params": sd1.params}, x, t, c))
  gx, gc = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, ctx)
  tx = nchw(x).requires_grad_(True)
  tc = torch.from_numpy(ctx).requires_grad_(True)
  out = sd1.torch_model(tx, torch.from_numpy(t), tc).sample
  (out * nchw(w)).sum().backward()
  assert rel_err(gx, nhwc(tx.grad)) < 1e-4
  assert rel_err(gc, tc.grad.numpy()) < 1e-4


def test_remat_gives_the_same_parameters_outputs_and_gradients(sd1):
  """`remat=True` (blocks under nn.remat) changes memory, not the function: same parameter tree,
  same features and maps, same gradients with respect to parameters and inputs."""
  x, t, ctx = _inputs(TINY_SD1, seed=8)
  remat = UNet(sd1.config, remat=True)
  shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(m.init, jax.random.key(0), x, t, ctx))
  assert shapes(remat) == shapes(sd1.model)

  def loss(model, params, x, c):
    out = model.apply({"params": params}, x, t, c, return_features=True)
    maps = sum(jnp.sum(p) for p in out.cross_attention_probs.values())
    return jnp.sum(out.sample**2) + sum(jnp.sum(f) for f in out.up_features) + maps

  grads = [
    jax.jit(jax.grad(functools.partial(loss, m), argnums=(0, 1, 2)))(sd1.params, x, ctx)
    for m in (sd1.model, remat)
  ]
  # Recomputation reorders float32 sums; compare each gradient leaf as a whole (leaves reach 1e4).
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
    assert rel_err(b, a) < 1e-5
