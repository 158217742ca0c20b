"""Experiment configs, run as `python -m jhmr.launch --config configs/<name>.py[:variant]`."""
