"""The Diffusion-HPC program: generate image-mesh pairs, fine-tune an HMR on them, evaluate.

Stages (`config.stage`, dispatched by `jhmr.launch` through `STAGES`):
  generate  the shards of generated examples in workdir/generated
            (`jhmr.pipelines.diffusion_hpc_generate`; resumable, sharded by process);
  finetune  prepares the `diffusion_hpc_synthetic` TFDS dataset from the shards (workdir/tfds)
            and fine-tunes the HMR on real guides + generated pairs
            (`jhmr.train.hpc_finetune_task.make_hpc_finetune_task`, SPIN's recipe);
  evaluate  embedded job: MPJPE / PA-MPJPE (`jhmr.eval.metrics`) of the HMR before and after
            fine-tuning (and after fine-tuning on the guides alone,
            `config.evaluate.guides_only_baseline`); the user's data (e.g. the `paper` variant):
            the paper's SMART PCK@22.4 px per action and Ski-Pose 16-joint MPJPE / PA-MPJPE of
            the starting and the fine-tuned HMR on the test splits that `config.evaluate.smart`
            / `.ski_pose` name (`jhmr.pipelines.diffusion_hpc_eval`, with the released
            checkpoints' numbers as labelled reference rows); workdir/results.md, results.json,
            generated_grid.png;
  all       the three in turn (the default).

Generators (`config.generate.generator`):
  'render'  the embedded default, runs with nothing downloaded. It is a pose domain-shift job:
            an HMR trained in-process on people rendered in EASY poses (everyday CMU motion
            capture: walking, running, sports, household; `config.data.easy_subjects`) meets
            a HARD domain (dance and martial arts: `config.data.hard_subjects`), rendered the same
            way (`jhmr.data.synthesis`). A few hard examples are the "real guides" (their images
            and 2D keypoints only); the hard test people come from other clips. Generation
            estimates the guides' bodies with the easy HMR, scores hardness with a VPoser
            trained briefly in-process on the easy training poses (NOT V02_05: hardness is
            relative to that prior), augments the poses with VPoser, renders the depth
            conditioning, and -- in place of Stable Diffusion -- renders the augmented body with
            jhmr's rasteriser (shaded, random colours and gradient background). The HMR is then
            fine-tuned with the real guides (2D) and the generated pairs (SMPL labels), and, as
            the baseline that credits the pairs, on the guides alone; all are evaluated on
            held-out hard and easy people.
  'sd'      the paper's pipeline with the user's files (`config.paths`): SD 1.x and SD 2 depth
            diffusers folders, SPIN's `model_checkpoint.pt` (+ `smpl_mean_params.npz`) and
            optionally VPoser V02_05; guide images from `config.generate.guides` (a .npz, see
            `diffusion_hpc_generate.load_guides`) or text prompts. A missing file stops the job
            with an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import augment, synthesis
from jhmr.data.diffusion_hpc_synthetic import shards
from jhmr.data.example import BatchSource, PersonExample
from jhmr.errors import InputError
from jhmr.eval import metrics
from jhmr.io.files import atomic_path
from jhmr.keys import KeySeq
from jhmr.models.hmr import HMR
from jhmr.models.vposer import VPoser
from jhmr.pipelines import diffusion_hpc_generate as gen
from jhmr.pipelines.stages import Stage
from jhmr.render import body_depth
from jhmr.train import trainer
from jhmr.train.tasks import make_hmr_task, predict

GENERATED = "generated"
GUIDES_FILE = "guides.npz"
SD_FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer")


# ---------------------------------------------------------------------------------------------
# data of the embedded default (domain shift)


@dataclasses.dataclass
class _Context:
  """What the stages of one run share (built on first use)."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  body_model: object = None
  sets: dict = dataclasses.field(default_factory=dict)  # name -> PersonExample batch
  motions: dict = dataclasses.field(default_factory=dict)  # CMU domain -> its Motions (sorted)


def _context(config, workdir) -> _Context:
  return _Context(config, pathlib.Path(workdir), load_body_model(config.body_model))


def _spec(config, domain: str) -> synthesis.SceneSpec:
  """The scene of domain 'easy' / 'hard': its background is `config.data.<domain>_background`."""
  d = config.data
  return synthesis.SceneSpec(
    crop_size=d.image_size, focal_length=d.focal_length,
    background=d.get(f"{domain}_background", "gradient"),
  )  # fmt: skip


# The sets of the embedded job: (pose domain, which clips of a CMU domain: "fit" or "held").
DOMAIN_SETS = {
  "easy_train": ("easy", "fit"),
  "easy_test": ("easy", "held"),
  "guides": ("hard", "fit"),
  "hard_test": ("hard", "held"),
}
POSE_DOMAINS = ("cmu", "demo_mix", "uniform")


