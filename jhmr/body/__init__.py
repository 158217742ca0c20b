"""jhmr.body: SMPL-format body models (model pytree + LBS), joint sets, safe loaders."""

from jhmr.body.io import (
  UnsafePickleError,
  load_body_model,
  random_body_model_arrays,
  read_smpl_pickle,
  save_body_model_npz,
)
from jhmr.body.joints import JOINT_SET_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS, JointSet
from jhmr.body.smpl import BodyModel, BodyOutput, build_body_model

__all__ = [
  "JOINT_SET_NAMES",
  "SMPL_JOINT_NAMES",
  "SMPL_PARENTS",
  "BodyModel",
  "BodyOutput",
  "JointSet",
  "UnsafePickleError",
  "build_body_model",
  "load_body_model",
  "random_body_model_arrays",
  "read_smpl_pickle",
  "save_body_model_npz",
]
