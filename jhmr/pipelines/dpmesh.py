"""The DPMesh program: pose codebook, teacher, NKR student, evaluation against an HMR regressor.

Stages (`config.stage`, dispatched by `jhmr.launch` through `STAGES`; each resumes from its
workdir, so a finished training is restored, not repeated):
  codebook  the VQ-VAE pose codebook (`jhmr.train.codebook_task`) on CMU motion capture split by
            subject (`config.codebook.poses` 'cmu'; 'auto' falls back to synthetic demo_mix poses
            when `cmu_root` is absent, and the report says which) -> workdir/codebook, with the
            held-out figures in workdir/codebook/metrics.json (reconstruction MPJPE in mm,
            usage, perplexity);
  teacher   DPMesh (`jhmr.train.dpmesh_task.make_dpmesh_task`, `noise=False`: clean keypoints)
            -> workdir/teacher;
  student   PoseFix-noised keypoints + NKR against the frozen teacher (its backbone params the
            task's non-trained `teacher` collection) -> workdir/student; with
            `config.student.ablation` the same without NKR -> workdir/student_no_nkr;
  evaluate  trains (or restores) the HMR baseline on the same crops and budget -> workdir/hmr,
            then writes workdir/results.md + results.csv (refused, naming what is missing, when
            the trained models are not in the workdir). The `released` model evaluates an
            official checkpoint (`config.checkpoint`) instead;
  all       everything in order (the default).

Models (`MODELS`, `config.model`): 'small' (DPMesh-small: the whole structure at small widths,
64 px crops, randomly initialised), 'tiny' (tests), 'paper' (SD 1.5 sizes, initialised from the
user's SD 1.5 / ControlNet-openpose files by `jhmr.convert.dpmesh.init_from_sd15`), 'released'
(the official checkpoints' model). Starting variables are concrete (`random_variables` +
`with_pretrained`, the trained codebook swapped in) and handed to the trainer as the task's
`initial_variables`: no SD-size init is compiled.

Data: synthetic people (`jhmr.data.synthesis`, demo_mix poses) or the `threedpw` / `h36m`
builders (`jhmr.pipelines.real_data`). Training augmentations: crop jitter, flips, colour, noise
and patch occluders (`jhmr.data.augment`; patches cut from other training crops); joints covered
by an occluder are missing from the input keypoints (`config.hide_occluded`). Test sets: the test
people as rendered (unoccluded) and with occluders pasted (occluded, the same people), each with
PoseFix-noised input keypoints drawn once per example (fixed seed).

Errors: the 24 SMPL joints of prediction and truth, each centred on its pelvis (mm), as the
ScoreHMR program; PA-MPJPE after a similarity Procrustes fit; visible / invisible joints by the
example's `joint_visibility` after occlusion (invisible: covered or outside the crop). Randomness
is drawn by name from one `jhmr.keys.KeySeq(config.seed)`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jhmr.body import load_body_model
from jhmr.data import augment, synthesis
from jhmr.data import example as example_lib
from jhmr.data.example import BatchSource, PersonExample
from jhmr.data.pipeline import apply_transforms
from jhmr.errors import InputError
from jhmr.eval import metrics
from jhmr.geometry import rotations
from jhmr.io.files import atomic_path
from jhmr.keys import KeySeq
from jhmr.models import dpmesh as dpmesh_lib
from jhmr.models.controlnet import ControlNetConfig
from jhmr.models.dpmesh import DPMesh, DPMeshConfig
from jhmr.models.dpmesh_backbone import DPMeshBackboneConfig
from jhmr.models.dpmesh_regressor import DPMESH_REGRESSOR_TINY_PAPER
from jhmr.models.hmr import HMR
from jhmr.models.pose_codebook import PoseCodebookConfig, PoseTokenizer
from jhmr.models.unet import UNetConfig
from jhmr.models.vae import VAEConfig
from jhmr.pipelines import dpmesh_report
from jhmr.pipelines.stages import Stage
from jhmr.train import codebook_task, dpmesh_task, trainer
from jhmr.train.task import ArraySource
from jhmr.train.tasks import make_hmr_task
from jhmr.train.tasks import predict as hmr_predict

REAL_SOURCES = ("threedpw", "h36m")


# ----------------------------------------------------------------------------------------------
# Models


def _small_backbone(widths, heads, token_dim, layers, vae_widths, fusion, lora_rank, groups):
  unet = UNetConfig(
    block_out_channels=widths,
    num_attention_heads=heads,
    cross_attention_dim=token_dim,
    norm_num_groups=groups,
    layers_per_block=layers,
  )
  blocks = tuple(i * (layers + 1) + layers - 1 for i in range(4))  # one per level, coarse first
  return DPMeshBackboneConfig(
    unet=unet,
    controlnet=ControlNetConfig.from_unet(
      unet, conditioning_channels=30, conditioning_embedding_out_channels=None
    ),
    vae=VAEConfig(block_out_channels=vae_widths, layers_per_block=1, norm_num_groups=groups // 2),
    image_size=64,
    lora_rank=lora_rank,
    fusion_channels=fusion,
    fusion_groups=8,
    feature_blocks=blocks,
  )


def _with_codebook(backbone: DPMeshBackboneConfig, regressor, codebook: PoseCodebookConfig):
  regressor = dataclasses.replace(
    regressor,
    in_channels=backbone.fusion_channels,
    pose_tokens=codebook.num_tokens,
    pose_code_dim=codebook.codebook_size,
    crop_size=(backbone.image_size, backbone.image_size),
  )
  return DPMeshConfig(backbone=backbone, regressor=regressor, codebook=codebook)


def small_config() -> DPMeshConfig:
  """DPMesh-small: U-Net 32/64/64/64 wide (4 heads, 64-D joint tokens, 1 layer per level), a
  2-downsample VAE (64 px crops -> 16² latent, SD: 256 -> 32; U-Net levels 16/8/4/2, attention
  maps at 4² and 8², fused features 4² instead of 8²: a 32² latent costs ~5 s CPU per batch-16
  training step here), LoRA rank 8, fusion to 128 channels, a 2+3-layer 64-wide regressor, a
  16-token x 256-entry codebook."""
  backbone = _small_backbone((32, 64, 64, 64), (4, 4, 4, 4), 64, 1, (16, 32, 32), 128, 8, 16)
  regressor = dataclasses.replace(
    DPMESH_REGRESSOR_TINY_PAPER,
    dim=64,
    heads=4,
    enc_layers=2,
    dec_layers=3,
    ffn_dim=128,
    refine_ffn_dim=128,
    depth=8,
  )
  codebook = PoseCodebookConfig.tiny(
    num_tokens=16, codebook_size=256, code_dim=32, enc_depth=2, enc_hidden=64,
    enc_hidden_inter=64, enc_token_inter=32, dec_hidden=32, dec_hidden_inter=64,
  )  # fmt: skip
  return _with_codebook(backbone, regressor, codebook)


def tiny_config() -> DPMeshConfig:
  """The test size: `DPMeshConfig.tiny`'s widths with 1 layer per level (less to compile)."""
  backbone = _small_backbone((16, 32, 32, 32), (2, 2, 2, 2), 32, 1, (8, 8), 32, 4, 8)
  return _with_codebook(backbone, DPMESH_REGRESSOR_TINY_PAPER, PoseCodebookConfig.tiny())


