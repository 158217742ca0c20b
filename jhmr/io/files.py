"""Writing files atomically: a temporary file in the target's directory, moved over the target
with `os.replace` only once complete. A reader never sees half a file, and a failed or interrupted
write leaves the old file as it was."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator


def _new_file_mode() -> int:
  """The mode `open()` would give a new file (0o666 minus the umask), read without changing the
  process umask (Linux: /proc/self/status; elsewhere 0o644)."""
  try:
    with open("/proc/self/status") as status:
      for line in status:
        if line.startswith("Umask:"):
          return 0o666 & ~int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  return 0o644


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a temporary path next to `path` to write to; on a clean exit it is moved over `path`
  (with the permissions of a normally created file), on an exception it is removed.

  `suffix` ends the temporary name (writers that pick a format by extension need e.g. ".mp4").
  """
  path = pathlib.Path(path)
  directory = path.parent if str(path.parent) else pathlib.Path(".")
  directory.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:  # the data is on disk before the rename makes it visible
      os.fsync(f.fileno())
    os.chmod(tmp, _new_file_mode())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
