"""Image -> mesh without PyTorch: ViTPose, HMR 2.0, PARE, ScoreHMR (jhmr.pipelines.image_to_mesh).

Command (default: RANDOM WEIGHTS on a generated image, so that it runs on a fresh clone; its
meshes are not estimates of anything, and the overlay title and summary.md say so):
  python -m jhmr.launch --config configs/image_to_mesh.py --workdir runs/image_to_mesh
Your images with the released weights (ScoreHMR's `download_data.sh`; HMR 2.0 from 4D-Humans'
`download_models`, under ~/.cache/4DHumans/logs/train/multiruns/):
  python -m jhmr.launch --config configs/image_to_mesh.py --workdir runs/mine \
    --config.weights=official --config.inputs.images=photos/ \
    --config.checkpoints.vitpose=data/model_weights/vitpose_ckpts/vitpose-h-multi-coco.pth \
    --config.checkpoints.hmr2=hmr2/checkpoints/epoch=35-step=1000000.ckpt \
    --config.checkpoints.pare=data/model_weights/pare/pare_checkpoint.ckpt \
    --config.checkpoints.pare_stats=data/stats/pare_feat_stats.npz \
    --config.checkpoints.score_hmr=data/model_weights/score_hmr/model-100.pt \
    --config.body_model=data/smpl
Optional: --config.inputs.boxes=boxes.json ({image name: [[x1, y1, x2, y2], ...]}; without it
ViTPose finds one person per image from its own keypoints) and --config.inputs.keypoints=
openpose_json/ (`<name>_keypoints.json`; then ViTPose is skipped).
Outputs: overlay_<name>.png (input | initial | ScoreHMR), meshes/<name>_<person>.obj,
results.npz/.json (frame = image index, track_id = person index), summary.md.
Runtime: the default takes about a minute on the 2-core CPU (mostly compilation); the official
models need a GPU for reasonable speed. No target metric.

Variants: '' (the above); 'tiny' (the test run: 1.2k-vertex body, a 96x64 image, one guidance
iteration).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, variants=("tiny",))
  config = ml_collections.ConfigDict()
  config.program = "image_to_mesh"
  config.stage = "all"
  config.seed = 0
  config.body_model = None  # None: the free Anny-derived default; 'anny-tiny'; or a path (SMPL)
  # 'random': RANDOM weights of `random_configs` (runs anywhere, estimates nothing);
  # 'official': the released checkpoints below (each must exist).
  config.weights = "random"
  config.random_configs = "tiny"  # tiny | official (jhmr.pipelines.image_to_mesh.CONFIGS)
  config.inputs = dict(
    images="",  # an image file or a folder of images ('' = the generated example, random only)
    boxes="",  # JSON {image name: [[x1, y1, x2, y2], ...]} ('' = from ViTPose's keypoints)
    keypoints="",  # OpenPose JSON folder ('' = ViTPose)
  )
  config.checkpoints = dict(vitpose="", hmr2="", pare="", pare_stats="", score_hmr="")
  # The generated example (inputs.images = ''): one frame of jhmr.pipelines.refine_example.
  config.example = dict(num_people=2, image_size=(320, 240))
  # ScoreHMR's image demo: keypoint guidance with the official settings, no early stopping.
  config.refine = dict(
    t_start=50, step_size=2, num_iters=10, gradient_scale=1.0, keypoint_weight=0.003,
    early_stopping=False,
  )  # fmt: skip

  if variant == "tiny":
    config.body_model = "anny-tiny"
    config.example.update(num_people=1, image_size=(96, 64))
    config.refine.update(num_iters=1, t_start=4, step_size=2)
  return config
