"""Ski-Pose PTZ (TFDS builder)."""