def domain_poses(ctx: _Context, domain: str) -> tuple[str, str]:
  """(pose kind, description) of domain 'easy' / 'hard': `config.data.<domain>_poses` is 'cmu'
  (the CMU subject folders `config.data.<domain>_subjects`; when `cmu_root` is absent the
  procedural stand-in, demo_mix for easy and uniform for hard, with a warning), or 'demo_mix' /
  'uniform' (`jhmr.data.synthesis`)."""
  d = ctx.config.data
  kind = d[f"{domain}_poses"]
  if kind not in POSE_DOMAINS:
    raise InputError(f"data.{domain}_poses must be one of {POSE_DOMAINS}, got {kind!r}")
  if kind == "cmu":
    subjects = ", ".join(d[f"{domain}_subjects"])
    if pathlib.Path(d.cmu_root).is_dir():
      return "cmu", f"CMU motion capture, subjects {subjects}"
    kind = "demo_mix" if domain == "easy" else "uniform"
    logging.warning("data.cmu_root %s is absent: the %s domain uses %s poses", d.cmu_root,
                    domain, kind)  # fmt: skip
  text = {"demo_mix": "demo_mix poses (recognisable poses + joint noise)",
          "uniform": "uniform joint angles inside anatomical limits"}[kind]  # fmt: skip
  return kind, text


def _cmu_source(ctx: _Context, domain: str, part: str) -> synthesis.PoseSource:
  """The `part` clips of a CMU domain: its clips in sorted order, odd positions 'held' (test /
  held-out), even positions 'fit' (training / guides); no clip is on both sides."""
  from jhmr.data import mocap  # noqa: PLC0415 (reads BVH files: only for the cmu domains)

  d = ctx.config.data
  if domain not in ctx.motions:
    subjects = list(d[f"{domain}_subjects"])
    ctx.motions[domain] = list(
      mocap.load_cmu(d.cmu_root, subjects, ctx.body_model, fps=d.cmu_fps).values()
    )
  clips = ctx.motions[domain]
  chosen = clips[1::2] if part == "held" else clips[0::2]
  if not chosen:
    raise InputError(f"data.{domain}_subjects have {len(clips)} clip(s): need 2 to hold one out")
  return synthesis.PoseSource.from_motions(chosen)


def domain_set(ctx: _Context, name: str) -> PersonExample:
  """The domain-shift sets (numpy `PersonExample` batches, deterministic from config.seed):
  easy_train / easy_test from the easy domain, guides / hard_test from the hard one
  (`domain_poses`; for CMU domains disjoint clips, `_cmu_source`)."""
  if name not in ctx.sets:
    d = ctx.config.data
    domain, part = DOMAIN_SETS[name]
    n = {"easy_train": d.num_train, "guides": d.num_guides}.get(name, d.num_test)
    kind, _ = domain_poses(ctx, domain)
    source = _cmu_source(ctx, domain, part) if kind == "cmu" else synthesis.PoseSource(kind)
    keys = KeySeq(ctx.config.seed).child("data").child(name)
    spec = _spec(ctx.config, domain)
    batch = synthesis.single_view_set(keys, n, ctx.body_model, source, spec)
    # a per-example `synthetic` flag (0: these stand for real photographs), so rows index
    ctx.sets[name] = batch.replace(synthetic=np.zeros(n, np.float32))
  return ctx.sets[name]


def real_guides(batch: PersonExample) -> PersonExample:
  """The guides as "real" data: image and 2D keypoints only (SMPL and 3D labels zeroed,
  has_smpl = has_3d = 0)."""
  z = lambda a: np.zeros_like(np.asarray(a))
  return batch.replace(
    global_orient=z(batch.global_orient), body_pose=z(batch.body_pose), betas=z(batch.betas),
    cam_t=z(batch.cam_t), joints_3d=z(batch.joints_3d), has_smpl=z(batch.has_smpl),
    has_3d=z(batch.has_3d),
  )  # fmt: skip


def _embedded(config) -> bool:
  """The embedded domain-shift job: generator 'render' on the program's own hard guides."""
  return config.generate.generator == "render" and not config.generate.guides


