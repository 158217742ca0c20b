"""Synthetic people from `jhmr.data.synthesis` as `PersonExample`s (TFDS builder)."""
