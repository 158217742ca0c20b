"""jhmr.geometry."""

# cameras / procrustes (render helper)
from jhmr.geometry.cameras import (  # noqa: F401
  crop_to_full_translation,
  intrinsics_matrix,
  perspective_projection,
  translation_to_weak_perspective,
  weak_perspective_to_translation,
)
from jhmr.geometry.procrustes import similarity_procrustes, similarity_transform  # noqa: F401