MODELS = {
  "small": small_config,
  "tiny": tiny_config,
  "paper": DPMeshConfig,
  "released": DPMeshConfig.released,
}


def model_config(config) -> DPMeshConfig:
  if config.model not in MODELS:
    raise ValueError(f"unknown config.model {config.model!r}; valid: {', '.join(MODELS)}")
  return MODELS[config.model]()


# ----------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class DPMeshSets:
  """train: random-access `PersonExample`s; test: the unoccluded test people (a `BatchSource` or
  a lazy source); bank: uint8 [N, S, S, 3] crops the patch occluders are cut from."""

  train: object
  test: object
  bank: np.ndarray


def _check_user_files(config) -> None:
  """One `InputError` naming every missing user file of the paper / released variants."""
  missing = []
  if config.model == "paper":
    init = config.get("init", {})
    if not init.get("sd15"):
      missing.append("the SD 1.5 weights (--config.init.sd15=DIR_OR_FILE: not set)")
    elif not pathlib.Path(init.sd15).expanduser().exists():
      missing.append(f"the SD 1.5 weights {init.sd15}")
    cn = init.get("controlnet_openpose", "")
    if cn and not pathlib.Path(cn).expanduser().exists():
      missing.append(f"the ControlNet-openpose weights {cn}")
    if config.codebook.poses == "cmu" and not pathlib.Path(config.codebook.cmu_root).is_dir():
      missing.append(f"the CMU motion capture (codebook.cmu_root={config.codebook.cmu_root})")
  if config.model == "released":
    if not config.checkpoint:
      missing.append("the official checkpoint (--config.checkpoint=...pth.tar: not set)")
    elif not pathlib.Path(config.checkpoint).expanduser().is_file():
      missing.append(f"the official checkpoint {config.checkpoint}")
  d = config.data
  if d.source in REAL_SOURCES:
    manual = pathlib.Path(d.manual_dir or pathlib.Path(d.data_dir) / "downloads" / "manual")
    prepared = pathlib.Path(d.data_dir).expanduser() / f"{d.source}"
    if not manual.expanduser().is_dir() and not prepared.is_dir():
      missing.append(
        f"the {d.source} data (neither a prepared builder in data.data_dir={d.data_dir} nor the "
        f"raw files in data.manual_dir={manual}; see jhmr/data/{d.source})"
      )
  if missing:
    raise InputError(f"dpmesh ({config.model}): missing " + "; ".join(missing))


