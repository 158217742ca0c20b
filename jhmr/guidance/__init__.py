"""jhmr.guidance."""
