"""jhmr.models."""
