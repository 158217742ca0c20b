"""jhmr.train: one trainer for every method (`train`), the `Task` a method provides, its tasks."""

from jhmr.train.state import TrainState
from jhmr.train.task import ArraySource, Task
from jhmr.train.trainer import Preempted, train

__all__ = ["ArraySource", "Preempted", "Task", "TrainState", "train"]
