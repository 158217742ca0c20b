"""The launcher's log filter (jhmr.log_filters): orbax's INFO records hidden, warnings kept."""

import logging
import os
import subprocess
import sys
import textwrap

from jhmr import log_filters


def _record(pathname: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_drop_info_from_keeps_warnings_and_other_folders(tmp_path):
  quiet = tmp_path / "lib"
  keep = log_filters.DropInfoFrom([str(quiet)])
  assert not keep.filter(_record(str(quiet / "sub" / "module.py"), logging.INFO))
  assert keep.filter(_record(str(quiet / "module.py"), logging.WARNING))
  assert keep.filter(_record(str(tmp_path / "library" / "module.py"), logging.INFO))  # lib/ only
  assert keep.filter(_record(str(tmp_path / "jhmr" / "module.py"), logging.INFO))


def test_launcher_hides_orbax_info_on_a_checkpoint_save(tmp_path):
  """One orbax save under absl's handler, with and without the launcher's filter."""
  script = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    import orbax.checkpoint as ocp
    from absl import app, logging
    from jhmr import log_filters

    def main(argv):
      if argv[1] == "quiet":
        log_filters.quiet_library_logs()
      with ocp.CheckpointManager({str(tmp_path)!r} + "/" + argv[1]) as manager:
        manager.save(0, args=ocp.args.StandardSave({{"w": np.ones(3)}}))
        manager.wait_until_finished()
      logging.info("jhmr line")

    app.run(main)
    """
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = lambda mode: (
    subprocess.run(
      [sys.executable, "-c", script, mode], capture_output=True, text=True, env=env, check=True
    ).stderr
  )
  loud, quiet = run("loud"), run("quiet")
  assert "checkpoint_manager.py" in loud  # orbax does log at INFO: the test can see the filter
  assert "checkpoint_manager.py" not in quiet
  assert "jhmr line" in quiet
