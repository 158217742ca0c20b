"""jhmr: diffusion-based 3D human mesh recovery in JAX/Flax.

The public API is re-exported here. Importing jhmr has no side effects: no environment variables
are read or written and no JAX configuration is touched (only `jhmr.launch` does that).
"""

__version__ = "0.1.0"