def user_real_guides(path, crop_size: int, num_betas: int) -> PersonExample:
  """The user's guides as real training data: a guides .npz (`images` [N, G, G, 3] uint8) with
  `keypoints_openpose25` [N, 25, 3] ((x, y, confidence) in image px); the whole image is the
  crop (as the real-guidance path feeds it to HMR), SMPL labels absent (has_smpl = 0)."""
  from jhmr.data import crops  # noqa: PLC0415

  with np.load(pathlib.Path(path).expanduser(), allow_pickle=False) as z:
    if "keypoints_openpose25" not in z.files:
      raise InputError(
        f"{path}: fine-tuning needs the guides' 2D keypoints 'keypoints_openpose25' [N, 25, 3] "
        f"(image px); the file has {sorted(z.files)}"
      )
    images, kp = np.asarray(z["images"]), np.asarray(z["keypoints_openpose25"], np.float32)
  n, g = len(images), images.shape[1]
  if kp.shape != (n, 25, 3):
    raise InputError(f"{path}: keypoints_openpose25 must be [{n}, 25, 3], got {kp.shape}")
  c, s = (g / 2.0, g / 2.0), float(g)
  crop = np.stack([crops.crop_image(im, c, s, crop_size) for im in images])
  xy = crops.crop_points(kp[..., :2], c, s, crop_size)
  kp = np.concatenate([np.where(kp[..., 2:] > 0, xy, 0.0), kp[..., 2:]], -1).astype(np.float32)
  f = gen.image_focal(ml_collections.ConfigDict({"focal_length": 0.0}), g)
  zeros = lambda *shape: np.zeros((n, *shape), np.float32)
  affine = crops.crop_transform(c, s, crop_size).astype(np.float32)
  intrinsics = np.asarray([[f, 0, g / 2], [0, f, g / 2], [0, 0, 1]], np.float32)
  return PersonExample(
    image=crop, crop_from_image=np.tile(affine, (n, 1, 1)),
    intrinsics=np.tile(intrinsics, (n, 1, 1)), image_size=np.full((n, 2), g, np.float32),
    keypoints_2d={"openpose25": kp}, global_orient=zeros(3), body_pose=zeros(23, 3),
    betas=zeros(num_betas), cam_t=zeros(3), joints_3d=zeros(24, 3), joint_visibility=zeros(24),
    occlusion=np.zeros((n, crop_size, crop_size), bool), has_smpl=zeros(), has_3d=zeros(),
    group=np.arange(n, dtype=np.int32), frame=np.zeros(n, np.int32), synthetic=zeros(),
  )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# models


def _trainer_config(config, section) -> ml_collections.ConfigDict:
  tc = ml_collections.ConfigDict(section.trainer.to_dict())
  tc.seed = config.seed
  return tc


def _hmr(config, body_model) -> HMR:
  r = config.regressor
  return HMR(
    depth=r.depth, width=r.width, num_betas=body_model.num_betas, hidden=r.hidden,
    dropout=r.dropout,
  )  # fmt: skip


def baseline_hmr(ctx: _Context):
  """The HMR trained on the easy domain (workdir/hmr_easy; resumes / restores there)."""
  config = ctx.config
  hmr = _hmr(config, ctx.body_model)
  transforms = (augment.default_train_transforms(ctx.body_model, **config.augment),)
  source = BatchSource(domain_set(ctx, "easy_train"))
  task = make_hmr_task(hmr, ctx.body_model, source, transforms=transforms)
  state = trainer.train(_trainer_config(config, config.regressor), ctx.workdir / "hmr_easy", task)
  return hmr, {"params": state.ema_params, **state.model_state}


def vposer_model(ctx: _Context):
  """(VPoser, variables): V02_05 from `config.paths.vposer` when given, else trained briefly
  in-process (workdir/vposer) on `config.vposer.source` poses ('easy_poses': the easy training
  poses; 'cmu': CMU motion capture of the training subjects)."""
  config = ctx.config
  path = config.paths.get("vposer", "")
  if path:
    from jhmr.convert.vposer import load_vposer  # noqa: PLC0415

    if not pathlib.Path(path).expanduser().is_file():
      raise InputError(f"VPoser checkpoint {path} does not exist (config.paths.vposer)")
    model = VPoser()
    return model, load_vposer(pathlib.Path(path).expanduser(), model)
  from jhmr.train.vposer_task import cmu_vposer_poses, make_vposer_task  # noqa: PLC0415

  v = config.vposer
  if v.source == "easy_poses":
    poses = np.asarray(domain_set(ctx, "easy_train").body_pose)[:, :21].reshape(-1, 63)
  elif v.source == "cmu":
    poses = cmu_vposer_poses(v.cmu_root, "train", body_model=ctx.body_model)
  else:
    raise InputError(f"vposer.source must be 'easy_poses' or 'cmu', got {v.source!r}")
  model = VPoser(num_neurons=v.hidden)
  task = make_vposer_task(model, poses)
  state = trainer.train(_trainer_config(config, v), ctx.workdir / "vposer", task)
  return model, {"params": state.ema_params, **state.model_state}


def _check_sd_folder(path: str, what: str) -> pathlib.Path:
  folder = pathlib.Path(path).expanduser() if path else None
  if folder is None or not folder.is_dir():
    raise InputError(f"{what}: diffusers folder {path!r} does not exist")
  missing = [p for p in SD_FOLDER_PARTS if not (folder / p).is_dir()]
  if missing:
    raise InputError(f"{what}: {folder} lacks {', '.join(missing)} (a diffusers SD folder)")
  return folder


