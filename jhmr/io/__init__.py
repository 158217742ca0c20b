"""The user's files: importers of keypoints and trackers, and exporters.

Modules (import them directly; this package imports none of them):
  joint_maps  joint-order registry (COCO-17/18, OpenPose BODY_25, H36M-17, SMPL-24, LSP-14,
              COCO-WholeBody body) and `convert` between orders by canonical joint name.
  keypoints   OpenPose JSON and COCO results JSON readers into typed arrays.
  tracks      tracker outputs (PHALP / 4D-Humans pickles through a restricted unpickler,
              ScoreHMR per-track JSON) and ScoreHMR's track handling (filters, shots, gaps).
  estimates   WHAM (`wham_output.pkl`) and GVHMR (`hmr4d_results.pt`, read without torch) outputs
              as initial estimates (`tracks.Tracks`).
  results     the one results file: `Results`, `save_results` / `load_results` (.npz + JSON
              sidecar, versioned schema).
  video       frames in and H.264 MP4 out with imageio + the ffmpeg binary of imageio-ffmpeg.
  gltf, bvh_export   animated skinned GLB and BVH of a track.
"""
