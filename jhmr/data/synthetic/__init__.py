"""Synthetic observations with SMPL-format ground truth (TFDS builder)."""
