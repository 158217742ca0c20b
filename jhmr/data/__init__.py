"""jhmr.data: datasets and what feeds them.

* `bvh`, `mocap`: BVH files and retargeting onto the SMPL 24-joint skeleton; CMU loading/split.
* `observations`, `poses`, `synthesis`: synthetic cameras, noisy keypoints, pose corruption,
  procedural poses, rendered person crops (pure JAX).
* TFDS builders (`builders.BUILDERS`): threedpw, emdb, h36m, smart, cmu_mocap, synthetic, each in
  `jhmr/data/<name>/<name>_dataset_builder.py` with its download instructions.
* `pipeline` (grain loader), `augment` (per-example augmentation), `crops`, `raw` (safe readers),
  `preview` (image grids).

Submodules are imported explicitly (importing `jhmr.data` loads nothing heavy).
"""
