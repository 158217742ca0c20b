"""Refine: ScoreHMR on your own video or images, given keypoints and tracks (jhmr.pipelines.refine).

Command (default: a generated example clip, nothing downloaded):
  python -m jhmr.launch --config configs/refine.py --workdir runs/refine
Your files (PHALP / 4D-Humans pickle, OpenPose JSON folder, the video; a score model trained by
`configs/scorehmr.py:cmu_prior`):
  python -m jhmr.launch --config configs/refine.py --workdir runs/mine \
    --config.inputs.tracks=outputs/results/demo_video.pkl \
    --config.inputs.keypoints=openpose_json/ --config.inputs.video=video.mp4 \
    --config.score_model=runs/cmu_prior/score_model
With ScoreHMR's released, PARE-conditioned model (needs the video: features come from crops):
  python -m jhmr.launch --config configs/refine.py --workdir runs/official \
    --config.inputs.tracks=outputs/results/demo_video.pkl --config.inputs.video=video.mp4 \
    --config.inputs.keypoints=openpose_json/ \
    --config.score_model_format=official --config.score_model=model_weights/score_hmr/model-100.pt \
    --config.features.kind=pare --config.features.pare_checkpoint=pare_checkpoint.ckpt \
    --config.features.pare_stats=data/stats/pare_feat_stats.npz
Then: `python -m jhmr.viewer runs/refine/results.npz` (a browser on http://localhost:8080).

What the default runs: `jhmr.pipelines.refine_example` renders two people of the free body walking
(48 frames, 320x240, 24 fps) and writes what a user would bring: example/video.mp4, OpenPose
BODY_25 JSON with detector-like noise, and a PHALP-layout pickle whose SMPL estimates are the
truth corrupted like a regressor's. The program reads those files like any user's, trains a pose
prior on the shipped demo poses (config.prior; a motion-capture prior from a cmu_prior run is
the one for real video), refines every track with ScoreHMR's video guidance and writes
results.npz/.json, overlay.mp4, overlay_<frame>.png, meshes/*.obj, track<id>.glb/.bvh and
summary.md (keypoint error and, for the example, 3D errors against its truth, before / after).
Runtime: see README.md (measured on the 2-core CPU). No target metric: summary.md reports it.

Variants: '' (the above); 'tiny' (the test run: 1.2k-vertex body, 12 frames at 96x64, a 4-step
prior, one guidance iteration).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, variants=("tiny",))
  config = ml_collections.ConfigDict()
  config.program = "refine"
  config.stage = "all"
  config.seed = 0
  config.body_model = None  # None: the free Anny-derived default; 'anny-tiny'; or a path
  config.task = "video"  # video | keypoints | multiview (jhmr.pipelines.refine)

  # The user's files; comma-separated lists = several synchronised cameras. All '' = the example.
  config.inputs = dict(
    tracks="",  # PHALP .pkl | ScoreHMR track_preds/<seq> | wham_output.pkl | hmr4d_results.pt
    tracks_format="auto",  # auto | phalp | scorehmr | wham | gvhmr
    keypoints="",  # OpenPose JSON folder | COCO results JSON ('' = the tracks file's keypoints)
    video="",  # video file | image folder ('' = grey frames)
    fps=0.0,  # 0 = the video's own (30 for image folders)
    min_iou=0.3,  # keypoint detections match track boxes above this IoU
  )
  # Unknown from the files (WHAM without a video, ...): (W, H) px and focal length px; 0 = read.
  config.camera = dict(image_size=(0, 0), focal_length=0.0)
  # ScoreHMR's video-demo track handling (jhmr.io.tracks.prepare_tracks).
  config.tracks = dict(min_length=40, max_tracks=5, min_confidence=0.4, min_shot_length=20)
  # The generated example (used when config.inputs.tracks is '').
  config.example = dict(
    num_people=2, num_frames=48, image_size=(320, 240), fps=24.0, keypoint_noise_px=3.0
  )

  # The score model, read as `score_model_format`:
  #   "jhmr": a trained jhmr score model's folder (e.g. runs/cmu_prior/score_model), or '' to
  #     train `config.prior` into workdir/score_model;
  #   "official": ScoreHMR's released model_weights/score_hmr/model-100.pt (PARE-conditioned:
  #     needs config.features.kind="pare" and config.inputs.video).
  config.score_model = ""
  config.score_model_format = "jhmr"  # jhmr | official
  # Image features conditioning the score model (required when it is conditional): "none", or
  # "pare": PARE's pose features of each tracked person's 224 crop of the video frame (ScoreHMR's
  # video demo), standardised with ScoreHMR's statistics.
  config.features = dict(
    kind="none",  # none | pare
    pare_checkpoint="",  # PARE's data/pare/checkpoints/pare_checkpoint.ckpt
    pare_stats="",  # ScoreHMR's data/stats/pare_feat_stats.npz
  )
  config.prior = dict(poses="demo_mix", num_poses=50_000, hidden=512, num_blocks=3)
  config.prior.trainer = common.trainer_config(steps=4000, batch_size=128, learning_rate=3e-4)
  config.prior.trainer.optimizer.update(b2=0.99, clip_norm=1.0)

  # Guidance per task: RefineConfig fields plus the weights (official settings; see
  # configs/scorehmr.py for their sources).
  official = dict(t_start=50, step_size=2, num_iters=10, gradient_scale=1.0, keypoint_weight=0.003)
  config.refine = dict(
    video=dict(official, temporal_weight=30.0, early_stopping=False),
    keypoints=dict(official, early_stopping=True),
    multiview=dict(official, t_start=100, multiview_weight=0.005, early_stopping=False),
  )
  config.outputs = dict(video=True, png_frames=3)

  if variant == "tiny":
    config.body_model = "anny-tiny"
    config.example.update(num_frames=12, image_size=(96, 64), fps=12.0)
    config.tracks.update(min_length=4, min_shot_length=2)
    config.prior.update(num_poses=256, hidden=16, num_blocks=1)
    config.prior.trainer.train.update(steps=4, batch_size=8, log_every=2, checkpoint_every=2)
    config.prior.trainer.train.progress = False
    for task in ("video", "keypoints", "multiview"):
      config.refine[task].update(num_iters=1, t_start=4, step_size=2)
    config.outputs.png_frames = 2
  return config
