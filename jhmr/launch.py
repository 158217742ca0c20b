"""Command line: `python -m jhmr.launch --config configs/<name>.py[:variant] --workdir DIR`.

Any config field can be overridden (`--config.train.steps=100`). `config.program` picks the program
from `PROGRAMS` and `config.stage` (default `all`) one of its stages (`jhmr.pipelines.stages`);
every stage is an importable `fn(config, workdir)` that notebooks call directly.
This is the only module that touches environment variables or `jax.config`. Multi-host: pass
`--jax_distributed` (auto-detected on SLURM / TPU pods, or give the coordinator flags).
orbax-checkpoint's INFO logs (about 30 lines per checkpoint save) are hidden unless
`--library_logs` (`jhmr.log_filters`); warnings and errors always show.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, results).")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port (else auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes (else auto-detect).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (else auto-detect).")
_LIBRARY_LOGS = flags.DEFINE_bool(
  "library_logs",
  False,
  "Show the INFO logs of jhmr.log_filters.QUIET_LIBRARIES (orbax-checkpoint: about 30 lines per "
  "checkpoint save). Hidden by default; their warnings and errors always show.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _scorehmr():
  from jhmr.pipelines import scorehmr

  return scorehmr.STAGES


def _body_demo():
  from jhmr.pipelines import body_demo
  from jhmr.pipelines.stages import Stage

  return {"all": Stage(body_demo.run)}


def _refine():
  from jhmr.pipelines import refine

  return refine.STAGES


def _scorehmr_paper():
  from jhmr.pipelines import scorehmr_paper

  return scorehmr_paper.STAGES


def _diffusion_hpc():
  from jhmr.pipelines import diffusion_hpc

  return diffusion_hpc.STAGES


def _dpmesh():
  from jhmr.pipelines import dpmesh

  return dpmesh.STAGES


def _image_to_mesh():
  from jhmr.pipelines import image_to_mesh

  return image_to_mesh.STAGES


# config.program -> its stages (imported on use: a program's heavy imports stay out of the others).
PROGRAMS = {
  "scorehmr": _scorehmr,
  "body_demo": _body_demo,
  "refine": _refine,
  "scorehmr_paper": _scorehmr_paper,
  "dpmesh": _dpmesh,
  "image_to_mesh": _image_to_mesh,
  "diffusion_hpc": _diffusion_hpc,
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tfds may import TF: keep it quiet
  if not _LIBRARY_LOGS.value:
    from jhmr.log_filters import quiet_library_logs

    quiet_library_logs()
  import jax

  jax.config.update("jax_threefry_partitionable", True)  # same random bits on any mesh
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info(
    "process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count()
  )
  config = _CONFIG.value
  if config.program not in PROGRAMS:
    raise app.UsageError(f"unknown config.program {config.program!r}; valid: {sorted(PROGRAMS)}")
  from jhmr.pipelines.stages import run_stage

  stages = PROGRAMS[config.program]()
  if config.get("stage", "all") not in stages:
    raise app.UsageError(
      f"program {config.program!r} has no stage {config.stage!r}; valid: {sorted(stages)}"
    )
  from jhmr.errors import InputError

  try:
    run_stage(config.program, stages, config, _WORKDIR.value)
  except (FileNotFoundError, InputError) as e:  # the user's files: one readable line
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  sys.path.insert(0, os.getcwd())  # `from configs import common` inside config files
  app.run(main)