def sd_components(config, *, estimator_only: bool = False):
  """(text_sd, depth_sd, estimator) of generator 'sd' from `config.paths` (only the estimator
  with `estimator_only`); errors name what is missing."""
  from jhmr.convert.spin import INPUT_SIZE, load_spin_checkpoint  # noqa: PLC0415
  from jhmr.pipelines.stable_diffusion import load_stable_diffusion  # noqa: PLC0415

  p = config.paths
  spin = pathlib.Path(p.spin_checkpoint).expanduser() if p.spin_checkpoint else None
  if spin is None or not spin.is_file():
    raise InputError(
      f"SPIN checkpoint {p.spin_checkpoint!r} does not exist (paths.spin_checkpoint)"
    )
  means = p.get("spin_mean_params", "") or None
  if means and not pathlib.Path(means).expanduser().is_file():
    raise InputError(f"SPIN mean parameters {means!r} do not exist (paths.spin_mean_params)")
  if estimator_only:
    return gen.Estimator(*load_spin_checkpoint(spin, means), INPUT_SIZE, "imagenet")
  depth = _check_sd_folder(p.sd_depth, "paths.sd_depth (SD 2 depth)")
  text = _check_sd_folder(p.sd_text, "paths.sd_text (SD 1.x)") if p.sd_text else None
  dtype = jnp.bfloat16 if config.generate.get("bfloat16", False) else jnp.float32
  text_sd = load_stable_diffusion(text, dtype=dtype) if text else None
  depth_sd = load_stable_diffusion(depth, dtype=dtype)
  model, variables = load_spin_checkpoint(spin, means)
  return text_sd, depth_sd, gen.Estimator(model, variables, INPUT_SIZE, "imagenet")


# ---------------------------------------------------------------------------------------------
# stages


def write_guides(ctx: _Context) -> pathlib.Path:
  """The embedded default's guides file (the hard "real" images), in the user's format: their
  detector-like 2D keypoints, and person masks (the exact silhouettes of the guides' bodies,
  standing in for the released pipeline's Mask R-CNN person masks)."""
  path = ctx.workdir / GUIDES_FILE
  if not path.exists():
    batch = domain_set(ctx, "guides")
    prompts = np.asarray([ctx.config.generate.prompts[0]] * len(batch.image))
    size = batch.image.shape[1]
    camera = body_depth.PinholeCamera(
      focal_length=jnp.float32(ctx.config.data.focal_length),
      camera_center=jnp.full((2,), size / 2.0, jnp.float32),
    )
    _, person = body_depth.render_body_depth(ctx.body_model, batch, camera, size)
    with atomic_path(path, suffix=".npz") as tmp:
      np.savez(
        tmp, images=batch.image, prompts=prompts, person_masks=np.asarray(person),
        keypoints_openpose25=batch.keypoints_2d["openpose25"],
      )  # fmt: skip
  return path


def generate(config, workdir, *, process_index=None, process_count=None, components=None):
  """Stage `generate`: this process's shards in workdir/generated; returns the counts.

  `process_index` / `process_count` default to `jax.process_index()` / `process_count()`;
  `components` (a `diffusion_hpc_generate.Components`) replaces the models (tests)."""
  ctx = config if isinstance(config, _Context) else _context(config, workdir)
  config, g = ctx.config, ctx.config.generate
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  guides_path = g.guides
  if g.generator == "render" and not guides_path:
    guides_path = write_guides(ctx)
  if guides_path:
    guides = gen.load_guides(guides_path, g.image_size, g.prompts)
  else:
    guides = gen.check_guides(gen.Guides(tuple(g.prompts)), g.image_size)
  if components is None:
    vp, vp_vars = vposer_model(ctx)
    if g.generator == "sd":
      text_sd, depth_sd, estimator = sd_components(config)
      if guides.images is None and text_sd is None:
        raise InputError("text guidance needs paths.sd_text (SD 1.x) or guide images")
    elif g.generator == "render":
      hmr, variables = baseline_hmr(ctx)
      text_sd = depth_sd = None
      estimator = gen.Estimator(hmr, variables, config.data.image_size, "jhmr")
    else:
      raise InputError(f"generate.generator must be 'render' or 'sd', got {g.generator!r}")
    estimator = _adapted_estimator(ctx, estimator)
    components = gen.Components(estimator, vp, vp_vars, ctx.body_model, text_sd, depth_sd)
  identity = {"seed": config.seed, "data": config.data.to_dict()}
  if g.get("estimator", "start") == "guides_finetuned":  # that training decides the labels too
    identity["estimator_finetune"] = config.finetune.to_dict()
  counts = gen.run_generation(
    g, components, guides, ctx.workdir / GENERATED, process_index=pi, process_count=pc,
    identity=identity,
  )  # fmt: skip
  logging.info("diffusion_hpc generate (process %d of %d): %s", pi, pc, counts)
  with atomic_path(ctx.workdir / f"generate_counts_{pi:03d}.json") as tmp:
    pathlib.Path(tmp).write_text(json.dumps(counts, indent=1))
  return counts


ESTIMATORS = ("start", "guides_finetuned")


