"""Stable Diffusion pieces, jhmr (JAX, jit) vs diffusers / transformers (PyTorch), same weights.

  .venv/bin/python benchmarks/sd_pipeline.py                  # all cases, CPU float32
  options: --cases pipeline,clip,vae --steps 10 --repeats 3

Cases (random weights; torch models converted with jhmr's converters, so both sides compute the
same function; outputs are compared, max abs difference printed):
- pipeline: text-to-image, PNDM, classifier-free guidance, batch 1, on a small SD-shaped model
  (U-Net widths 64/128, VAE 32/64/64 (x4 downsampling), CLIP width 128 x 4 layers) at 128x128:
  the whole program (text encoding, `--steps` U-Net calls, VAE decode). jhmr runs the loop as one
  `lax.scan`; diffusers runs `StableDiffusionPipeline` with `latents=` set to the same noise.
- clip: full-size CLIP ViT-L/14 text encoder (SD 1.x), batch 2 x 77 tokens.
- vae: full-size SD VAE decode of a 32x32 latent (a 256x256 image), batch 1.
jhmr's first call (compilation) is excluded and reported separately.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import clip_text_config, print_table, time_call  # noqa: E402


def _tokenizer(tmp):
  import json

  from transformers import CLIPTokenizer

  from jhmr.models import clip_tokenizer as T

  chars = list(T.byte_to_unicode().values())
  tokens = chars + [c + T.WORD_END for c in chars] + [T.BOS, T.EOS]
  os.makedirs(tmp, exist_ok=True)
  with open(os.path.join(tmp, "vocab.json"), "w") as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f)
  with open(os.path.join(tmp, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def case_pipeline(args):
  import tempfile

  import diffusers
  import jax
  import numpy as np
  import torch
  import transformers

  from jhmr.pipelines import stable_diffusion as P

  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
    sample_size=32, block_out_channels=(64, 128), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
    attention_head_dim=8, norm_num_groups=32,
  ).eval()  # fmt: skip
  vae = diffusers.AutoencoderKL(
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
  ).eval()  # fmt: skip
  text = transformers.CLIPTextModel(
    transformers.CLIPTextConfig(
      vocab_size=600, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
      num_attention_heads=4, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    )
  ).eval()  # fmt: skip
  sched = diffusers.PNDMScheduler(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
    set_alpha_to_one=False, steps_offset=1,
  )  # fmt: skip
  tmp = tempfile.mkdtemp()
  pipe = diffusers.StableDiffusionPipeline(
    unet=unet, vae=vae, text_encoder=text, tokenizer=_tokenizer(os.path.join(tmp, "tok")),
    scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
  )  # fmt: skip
  pipe.set_progress_bar_config(disable=True)
  pipe.save_pretrained(os.path.join(tmp, "pipe"))
  sd, params = P.load_stable_diffusion(os.path.join(tmp, "pipe"))
  prompt, size = ["a photo of an athlete doing yoga"], 128
  latents = jax.random.normal(jax.random.key(0), (1, 32, 32, 4))
  torch_latents = torch.from_numpy(np.asarray(latents).transpose(0, 3, 1, 2).copy())

  def ours():
    return P.text_to_image(
      sd, params, None, prompt, height=size, width=size, num_steps=args.steps, latents=latents
    )

  def ref():
    with torch.no_grad():
      return pipe(
        prompt, height=size, width=size, num_inference_steps=args.steps, guidance_scale=7.5,
        latents=torch_latents, output_type="np",
      ).images  # fmt: skip

  start = time.perf_counter()
  jax.block_until_ready(ours())
  compile_s = time.perf_counter() - start
  diff = float(np.abs(np.asarray(ours()) - ref()).max())
  t_ours = time_call(ours, repeats=args.repeats, warmup=0)
  t_ref = time_call(ref, repeats=args.repeats, warmup=1)
  return [f"text-to-image 128x128, {args.steps} PNDM steps, CFG", t_ours, t_ref, t_ref / t_ours,
          compile_s, f"{diff:.1e}"]  # fmt: skip


def case_clip(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  from jhmr.convert import clip_text as C
  from jhmr.models.clip_text import CLIPTextModel

  torch.manual_seed(0)
  ref = transformers.CLIPTextModel(clip_text_config("clip_l")).eval()
  config = C.clip_text_config_from_transformers(ref.config.to_dict())
  params = jax.tree.map(jnp.asarray, C.convert_clip_text_state_dict(ref.state_dict(), config))
  ids = np.random.default_rng(0).integers(0, 49407, (2, 77))
  ids[:, -1] = 49407
  fn = jax.jit(lambda p, i: CLIPTextModel(config).apply({"params": p}, i).last_hidden_state)
  jids, tids = jnp.asarray(ids, jnp.int32), torch.from_numpy(ids)
  start = time.perf_counter()
  jax.block_until_ready(fn(params, jids))
  compile_s = time.perf_counter() - start

  def run_ref():
    with torch.no_grad():
      return ref(tids).last_hidden_state

  diff = float(np.abs(np.asarray(fn(params, jids)) - run_ref().numpy()).max())
  t_ours = time_call(fn, params, jids, repeats=args.repeats)
  t_ref = time_call(run_ref, repeats=args.repeats)
  return ["CLIP ViT-L/14 text, 2 x 77 tokens", t_ours, t_ref, t_ref / t_ours, compile_s,
          f"{diff:.1e}"]  # fmt: skip


def case_vae(args):
  import diffusers
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from jhmr.convert import diffusers_vae as V
  from jhmr.models.vae import AutoencoderKL

  torch.manual_seed(0)
  ref = diffusers.AutoencoderKL(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
  ).eval()  # fmt: skip
  config = V.vae_config_from_diffusers(dict(ref.config))
  params = jax.tree.map(jnp.asarray, V.convert_vae_state_dict(ref.state_dict(), config))
  z = np.random.default_rng(0).standard_normal((1, 32, 32, 4)).astype(np.float32)
  fn = jax.jit(
    lambda p, z: AutoencoderKL(config).apply({"params": p}, z, method=AutoencoderKL.decode)
  )
  jz, tz = jnp.asarray(z), torch.from_numpy(z.transpose(0, 3, 1, 2).copy())
  start = time.perf_counter()
  jax.block_until_ready(fn(params, jz))
  compile_s = time.perf_counter() - start

  def run_ref():
    with torch.no_grad():
      return ref.decode(tz).sample

  want = run_ref().numpy().transpose(0, 2, 3, 1)
  diff = float(np.abs(np.asarray(fn(params, jz)) - want).max())
  t_ours = time_call(fn, params, jz, repeats=args.repeats, warmup=1)
  t_ref = time_call(run_ref, repeats=args.repeats, warmup=1)
  return ["SD VAE decode 32x32 -> 256x256", t_ours, t_ref, t_ref / t_ours, compile_s,
          f"{diff:.1e}"]  # fmt: skip


CASES = {"pipeline": case_pipeline, "clip": case_clip, "vae": case_vae}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="pipeline,clip,vae")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = parser.parse_args()
  import jax
  import torch

  torch.set_num_threads(args.threads)
  rows = []
  for name in args.cases.split(","):
    if name not in CASES:
      raise SystemExit(f"unknown case {name!r}; valid: {sorted(CASES)}")
    rows.append(CASES[name](args))
    print(f"done: {name}", flush=True)
  print(f"\ndevice: {jax.devices()[0].device_kind}, torch threads {args.threads}\n")
  header = ["case", "jhmr s/call", "torch s/call", "speed-up", "jhmr compile s", "max |diff|"]
  print_table(header, rows)


if __name__ == "__main__":
  main()
