"""CMU motion capture retargeted to the SMPL 24-joint skeleton (TFDS builder)."""
