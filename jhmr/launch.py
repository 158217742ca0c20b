"""Command line: `python -m jhmr.launch --config configs/<name>.py[:variant] --workdir DIR`.

Any config field can be overridden (`--config.train.steps=100`). `config.task` picks the program
from `TASKS`; every program is an importable `fn(config, workdir)` that notebooks call directly.
This is the only module that touches environment variables or `jax.config`. Multi-host: pass
`--jax_distributed` (auto-detected on SLURM / TPU pods, or give the coordinator flags).
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
flags.mark_flags_as_required(["config", "workdir"])


def _scorehmr(config, workdir):
  from jhmr.pipelines import scorehmr

  return scorehmr.run(config, workdir)


def _train(config, workdir):
  from jhmr.pipelines import scorehmr

  return scorehmr.train_models(config, workdir)


def _evaluate(config, workdir):
  from jhmr.pipelines import scorehmr

  return scorehmr.evaluate(config, workdir)


def _refine(config, workdir):
  """ScoreHMR refinement + evaluation with the models already trained in `workdir`."""
  import pathlib

  from jhmr.pipelines import scorehmr

  missing = [d for d in ("regressor", "score_model") if not (pathlib.Path(workdir) / d).is_dir()]
  if missing:
    raise FileNotFoundError(
      f"task refine needs trained models in {workdir}; missing {', '.join(missing)} "
      "(train them first with --config.task=train or the default task)"
    )
  return scorehmr.evaluate(config, workdir)


def _body_demo(config, workdir):
  from jhmr.pipelines import body_demo

  return body_demo.run(config, workdir)


TASKS = {
  "scorehmr": _scorehmr,
  "train": _train,
  "evaluate": _evaluate,
  "refine": _refine,
  "body_demo": _body_demo,
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tfds may import TF: keep it quiet
  import jax

  jax.config.update("jax_threefry_partitionable", True)  # same random bits on any mesh
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info(
    "process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count()
  )
  config = _CONFIG.value
  if config.task not in TASKS:
    raise app.UsageError(f"unknown config.task {config.task!r}; valid: {sorted(TASKS)}")
  TASKS[config.task](config, _WORKDIR.value)


if __name__ == "__main__":
  sys.path.insert(0, os.getcwd())  # `from configs import common` inside config files
  app.run(main)
