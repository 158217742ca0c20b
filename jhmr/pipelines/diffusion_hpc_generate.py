"""Diffusion-HPC generation: guides -> HMR estimate -> hardness -> augmentation -> depth -> images.

Per guide g (a text prompt, or a real guide image with its prompt), all random draws keyed by
name from `name_key(name_key(PRNGKey(seed), f"guide{g}"), name)` (so an example depends on the
seed and its guide index only, never on the batch, shard size or process it ran in):

  1. first image: the guide image, or SD text-to-image of the prompt (PNDM, `num_steps` 50,
     CFG 7.5, no negative prompt as `api.py`) -- generator 'sd' only;
  2. HMR estimate on the whole first image resized to the estimator's input (the real-guidance
     path, research/diffusion_hpc.md §1 step 3); the weak-perspective camera (s, tx, ty) becomes
     a full-image translation (`jhmr.geometry.cameras.crop_to_full_translation`, box = the whole
     image) for the image camera: focal `focal_length` px, or FoV 60° when None (the full-image
     path that pitfall 2 asks for), principal point at the centre. A guide without a usable
     estimate (non-finite output, camera scale <= `min_camera_scale`) is skipped and counted.
     With `fit_keypoints` (not in the released code, which uses the HMR output as it is) the
     estimate is then fitted to the guide's 2D keypoints (`jhmr.guidance.smplify.fit`, pose
     prior weight `fit_pose_weight`) and the fit goes on in its place;
  3. hardness = VPoser ||z||² of one seeded sample (`jhmr.models.vposer.hardness`); with
     `hardness_filter='hard'` only guides scoring > `tau` go on (the others are counted);
  4. `num_augmentations` examples: k = 0 the estimate, k > 0 VPoser latent augmentation
     (`augment_variant`, `augment_s`) plus the orientation / betas jitter (`jitter_variant`);
  5. body depth at the image size (`jhmr.render.body_depth`: inverted 0-255 depth, Eq. 3 masking
     with the guide's occlusion mask when given, SD 2 preprocessing to the latent size);
  6. the image:
     'sd'      SD 2 depth image-to-image from the VAE latents of the first image with the human
               region (the guide's person mask when given, else the estimate's silhouette,
               union this example's depth > 0, at latent resolution) replaced by N(0, I),
               noised to strength 0.7 (PNDM 50 steps -> 36 steps from t = 701), negative
               prompt "deformed, bad anatomy", CFG 7.5, then decoded;
     'render'  NO diffusion model: the augmented body rendered by jhmr's rasteriser (Lambertian
               shading, random body colour and light) over, with `render_background='guide'`,
               the guide image whose human region (as for 'sd', at image resolution, grown by
               one pixel) is filled from its surroundings (`jhmr.render.inpaint`: the scene is
               kept, the person redrawn, as the re-noised latents do), or, with 'gradient', a
               random two-colour gradient; steps 1-5 and the labels are the same code as 'sd'.
  7. labels from the body model: SMPL parameters, camera-frame joints, projected SMPL-24 and
     BODY_25 keypoints, the crop box ('image': the whole image; 'keypoints': the square box of
     the visible SMPL-24 projections x 1.2).

Shards: guides `[i * shard_size, (i + 1) * shard_size)` make shard i
(`jhmr.data.diffusion_hpc_synthetic.shards`), written atomically; process p of P makes shards
p, p + P, ... . On resume a valid shard is kept; an unreadable one is moved aside to
`<name>.corrupt` (logged) and regenerated; a valid shard from other settings stops the run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jhmr.data import crops
from jhmr.data.diffusion_hpc_synthetic import shards
from jhmr.diffusion import schedulers as S
from jhmr.errors import InputError
from jhmr.geometry import cameras, rotations
from jhmr.keys import name_key
from jhmr.models import vposer as vposer_lib
from jhmr.render import body_depth, inpaint, rasterizer, shading
from jhmr.train.tasks import normalise_images

GENERATORS = ("render", "sd")
RENDER_DESCRIPTIONS = {
  "gradient": (
    "generator='render': images rendered by jhmr's rasteriser (shaded body, random colour, light "
    "and gradient background) in place of Stable Diffusion; HMR estimate, hardness, VPoser "
    "augmentation and depth conditioning are the real pipeline"
  ),
  "guide": (
    "generator='render': images rendered by jhmr's rasteriser (shaded body, random colour and "
    "light) into the guide image, whose human region is filled from its surroundings, in place "
    "of Stable Diffusion; HMR estimate, hardness, VPoser augmentation and depth conditioning "
    "are the real pipeline"
  ),
}
SD_DESCRIPTION = (
  "generator='sd': SD text-to-image (or a real guide image) -> HMR -> hardness -> VPoser "
  "augmentation -> SD 2 depth image-to-image (strength 0.7, human latents re-noised)"
)
NEGATIVE_PROMPT = "deformed, bad anatomy"


def render_background(settings) -> str:
  """`settings.render_background` ('gradient' when absent), checked."""
  value = settings.get("render_background", "gradient")
  if value not in RENDER_DESCRIPTIONS:
    raise InputError(
      f"generate.render_background must be one of {tuple(RENDER_DESCRIPTIONS)}, got {value!r}"
    )
  return value


def describe(settings) -> str:
  """One sentence on what makes the images under `settings` (the generate section)."""
  if settings.generator != "render":
    return SD_DESCRIPTION
  return RENDER_DESCRIPTIONS[render_background(settings)]


# ---------------------------------------------------------------------------------------------
# inputs


@dataclasses.dataclass(frozen=True)
class Guides:
  """What generation starts from: N prompts, and optionally N guide images (the real-guidance
  path) with N user occlusion masks (Eq. 3; True = a non-person object covers the pixel) and N
  person masks (True = the guide's person, as the released code's Mask R-CNN person masks).

  Attributes:
    prompts: N strings.
    images: `[N, G, G, 3]` uint8 or None (text guidance).
    occlusion_masks: `[N, G, G]` bool or None.
    person_masks: `[N, G, G]` bool or None. With them, the region generation redraws (the
      human region) is the person mask union the example's silhouette (released
      `generate_dataset.py`); without them, the estimate's and the example's silhouettes.
    keypoints: `[N, 25, 3]` float32 BODY_25 (x, y, confidence) in image pixels, or None: what
      `fit_keypoints` fits the estimate to.
  """

  prompts: tuple[str, ...]
  images: np.ndarray | None = None
  occlusion_masks: np.ndarray | None = None
  person_masks: np.ndarray | None = None
  keypoints: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.prompts)


def check_guides(guides: Guides, image_size: int) -> Guides:
  """Validates `guides` for images of side `image_size`; raises `InputError` naming the problem."""
  prompts = tuple(guides.prompts)
  if not prompts:
    raise InputError("no prompts: generation needs at least one prompt (config.generate.prompts)")
  if not all(isinstance(p, str) for p in prompts):
    raise InputError("prompts must be strings")
  n, g = len(prompts), image_size
  images = guides.images
  if images is not None:
    images = np.asarray(images)
    if images.dtype != np.uint8:
      raise InputError(f"guide images must be uint8 RGB, got dtype {images.dtype}")
    if images.shape != (n, g, g, 3):
      raise InputError(
        f"guide images must be [{n}, {g}, {g}, 3] (one per prompt, generate.image_size {g}), "
        f"got shape {images.shape}"
      )
  masks = {}
  for name, meaning in (("occlusion", "occluded"), ("person", "the person")):
    m = getattr(guides, f"{name}_masks")
    if m is not None:
      m = np.asarray(m)
      if images is None:
        raise InputError(f"{name} masks need guide images (text guidance has none)")
      if m.shape != (n, g, g):
        raise InputError(f"{name} masks must be [{n}, {g}, {g}] (bool), got shape {m.shape}")
      if m.dtype != np.bool_:
        raise InputError(f"{name} masks must be bool (True = {meaning}), got dtype {m.dtype}")
    masks[name] = m
  keypoints = guides.keypoints
  if keypoints is not None:
    keypoints = np.asarray(keypoints, np.float32)
    if images is None:
      raise InputError("guide keypoints need guide images (text guidance has none)")
    if keypoints.shape != (n, 25, 3):
      raise InputError(
        f"guide keypoints must be [{n}, 25, 3] (BODY_25 x, y, confidence), got {keypoints.shape}"
      )
    seen = keypoints[..., 2] > 0
    if not np.all(np.isfinite(keypoints[..., :2][seen])) or not np.all(keypoints[..., 2] >= 0):
      raise InputError("guide keypoints must be finite where their confidence is > 0, and >= 0")
  return Guides(prompts, images, masks["occlusion"], masks["person"], keypoints)


def load_guides(path, image_size: int, prompts=None) -> Guides:
  """A guides `.npz`: `images` [N, G, G, 3] uint8, optional `occlusion_masks` and `person_masks`
  [N, G, G] bool, `keypoints_openpose25` [N, 25, 3] (image px) and `prompts` [N] str (else
  `prompts`, one for all or N, from the config)."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise InputError(f"guide file {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
  except Exception as e:
    raise InputError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
  if "images" not in data:
    raise InputError(f"{path}: no 'images' array (has {sorted(data)})")
  n = len(data["images"])
  if "prompts" in data:
    names = tuple(str(p) for p in data["prompts"])
  else:
    names = tuple(prompts or ())
    names = names * n if len(names) == 1 else names
    if len(names) != n:
      raise InputError(f"{path}: {n} guide images but {len(names)} prompts")
  guides = Guides(
    names, data["images"], data.get("occlusion_masks"), data.get("person_masks"),
    data.get("keypoints_openpose25"),
  )  # fmt: skip
  return check_guides(guides, image_size)


# ---------------------------------------------------------------------------------------------
# components


@functools.partial(jax.jit, static_argnums=0)
def _hmr_apply(model, variables, x):
  return model.apply(variables, x, train=False)


@dataclasses.dataclass(frozen=True, eq=False)
class Estimator:
  """An HMR (`jhmr.models.hmr.HMR`) on `input_size`² crops; normalisation 'jhmr'
  (`jhmr.train.tasks.normalise_images`, jhmr's trained regressors) or 'imagenet' (SPIN)."""

  model: Any
  variables: Any
  input_size: int
  normalisation: str = "jhmr"

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 `[B, G, G, 3]` -> {'rotmat' [B, 24, 3, 3], 'betas' [B, NB], 'cam' [B, 3]} on the
    whole image resized to the input size."""
    images = np.asarray(images)
    g = images.shape[1]
    if g != self.input_size:
      c = (g / 2.0, g / 2.0)
      images = np.stack([crops.crop_image(im, c, g, self.input_size) for im in images])
    if self.normalisation == "imagenet":
      x = jnp.asarray(crops.normalise(images))
    else:
      x = normalise_images(images)
    out = _hmr_apply(self.model, self.variables, x)
    return {k: np.asarray(out[k], np.float32) for k in ("rotmat", "betas", "cam")}


@dataclasses.dataclass(frozen=True, eq=False)
class Components:
  """The models generation uses. `text_sd` / `depth_sd`: `(StableDiffusion, params)` of the
  SD 1.x and SD 2 depth checkpoints (generator 'sd'), None for 'render'. `estimate` may be any
  callable with `Estimator`'s contract."""

  estimate: Any
  vposer: vposer_lib.VPoser
  vposer_variables: Any
  body_model: Any
  text_sd: tuple | None = None
  depth_sd: tuple | None = None


# ---------------------------------------------------------------------------------------------
# the chain


def _keys(seed: int, ids, name: str):
  root = jax.random.PRNGKey(seed)
  return jnp.stack([name_key(name_key(root, f"guide{int(g)}"), name) for g in ids])


def image_focal(settings, image_size: int) -> float:
  f = settings.get("focal_length")
  return float(f) if f else body_depth.fov_focal_length(image_size)


@functools.partial(jax.jit, static_argnames=("size",))
def _render_images(keys, body_model, params, focal, size: int, background=None):
  """Shaded bodies: uint8 [B, size, size, 3] (per-example colour and light from `keys` [B]) over
  `background` [B, size, size, 3] in [0, 1], or, when None, random gradients."""
  out = body_model(params.betas, params.body_pose, params.global_orient, params.cam_t)
  center = jnp.array([size / 2, size / 2], jnp.float32)
  frags = rasterizer.rasterize(out.vertices, body_model.faces, focal, center, (size, size))
  sub = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
  color = jax.vmap(lambda k: jax.random.uniform(k, (3,), minval=0.4, maxval=0.95))(sub[:, 0])
  light = jax.vmap(lambda k: jax.random.normal(k, (2,)) * 0.5)(sub[:, 1])
  light = jnp.concatenate([light, -jnp.ones((len(keys), 1))], -1)
  b = len(keys)
  body = shading.shade(frags, jnp.broadcast_to(color[:, None, None], (b, size, size, 3)), light)
  if background is None:
    c = jax.vmap(lambda k: jax.random.uniform(k, (6,)))(sub[:, 2])
    ramp = jnp.linspace(0.0, 1.0, size)[None, :, None, None]
    background = c[:, None, None, :3] + (c[:, None, None, 3:] - c[:, None, None, :3]) * ramp
  image = jnp.where(frags.mask[..., None], body, background)
  return jnp.round(image * 255).astype(jnp.uint8)


def _guide_background(images, human):
  """The guide images `[B, G, G, 3]` uint8 with the `human` region `[B, G, G]` (grown by one
  pixel) filled from its surroundings: the scene the render generator draws the new body into."""
  hole = inpaint.dilate(jnp.asarray(human), 1)
  return inpaint.fill_holes(jnp.asarray(images, jnp.float32) / 255.0, hole)


@functools.partial(jax.jit, static_argnames=("size", "latent", "masked"))
def _depth(body_model, params, focal, masks, size: int, latent: int, masked: bool):
  camera = body_depth.PinholeCamera(
    focal_length=jnp.float32(focal), camera_center=jnp.full((2,), size / 2.0, jnp.float32)
  )
  depth, silhouette = body_depth.render_body_depth(body_model, params, camera, size)
  d = body_depth.invert_depth(depth, "full_image")
  if masked:
    d = body_depth.mask_occlusions(d, masks)
  return body_depth.prepare_depth_for_sd(d, latent)[..., 0], silhouette


@functools.partial(jax.jit, static_argnames=("size",))
def _labels(body_model, params, focal, size: int):
  out = body_model.joints_only(
    params.betas, params.body_pose, params.global_orient, params.cam_t, joint_set="openpose25"
  )

  def project(points):
    z = points[..., 2:]
    xy = focal * points[..., :2] / jnp.where(z > 1e-6, z, 1.0) + size / 2.0
    inside = jnp.all((xy >= 0) & (xy < size), -1) & (points[..., 2] > 1e-6)
    return jnp.concatenate([jnp.where(inside[..., None], xy, 0.0), inside[..., None]], -1)

  return out.joints, project(out.joints), project(out.keypoints)


def _vposer_scores(comps: Components, pose63, keys):
  fn = lambda p, k: vposer_lib.hardness(comps.vposer_variables, p[None], k, model=comps.vposer)[0]
  return jax.vmap(fn)(pose63, keys)


def _augment(comps: Components, settings, body, k: int, ids):
  orient, body_pose, betas, cam_t = body
  seed = settings.seed
  pose63 = vposer_lib.vposer_input(body_pose)

  def one(p, key):
    out = vposer_lib.augment_latent(
      comps.vposer_variables, p[None], key, settings.get("augment_s"),
      settings.augment_variant, model=comps.vposer,
    )  # fmt: skip
    return out["pose_body"][0]

  new21 = jax.vmap(one)(pose63, _keys(seed, ids, f"augment{k}"))
  jitter = lambda o, b, key: tuple(
    x[0] for x in vposer_lib.jitter_orient_betas(key, o[None], b[None], settings.jitter_variant)
  )
  orient, betas = jax.vmap(jitter)(orient, betas, _keys(seed, ids, f"jitter{k}"))
  return orient, jnp.concatenate([new21, body_pose[:, 21:]], 1), betas, cam_t


def _text_to_image(comps: Components, settings, ids, prompts):
  from jhmr.pipelines import stable_diffusion as SD  # noqa: PLC0415

  sd, params = comps.text_sd
  h = settings.image_size // sd.vae_scale
  noise = jax.vmap(lambda k: jax.random.normal(k, (h, h, sd.latent_channels)))(
    _keys(settings.seed, ids, "text_to_image")
  )
  images = SD.text_to_image(
    sd, params, None, list(prompts), height=settings.image_size, width=settings.image_size,
    num_steps=settings.num_steps, guidance_scale=settings.guidance_scale, scheduler="pndm",
    latents=noise,
  )  # fmt: skip
  return np.asarray(jnp.round(images * 255)).astype(np.uint8)


def _depth_to_image(comps: Components, settings, ids, k, prompts, first_latents, human, cond):
  """SD 2 depth image-to-image from `first_latents` [B, g, g, 4], `human` [B, g, g] re-noised."""
  from jhmr.pipelines import stable_diffusion as SD  # noqa: PLC0415

  sd, params = comps.depth_sd
  cond_emb, uncond = SD.encode_prompts(sd, params, list(prompts), settings.negative_prompt)
  guided = settings.guidance_scale > 1.0
  context = jnp.concatenate([uncond, cond_emb]) if guided else cond_emb
  sched = S.make_scheduler("pndm", settings.num_steps, sd.noise)
  start = S.img2img_start(settings.num_steps, settings.strength)
  shape = first_latents.shape[1:]
  draw = lambda name: jax.vmap(lambda key: jax.random.normal(key, shape))(
    _keys(settings.seed, ids, f"{name}{k}")
  )
  m = human[..., None].astype(first_latents.dtype)
  latents = first_latents * (1.0 - m) + draw("human_noise") * m
  t = sched.timesteps[start]
  latents = S.add_noise(jnp.asarray(sd.noise.alphas_cumprod()), latents, draw("d2i_noise"), t)
  out = SD.denoise(
    sd, params, sched, latents, context, settings.guidance_scale, cond[..., None], start,
    guided=guided,
  )  # fmt: skip
  return np.asarray(jnp.round(SD.decode_latents(sd, params, out) * 255)).astype(np.uint8)


def _first_latents(comps: Components, settings, ids, images):
  from jhmr.pipelines import stable_diffusion as SD  # noqa: PLC0415

  sd, params = comps.depth_sd
  x = jnp.asarray(images, jnp.float32) / 255.0
  fn = lambda key, im: SD.encode_images(sd, params, key, im[None])[0]
  return jax.vmap(fn)(_keys(settings.seed, ids, "vae"), x)


def _pool(mask, factor: int):
  b, h, w = mask.shape
  return jnp.max(mask.reshape(b, h // factor, factor, w // factor, factor), axis=(2, 4))


def _fit10(betas):
  betas = np.asarray(betas, np.float32)
  out = np.zeros((len(betas), shards.NUM_BETAS), np.float32)
  n = min(shards.NUM_BETAS, betas.shape[1])
  out[:, :n] = betas[:, :n]
  return out


def generate_batch(settings, comps: Components, ids, guides: Guides, num_real: int | None = None):
  """Examples of the guides `ids` (a list of guide indices; the rows from position `num_real` on
  are padding, dropped) -> (shard arrays or None, skip counts of the real rows)."""
  g = settings.image_size
  latent = latent_size(settings, comps)
  ids = list(ids)
  real = np.arange(len(ids)) < (len(ids) if num_real is None else num_real)
  prompts = [guides.prompts[i] for i in ids]
  if guides.images is not None:
    images = guides.images[ids]
  elif comps.text_sd is not None:
    images = _text_to_image(comps, settings, ids, prompts)
  else:
    raise InputError(
      "generator 'render' has no text-to-image model: give guide images (config.generate.guides)"
    )
  masks = None if guides.occlusion_masks is None else jnp.asarray(guides.occlusion_masks[ids])
  person = None if guides.person_masks is None else jnp.asarray(guides.person_masks[ids])
  est = comps.estimate(images)
  cam = np.asarray(est["cam"], np.float32)
  finite = np.all(np.isfinite(est["rotmat"]).reshape(len(ids), -1), -1)
  finite &= np.all(np.isfinite(est["betas"]), -1) & np.all(np.isfinite(cam), -1)
  usable = finite & (np.nan_to_num(cam[:, 0], nan=-1.0) > settings.min_camera_scale)
  safe = lambda a, fill: np.where(usable.reshape((-1,) + (1,) * (a.ndim - 1)), a, fill)
  rotmat = safe(np.nan_to_num(est["rotmat"]), np.eye(3, dtype=np.float32))
  cam = safe(np.nan_to_num(cam), np.asarray([1.0, 0.0, 0.0], np.float32))
  betas = jnp.asarray(safe(np.nan_to_num(est["betas"]), 0.0))
  focal = image_focal(settings, g)
  aa = rotations.matrix_to_axis_angle(jnp.asarray(rotmat))
  cam_t = cameras.crop_to_full_translation(
    cam, jnp.full((2,), g / 2.0), g, jnp.full((2,), g), focal
  )
  if settings.get("fit_keypoints", False):
    if guides.keypoints is None:
      raise InputError(
        "generate.fit_keypoints needs the guides' 2D keypoints ('keypoints_openpose25' in the "
        "guides file)"
      )
    aa, betas, cam_t = _fit_to_keypoints(
      comps, settings, rotmat, betas, cam_t, guides.keypoints[ids], usable, focal
    )
  body = (aa[:, 0], aa[:, 1:], betas, cam_t)
  score = np.asarray(
    _vposer_scores(comps, vposer_lib.vposer_input(body[1]), _keys(settings.seed, ids, "hardness"))
  )
  keep = usable & real
  skipped = {"no_estimate": int((~usable & real).sum()), "easy": 0}
  if settings.hardness_filter == "hard":
    hard = np.asarray(vposer_lib.is_hard(score, settings.tau))
    skipped["easy"] = int((usable & ~hard & real).sum())
    keep &= hard
  elif settings.hardness_filter != "none":
    raise InputError(
      f"generate.hardness_filter must be 'none' or 'hard', got {settings.hardness_filter!r}"
    )
  background_kind = render_background(settings)
  if not keep.any():
    return None, skipped
  first_latents = guide_region = None
  rows = []
  intrinsics = np.asarray([[focal, 0, g / 2], [0, focal, g / 2], [0, 0, 1]], np.float32)
  for k in range(settings.num_augmentations):
    bk = body if k == 0 else _augment(comps, settings, body, k, ids)
    params = body_depth.BodyParams(*bk)
    cond, silhouette = _depth(comps.body_model, params, focal, masks, g, latent, masks is not None)
    if guide_region is None:  # the guide's person: its mask, else the estimate's silhouette
      guide_region = silhouette if person is None else person
    if settings.generator == "render":
      background = None
      if background_kind == "guide":
        background = _guide_background(images, guide_region | silhouette)
      render_keys = _keys(settings.seed, ids, f"render{k}")
      image = np.asarray(
        _render_images(render_keys, comps.body_model, params, focal, g, background)
      )
    else:
      if first_latents is None:
        first_latents = _first_latents(comps, settings, ids, images)
      human = _pool(guide_region | silhouette, g // first_latents.shape[1])
      image = _depth_to_image(comps, settings, ids, k, prompts, first_latents, human, cond)
    joints, kp24, kp25 = (
      np.asarray(x, np.float32) for x in _labels(comps.body_model, params, focal, g)
    )
    rows.append(
      dict(
        image=image, intrinsics=np.broadcast_to(intrinsics, (len(ids), 3, 3)),
        global_orient=np.asarray(bk[0]), body_pose=np.asarray(bk[1]), betas=_fit10(bk[2]),
        cam_t=np.asarray(bk[3]), joints_3d=joints, keypoints_smpl24=kp24,
        keypoints_openpose25=kp25, depth=np.asarray(cond, np.float16), hardness=score,
        augmentation_index=np.full(len(ids), k, np.int32),
        guide_index=np.asarray(ids, np.int32), prompt=np.asarray(prompts),
      )
    )  # fmt: skip
  out = {name: np.concatenate([r[name][keep] for r in rows]) for name in rows[0]}
  # guide-major order: guide, then augmentation index
  order = np.lexsort((out["augmentation_index"], out["guide_index"]))
  out = {name: v[order] for name, v in out.items()}
  out["box"] = _boxes(settings, out["keypoints_smpl24"], g)
  bad = ~np.all(np.isfinite(out["box"]), -1)
  if bad.any():  # no visible keypoint to box: nothing to train on
    skipped["no_visible_keypoints"] = int(bad.sum())
    out = {name: v[~bad] for name, v in out.items()}
  return out, skipped


def _fit_to_keypoints(comps: Components, settings, rotmat, betas, cam_t, keypoints, usable, focal):
  """The estimates fitted to the guides' 2D keypoints (`jhmr.guidance.smplify.fit`, task
  'keypoints', started from the estimate, `settings.fit_pose_weight` pulling towards it; with
  `settings.fit_vposer_weight` > 0 the pipeline's VPoser is also a pose prior,
  `vposer.VPoserPrior`) -> (axis-angle [B, 24, 3], betas, cam_t). Rows that are not `usable`
  keep the estimate."""
  from jhmr.guidance import smplify  # noqa: PLC0415
  from jhmr.guidance.observation import Observation  # noqa: PLC0415

  g = settings.image_size
  confidence = keypoints[..., 2] * usable[:, None]
  if not np.any(confidence > 0):
    return rotations.matrix_to_axis_angle(jnp.asarray(rotmat)), betas, cam_t
  obs = Observation.create(
    rotmat, np.asarray(betas), np.asarray(cam_t), np.nan_to_num(keypoints[..., :2]),
    confidence, image_size=(g, g), focal_length=focal, body_model=comps.body_model,
  )  # fmt: skip
  config = smplify.SmplifyConfig(pose_weight=float(settings.get("fit_pose_weight", 1500.0)))
  vposer_weight = float(settings.get("fit_vposer_weight", 0.0))
  prior = None
  if vposer_weight > 0:
    prior = vposer_lib.VPoserPrior(comps.vposer_variables, vposer_weight, comps.vposer)
  fitted = smplify.fit(obs, config=config, pose_prior=prior)
  keep = jnp.asarray(usable)
  pick = lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  pose = pick(fitted.pose, jnp.asarray(rotmat))
  return (
    rotations.matrix_to_axis_angle(pose),
    pick(fitted.betas, jnp.asarray(betas)),
    pick(fitted.cam_t, jnp.asarray(cam_t)),
  )


def latent_size(settings, comps: Components) -> int:
  """Side of the depth conditioning: the SD 2 depth latents (image / VAE factor; 8 for 'render')."""
  factor = comps.depth_sd[0].vae_scale if comps.depth_sd is not None else 8
  return settings.image_size // factor


def _boxes(settings, kp24, g: int) -> np.ndarray:
  if settings.crop_box == "image":
    return np.tile(np.asarray([[g / 2.0, g / 2.0, float(g)]], np.float32), (len(kp24), 1))
  if settings.crop_box != "keypoints":
    raise InputError(f"generate.crop_box must be 'image' or 'keypoints', got {settings.crop_box!r}")
  out = np.full((len(kp24), 3), np.nan, np.float32)
  for i, kp in enumerate(kp24):
    if (kp[:, 2] > 0).any():
      center, side = crops.bbox_from_keypoints(kp[:, :2], kp[:, 2], expand=1.2)
      out[i] = (*center, side)
  return out


# ---------------------------------------------------------------------------------------------
# shards


def settings_id(settings, extra: dict | None = None) -> str:
  """A short hash of the settings that decide the examples (resumed shards must share it)."""
  blob = json.dumps({"settings": settings.to_dict(), **(extra or {})}, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_generation(
  settings,
  comps: Components,
  guides: Guides,
  out_dir,
  *,
  process_index: int,
  process_count: int,
  identity: dict | None = None,
) -> dict:
  """Generates this process's shards into `out_dir` (module docstring); returns the counts."""
  if settings.generator not in GENERATORS:
    raise InputError(f"generate.generator must be one of {GENERATORS}, got {settings.generator!r}")
  guides = check_guides(guides, settings.image_size)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  num_shards = math.ceil(len(guides) / settings.shard_size)
  stale = [p.name for p in out_dir.glob("shard-*-of-*.npz") if not p.name.endswith(
    f"-of-{num_shards:05d}.npz")]  # fmt: skip
  if stale:
    raise InputError(
      f"{out_dir} holds shards of another run ({stale[:3]}...); use a fresh output folder"
    )
  sid = settings_id(settings, identity)
  description = describe(settings)
  counts = dict(generated=0, reused=0, regenerated=0, written=0, skipped={})
  logging.info("diffusion_hpc generate: %s", description)
  for index in shards.shard_indices(num_shards, process_index, process_count):
    path = out_dir / shards.shard_name(index, num_shards)
    if path.exists():
      try:
        _, meta = shards.read_shard(path)
      except shards.ShardError as e:
        aside = path.with_name(path.name + ".corrupt")
        path.replace(aside)
        logging.warning("shard %d is corrupted (%s): moved to %s, regenerating", index, e, aside)
        counts["regenerated"] += 1
      else:
        if meta.get("settings_id") != sid:
          raise InputError(
            f"{path} was generated with other settings ({meta.get('settings_id')} != {sid}); "
            "use a fresh output folder or the original settings"
          )
        logging.info("shard %d of %d present (%d examples): kept", index, num_shards, meta["count"])
        counts["reused"] += 1
        continue
    begin = index * settings.shard_size
    ids = list(range(begin, min(begin + settings.shard_size, len(guides))))
    parts, skipped = [], {}
    for start in range(0, len(ids), settings.batch_size):
      chunk = ids[start : start + settings.batch_size]
      padded = chunk + [chunk[-1]] * (settings.batch_size - len(chunk))
      out, skip = generate_batch(settings, comps, padded, guides, num_real=len(chunk))
      for name, v in skip.items():
        skipped[name] = skipped.get(name, 0) + v
      if out is not None:
        parts.append(out)
    g = settings.image_size
    arrays = (
      {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
      if parts
      else shards.empty_arrays(g, latent_size(settings, comps))
    )
    meta = dict(
      index=index, num_shards=num_shards, generator=settings.generator,
      generator_description=description, settings_id=sid, guides=[ids[0], ids[-1] + 1],
      skipped=skipped,
    )  # fmt: skip
    shards.write_shard(path, arrays, meta)
    n = len(arrays["image"])
    logging.info(
      "shard %d of %d written: %d examples from %d guides, skipped %s", index, num_shards, n,
      len(ids), skipped,
    )  # fmt: skip
    counts["generated"] += n
    counts["written"] += 1
    for name, v in skipped.items():
      counts["skipped"][name] = counts["skipped"].get(name, 0) + v
  return counts
