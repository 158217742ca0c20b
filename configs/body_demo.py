"""Body demo (placeholder main job): render the default body in a few poses.

Command:
  python -m jhmr.launch --config configs/body_demo.py --workdir runs/body_demo
  python -m jhmr.launch --config configs/body_demo.py:tiny --workdir runs/body_demo_tiny

Writes pose_<name>.png (shaded mesh + OpenPose BODY_25 keypoints), poses.png (all poses side by
side) and rest_pose.obj to the workdir, and prints the 24 rest-pose joints. Runtime: about 25 s
on a loaded 2-core CPU (mostly compilation). No target metric (a picture).
Variants: '' (default Anny body, 13k vertices, 256 px), 'tiny' (1.2k-vertex body, 64 px, 2 poses).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = common.parse_arg(arg, variants=("tiny",))
  config = ml_collections.ConfigDict()
  config.program = "body_demo"
  config.body_model = None  # None: the free Anny-derived default; 'anny-tiny'; or a path
  config.poses = ("t_pose", "arms_down", "walking", "squat")
  config.yaw_degrees = 30.0  # turn the body a little for a three-quarter view
  config.image_size = 256
  config.focal_length = 5000.0  # ScoreHMR's camera
  config.mesh_alpha = 1.0
  config.background = (1.0, 1.0, 1.0)
  config.keypoint_set = "openpose25"
  if variant == "tiny":
    config.body_model = "anny-tiny"
    config.poses = ("t_pose", "walking")
    config.image_size = 64
  return config
