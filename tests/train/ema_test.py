"""The trainer's EMA against ema-pytorch 0.8.3 itself (ScoreHMR trains with `ema_pytorch.EMA`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import trainer_config
from jhmr.train.state import ema_decay, ema_update

torch = pytest.importorskip("torch")
EMA = pytest.importorskip("ema_pytorch").EMA

STEPS = 300


def _tree(module):
  return {"w": module.weight.detach().numpy().copy(), "b": module.bias.detach().numpy().copy()}


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(beta=0.995, update_after_step=20, update_every=3),
    dict(beta=0.9, update_after_step=20, update_every=10, inv_gamma=2.0, power=0.75),
    dict(beta=0.999, update_after_step=20, update_every=1, min_value=0.5),
    dict(beta=1.0, update_after_step=20, update_every=3),  # frozen after the warm-up copies
  ],
)
def test_matches_ema_pytorch_at_every_step(kwargs):
  """Random online updates; the EMA driven as the trainer drives it, compared after each step."""
  config = trainer_config(steps=STEPS, batch_size=1, learning_rate=1.0).ema
  config.update(kwargs)
  torch.manual_seed(0)
  online = torch.nn.Linear(4, 3)
  ref = EMA(online, **config.to_dict())
  params = _tree(online)
  ema_params, step = params, jnp.zeros((), jnp.int32)  # as `jhmr.train.trainer.train` initialises

  @jax.jit
  def trainer_step(ema_params, params, step):  # the EMA part of the trainer's jitted update
    new = ema_update(
      ema_params,
      params,
      step,
      beta=config.beta,
      update_after_step=config.update_after_step,
      update_every=config.update_every,
      inv_gamma=config.inv_gamma,
      power=config.power,
      min_value=config.min_value,
    )
    return new, step + 1

  rng = np.random.default_rng(0)
  moved = False
  for i in range(STEPS):
    with torch.no_grad():  # an "optimiser step"
      online.weight.add_(torch.from_numpy(0.1 * rng.normal(size=(3, 4)).astype(np.float32)))
      online.bias.add_(torch.from_numpy(0.1 * rng.normal(size=3).astype(np.float32)))
    ref.update()
    params = _tree(online)
    ema_params, step = trainer_step(ema_params, params, step)
    want = _tree(ref.ema_model)
    for k in want:
      np.testing.assert_allclose(ema_params[k], want[k], rtol=1e-6, atol=1e-6, err_msg=f"step {i}")
    moved |= not np.allclose(want["w"], params["w"])
  assert int(ref.step) == int(step) == STEPS
  assert moved  # the comparison covered real averaging, not only copies


def test_decay_matches_ema_pytorch():
  ref = EMA(torch.nn.Linear(1, 1), beta=0.99, update_after_step=5, inv_gamma=3.0, power=0.5)
  for step in range(40):
    ref.step.fill_(step + 1)  # ema-pytorch reads its counter after the increment
    got = ema_decay(step, beta=0.99, update_after_step=5, inv_gamma=3.0, power=0.5)
    np.testing.assert_allclose(float(got), ref.get_current_decay(), rtol=1e-6, atol=1e-7)


def test_beta_zero_is_the_online_params():
  params = {"a": jnp.arange(3.0)}
  for step in range(25):
    got = ema_update({"a": jnp.zeros(3)}, params, step, beta=0.0)
    np.testing.assert_array_equal(got["a"], params["a"])
