"""jhmr.geometry."""
