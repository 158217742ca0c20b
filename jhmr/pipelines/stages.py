"""Programs and their stages: what `jhmr.launch` dispatches on (`config.program`, `config.stage`).

A program module exposes `STAGES = {name: Stage(...)}`; `run_stage` is the one place that refuses
a stage whose inputs are missing, with an error naming them and the stage that makes them.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

Needs = Callable[[object], tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class Stage:
  """`run(config, workdir)`; `needs(config)` lists workdir-relative paths that must exist first,
  made by the stage `made_by`."""

  run: Callable
  needs: Needs = lambda config: ()
  made_by: str = ""


def run_stage(program: str, stages: dict[str, Stage], config, workdir):
  """Runs `stages[config.stage]` after checking its inputs in `workdir`."""
  name = config.get("stage", "all")
  if name not in stages:
    raise ValueError(f"program {program!r} has no stage {name!r}; valid: {', '.join(stages)}")
  stage = stages[name]
  missing = [p for p in stage.needs(config) if not (pathlib.Path(workdir) / p).exists()]
  if missing:
    raise FileNotFoundError(
      f"{program} stage {name!r} needs {', '.join(missing)} in {workdir}; "
      f"run --config.stage={stage.made_by} first"
    )
  return stage.run(config, workdir)
