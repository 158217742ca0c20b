"""jhmr.render."""
