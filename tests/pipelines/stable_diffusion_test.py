"""SD pipelines end to end with tiny random weights, against diffusers' pipelines.

The torch pipelines are saved with `save_pretrained` and loaded back through jhmr's converters
(`load_stable_diffusion`), so this also covers the folder loader. Random draws are shared by
handing jhmr's noise to diffusers (`latents=` for text-to-image; `randn_tensor` patched for the
image-to-image and depth-to-image noise and the VAE posterior sample).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.models import clip_tokenizer as T
from jhmr.pipelines import stable_diffusion as P

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from tests.torch_reference import nchw  # noqa: E402

HW = 32  # image size; tiny VAE downsamples by 2 -> 16x16 latents
STEPS = 6  # one step count everywhere: the compiled loop is shared between tests
PROMPTS = ["a photo of an athlete", "a dancer"]


def _tokenizer_folder(path):
  chars = list(T.byte_to_unicode().values())
  tokens = chars + [c + T.WORD_END for c in chars] + [T.BOS, T.EOS]
  path.mkdir(parents=True, exist_ok=True)
  (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (path / "merges.txt").write_text("#version: 0.2\n")
  return transformers.CLIPTokenizer.from_pretrained(str(path), model_max_length=77)


def _components(tmp, depth: bool):
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
    sample_size=16,
    in_channels=5 if depth else 4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=(2, 4) if depth else 8,
    use_linear_projection=depth,
    norm_num_groups=8,
  )
  vae = diffusers.AutoencoderKL(
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
  )
  text = transformers.CLIPTextModel(
    transformers.CLIPTextConfig(
      vocab_size=600, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
      num_attention_heads=4, hidden_act="gelu" if depth else "quick_gelu",
      bos_token_id=512, eos_token_id=2 if depth else 513, pad_token_id=513,
    )
  )  # fmt: skip
  scheduler = diffusers.PNDMScheduler(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
    set_alpha_to_one=False, steps_offset=1,
  )  # fmt: skip
  return dict(
    unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(),
    tokenizer=_tokenizer_folder(tmp / "tok"), scheduler=scheduler,
  )  # fmt: skip


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
  return tmp_path_factory.mktemp("sd1")


@pytest.fixture(scope="module")
def sd1(sd1_folder):
  tmp = sd1_folder
  pipe = diffusers.StableDiffusionPipeline(
    **_components(tmp, depth=False), safety_checker=None, feature_extractor=None,
    requires_safety_checker=False,
  )  # fmt: skip
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(tmp / "pipe")
  sd, params = P.load_stable_diffusion(tmp / "pipe")
  return pipe, sd, params


@pytest.fixture(scope="module")
def sd2_depth(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sd2")
  pipe = diffusers.StableDiffusionDepth2ImgPipeline(
    **_components(tmp, depth=True), depth_estimator=None, feature_extractor=None
  )
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(tmp / "pipe")
  sd, params = P.load_stable_diffusion(tmp / "pipe")
  return pipe, sd, params


class _Noise:
  """Replays given arrays (NHWC) as diffusers' `randn_tensor` draws, in call order."""

  def __init__(self, *arrays):
    self.arrays = [nchw(a) for a in arrays]

  def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
    out = self.arrays.pop(0)
    assert tuple(out.shape) == tuple(shape), (out.shape, shape)
    return out


def _image(seed):
  return np.random.default_rng(seed).uniform(0, 1, (2, HW, HW, 3)).astype(np.float32)


def test_text_to_image_matches_diffusers(sd1):
  pipe, sd, params = sd1
  latents = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
  want = pipe(
    PROMPTS, height=HW, width=HW, num_inference_steps=STEPS, guidance_scale=7.5,
    latents=nchw(latents), output_type="np",
  ).images  # fmt: skip
  got = P.text_to_image(
    sd, params, None, PROMPTS, height=HW, width=HW, num_steps=STEPS, latents=latents
  )
  assert got.shape == (2, HW, HW, 3)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


def test_text_to_image_is_seeded(sd1):
  _, sd, params = sd1
  run = lambda key: np.asarray(
    P.text_to_image(sd, params, key, PROMPTS, height=HW, width=HW, num_steps=STEPS)
  )
  a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3 and np.isfinite(a).all()
  assert 0.0 <= a.min() and a.max() <= 1.0


