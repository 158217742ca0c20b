"""jhmr.diffusion."""
