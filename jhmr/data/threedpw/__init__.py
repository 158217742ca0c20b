"""3DPW (TFDS builder)."""
