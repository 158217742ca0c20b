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
from jhmr.guidance.smplify import SmplifyConfig, SmplifyResult

__all__ = [
  "TASK_CONFIGS",
  "GuidanceLoss",
  "KeypointLoss",
  "MultiviewLoss",
  "Observation",
  "RefineConfig",
  "RefineResult",
  "SmplifyConfig",
  "SmplifyResult",
  "TemporalLoss",
  "gmof",
  "net_from_params",
  "refine",
  "task_config",
]
