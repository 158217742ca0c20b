"""jhmr.convert."""
