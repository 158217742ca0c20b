"""Stable Diffusion generation: text-to-image, image-to-image and depth-to-image (SD 2 depth).

  sd, params = load_stable_diffusion('.../stable-diffusion-v1-5')    # diffusers folder layout
  images = text_to_image(sd, params, jax.random.key(0), ['a photo of an athlete'])  # [B,H,W,3]

Everything after tokenisation runs under `jax.jit`; the denoising loop is one `lax.scan` over the
scheduler's steps (`jhmr.diffusion.schedulers`: 'pndm' (SD's default), 'ddim',
'dpm_solver_pp_2m'), with classifier-free guidance as one batched U-Net call
(`[uncond; cond]`, diffusers' order). Results are a pure function of the key. Images are NHWC in
[0, 1]; latents are NHWC and already multiplied by the VAE scaling factor.

Conventions follow diffusers' pipelines:
- negative prompt "" when none is given; guidance off when `guidance_scale <= 1`;
- image-to-image keeps the last `int(num_steps * strength)` steps and noises the VAE latent of
  the image (a posterior sample) to the first kept timestep;
- depth-to-image (SD 2 depth, 5-channel U-Net): the depth map is resized to the latent size with
  PyTorch's bicubic kernel (a = -0.75, align_corners=False), min-max normalised per image to
  [-1, 1] (larger = nearer, as MiDaS) and concatenated to the latents at every step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jhmr.convert.clip_text import load_text_encoder
from jhmr.convert.diffusers_unet import load_unet
from jhmr.convert.diffusers_vae import load_vae
from jhmr.diffusion import schedulers as S
from jhmr.models.clip_text import CLIPTextModel
from jhmr.models.clip_tokenizer import CLIPTokenizer, load_tokenizer
from jhmr.models.unet import UNet
from jhmr.models.vae import AutoencoderKL
from jhmr.render.body_depth import bicubic_matrix, prepare_depth_for_sd  # noqa: F401 (re-export)

Prompts = str | Sequence[str]


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusion:
  """The modules of one SD checkpoint (static); parameters travel separately as
  `{'unet': ..., 'vae': ..., 'text_encoder': ...}`.

  Attributes:
    noise: the training noise process (scheduler_config.json).
    scheduler: default sampler name, a key of `jhmr.diffusion.schedulers.SCHEDULERS`.
    clip_skip: diffusers' clip_skip (0: last layer).
  """

  unet: UNet
  vae: AutoencoderKL
  text_encoder: CLIPTextModel
  tokenizer: CLIPTokenizer
  noise: S.NoiseConfig = S.SD_NOISE
  scheduler: str = "pndm"
  clip_skip: int = 0

  @property
  def latent_channels(self) -> int:
    return self.vae.config.latent_channels

  @property
  def vae_scale(self) -> int:
    return self.vae.config.downsampling

  @property
  def is_depth_model(self) -> bool:
    return self.unet.config.in_channels == self.latent_channels + 1


# ---------------------------------------------------------------------------------------------
# jitted pieces


@functools.partial(jax.jit, static_argnames=("sd",))
def _encode_text(sd: StableDiffusion, params, ids):
  out = sd.text_encoder.apply({"params": params["text_encoder"]}, ids, clip_skip=sd.clip_skip)
  return out.last_hidden_state.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("sd",))
def encode_images(sd: StableDiffusion, params, key, images):
  """`images [B, H, W, 3]` in [0, 1] -> scaled latents `[B, H/8, W/8, 4]` (posterior sample)."""
  post = sd.vae.apply({"params": params["vae"]}, 2.0 * images - 1.0, method=AutoencoderKL.encode)
  return post.sample(key) * sd.vae.config.scaling_factor


@functools.partial(jax.jit, static_argnames=("sd",))
def decode_latents(sd: StableDiffusion, params, latents):
  """Scaled latents `[B, h, w, 4]` -> images `[B, 8h, 8w, 3]` in [0, 1]."""
  x = latents / sd.vae.config.scaling_factor
  images = sd.vae.apply({"params": params["vae"]}, x, method=AutoencoderKL.decode)
  return jnp.clip(images / 2.0 + 0.5, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("sd", "guided"))
def denoise(
  sd: StableDiffusion,
  params,
  scheduler,
  latents,
  context,
  guidance_scale,
  depth=None,
  start=0,
  *,
  guided: bool = True,
):
  """The sampling loop from step `start` to the end, as one `lax.scan`.

  The scan runs over all steps and skips those before `start` with `lax.cond` (no U-Net call),
  so `start` (i.e. the image-to-image strength) is traced: changing it never recompiles.

  Args:
    scheduler: a `jhmr.diffusion.schedulers` sampler (DDIM / PNDM / DPMSolverPP2M).
    latents: `[B, h, w, 4]` at the noise level of `scheduler.timesteps[start]`.
    context: `[2B, S, D]` (`[uncond; cond]`) when guided, else `[B, S, D]`.
    depth: `[B, h, w, 1]` extra U-Net input channel (depth models), or None.
    start: int, the first step index.

  Returns:
    the denoised latents `[B, h, w, 4]`.
  """

  def step(carry, i):
    x, state = carry
    t = scheduler.timesteps[i]
    inp = jnp.concatenate([x, x]) if guided else x
    if depth is not None:
      inp = jnp.concatenate([inp, jnp.concatenate([depth, depth]) if guided else depth], -1)
    out = sd.unet.apply({"params": params["unet"]}, inp, t, context)
    if guided:
      uncond, cond = jnp.split(out, 2)
      out = S.classifier_free_guidance(uncond, cond, guidance_scale)
    return scheduler.step(state, out.astype(x.dtype), i, x)

  def body(carry, i):
    return jax.lax.cond(i >= start, step, lambda c, _: c, carry, i), None

  n = scheduler.timesteps.shape[0]
  carry = (latents, scheduler.init_state(latents))
  (latents, _), _ = jax.lax.scan(body, carry, jnp.arange(n))
  return latents


# ---------------------------------------------------------------------------------------------
# public entry points


def encode_prompts(
  sd: StableDiffusion, params, prompts: Prompts, negative_prompt: Prompts | None = None
) -> tuple[jax.Array, jax.Array]:
  """`(cond, uncond)` text embeddings `[B, 77, D]` each (uncond from "" by default)."""
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if negative_prompt is None:
    negative = [""] * len(prompts)
  elif isinstance(negative_prompt, str):
    negative = [negative_prompt] * len(prompts)
  else:
    negative = list(negative_prompt)
    if len(negative) != len(prompts):
      raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
  ids = sd.tokenizer(prompts + negative)
  emb = _encode_text(sd, params, jnp.asarray(ids))
  return emb[: len(prompts)], emb[len(prompts) :]


def _setup(sd, params, prompts, negative_prompt, num_steps, guidance_scale, scheduler):
  cond, uncond = encode_prompts(sd, params, prompts, negative_prompt)
  guided = guidance_scale > 1.0
  context = jnp.concatenate([uncond, cond]) if guided else cond
  sched = S.make_scheduler(scheduler or sd.scheduler, num_steps, sd.noise)
  return cond.shape[0], context, guided, sched


def _latent_hw(sd, height, width):
  f = sd.vae_scale * 2 ** (len(sd.unet.config.block_out_channels) - 1)
  if height % f or width % f:
    raise ValueError(f"height and width must be multiples of {f}, got {height}x{width}")
  return height // sd.vae_scale, width // sd.vae_scale


def text_to_image(
  sd: StableDiffusion,
  params,
  key: jax.Array,
  prompts: Prompts,
  *,
  negative_prompt: Prompts | None = None,
  height: int = 512,
  width: int = 512,
  num_steps: int = 50,
  guidance_scale: float = 7.5,
  scheduler: str | None = None,
  latents: jax.Array | None = None,
  return_latents: bool = False,
):
  """Prompts -> images `[B, height, width, 3]` in [0, 1] (or the final latents).

  `latents` (`[B, h, w, 4]`, unit Gaussian) replaces the noise drawn from `key`.
  """
  if sd.is_depth_model:
    raise ValueError("this U-Net takes a depth channel: use depth_to_image")
  b, context, guided, sched = _setup(
    sd, params, prompts, negative_prompt, num_steps, guidance_scale, scheduler
  )
  h, w = _latent_hw(sd, height, width)
  if latents is None:
    latents = jax.random.normal(key, (b, h, w, sd.latent_channels))
  elif latents.shape != (b, h, w, sd.latent_channels):
    raise ValueError(f"latents must be {(b, h, w, sd.latent_channels)}, got {latents.shape}")
  latents = latents * sched.init_noise_sigma
  out = denoise(sd, params, sched, latents, context, guidance_scale, guided=guided)
  return out if return_latents else decode_latents(sd, params, out)


def _noised_start(sd, key, sched, num_steps, strength, init_latents):
  start = S.img2img_start(num_steps, strength)
  if start >= num_steps:  # diffusers raises here too (0 pipeline steps)
    raise ValueError(f"strength {strength} with {num_steps} steps leaves no denoising step")
  noise = jax.random.normal(key, init_latents.shape)
  t = sched.timesteps[start]
  alphas = getattr(sched, "alphas_cumprod", None)  # DPM-Solver keeps sigmas only
  alphas = jnp.asarray(sd.noise.alphas_cumprod()) if alphas is None else alphas
  return start, S.add_noise(alphas, init_latents, noise, t)


def image_to_image(
  sd: StableDiffusion,
  params,
  key: jax.Array,
  prompts: Prompts,
  image: jax.Array,
  *,
  strength: float = 0.8,
  negative_prompt: Prompts | None = None,
  num_steps: int = 50,
  guidance_scale: float = 7.5,
  scheduler: str | None = None,
  return_latents: bool = False,
):
  """SDEdit: `image [B, H, W, 3]` in [0, 1] is encoded, noised to `strength`, and denoised."""
  if sd.is_depth_model:
    raise ValueError("this U-Net takes a depth channel: use depth_to_image")
  b, context, guided, sched = _setup(
    sd, params, prompts, negative_prompt, num_steps, guidance_scale, scheduler
  )
  _check_images(image, b, sd)
  k_vae, k_noise = jax.random.split(key)
  init = encode_images(sd, params, k_vae, image)
  start, latents = _noised_start(sd, k_noise, sched, num_steps, strength, init)
  out = denoise(sd, params, sched, latents, context, guidance_scale, None, start, guided=guided)
  return out if return_latents else decode_latents(sd, params, out)


def depth_to_image(
  sd: StableDiffusion,
  params,
  key: jax.Array,
  prompts: Prompts,
  depth: jax.Array,
  *,
  image: jax.Array | None = None,
  init_latents: jax.Array | None = None,
  strength: float = 0.8,
  negative_prompt: Prompts | None = None,
  num_steps: int = 50,
  guidance_scale: float = 7.5,
  scheduler: str | None = None,
  return_latents: bool = False,
):
  """SD 2 depth-to-image: `depth [B, H, W]` (any range, larger = nearer) conditions every step.

  The start point is `image [B, H, W, 3]` (VAE-encoded) or `init_latents [B, h, w, 4]` (already
  scaled, as Diffusion-HPC passes its masked latents), noised to `strength`.
  """
  if not sd.is_depth_model:
    raise ValueError("depth_to_image needs a U-Net with latent_channels + 1 input channels")
  if (image is None) == (init_latents is None):
    raise ValueError("pass exactly one of image or init_latents")
  b, context, guided, sched = _setup(
    sd, params, prompts, negative_prompt, num_steps, guidance_scale, scheduler
  )
  k_vae, k_noise = jax.random.split(key)
  if image is not None:
    _check_images(image, b, sd)
    init_latents = encode_images(sd, params, k_vae, image)
  h, w = init_latents.shape[1:3]
  if init_latents.shape != (b, h, w, sd.latent_channels):
    raise ValueError(
      f"init_latents must be [{b}, h, w, {sd.latent_channels}], got {init_latents.shape}"
    )
  if depth.ndim != 3 or depth.shape[0] != b:
    raise ValueError(f"depth must be [{b}, H, W], got shape {depth.shape}")
  cond = prepare_depth_for_sd(depth, (h, w))
  start, latents = _noised_start(sd, k_noise, sched, num_steps, strength, init_latents)
  out = denoise(sd, params, sched, latents, context, guidance_scale, cond, start, guided=guided)
  return out if return_latents else decode_latents(sd, params, out)


def _check_images(image, b, sd):
  if image.ndim != 4 or image.shape[0] != b or image.shape[-1] != 3:
    raise ValueError(f"image must be [{b}, H, W, 3] in [0, 1], got shape {image.shape}")
  _latent_hw(sd, image.shape[1], image.shape[2])


# depth conditioning: one implementation, `jhmr.render.body_depth` (the old names stay importable)
prepare_depth = prepare_depth_for_sd


# ---------------------------------------------------------------------------------------------
# loading


def noise_config_from_diffusers(config: dict[str, Any]) -> S.NoiseConfig:
  """A diffusers `scheduler_config.json` dict -> `NoiseConfig` (the training noise process)."""
  if config.get("trained_betas") is not None:
    raise ValueError("scheduler config: trained_betas are not supported")
  if config.get("rescale_betas_zero_snr", False):
    raise ValueError("scheduler config: rescale_betas_zero_snr is not supported")
  return S.NoiseConfig(
    num_train_timesteps=config.get("num_train_timesteps", 1000),
    beta_schedule=config.get("beta_schedule", "scaled_linear"),
    beta_start=config.get("beta_start", 0.00085),
    beta_end=config.get("beta_end", 0.012),
    prediction_type=config.get("prediction_type", "epsilon"),
    set_alpha_to_one=config.get("set_alpha_to_one", False),
    steps_offset=config.get("steps_offset", 0),
    timestep_spacing=config.get("timestep_spacing", "leading"),
  )


def load_stable_diffusion(
  folder: str | pathlib.Path,
  scheduler: str = "pndm",
  *,
  dtype: Any = jnp.float32,
  attention_implementation: str = "auto",
):
  """A diffusers SD folder (`unet/ vae/ text_encoder/ tokenizer/ scheduler/`) ->
  `(StableDiffusion, params)`, every component through jhmr's strict converters.

  `dtype` is the compute dtype of the U-Net and text encoder (e.g. `jnp.bfloat16` on GPU); the
  parameters stay float32, and the VAE and the scheduler maths always run in float32 (the SD VAE
  overflows in half precision). `attention_implementation` is passed to the U-Net.
  """
  folder = pathlib.Path(folder)
  unet_cfg, unet_params = load_unet(folder / "unet")
  vae_cfg, vae_params = load_vae(folder / "vae")
  text_cfg, text_params = load_text_encoder(folder / "text_encoder")
  sched_file = folder / "scheduler" / "scheduler_config.json"
  noise = S.SD_NOISE
  if sched_file.is_file():
    noise = noise_config_from_diffusers(json.loads(sched_file.read_text()))
  sd = StableDiffusion(
    unet=UNet(unet_cfg, attention_implementation=attention_implementation, dtype=dtype),
    vae=AutoencoderKL(vae_cfg),
    text_encoder=CLIPTextModel(text_cfg, dtype=dtype),
    tokenizer=load_tokenizer(folder / "tokenizer"),
    noise=noise,
    scheduler=scheduler,
  )
  params = {"unet": unet_params, "vae": vae_params, "text_encoder": text_params}
  return sd, jax.tree.map(jnp.asarray, params)
