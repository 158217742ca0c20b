"""Metric writers: TensorBoard event files (tensorboardX), a JSON-lines log and absl logging.

clu's `metric_writers` package imports TensorFlow and TensorBoard at import time, which the
TF-free runtime cannot afford, so this module provides the same `write_scalars(step, scalars)` /
`flush()` interface over tensorboardX. Only process 0 writes files; other processes only log.
"""

from __future__ import annotations

import json
import pathlib

from absl import logging


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl`, TensorBoard events and the log (process 0)."""

  def __init__(self, workdir, *, just_logging: bool = False, tensorboard: bool = True):
    self._jsonl = self._tb = None
    if not just_logging:
      root = pathlib.Path(workdir)
      root.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(root / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())
      if tensorboard:
        import tensorboardX

        self._tb = tensorboardX.SummaryWriter(str(root / "tensorboard"))

  def write_scalars(self, step: int, scalars: dict) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.5g}" for k, v in scalars.items()))
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir) -> list[dict]:
  """The rows of `workdir/metrics.jsonl` ([] when absent)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
