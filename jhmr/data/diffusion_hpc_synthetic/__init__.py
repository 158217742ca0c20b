"""Diffusion-HPC's generated image-mesh pairs (TFDS builder over the generation shards)."""
