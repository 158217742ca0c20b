"""jhmr.diffusion: noise schedules, DDIM maths, scan-based DDIM sampling/inversion, training."""
