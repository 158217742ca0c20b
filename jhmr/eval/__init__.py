"""jhmr.eval: metrics (MPJPE, PA-MPJPE, PVE, acceleration error, PCK)."""

from jhmr.eval.metrics import (
  acceleration_error,
  acceleration_mask,
  center_on_root,
  masked_mean,
  mpjpe,
  pa_mpjpe,
  pck,
  point_errors,
  pve,
)

__all__ = [
  "acceleration_error",
  "acceleration_mask",
  "center_on_root",
  "masked_mean",
  "mpjpe",
  "pa_mpjpe",
  "pck",
  "point_errors",
  "pve",
]
