"""A tiny regression task for the trainer tests, runnable as a script in subprocesses.

`python tests/train/toy.py WORKDIR STEPS [--devices N] [--sleep S] [--out FILE]` trains it (resuming
from WORKDIR) and writes the final params and EMA params to FILE (.npz). With --coordinator it joins
a multi-process run (`jax.distributed.initialize`) on localhost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def make_config(steps: int, batch_size: int = 16):
  from configs.common import trainer_config

  config = trainer_config(steps=steps, batch_size=batch_size, learning_rate=1e-2)
  config.seed = 3
  config.train.log_every = 5
  config.train.checkpoint_every = 5
  config.train.progress = False
  config.train.tensorboard = False
  config.ema.update(beta=0.9, update_every=2, update_after_step=3)
  return config


def make_task(sleep: float = 0.0, num_examples: int = 40):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jhmr.train.task import ArraySource, Task

  rng = np.random.default_rng(0)
  x = rng.normal(size=(num_examples, 5)).astype(np.float32)
  y = np.tanh(x @ rng.normal(size=(5, 3))).astype(np.float32)

  class SlowSource(ArraySource):
    def __getitem__(self, index):
      time.sleep(sleep)
      return super().__getitem__(index)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
      h = nn.Dense(16, use_bias=False)(x)  # BatchNorm follows: a bias would get no gradient
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
      h = nn.Dropout(0.1, deterministic=not train)(nn.gelu(h))
      return nn.Dense(3)(h)

  net = Net()

  def init(key, batch):
    return net.init(key, batch["x"], train=False)

  def loss(params, state, batch, key):
    pred, new_state = net.apply(
      {"params": params, **state}, batch["x"], rngs={"dropout": key}, mutable=["batch_stats"]
    )
    mse = jnp.mean((pred - batch["y"]) ** 2)
    return mse, ({"mse": mse}, new_state)

  def evaluate(params, state, step):
    pred = net.apply({"params": params, **state}, x, train=False)
    return {"mse": float(jax.device_get(jnp.mean((pred - y) ** 2)))}

  return Task(
    name="toy", init=init, loss=loss, source=SlowSource({"x": x, "y": y}), evaluate=evaluate
  )


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("steps", type=int)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--out", default="")
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--no_checkpoints", action="store_true")
  parser.add_argument("--log_every", type=int, default=5)
  parser.add_argument("--fsdp", action="store_true", help="shard every divisible leaf")
  args = parser.parse_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  import jax
  import numpy as np

  if args.coordinator:
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=60,
    )
  from jhmr.train import trainer

  config = make_config(args.steps)
  config.train.log_every = args.log_every
  if args.no_checkpoints:
    config.train.checkpoint_every = 10**9
  if args.fsdp:
    config.train.param_sharding = "fsdp"
    config.train.fsdp_min_size = 1
  print(f"devices={jax.device_count()} processes={jax.process_count()}", flush=True)
  state = trainer.train(config, args.workdir, make_task(args.sleep))
  sharded = [x for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated]
  print(f"sharded_leaves={len(sharded)}", flush=True)
  if args.out and jax.process_index() == 0:
    flat = {
      "/".join(str(k.key) for k in path): np.asarray(jax.device_get(leaf))
      for tree in ("params", "ema_params")
      for path, leaf in jax.tree_util.tree_flatten_with_path({tree: getattr(state, tree)})[0]
    }
    flat["step"] = np.asarray(jax.device_get(state.step))
    np.savez(args.out, **flat)
  if args.coordinator:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