def build_sets(config, body_model, keys: KeySeq) -> DPMeshSets:
  d = config.data
  if d.source in REAL_SOURCES:
    from jhmr.pipelines import real_data  # noqa: PLC0415 (TFDS builders: real sources only)

    sets = real_data.load_sets(config, body_model)
    n = min(config.augment.occluder_bank, len(sets.train))
    bank = np.stack([np.asarray(sets.train[i].image) for i in range(n)])
    return DPMeshSets(train=sets.train, test=sets.keypoints, bank=bank)
  if d.source != "synthetic":
    raise ValueError(f"unknown data.source {d.source!r}; valid: synthetic, threedpw, h36m")
  spec = synthesis.SceneSpec(crop_size=d.image_size, focal_length=d.focal_length)
  poses = synthesis.PoseSource("demo_mix")
  train = synthesis.single_view_set(keys.child("train"), d.num_train, body_model, poses, spec)
  test = synthesis.single_view_set(keys.child("test"), d.num_test, body_model, poses, spec)
  bank = train.image[: config.augment.occluder_bank]
  return DPMeshSets(train=BatchSource(train), test=BatchSource(test), bank=bank)


def train_transforms(config, body_model, bank) -> tuple:
  """Crop jitter, flip, colour, noise and patch occluders (`config.augment`)."""
  a = dict(config.augment)
  a.pop("occluder_bank")
  return (augment.default_train_transforms(body_model, keypoint_set=None, occluder_bank=bank, **a),)


def occluders(bank) -> tuple:
  """The test set's occluders: a noise rectangle and 1-4 patches, always."""
  return (augment.noise_occluder(prob=1.0), augment.patch_occluders(bank, prob=1.0))