def _adapted_estimator(ctx: _Context, start: gen.Estimator) -> gen.Estimator:
  """The HMR that estimates the guides' bodies (`generate.estimator`): 'start', the one
  fine-tuning starts from (the easy HMR; SPIN for generator 'sd': the paper's); or
  'guides_finetuned', that HMR after the guides-only fine-tuning (workdir/finetune_guides_only,
  the job's baseline, trained here first when absent): adapted to the guides' domain by their
  own 2D keypoints, so the pairs use no information the baseline does not have."""
  choice = ctx.config.generate.get("estimator", "start")
  if choice not in ESTIMATORS:
    raise InputError(f"generate.estimator must be one of {ESTIMATORS}, got {choice!r}")
  if choice == "start":
    return start
  logging.info(
    "diffusion_hpc generate: the guides are estimated by the HMR fine-tuned on them alone "
    "(generate.estimator='guides_finetuned', workdir/%s)", FINETUNE_FOLDERS["guides_only"]
  )  # fmt: skip
  _, variables = finetune(ctx, ctx.workdir, synthetic_half="guides_only")
  return dataclasses.replace(start, variables=variables)


def synthetic_source(workdir, crop_size: int, num_betas=None, beam_runner=None):
  """The generated dataset: prepares `diffusion_hpc_synthetic` from workdir/generated into
  workdir/tfds (once) and returns (builder, a `PersonExample` source of its train split)."""
  import functools  # noqa: PLC0415

  import tensorflow_datasets as tfds  # noqa: PLC0415

  from jhmr.data.diffusion_hpc_synthetic import (  # noqa: PLC0415
    diffusion_hpc_synthetic_dataset_builder as hpc_builder,
  )
  from jhmr.data.sources import MappedSource  # noqa: PLC0415

  workdir = pathlib.Path(workdir)
  builder = hpc_builder.Builder(
    config="beam" if beam_runner is not None else "default",
    data_dir=str(workdir / "tfds"),
    file_format="array_record",
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(workdir / GENERATED), beam_runner=beam_runner
    )
  )
  rows = builder.as_data_source()["train"]
  fn = functools.partial(hpc_builder.to_example, crop_size=crop_size, num_betas=num_betas)
  return builder, MappedSource(rows, fn)


def _with_guide_image(row, guide_images, fn):
  return fn({**row, "image": guide_images[int(row["guide_index"])]})


def labelled_guides_source(ctx: _Context):
  """The control that separates the generated images from their labels: each guide's OWN image
  with the label generation gave it (augmentation 0: the HMR estimate, fitted to the guide's
  keypoints with `generate.fit_keypoints`), as SMPL-labelled examples."""
  import functools  # noqa: PLC0415

  from jhmr.data.diffusion_hpc_synthetic import (  # noqa: PLC0415
    diffusion_hpc_synthetic_dataset_builder as hpc_builder,
  )
  from jhmr.data.sources import MappedSource  # noqa: PLC0415

  size, num_betas = ctx.config.data.image_size, ctx.body_model.num_betas
  builder, _ = synthetic_source(ctx.workdir, size, num_betas)
  rows = builder.as_data_source()["train"]
  first = [i for i in range(len(rows)) if int(rows[i]["augmentation_index"]) == 0]
  guides = gen.load_guides(
    ctx.config.generate.guides or ctx.workdir / GUIDES_FILE, ctx.config.generate.image_size,
    ctx.config.generate.prompts,
  )  # fmt: skip
  guide_images = guides.images
  fn = functools.partial(hpc_builder.to_example, crop_size=size, num_betas=num_betas)
  return MappedSource(
    rows, functools.partial(_with_guide_image, guide_images=guide_images, fn=fn), first
  )


def _start_hmr(ctx: _Context):
  """(hmr, variables) that fine-tuning starts from: the easy-trained HMR (generator 'render') or
  SPIN's checkpoint (generator 'sd')."""
  if _embedded(ctx.config) or ctx.config.generate.generator == "render":
    return baseline_hmr(ctx)
  estimator = sd_components(ctx.config, estimator_only=True)
  return estimator.model, estimator.variables


def _real_source(ctx: _Context) -> BatchSource:
  """The real data of fine-tuning: the embedded job's hard guides (2D only), else the user's."""
  if _embedded(ctx.config):
    return BatchSource(real_guides(domain_set(ctx, "guides")))
  guides = ctx.config.generate.guides
  if not guides:
    raise InputError("fine-tuning needs real guides with 2D keypoints (config.generate.guides)")
  size, num_betas = ctx.config.data.image_size, ctx.body_model.num_betas
  return BatchSource(user_real_guides(guides, size, num_betas))


FINETUNE_FOLDERS = {
  "generated": "finetune", "guides_only": "finetune_guides_only",
  "labelled_guides": "finetune_labelled_guides",
}  # fmt: skip


