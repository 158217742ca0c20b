"""EMDB (TFDS builder)."""
