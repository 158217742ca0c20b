"""VAE vs diffusers' `AutoencoderKL` (tiny random config, float32), via jhmr's converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.convert import diffusers_vae
from jhmr.models.vae import SD_VAE, AutoencoderKL, VAEConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TINY = dict(
  block_out_channels=(32, 64),
  layers_per_block=1,
  latent_channels=4,
  norm_num_groups=8,
  down_block_types=("DownEncoderBlock2D",) * 2,
  up_block_types=("UpDecoderBlock2D",) * 2,
)


@pytest.fixture(scope="module")
def encode():
  return jax.jit(lambda model, p, x: model.apply({"params": p}, x, method=AutoencoderKL.encode),
                 static_argnums=0)  # fmt: skip


@pytest.fixture(scope="module")
def pair():
  torch.manual_seed(0)
  ref = diffusers.AutoencoderKL(**TINY).eval()
  with torch.no_grad():  # random norms, so the test also checks scale/bias placement
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  config = diffusers_vae.vae_config_from_diffusers(dict(ref.config))
  params = diffusers_vae.convert_vae_state_dict(ref.state_dict(), config)
  return ref, AutoencoderKL(config), params


def _rel_err(got, want):
  return float(np.abs(np.asarray(got) - want).max() / max(np.abs(want).max(), 1e-6))


def test_encode_decode_match_diffusers(pair, encode):
  ref, model, params = pair
  x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 24)).astype(np.float32)
  with torch.no_grad():
    post = ref.encode(torch.from_numpy(x)).latent_dist
    mean, logvar = post.mean.numpy(), post.logvar.numpy()
    z = np.random.default_rng(1).standard_normal(mean.shape).astype(np.float32)
    dec = ref.decode(torch.from_numpy(z)).sample.numpy()
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=AutoencoderKL.decode))
  got = encode(model, params, nhwc(x))
  assert got.mean.shape == (2, 16, 12, 4)
  assert _rel_err(got.mean, mean.transpose(0, 2, 3, 1)) < 1e-4
  assert _rel_err(got.logvar, logvar.transpose(0, 2, 3, 1)) < 1e-4
  out = decode(params, nhwc(z))
  assert out.shape == (2, 32, 24, 3)
  assert _rel_err(out, dec.transpose(0, 2, 3, 1)) < 1e-4


def test_posterior_sampling_is_seeded(pair, encode):
  _, model, params = pair
  post = encode(model, params, jnp.zeros((2, 32, 24, 3)))
  a, b = post.sample(jax.random.key(0)), post.sample(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(post.sample(jax.random.key(1))))
  assert post.kl().shape == (2,)


def test_bad_inputs_raise(pair):
  _, model, params = pair
  with pytest.raises(ValueError, match="multiples of 2"):
    model.apply({"params": params}, jnp.zeros((1, 15, 16, 3)), method=AutoencoderKL.encode)
  with pytest.raises(ValueError, match="NHWC"):
    model.apply({"params": params}, jnp.zeros((1, 3, 16, 16)), method=AutoencoderKL.encode)


def test_sd_vae_parameter_count_matches_diffusers():
  with torch.device("meta"):
    ref = diffusers.AutoencoderKL(
      block_out_channels=(128, 256, 512, 512),
      layers_per_block=2,
      down_block_types=("DownEncoderBlock2D",) * 4,
      up_block_types=("UpDecoderBlock2D",) * 4,
    )
  want = sum(p.numel() for p in ref.parameters())
  shapes = diffusers_vae.vae_param_shapes(SD_VAE)
  got = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert got == want == 83_653_863


def test_config_defaults_are_sd():
  assert SD_VAE.downsampling == 8 and SD_VAE.scaling_factor == 0.18215
  with pytest.raises(ValueError, match="norm_num_groups"):
    VAEConfig(block_out_channels=(30,), norm_num_groups=32)
