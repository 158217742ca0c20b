"""Training throughput of the shared trainer (`jhmr.train.train`): steps/s and examples/s of the
ScoreHMR score model and of the HMR regressor, against a bare `jax.jit` + optax step of the same
loss in the same process (no mesh/shardings, EMA, data pipeline, metrics or checkpoints), so the
ratio is the trainer's overhead.

  .venv/bin/python benchmarks/train.py [--steps 30] [--warmup 10] [--repeats 10] [--full]

Default sizes are those of the main job's default run (configs/scorehmr.py: score net width 512
on the regressor's 128-D features; ResNet-18 at 1/4 width on 64 px crops, batch 64,
'anny-tiny' body). `--full` uses the official sizes (score net width 1024, 2048-D ResNet-50
features, batch 128; ResNet-50 on 224 px crops, batch 64, the 13k-vertex body): for a GPU.
Runs unchanged on GPU (all devices of the process form the data-parallel mesh).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

sys.path.insert(0, __file__.rsplit("/", 1)[0])
sys.path.insert(0, __file__.rsplit("/", 2)[0])
from common import print_table, time_call  # noqa: E402

from configs.common import trainer_config  # noqa: E402
from jhmr.body import load_body_model  # noqa: E402
from jhmr.data import synthesis  # noqa: E402
from jhmr.data.example import BatchSource  # noqa: E402
from jhmr.diffusion.schedules import make_alphas_cumprod  # noqa: E402
from jhmr.keys import KeySeq  # noqa: E402
from jhmr.models.hmr import HMR, feature_dim  # noqa: E402
from jhmr.models.score_net import ScoreNet  # noqa: E402
from jhmr.train import trainer  # noqa: E402
from jhmr.train.metrics import read_metrics  # noqa: E402
from jhmr.train.state import make_optimizer  # noqa: E402
from jhmr.train.task import ArraySource  # noqa: E402
from jhmr.train.tasks import make_hmr_task, make_score_task  # noqa: E402


def score_task(full: bool, n: int):
  dim = 2048 if full else 128
  net = ScoreNet(cond_dim=dim, hidden=1024 if full else 512)
  rng = np.random.default_rng(0)
  source = ArraySource(
    {
      "pose6d": rng.uniform(-1, 1, (n, 144)).astype(np.float32),
      "features": rng.normal(size=(n, dim)).astype(np.float32),
    }
  )
  return make_score_task(net, source, make_alphas_cumprod("cosine")), 128


def hmr_task(full: bool, n: int):
  body = load_body_model(None if full else "anny-tiny")
  model = HMR(
    depth=50 if full else 18,
    width=64 if full else 16,
    num_betas=body.num_betas,
    hidden=1024 if full else 256,
  )
  spec = synthesis.SceneSpec(crop_size=224 if full else 64)
  people = synthesis.single_view_set(KeySeq(0), n, body, synthesis.PoseSource(), spec)
  source = BatchSource(people)
  assert feature_dim(model.depth, model.width) > 0
  return make_hmr_task(model, body, source), 64


def bare_step_time(task, config, batch, repeats):
  """Seconds per step of a plain jitted optax step on one fixed batch (the reference)."""
  tx = make_optimizer(config)
  variables = dict(jax.jit(task.init)(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, model_state, key):
    (loss, (_, model_state)), grads = jax.value_and_grad(task.loss, has_aux=True)(
      params, model_state, batch, key
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  state = (params, opt_state, variables)

  def run():
    nonlocal state
    *state, loss = step(*state, jax.random.PRNGKey(1))
    return loss

  return time_call(run, repeats=repeats, warmup=3)


def trainer_rate(task, config, steps, warmup):
  """(steps/s, examples/s) of `trainer.train` after `warmup` steps (compilation excluded)."""
  config.train.update(steps=warmup + steps, log_every=warmup, checkpoint_every=warmup + steps)
  config.train.progress = False
  config.train.tensorboard = False
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(config, workdir, task)
    rows = read_metrics(workdir)
  # rows: [warm-up interval (with compilation), steady intervals...]
  steady = [r for r in rows if r["step"] > warmup]
  return float(np.mean([r["steps_per_s"] for r in steady])), float(
    np.mean([r["examples_per_s"] for r in steady])
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--full", action="store_true")
  args = parser.parse_args()
  rows = []
  n = 512
  for name, make in (("score model", score_task), ("HMR regressor", hmr_task)):
    task, batch_size = make(args.full, n)
    config = trainer_config(steps=args.steps, batch_size=batch_size, learning_rate=1e-4)
    config.seed = 0
    examples = [task.source[i] for i in range(batch_size)]
    batch = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *examples)
    ref = bare_step_time(task, config, batch, args.repeats)
    sps, eps = trainer_rate(
      task, ml_collections.ConfigDict(config.to_dict()), args.steps, args.warmup
    )
    rows.append([name, batch_size, sps, eps, 1.0 / ref, batch_size / ref, sps * ref])
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
  print_table(
    [
      "model",
      "batch",
      "trainer steps/s",
      "trainer examples/s",
      "bare steps/s",
      "bare examples/s",
      "trainer / bare",
    ],
    rows,
  )


if __name__ == "__main__":
  main()