def finetune(config, workdir, *, synthetic_half: str = "generated"):
  """Stage `finetune`: returns (hmr, fine-tuned variables), trained in workdir/finetune.

  The starting HMR is the easy-trained one (embedded job) or SPIN's checkpoint (generator 'sd');
  the real data are the guides. `synthetic_half` (`FINETUNE_FOLDERS`): 'generated' (default),
  the generated pairs as the SMPL-labelled half; 'guides_only', no such half: the baseline that
  credits the generated pairs, the same recipe on the real guides alone; 'labelled_guides', the
  guides' own images with the generated pairs' labels (`labelled_guides_source`): the control
  that credits the generated images."""
  from jhmr.train.hpc_finetune_task import make_hpc_finetune_task  # noqa: PLC0415

  ctx = config if isinstance(config, _Context) else _context(config, workdir)
  config = ctx.config
  if synthetic_half not in FINETUNE_FOLDERS:
    raise InputError(
      f"synthetic_half must be one of {tuple(FINETUNE_FOLDERS)}, got {synthetic_half!r}"
    )
  synthetic = None
  if synthetic_half == "labelled_guides":
    synthetic = labelled_guides_source(ctx)
  elif synthetic_half == "generated":
    shards.list_shards(ctx.workdir / GENERATED)  # complete set, else an error naming the gaps
    if jax.process_index() == 0:  # one process prepares the dataset, the others then read it
      synthetic_source(ctx.workdir, config.data.image_size, ctx.body_model.num_betas)
    _barrier("diffusion_hpc/dataset")
    size, num_betas = config.data.image_size, ctx.body_model.num_betas
    _, synthetic = synthetic_source(ctx.workdir, size, num_betas)
    if len(synthetic) == 0:
      raise InputError(
        "the generated dataset is empty (every guide was skipped): nothing to train on"
      )
  hmr, variables = _start_hmr(ctx)
  section = ml_collections.ConfigDict(config.finetune.to_dict())
  del section["trainer"]
  task = make_hpc_finetune_task(
    hmr, _real_source(ctx), synthetic, ctx.body_model, config=section,
    initial_variables=variables,
  )  # fmt: skip
  folder = ctx.workdir / FINETUNE_FOLDERS[synthetic_half]
  state = trainer.train(_trainer_config(config, config.finetune), folder, task)
  return hmr, {"params": state.ema_params, **state.model_state}


def joint_errors(hmr, variables, batch: PersonExample, body_model) -> dict[str, np.ndarray]:
  """Per-example MPJPE and PA-MPJPE (mm) of the HMR's 24 SMPL joints, pelvis-centred."""
  out = predict(hmr, variables, batch.image)
  rotmat = jnp.asarray(out["rotmat"])
  pred = body_model.joints_only(
    jnp.asarray(out["betas"]), rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat"
  ).joints
  gt = jnp.asarray(batch.joints_3d)
  return {
    "mpjpe": np.asarray(1000 * metrics.mpjpe(pred, gt, root=0)),
    "pa_mpjpe": np.asarray(1000 * metrics.pa_mpjpe(pred, gt)),
  }


def _two_standard_errors(values: np.ndarray) -> float:
  """Twice the standard error of the mean of `values` [N]."""
  return 2.0 * float(np.std(values, ddof=1)) / np.sqrt(np.size(values))


