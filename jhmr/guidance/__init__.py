"""jhmr.guidance: ScoreHMR guidance losses, the refinement loop (`refine`), a SMPLify baseline."""

from jhmr.guidance.losses import GuidanceLoss, KeypointLoss, MultiviewLoss, TemporalLoss, gmof
from jhmr.guidance.observation import Observation
from jhmr.guidance.refinement import (
  TASK_CONFIGS,
  RefineConfig,
  RefineResult,
  net_from_params,
  refine,
  task_config,
)

__all__ = [
  "TASK_CONFIGS",
  "GuidanceLoss",
  "KeypointLoss",
  "MultiviewLoss",
  "Observation",
  "RefineConfig",
  "RefineResult",
  "TemporalLoss",
  "gmof",
  "net_from_params",
  "refine",
  "task_config",
]
