"""jhmr.geometry: rotations, cameras, Procrustes alignment (pure maths, floor 1)."""

# cameras / procrustes (render helper)
from jhmr.geometry.cameras import (  # noqa: F401
  crop_to_full_translation,
  intrinsics_matrix,
  perspective_projection,
  translation_to_weak_perspective,
  weak_perspective_to_translation,
)
from jhmr.geometry.procrustes import similarity_procrustes, similarity_transform  # noqa: F401

# rotations (body helper)
from jhmr.geometry.rotations import (  # noqa: F401
  POSE_FORMATS,
  axis_angle_to_matrix,
  axis_angle_to_quaternion,
  matrix_to_axis_angle,
  matrix_to_quaternion,
  matrix_to_rot6d,
  quaternion_to_axis_angle,
  quaternion_to_matrix,
  rot6d_to_matrix,
  to_matrix,
)
