"""SMART sports 2D keypoints (TFDS builder)."""