def test_batch(config, sets: DPMeshSets, occluded: bool, noise: bool = True) -> PersonExample:
  """The test people with (`occluded`) or without occluders, their `dpmesh30` input keypoints
  PoseFix-noised (`noise`) from one fixed random stream per example (the same with and without
  occluders; hidden joints are skipped)."""
  seed = config.seed + 1_000_003
  keypoints = (_keypoints(config, noise),)
  rows = []
  for i in range(len(sets.test)):
    row = sets.test[i]
    if occluded:
      row = apply_transforms(row, occluders(sets.bank), seed + 1, i)
    rows.append(apply_transforms(row, keypoints, seed, i))
  return example_lib.stack(rows)


def _keypoints(config, noise: bool):
  return dpmesh_task.dpmesh_keypoint_transform(noise=noise, hide_invisible=config.hide_occluded)


# ----------------------------------------------------------------------------------------------
# Training


def _trainer_config(config, section) -> ml_collections.ConfigDict:
  tc = ml_collections.ConfigDict(section.trainer.to_dict())
  tc.seed = config.seed
  return tc


def _codebook_poses(config, body_model, cfg: PoseCodebookConfig, keys: KeySeq, workdir):
  """(train [N, 23, 3, 3], held-out [M, 23, 3, 3], description); CMU poses are cached in
  workdir/codebook/poses.npz (reading BVH files is slow)."""
  c = config.codebook
  kind = c.poses
  if kind == "auto":
    kind = "cmu" if pathlib.Path(c.cmu_root).is_dir() else "demo_mix"
  if kind == "cmu":
    cache = pathlib.Path(workdir) / "codebook" / "poses.npz"
    if cache.is_file():
      with np.load(cache) as f:
        train, test, what = f["train"], f["test"], str(f["what"])
    else:
      from jhmr.data import mocap  # noqa: PLC0415 (reads BVH files: only for CMU poses)

      train_subjects, test_subjects = mocap.cmu_subject_split(c.cmu_root)
      train_subjects = train_subjects[: c.cmu_subjects]
      test_subjects = test_subjects[: max(1, c.cmu_subjects // 4)]
      train = codebook_task.cmu_rotmats(c.cmu_root, train_subjects, body_model, fps=c.cmu_fps)
      test = codebook_task.cmu_rotmats(c.cmu_root, test_subjects, body_model, fps=c.cmu_fps)
      what = (
        f"CMU mocap, {len(train_subjects)} training subjects ({len(train)} poses), "
        f"held out: {len(test_subjects)} other subjects"
      )
      with atomic_path(cache, suffix=".npz") as tmp:
        np.savez(tmp, train=train, test=test, what=what)
  elif kind == "demo_mix":
    spec = synthesis.SceneSpec()
    source = synthesis.PoseSource("demo_mix")
    n = c.num_poses
    aa = source.sample(keys("poses"), n + n // 4, body_model, spec)
    rot = np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(aa)), np.float32)
    train, test = rot[:n], rot[n:]
    what = f"synthetic demo_mix poses ({n}; held out: {len(test)} other draws)"
  else:
    raise ValueError(f"unknown codebook.poses {c.poses!r}; valid: auto, cmu, demo_mix")
  rng = np.random.default_rng(config.seed)
  if len(test) > c.max_test:
    test = test[np.sort(rng.choice(len(test), c.max_test, replace=False))]
  return train, test, what


def train_codebook(config, workdir, body_model, keys: KeySeq) -> dict:
  """Trains (or restores) the pose codebook; writes codebook/metrics.json; returns its variables
  `{'params', 'codebook'}`."""
  cfg = model_config(config).codebook
  tokenizer = PoseTokenizer(cfg)
  train, test, what = _codebook_poses(config, body_model, cfg, keys, workdir)
  task = codebook_task.make_codebook_task(tokenizer, ArraySource({"rotmat": train}))
  out = pathlib.Path(workdir) / "codebook"
  state = trainer.train(_trainer_config(config, config.codebook), out, task)
  variables = {"params": state.params, **state.model_state}
  figures = out / "metrics.json"
  if not figures.is_file():
    m = codebook_task.codebook_metrics(tokenizer, variables, test, body_model)
    m.update(poses=what, codebook_size=cfg.codebook_size, tokens=cfg.num_tokens, held_out=len(test))
    with atomic_path(figures) as tmp:
      pathlib.Path(tmp).write_text(json.dumps(m, indent=1))
  return variables


def _weights(config):
  return {"paper": dpmesh_task.PAPER_WEIGHTS, "released": dpmesh_task.RELEASED_WEIGHTS}[
    config.loss.weights
  ]


def initial_variables(config, model: DPMesh, codebook: dict) -> dict:
  """Concrete starting variables: `random_variables` (the paper model: the backbone from SD 1.5
  + ControlNet-openpose via `init_from_sd15`) with the trained codebook swapped in."""
  variables = dpmesh_lib.random_variables(model, seed=config.seed)
  variables = dpmesh_lib.with_pretrained(variables, codebook=codebook)
  if config.model == "paper":
    from jhmr.convert.dpmesh import init_from_sd15  # noqa: PLC0415 (torch: paper only)

    backbone = init_from_sd15(
      config.init.sd15, config.init.controlnet_openpose or None, model.config.backbone
    )
    variables = {**variables, "params": {**variables["params"], "backbone": backbone}}
  return variables


def _train_dpmesh(config, workdir, name, section, model, sets, body_model, init, **kw):
  task = dpmesh_task.make_dpmesh_task(
    model,
    sets.train,
    body_model,
    init_variables=init,
    weights=_weights(config),
    transforms=train_transforms(config, body_model, sets.bank),
    hide_invisible=config.hide_occluded,
    temperature=config.loss.temperature,
    nkr_weight=config.loss.nkr_weight,
    **kw,
  )
  state = trainer.train(_trainer_config(config, section), pathlib.Path(workdir) / name, task)
  params = {k: v for k, v in state.params.items() if k != "loss_weights"}
  return {"params": params}


@dataclasses.dataclass
class Context:
  """What the stages share (built once per run)."""

  config: object
  workdir: str
  body_model: object
  keys: KeySeq
  model: DPMesh

  @functools.cached_property
  def sets(self) -> DPMeshSets:
    return build_sets(self.config, self.body_model, self.keys.child("data"))

  @functools.cached_property
  def codebook(self) -> dict:
    return train_codebook(self.config, self.workdir, self.body_model, self.keys.child("codebook"))

  @functools.cached_property
  def teacher(self) -> dict:
    init = initial_variables(self.config, self.model, self.codebook)
    c = self.config
    return _train_dpmesh(
      c, self.workdir, "teacher", c.teacher, self.model, self.sets, self.body_model, init,
      noise=False,
    )  # fmt: skip

  @functools.cached_property
  def students(self) -> dict:
    """{'student': NKR student, 'student_no_nkr': the ablation (if configured)}."""
    c = self.config
    init = (
      self.teacher if c.student.from_teacher else initial_variables(c, self.model, self.codebook)
    )
    out = {}
    for name, teacher in (("student", self.teacher), ("student_no_nkr", None)):
      if name == "student_no_nkr" and not c.student.ablation:
        continue
      out[name] = _train_dpmesh(
        c, self.workdir, name, c.student, self.model, self.sets, self.body_model, init,
        noise=True, teacher_variables=teacher,
      )  # fmt: skip
    return out

  @functools.cached_property
  def hmr(self) -> tuple[HMR, dict]:
    c = self.config
    h = c.hmr
    model = HMR(
      depth=h.depth, width=h.width, num_betas=self.body_model.num_betas, hidden=h.hidden,
      dropout=h.dropout,
    )  # fmt: skip
    tc = _trainer_config(c, h)
    if tc.train.steps <= 0:  # the DPMesh budget: teacher + student steps
      tc.train.steps = c.teacher.trainer.train.steps + c.student.trainer.train.steps
      tc.train.checkpoint_every = max(1, tc.train.steps // 4)
      tc.train.log_every = max(1, min(100, tc.train.steps // 10))
    transforms = train_transforms(self.config, self.body_model, self.sets.bank)
    task = make_hmr_task(model, self.body_model, self.sets.train, transforms=transforms)
    state = trainer.train(tc, pathlib.Path(self.workdir) / "hmr", task)
    return model, {"params": state.params, **state.model_state}


def _context(config, workdir) -> Context:
  _check_user_files(config)
  body_model = load_body_model(config.body_model)
  model = DPMesh(model_config(config), remat=config.get("remat", False))
  return Context(config, str(workdir), body_model, KeySeq(config.seed), model)


# ----------------------------------------------------------------------------------------------
# Evaluation


@jax.jit
def _joint_errors(body_model, rotmat, betas, target, visible):
  nb = min(body_model.num_betas, betas.shape[-1])
  out = body_model.joints_only(betas[:, :nb], rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat")
  pred = out.joints - out.joints[:, :1]
  per_joint = 1000 * jnp.linalg.norm(pred - target, axis=-1)
  aligned = metrics.pa_mpjpe(pred, target)

  def masked(mask):
    n = mask.sum(-1)
    return jnp.where(n > 0, (per_joint * mask).sum(-1) / jnp.maximum(n, 1), jnp.nan)

  return {
    "mpjpe": per_joint.mean(-1),
    "pa_mpjpe": 1000 * aligned,
    "mpjpe_visible": masked(visible),
    "mpjpe_invisible": masked(1.0 - visible),
    "invisible_share": 1.0 - visible.mean(-1),
  }


def errors(body_model, rotmat, betas, batch: PersonExample) -> dict:
  """Per-sample errors (mm) of the 24 pelvis-centred SMPL joints (module docstring)."""
  target = jnp.asarray(batch.joints_3d - batch.joints_3d[:, :1], jnp.float32)
  visible = jnp.asarray(batch.joint_visibility > 0, jnp.float32)
  out = _joint_errors(body_model, jnp.asarray(rotmat), jnp.asarray(betas), target, visible)
  return {k: np.asarray(v) for k, v in out.items()}


def _padded(x: np.ndarray, start: int, size: int) -> np.ndarray:
  """`x[start : start + size]`, the last row repeated up to `size` rows (one compiled shape)."""
  part = x[start : start + size]
  return np.concatenate([part, np.repeat(part[-1:], size - len(part), 0)])


def dpmesh_rotmat(model: DPMesh, variables, batch: PersonExample, chunk: int):
  """DPMesh's estimates of a batch: (rotmat [B, 24, 3, 3], betas [B, 10]) in fixed-size chunks
  through `jhmr.models.dpmesh.predict` (the crop camera's focal length)."""
  focal = np.asarray(dpmesh_task.crop_focal_length(batch))
  kp = np.asarray(batch.keypoints_2d[dpmesh_task.INPUT_SET])
  images = np.asarray(batch.image)
  n, rot, betas = len(kp), [], []
  for i in range(0, n, chunk):
    keep = min(chunk, n - i)
    p = dpmesh_lib.predict(
      variables,
      _padded(images, i, chunk),
      _padded(kp, i, chunk),
      config=model.config,
      focal_length=_padded(focal, i, chunk),
    )
    pose = np.concatenate([p.global_orient[:, None], p.body_pose], 1)[:keep]
    rot.append(np.asarray(rotations.axis_angle_to_matrix(jnp.asarray(pose))))
    betas.append(p.betas[:keep])
  return np.concatenate(rot), np.concatenate(betas)


def evaluate(ctx: Context) -> dict:
  """The report (module docstring); returns {'rows': [...], 'codebook': {...}}."""
  c = ctx.config
  name = f"DPMesh-{c.model}"
  methods = {f"{name} teacher (clean-keypoint training)": ctx.teacher}
  names = {"student": f"{name} (NKR student)", "student_no_nkr": f"{name} without NKR"}
  for key, variables in ctx.students.items():
    methods[names[key]] = variables
  hmr, hmr_variables = ctx.hmr
  rows = []
  for occluded in (False, True):
    batch = test_batch(c, ctx.sets, occluded)
    test = "occluded" if occluded else "unoccluded"
    est = hmr_predict(hmr, hmr_variables, batch.image, c.eval_batch)
    rows.append(dpmesh_report.row(test, "HMR regressor (image only)", errors(
      ctx.body_model, est["rotmat"], est["betas"], batch)))  # fmt: skip
    for label, variables in methods.items():
      rotmat, betas = dpmesh_rotmat(ctx.model, variables, batch, c.eval_batch)
      rows.append(dpmesh_report.row(test, label, errors(ctx.body_model, rotmat, betas, batch)))
  figures = json.loads((pathlib.Path(ctx.workdir) / "codebook" / "metrics.json").read_text())
  dpmesh_report.write(ctx.workdir, rows, figures, c)
  return {"rows": rows, "codebook": figures}


def evaluate_released(ctx: Context) -> dict:
  """The official checkpoint on the test set (`config.checkpoint`)."""
  from jhmr.convert.dpmesh import load_dpmesh_checkpoint  # noqa: PLC0415 (torch files)

  cfg = ctx.model.config
  ckpt = load_dpmesh_checkpoint(config_path(ctx.config.checkpoint), cfg.backbone, cfg.regressor)
  for note in ckpt.notes:
    logging.warning("%s", note)
  variables = ckpt.variables()
  batch = test_batch(ctx.config, ctx.sets, occluded=False)
  rotmat, betas = dpmesh_rotmat(ctx.model, variables, batch, ctx.config.eval_batch)
  rows = [dpmesh_report.row(ctx.config.data.source, "DPMesh (official checkpoint)", errors(
    ctx.body_model, rotmat, betas, batch))]  # fmt: skip
  dpmesh_report.write(ctx.workdir, rows, None, ctx.config)
  return {"rows": rows}


def config_path(path: str) -> pathlib.Path:
  return pathlib.Path(path).expanduser()


# ----------------------------------------------------------------------------------------------
# Stages


def _trained_dirs(config, upto: str | None = None) -> tuple[str, ...]:
  """The workdir checkpoints a stage needs: those of the stages before `upto` (None: all)."""
  order = ["codebook", "teacher", "student"]
  order += ["student_no_nkr"] if config.student.ablation else []
  return tuple(f"{p}/checkpoints" for p in order[: order.index(upto) if upto else None])


def _stage(name):
  def run(config, workdir):
    logging.info("DPMesh program, stage %s, in %s", name, workdir)
    ctx = _context(config, workdir)
    if config.model == "released":
      if name not in ("evaluate", "all"):
        raise InputError("the released model is evaluated only (--config.stage=evaluate)")
      return evaluate_released(ctx)
    if name == "codebook":
      return ctx.codebook
    if name == "teacher":
      return ctx.teacher
    if name == "student":
      return ctx.students
    return evaluate(ctx)

  return run


def _needs(upto):
  def needs(config):
    return () if config.model == "released" else _trained_dirs(config, upto)

  return needs


STAGES = {
  "all": Stage(_stage("all")),
  "codebook": Stage(_stage("codebook")),
  "teacher": Stage(_stage("teacher"), needs=_needs("teacher"), made_by="codebook"),
  "student": Stage(_stage("student"), needs=_needs("student"), made_by="teacher"),
  "evaluate": Stage(_stage("evaluate"), needs=_needs(None), made_by="student"),
}
