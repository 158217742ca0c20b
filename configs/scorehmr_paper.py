"""The ScoreHMR paper's evaluation protocol on the released files (jhmr.pipelines.scorehmr_paper).

Default (runs on a fresh clone, nothing downloaded): a SELF-CHECK of the protocol on example
files that jhmr writes in the released layouts (synthetic people of the free body,
jhmr.pipelines.scorehmr_paper_example), with RANDOM score-model weights and stand-in features;
its table runs every released row and says on every line of its notes that it is not the
paper's table:
  python -m jhmr.launch --config configs/scorehmr_paper.py --workdir runs/paper_selfcheck
One command per table with the released files (ScoreHMR's repo root, holding data/ and cache/
after download_data.sh and download_hmr2_preds.sh, is --config.data_dir; the user's SMPL model is
--config.body_model, with --config.joint_sets=<npz with joint_set.openpose25.*> for an official
SMPL pickle):
  keypoint fitting, 3DPW:   python -m jhmr.launch --config configs/scorehmr_paper.py:keypoints_3dpw
                              --workdir runs/paper_kp3dpw --config.data_dir=SCOREHMR
                              --config.image_dirs.threedpw=3DPW_ROOT
  multi-view, H36M:         ...:multiview_h36m --config.image_dirs.h36m=H36M_ROOT
  multi-view, Mannequin:    ...:multiview_mannequin --config.image_dirs.mannequin=MC_ROOT
  video, 3DPW:              ...:video_3dpw --config.image_dirs.threedpw=3DPW_ROOT
  keypoint fitting / video, EMDB-1: ...:keypoints_emdb (or :video_emdb)
                              --config.emdb.manual_dir=EMDB_ROOT --config.emdb.data_dir=TFDS_DIR
                              --config.hmr2_checkpoint=HMR2_CKPT
    The release has no EMDB-1 files: these rows are jhmr's protocol (jhmr.pipelines.
    scorehmr_paper_emdb: the emdb builder's EMDB-1 frames, the converted ViTPose, HMR 2.0 and
    PARE in-process, 24 SMPL joints centred on the pelvis; gendered ground truth with
    --config.emdb.gt_body_models.female=... / .male=...); the table says so.
  all released rows:        ...:released (the four rows above from ScoreHMR's files).
Output: workdir/paper_table.md / .csv -- ours (HMR 2.0b and ScoreHMR) next to the paper's numbers
(jhmr.eval.paper.PAPER_TABLE) and the refinement time. Numbers are NOT claimed until measured on
the real files; runtime with the released files unmeasured (the self-check: see README).
Missing files stop the launcher with one `error:` line naming the file.
Assumed (not in the notes): the HMR 2.0b cache file names in cache.zip (`files.cache_*`).
  tiny   tests only: random score-net weights, stand-in features, 1 refinement iteration, every
         row (EMDB-1 too) on dummy files the tests write.
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg

ROWS = ("keypoints_3dpw", "multiview_h36m", "multiview_mannequin", "video_3dpw")
VARIANTS = (
  "keypoints_3dpw",
  "keypoints_emdb",
  "multiview_h36m",
  "multiview_mannequin",
  "video_3dpw",
  "video_emdb",
  "released",
  "tiny",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = parse_arg(arg, variants=VARIANTS)
  config = ml_collections.ConfigDict()
  config.program = "scorehmr_paper"
  config.stage = "all"
  config.seed = 0
  config.rows = (variant,) if variant not in ("", "released", "tiny") else ROWS
  config.data_dir = "ScoreHMR"
  config.files = dict(
    threedpw="data/datasets/3dpw_test.npz",
    threedpw_video="data/datasets/3dpw_test_video.pkl",
    h36m_multiview="data/datasets/h36m_val_multiview.pkl",
    mannequin="data/datasets/mannequin.pkl",
    cache_threedpw="cache/hmr2b/3dpw_test.npz",
    cache_threedpw_video="cache/hmr2b/3dpw_test_video.pkl",
    cache_h36m_multiview="cache/hmr2b/h36m_val_multiview.pkl",
    cache_mannequin="cache/hmr2b/mannequin.pkl",
    checkpoint="data/model_weights/score_hmr/model-100.pt",
    stats="data/stats/pare_feat_stats.npz",
    j19="data/SMPL_to_J19.pkl",
    pare="data/model_weights/pare/pare_checkpoint.ckpt",
    vitpose="data/model_weights/vitpose_ckpts/vitpose-h-multi-coco.pth",  # EMDB-1 rows
  )
  # EMDB-1 rows: HMR 2.0 (4D-Humans' download_models) and the emdb TFDS builder.
  config.hmr2_checkpoint = (
    "~/.cache/4DHumans/logs/train/multiruns/hmr2/0/checkpoints/epoch=35-step=1000000.ckpt"
  )
  config.emdb = dict(
    data_dir="~/tensorflow_datasets",  # where emdb/emdb1 is (or will be) prepared
    manual_dir="",  # the official EMDB files, P<k>/<sequence>/...; "": <data_dir>/downloads/manual
    gt_body_models=dict(female="", male=""),  # gendered SMPL files for the ground truth
    max_frames=0,  # per sequence; 0 = all
    max_sequences=0,  # 0 = all
  )
  config.image_dirs = dict(threedpw="3DPW", h36m="H36M", mannequin="Mannequin")
  config.body_model = "ScoreHMR/data/smpl/SMPL_NEUTRAL.pkl"
  config.joint_sets = ""
  config.features = "pare"  # or "stand_in" (tests)
  config.random_weights = False
  config.random_hidden = 1024
  config.random_blocks = 3
  config.batch_size = 256  # keypoint fitting (eval_keypoint_fitting.py); groups: one per batch
  config.max_batches = 0  # 0: all
  config.refine = dict(keypoints={}, multiview={}, video={})  # the official settings per task
  # The default's self-check: example files in the released layouts (scorehmr_paper_example).
  config.example = dict(enabled=False, people=16, clips=2, clip_length=16, views=4)
  if variant == "":
    config.body_model = "anny"
    config.features = "stand_in"
    config.random_weights = True
    config.example.enabled = True
  if variant == "tiny":
    config.rows = ROWS + ("keypoints_emdb", "video_emdb")
    config.body_model = "anny-tiny"
    config.features = "stand_in"
    config.random_weights = True
    config.random_hidden = 16
    config.random_blocks = 1
    config.batch_size = 4
    config.max_batches = 1
    small = dict(t_start=4, step_size=2, num_iters=1)
    config.refine = dict(keypoints=dict(small), multiview=dict(small), video=dict(small))
  return config
