"""jhmr.body."""