def plot_errors(per_person: dict, path: pathlib.Path) -> None:
  """Bar chart of MPJPE and PA-MPJPE (mm) per test set and model, with error bars of two
  standard errors over the people. `per_person`: {"set/model": {"mpjpe", "pa_mpjpe": [N]}}."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  sets = list(dict.fromkeys(key.split("/")[0] for key in per_person))
  models = list(dict.fromkeys(key.split("/")[1] for key in per_person))
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  width = 0.8 / len(models)
  for ax, metric in zip(axes, ("mpjpe", "pa_mpjpe"), strict=True):
    for m, model in enumerate(models):
      values = [np.asarray(per_person[f"{s}/{model}"][metric], np.float64) for s in sets]
      ax.bar(
        np.arange(len(sets)) + (m - (len(models) - 1) / 2) * width,
        [v.mean() for v in values],
        width,
        yerr=[_two_standard_errors(v) for v in values],
        capsize=3,
        label=MODEL_LABELS.get(model, model),
      )
    ax.set_xticks(np.arange(len(sets)), sets)
    ax.set_title(f"{'PA-MPJPE' if metric == 'pa_mpjpe' else 'MPJPE'} (mm, +- 2 s.e.)")
  axes[0].set_ylabel("error (mm)")
  axes[0].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  with atomic_path(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=100)
  plt.close(fig)


def _grid(images: np.ndarray, path: pathlib.Path, columns: int = 8) -> None:
  from PIL import Image  # noqa: PLC0415

  n, s = len(images), images.shape[1]
  rows = -(-n // columns)
  canvas = np.full((rows * s, columns * s, 3), 255, np.uint8)
  for i, im in enumerate(images):
    r, c = divmod(i, columns)
    canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] = im
  with atomic_path(path, suffix=".png") as tmp:
    Image.fromarray(canvas).save(tmp)


def evaluate(config, workdir):
  """Stage `evaluate`: results.md / results.json / errors.png / generated_grid.png in the
  workdir."""
  ctx = config if isinstance(config, _Context) else _context(config, workdir)
  config = ctx.config
  results = {}
  if not _embedded(config):  # the user's data: SMART / Ski-Pose when config.evaluate names them
    return _evaluate_benchmarks(ctx)
  hmr, before = baseline_hmr(ctx)
  models = {"before": before, "after": finetune(ctx, ctx.workdir)[1]}
  if config.evaluate.guides_only_baseline:
    models["guides_only"] = finetune(ctx, ctx.workdir, synthetic_half="guides_only")[1]
  if config.evaluate.get("labelled_guides_control", False):
    models["labelled_guides"] = finetune(ctx, ctx.workdir, synthetic_half="labelled_guides")[1]
  per_person = {}  # "set/model" -> {"mpjpe", "pa_mpjpe": [N] mm}
  for name in ("hard_test", "easy_test"):
    batch = domain_set(ctx, name)
    for label, variables in models.items():
      errors = joint_errors(hmr, variables, batch, ctx.body_model)
      per_person[f"{name}/{label}"] = errors
      results[f"{name}/{label}"] = {k: float(v.mean()) for k, v in errors.items()}
  hard_pa = {
    key.split("/")[1]: v["pa_mpjpe"]
    for key, v in per_person.items()
    if key.startswith("hard_test/")
  }
  plot_errors(per_person, ctx.workdir / "errors.png")
  stats = _generation_stats(ctx.workdir / GENERATED)
  _grid(stats.pop("grid"), ctx.workdir / "generated_grid.png")
  domains = {domain: domain_poses(ctx, domain)[1] for domain in ("easy", "hard")}
  summary = {
    "results": results, "generation": stats, "generator": config.generate.generator,
    "domains": domains,
  }  # fmt: skip
  with atomic_path(ctx.workdir / "results.json") as tmp:
    pathlib.Path(tmp).write_text(json.dumps(summary, indent=1))
  with atomic_path(ctx.workdir / "results.md") as tmp:
    pathlib.Path(tmp).write_text(_report(config, results, stats, domains, hard_pa))
  return summary


def _evaluate_benchmarks(ctx: _Context) -> dict:
  """`evaluate` of the user's data: fine-tunes, then the starting and the fine-tuned HMR on the
  SMART / Ski-Pose test splits that `config.evaluate.smart` / `.ski_pose` name
  (`jhmr.pipelines.diffusion_hpc_eval`; none named: fine-tuning and generation statistics only)."""
  from jhmr.pipelines import diffusion_hpc_eval as hpc_eval  # noqa: PLC0415

  config = ctx.config
  benchmarks = hpc_eval.load_benchmarks(config.evaluate, ctx.workdir)  # bad inputs stop us early
  hpc_eval.check_body_model(benchmarks, ctx.body_model)
  stats = _generation_stats(ctx.workdir / GENERATED)
  _grid(stats.pop("grid"), ctx.workdir / "generated_grid.png")
  hmr, after = finetune(ctx, ctx.workdir)
  results = {}
  if benchmarks:
    _, before = _start_hmr(ctx)
    results = hpc_eval.evaluate_models(
      {"before": (hmr, before), "after": (hmr, after)}, benchmarks, ctx.body_model,
      normalisation=config.finetune.image_normalisation,
      batch_size=config.evaluate.get("batch_size", 64),
    )  # fmt: skip
    note = "This run fine-tuned on the user's guides and evaluated before and after."
  else:
    note = (
      "This run fine-tuned on the user's guides; no benchmark was named "
      "(config.evaluate.smart / config.evaluate.ski_pose), so nothing was evaluated."
    )
  summary = {"results": results, "generation": stats, "generator": config.generate.generator,
             "reference": dict(hpc_eval.hpc_protocol.REFERENCE)}  # fmt: skip
  with atomic_path(ctx.workdir / "results.json") as tmp:
    pathlib.Path(tmp).write_text(json.dumps(summary, indent=1))
  tables = hpc_eval.report(results, config.body_model)
  with atomic_path(ctx.workdir / "results.md") as tmp:
    pathlib.Path(tmp).write_text(f"# Diffusion-HPC\n\n{note}\n\nGeneration: {stats}\n\n{tables}")
  return summary


def _generation_stats(directory) -> dict:
  hardness, aug, grid, skipped, count = [], [], [], {}, 0
  for path in shards.list_shards(directory):
    arrays, meta = shards.read_shard(path)
    count += meta["count"]
    hardness.append(arrays["hardness"])
    aug.append(arrays["augmentation_index"])
    if sum(len(x) for x in grid) < 32:
      grid.append(arrays["image"][: 32 - sum(len(x) for x in grid)])
    for k, v in meta["skipped"].items():
      skipped[k] = skipped.get(k, 0) + v
  hardness, aug = np.concatenate(hardness), np.concatenate(aug)
  estimates = hardness[aug == 0]
  return {
    "examples": count,
    "skipped": skipped,
    "estimate_hardness_mean": float(estimates.mean()) if len(estimates) else float("nan"),
    "estimate_hard_fraction": float((estimates > 30).mean()) if len(estimates) else float("nan"),
    "grid": np.concatenate(grid),
  }


MODEL_LABELS = {
  "before": "easy-trained",
  "after": "+ Diffusion-HPC fine-tuning (guides + generated pairs)",
  "guides_only": "+ fine-tuning on the real guides alone",
  "labelled_guides": "+ fine-tuning on the guides with the pairs' labels (no generated images)",
}


def paired_change(errors: np.ndarray, reference: np.ndarray) -> str:
  """'-1.8 +- 1.2 mm (better)': the mean of `errors - reference` (per person, [N] mm) with two
  standard errors of that mean; 'better' / 'worse' when the interval excludes 0, else 'no clear
  change'."""
  diff = np.asarray(errors, np.float64) - np.asarray(reference, np.float64)
  if diff.ndim != 1 or diff.size < 2:
    raise ValueError(
      f"paired_change needs two [N >= 2] arrays of per-person errors, got {diff.shape}"
    )
  mean, half = diff.mean(), _two_standard_errors(diff)
  verdict = "better" if mean + half < 0 else "worse" if mean - half > 0 else "no clear change"
  return f"{mean:+.1f} +- {half:.1f} mm ({verdict})"


