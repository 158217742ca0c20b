"""jhmr.data: datasets and what feeds them.

* `example`: `PersonExample`, the one typed person record every source yields and every task
  consumes (units and frames in its field docs).
* `bvh`, `mocap`: BVH files and retargeting onto the SMPL 24-joint skeleton; CMU loading/split.
* `synthesis`: the one synthetic-people generator (poses from `poses` or motion capture, a crop
  camera, rendered crops, noisy detections from `observations`), as `PersonExample` batches.
* TFDS builders (`builders.BUILDERS`): threedpw, emdb, h36m, smart, ski_pose, cmu_mocap,
  synthetic, each in `jhmr/data/<name>/<name>_dataset_builder.py` with its download instructions.
* `pipeline` (the one grain input pipeline), `augment` (pure per-example transforms on
  `PersonExample`), `sources` (builder rows -> `PersonExample`), `crops`, `raw` (safe readers),
  `preview` (image grids).

Submodules are imported explicitly (importing `jhmr.data` loads nothing heavy).
"""
