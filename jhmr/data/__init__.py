"""jhmr.data."""
