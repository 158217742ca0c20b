"""The user's files: importers of keypoints and trackers, and exporters.

Modules (import them directly; this package imports none of them):
  joint_maps  joint-order registry (COCO-17/18, OpenPose BODY_25, H36M-17, SMPL-24, LSP-14,
              COCO-WholeBody body) and `convert` between orders by canonical joint name.
  keypoints   OpenPose JSON and COCO results JSON readers into typed arrays.
  tracks      tracker outputs (PHALP / 4D-Humans, WHAM, GVHMR).
"""
