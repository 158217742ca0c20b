"""ScoreNet: parameter counts of the official variants and the exact cached fast path.
(Equality with PyTorch is proven in tests/convert/scorehmr_test.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.models import MODELS
from jhmr.models.score_net import (
  ScoreNet,
  count_params,
  denoise_cached,
  encode_condition,
  sinusoidal_embedding,
)


@pytest.mark.parametrize(
  "kwargs, expected",
  [
    ({}, 11_307_024),  # released: PARE pose features, pose only
    (dict(cond_dim=2048), 8_155_152),  # ProHMR features
    (dict(use_betas=True), 14_510_000),
    (dict(use_betas=True, cond_dim=2048, betas_cond_dim=2048, shared_cond=True), 12_408_752),
  ],
)
def test_parameter_counts(kwargs, expected):
  net = ScoreNet(**kwargs)
  x = jnp.zeros((1, net.input_dim))
  c = jnp.zeros((1, net.total_cond_dim))
  params = jax.eval_shape(net.init, jax.random.key(0), x, jnp.zeros((1,), jnp.int32), c)
  assert count_params(params) == expected


def test_registry():
  assert MODELS["score_net"] is ScoreNet


def test_sinusoid_layout():
  emb = sinusoidal_embedding(jnp.array([0.0, 3.0]), 8)
  np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=0)
  freqs = np.exp(-np.arange(4) * np.log(10000.0) / 3)
  np.testing.assert_allclose(emb[1], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), 1e-6)


@pytest.mark.parametrize("cond_dim", [0, 40])
def test_cached_path_equals_module(cond_dim):
  net = ScoreNet(cond_dim=cond_dim, hidden=48)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k1, (6, 144))
  c = 3.0 + 2.0 * jax.random.normal(k2, (6, cond_dim)) if cond_dim else None
  params = jax.jit(net.init)(k3, x, jnp.zeros((6,), jnp.int32), c)
  # Perturb LayerNorm affines away from (1, 0) so every term of the algebra is exercised.
  params = jax.tree_util.tree_map_with_path(
    lambda p, v: v + 0.2 * jax.random.normal(k4, v.shape) if "layer_norm" in str(p) else v,
    params,
  )
  apply = jax.jit(net.apply)
  cached = jax.jit(lambda p, x, t, c: denoise_cached(p, x, t, encode_condition(p, c, net), net))
  for t in (0, 2, 50, 999):
    want = apply(params, x, jnp.full((6,), t), c)
    np.testing.assert_allclose(cached(params, x, t, c), want, atol=3e-5, rtol=1e-5)


def test_bad_shapes_raise():
  net = ScoreNet(cond_dim=8, hidden=16)
  x = jnp.zeros((2, 144))
  params = jax.eval_shape(net.init, jax.random.key(0), x, 0, jnp.zeros((2, 8)))
  shape_of = lambda *args: jax.eval_shape(net.apply, params, *args)  # traces, never runs
  assert shape_of(x, 0, jnp.zeros((2, 8))).shape == (2, 144)
  with pytest.raises(ValueError, match=r"x \[..., 144\]"):
    shape_of(jnp.zeros((2, 143)), 0, jnp.zeros((2, 8)))
  with pytest.raises(ValueError, match="condition"):
    shape_of(x, 0, None)
  with pytest.raises(ValueError, match="condition"):
    shape_of(x, 0, jnp.zeros((2, 9)))