def _report(config, results, stats, domains, hard_pa) -> str:
  g = config.generate
  lines = [
    "# Diffusion-HPC: HMR fine-tuning with generated image-mesh pairs",
    "",
    f"Easy domain (HMR training, easy_test): {domains['easy']}. Hard domain (the "
    f"{config.data.num_guides} guides and hard_test, disjoint clips): {domains['hard']}. "
    f"Scenes: easy {config.data.get('easy_background', 'gradient')}, hard "
    f"{config.data.get('hard_background', 'gradient')} (`jhmr.data.synthesis.backgrounds`).",
    "",
    f"Generator: **{g.generator}**. " + gen.describe(g) + ".",
    "",
    f"Generated examples: {stats['examples']} ({g.num_augmentations} per kept guide, "
    f"augmentation '{g.augment_variant}'; labels: the "
    f"{'guides-only fine-tuned ' if g.get('estimator', 'start') == 'guides_finetuned' else ''}"
    f"HMR's estimate of the guide"
    f"{', fitted to its 2D keypoints' if g.get('fit_keypoints', False) else ''}); "
    f"skipped guides: {stats['skipped'] or 'none'}; "
    f"estimate hardness mean {stats['estimate_hardness_mean']:.1f}, "
    f"fraction > 30: {stats['estimate_hard_fraction']:.2f}.",
    "",
    "| test set | HMR | MPJPE (mm) | PA-MPJPE (mm) |",
    "|---|---|---|---|",
  ]
  for key, v in results.items():
    name, label = key.split("/")
    lines.append(f"| {name} | {MODEL_LABELS[label]} | {v['mpjpe']:.1f} | {v['pa_mpjpe']:.1f} |")
  after, before = hard_pa["after"], hard_pa["before"]
  reading = (
    "Reading (computed, not curated; per-person paired differences on the hard set, mean +- 2 "
    f"standard errors): fine-tuning changed PA-MPJPE by {paired_change(after, before)} and "
    f"MPJPE by {results['hard_test/after']['mpjpe'] - results['hard_test/before']['mpjpe']:+.1f}"
    " mm"
  )
  if "guides_only" in hard_pa:
    reading += (
      "; the generated pairs, against fine-tuning on the guides alone, changed PA-MPJPE by "
      f"{paired_change(after, hard_pa['guides_only'])}"
    )
  if "labelled_guides" in hard_pa:
    reading += (
      "; against the guides' own images with the same labels, by "
      f"{paired_change(after, hard_pa['labelled_guides'])}"
    )
  lines += [
    "",
    f"{reading}. One seed, {config.data.num_test} test people: the interval covers the choice "
    "of test people only, not the variation between training seeds.",
    "",
  ]
  return "\n".join(lines)


def _barrier(name: str) -> None:
  """Waits for every process (multi-host runs); nothing on one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(name)


def run_all(config, workdir):
  ctx = _context(config, workdir)
  generate(ctx, workdir)
  _barrier("diffusion_hpc/generate")  # every shard is written before anyone reads them
  return evaluate(ctx, workdir)  # fine-tunes (or restores the fine-tuned model) first


STAGES = {
  "generate": Stage(generate),
  "finetune": Stage(finetune, needs=lambda config: (GENERATED,), made_by="generate"),
  "evaluate": Stage(evaluate, needs=lambda config: (GENERATED,), made_by="generate"),
  "all": Stage(run_all),
}
