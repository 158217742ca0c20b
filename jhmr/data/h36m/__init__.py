"""Human3.6M in the SPIN/ProHMR/ScoreHMR preprocessed npz format (TFDS builder)."""
