"""jhmr.geometry: rotations, cameras, Procrustes alignment (pure maths, floor 1)."""

from jhmr.geometry.rotations import (
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

__all__ = [
  "POSE_FORMATS",
  "axis_angle_to_matrix",
  "axis_angle_to_quaternion",
  "matrix_to_axis_angle",
  "matrix_to_quaternion",
  "matrix_to_rot6d",
  "quaternion_to_axis_angle",
  "quaternion_to_matrix",
  "rot6d_to_matrix",
  "to_matrix",
]
