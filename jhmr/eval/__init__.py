"""jhmr.eval."""
