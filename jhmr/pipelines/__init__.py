"""jhmr.pipelines."""
