"""Log filters for the launcher: hide the INFO chatter of libraries, keep their warnings.

  from jhmr.log_filters import quiet_library_logs
  quiet_library_logs()  # on absl's handler, after app.run has set it up

Orbax-checkpoint logs about 30 INFO lines per checkpoint save (`checkpoint_manager.py`,
`atomicity.py`, ...), which buries a job's own logs and progress; `python -m jhmr.launch` hides
them unless `--library_logs`.
"""

from __future__ import annotations

import importlib.util
import logging
import os

from absl import logging as absl_logging

# Packages whose INFO records the launcher hides unless --library_logs.
QUIET_LIBRARIES = ("orbax.checkpoint",)


class DropInfoFrom(logging.Filter):
  """A logging filter that drops records below WARNING whose source file lies in `folders`."""

  def __init__(self, folders):
    super().__init__()
    self.folders = tuple(os.path.join(os.path.abspath(f), "") for f in folders)

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.pathname.startswith(self.folders)


def quiet_library_logs(packages=QUIET_LIBRARIES) -> None:
  """Hides the INFO records of `packages` (those installed) on absl's log handler."""
  folders = []
  for name in packages:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
      folders.extend(spec.submodule_search_locations)
  if folders:
    absl_logging.get_absl_handler().addFilter(DropInfoFrom(folders))
