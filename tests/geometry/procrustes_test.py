"""Similarity Procrustes: exact recovery of random similarities, reflection fix, weights."""

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from jhmr.eval import metrics
from jhmr.geometry import procrustes

_transform = jax.jit(procrustes.similarity_transform)
_align = jax.jit(procrustes.similarity_procrustes)
_pa = jax.jit(metrics.pa_mpjpe)


def _random_similarity(seed):
  rng = np.random.default_rng(seed)
  rot = Rotation.random(random_state=seed).as_matrix()
  scale = rng.uniform(0.3, 3.0)
  trans = rng.normal(size=3) * 2.0
  return rng, scale, rot, trans


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_recovers_random_similarity(seed):
  rng, scale, rot, trans = _random_similarity(seed)
  x = rng.normal(size=(24, 3))
  y = scale * x @ rot.T + trans
  s, r, t = _transform(x.astype(np.float32), y.astype(np.float32))
  np.testing.assert_allclose(s, scale, rtol=1e-4)
  np.testing.assert_allclose(r, rot, atol=1e-4)
  np.testing.assert_allclose(t, trans, atol=1e-3 * (1 + np.abs(trans).max()))
  np.testing.assert_allclose(
    _align(x.astype(np.float32), y.astype(np.float32)), y, atol=2e-4 * (1 + scale)
  )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_pa_mpjpe_invariant_to_similarity_of_prediction(seed):
  rng, scale, rot, trans = _random_similarity(seed)
  target = rng.normal(size=(2, 17, 3)).astype(np.float32)
  pred = (target + 0.1 * rng.normal(size=target.shape)).astype(np.float32)
  moved = (scale * pred @ rot.T + trans).astype(np.float32)
  base = _pa(pred, target)
  np.testing.assert_allclose(_pa(moved, target), base, rtol=1e-3, atol=1e-5)
  # ... and the alignment never increases what it minimises, the sum of squared distances (the
  # mean distance, MPJPE, can rise slightly: least squares is not least mean distance).
  squared = lambda p: np.sum((np.asarray(p, np.float64) - target) ** 2, axis=(-2, -1))
  assert np.all(squared(_align(pred, target)) <= squared(pred) * (1 + 1e-5))


def test_reflection_is_not_used():
  """A mirrored target is fitted by a proper rotation (det +1), never a reflection."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 3)).astype(np.float32)
  y = x * np.array([-1.0, 1.0, 1.0], np.float32)
  _, r, _ = _transform(x, y)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-5)
  assert float(np.abs(_align(x, y) - y).max()) > 0.1  # a reflection would have fitted exactly


def test_weights_ignore_outliers_and_batches():
  rng, scale, rot, trans = _random_similarity(7)
  x = rng.normal(size=(3, 20, 3)).astype(np.float32)
  y = (scale * x @ rot.T + trans).astype(np.float32)
  y[:, :4] += 5.0  # corrupt 4 points
  w = np.ones((3, 20), np.float32)
  w[:, :4] = 0.0
  s, r, t = _transform(x, y, w)
  np.testing.assert_allclose(s, np.full(3, scale), rtol=1e-4)
  np.testing.assert_allclose(r, np.broadcast_to(rot, (3, 3, 3)), atol=1e-4)
  # Unweighted, the fit is pulled away by the outliers.
  s2, _, _ = _transform(x, y)
  assert np.abs(np.asarray(s2) - scale).max() > 1e-2
