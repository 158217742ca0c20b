"""Tests of jhmr.io.files.atomic_path."""

from __future__ import annotations

import os
import stat

import pytest

from jhmr.io import files


def test_complete_write_replaces_the_target_with_normal_permissions(tmp_path):
  target = tmp_path / "sub" / "out.bin"
  with files.atomic_path(target) as tmp:
    assert not target.exists() and os.path.dirname(tmp) == str(target.parent)
    with open(tmp, "wb") as f:
      f.write(b"new")
  assert target.read_bytes() == b"new"
  umask = os.umask(0o022)
  os.umask(umask)
  assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
  assert os.listdir(target.parent) == ["out.bin"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
  target = tmp_path / "out.bin"
  target.write_bytes(b"old")
  with pytest.raises(RuntimeError, match="disk on fire"):
    with files.atomic_path(target) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("disk on fire")
  assert target.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["out.bin"]