def test_image_to_image_matches_diffusers(sd1, monkeypatch):
  pipe, sd, params = sd1
  image, key, strength = _image(0), jax.random.key(3), 0.6
  # jhmr's draws: the VAE posterior sample, then the forward-process noise
  k_vae, k_noise = jax.random.split(key)
  post_noise = jax.random.normal(k_vae, (2, 16, 16, 4))
  noise = jax.random.normal(k_noise, (2, 16, 16, 4))
  monkeypatch.setattr(diffusers.models.autoencoders.vae, "randn_tensor", _Noise(post_noise))
  img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
  img2img.set_progress_bar_config(disable=True)
  monkeypatch.setattr(
    diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img,
    "randn_tensor",
    _Noise(noise),
  )
  want = img2img(
    PROMPTS, image=nchw(image), strength=strength, num_inference_steps=STEPS,
    guidance_scale=5.0, output_type="np",
  ).images  # fmt: skip
  got = P.image_to_image(
    sd, params, key, PROMPTS, jnp.asarray(image), strength=strength, num_steps=STEPS,
    guidance_scale=5.0,
  )  # fmt: skip
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


def test_depth_to_image_matches_diffusers(sd2_depth, monkeypatch):
  pipe, sd, params = sd2_depth
  assert sd.is_depth_model and sd.text_encoder.config.hidden_act == "gelu"
  image, key, strength = _image(1), jax.random.key(4), 0.7
  depth = np.random.default_rng(2).uniform(0.5, 3.0, (2, 24, 40)).astype(np.float32)
  k_vae, k_noise = jax.random.split(key)
  post_noise = jax.random.normal(k_vae, (2, 16, 16, 4))
  noise = jax.random.normal(k_noise, (2, 16, 16, 4))
  monkeypatch.setattr(diffusers.models.autoencoders.vae, "randn_tensor", _Noise(post_noise))
  monkeypatch.setattr(
    diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_depth2img,
    "randn_tensor",
    _Noise(noise),
  )
  want = pipe(
    PROMPTS, image=nchw(image), depth_map=torch.from_numpy(depth), strength=strength,
    num_inference_steps=STEPS, guidance_scale=7.5, negative_prompt=["deformed"] * 2,
    output_type="np",
  ).images  # fmt: skip
  got = P.depth_to_image(
    sd, params, key, PROMPTS, jnp.asarray(depth), image=jnp.asarray(image), strength=strength,
    num_steps=STEPS, negative_prompt="deformed",
  )  # fmt: skip
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


def test_prepare_depth_matches_torch_bicubic_and_minmax():
  depth = np.random.default_rng(3).uniform(0, 5, (2, 224, 200)).astype(np.float32)
  t = torch.nn.functional.interpolate(
    torch.from_numpy(depth)[:, None], size=(64, 48), mode="bicubic", align_corners=False
  )
  lo, hi = t.amin(dim=[1, 2, 3], keepdim=True), t.amax(dim=[1, 2, 3], keepdim=True)
  want = (2.0 * (t - lo) / (hi - lo) - 1.0)[:, 0].numpy()
  got = np.asarray(P.prepare_depth(jnp.asarray(depth), (64, 48)))[..., 0]
  np.testing.assert_allclose(got, want, atol=5e-5)  # float32 rounding, range [-1, 1]
  up = torch.nn.functional.interpolate(
    torch.from_numpy(depth[:, :5, :7])[:, None], size=(9, 13), mode="bicubic", align_corners=False
  )[:, 0].numpy()
  mat_r, mat_c = P.bicubic_matrix(5, 9), P.bicubic_matrix(7, 13)
  ours = np.einsum("yh,bhw,xw->byx", mat_r, depth[:, :5, :7], mat_c)
  np.testing.assert_allclose(ours, up, atol=1e-5 * np.abs(up).max())  # float32 rounding


def test_depth_to_image_from_latents_is_deterministic(sd2_depth):
  _, sd, params = sd2_depth
  depth = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (2, 32, 32)), jnp.float32)
  init = jax.random.normal(jax.random.key(5), (2, 16, 16, 4))
  run = lambda key, strength: np.asarray(
    P.depth_to_image(
      sd, params, key, PROMPTS, depth, init_latents=init, num_steps=STEPS, strength=strength
    )  # fmt: skip
  )
  a, b = run(jax.random.key(6), 1.0), run(jax.random.key(6), 1.0)
  assert a.shape == (2, HW, HW, 3) and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - run(jax.random.key(6), 0.5)).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["ddim", "dpm_solver_pp_2m"])
