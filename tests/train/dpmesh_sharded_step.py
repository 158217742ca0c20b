"""One DPMesh training step (tiny model, NKR teacher) on N fake CPU devices, as a subprocess.

`python tests/train/dpmesh_sharded_step.py OUT.npz --devices N [--fsdp]` writes the trainable
parameters after the step (flattened); `tests/train/dpmesh_sharding_test.py` compares 1 and 8
devices.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--fsdp", action="store_true")
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  sys.path.insert(0, root)
  import tempfile

  import jax
  import numpy as np
  from flax import traverse_util

  from configs.common import trainer_config
  from jhmr.models.dpmesh import DPMesh, random_variables
  from jhmr.train import trainer
  from jhmr.train.dpmesh_task import PAPER_WEIGHTS, make_dpmesh_task, param_labels
  from tests.guidance.conftest import make_tiny_body
  from tests.models.dpmesh_test import light_config
  from tests.train.dpmesh_task_test import _examples

  jax.config.update("jax_threefry_partitionable", True)  # as jhmr.launch: same bits on any mesh
  body = make_tiny_body()
  model = DPMesh(light_config())
  task = make_dpmesh_task(
    model,
    _examples(body, 8),
    body,
    init_variables=random_variables(model, seed=0),
    teacher_variables=random_variables(model, seed=1),
    weights=PAPER_WEIGHTS,
  )
  config = trainer_config(steps=1, batch_size=8, learning_rate=1e-2)
  config.optimizer.update(name="sgd", momentum=0.9)  # update = -lr * g: no sign flips of Adam
  config.seed = 0
  config.train.update(progress=False, tensorboard=False, checkpoint_every=10**6)
  config.ema.beta = 0.0
  if args.fsdp:
    config.train.update(param_sharding="fsdp", fsdp_min_size=1)
  with tempfile.TemporaryDirectory() as workdir:
    state = trainer.train(config, workdir, task)
  sharded = [x for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated]
  print(f"devices={jax.device_count()} sharded_leaves={len(sharded)}", flush=True)
  labels = traverse_util.flatten_dict(param_labels(state.params), sep="/")
  params = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  np.savez(args.out, **{k: np.asarray(v) for k, v in params.items() if labels[k] != "frozen"})


if __name__ == "__main__":
  main(sys.argv[1:])
