"""jhmr.train."""