def test_other_samplers_run_and_are_seeded(sd1, scheduler):
  _, sd, params = sd1
  run = lambda key: np.asarray(
    P.text_to_image(
      sd, params, key, PROMPTS, height=HW, width=HW, num_steps=STEPS, scheduler=scheduler
    )  # fmt: skip
  )
  a, b = run(jax.random.key(7)), run(jax.random.key(7))
  assert np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)


def test_bad_inputs_raise(sd1, sd2_depth):
  _, sd, params = sd1
  _, sd_depth, params_depth = sd2_depth
  with pytest.raises(ValueError, match="multiples of 4"):
    P.text_to_image(sd, params, jax.random.key(0), "x", height=30, width=32, num_steps=2)
  with pytest.raises(ValueError, match="depth_to_image"):
    P.image_to_image(sd_depth, params_depth, jax.random.key(0), "x", jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"latent_channels \+ 1"):
    P.depth_to_image(sd, params, jax.random.key(0), "x", jnp.zeros((1, 32, 32)),
                     init_latents=jnp.zeros((1, 16, 16, 4)))  # fmt: skip
  with pytest.raises(ValueError, match="exactly one"):
    P.depth_to_image(sd_depth, params_depth, jax.random.key(0), "x", jnp.zeros((1, 32, 32)))
  with pytest.raises(ValueError, match="no denoising step"):
    P.image_to_image(sd, params, jax.random.key(0), "x", jnp.zeros((1, 32, 32, 3)), strength=0.01,
                     num_steps=4)  # fmt: skip
  with pytest.raises(ValueError, match="negative prompts"):
    P.encode_prompts(sd, params, ["a", "b"], ["c"])


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(sd1, sd1_folder):
  _, sd, params = sd1
  sd_bf16, params_bf16 = P.load_stable_diffusion(sd1_folder / "pipe", dtype=jnp.bfloat16)
  latents = jax.random.normal(jax.random.key(8), (2, 16, 16, 4))
  run = lambda sd, p: np.asarray(
    P.text_to_image(sd, p, None, PROMPTS, height=HW, width=HW, num_steps=STEPS, latents=latents)
  )
  full, half = run(sd, params), run(sd_bf16, params_bf16)
  assert half.dtype == np.float32 and np.isfinite(half).all()
  assert np.abs(full - half).max() < 0.05


@pytest.mark.slow
def test_full_size_sd2_depth_wiring_with_eval_shape():
  """SD 2 depth at full size (5-channel U-Net, OpenCLIP-H context, SD VAE), shapes only."""
  from jhmr.diffusion import schedulers as S
  from jhmr.models.clip_text import OPENCLIP_VIT_H14_TEXT, CLIPTextModel
  from jhmr.models.unet import SD2_DEPTH_UNET, UNet
  from jhmr.models.vae import SD_VAE, AutoencoderKL

  sd = P.StableDiffusion(
    unet=UNet(SD2_DEPTH_UNET), vae=AutoencoderKL(SD_VAE),
    text_encoder=CLIPTextModel(OPENCLIP_VIT_H14_TEXT), tokenizer=None,
  )  # fmt: skip
  assert sd.is_depth_model
  init = lambda m: jax.eval_shape(m.init, jax.random.key(0), *m.dummy_inputs())["params"]
  params = {"unet": init(sd.unet), "vae": init(sd.vae), "text_encoder": init(sd.text_encoder)}
  ctx = jax.ShapeDtypeStruct((2, 77, 1024), jnp.float32)
  latents = jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32)
  depth = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
  sched = S.make_pndm(50)
  out = jax.eval_shape(
    lambda p, x, c, d: P.denoise(sd, p, sched, x, c, 7.5, d, 15), params, latents, ctx, depth
  )
  assert out.shape == (1, 64, 64, 4)
  images = jax.eval_shape(lambda p, x: P.decode_latents(sd, p, x), params, latents)
  assert images.shape == (1, 512, 512, 3)
