"""`jhmr.keys.KeySeq`: one key per name, stable, never handed out twice."""

import jax
import numpy as np
import pytest

from jhmr.keys import KeySeq, name_key


def test_names_give_distinct_stable_keys():
  a, b = KeySeq(0), KeySeq(0)
  ka, kb = a("camera/yaw"), a("camera/pitch")
  assert not np.array_equal(jax.random.key_data(ka), jax.random.key_data(kb))
  np.testing.assert_array_equal(b("camera/yaw"), ka)  # same seed and name, same key
  np.testing.assert_array_equal(KeySeq(1)("camera/yaw") == ka, [False, False])


def test_a_name_is_handed_out_once():
  keys = KeySeq(0)
  keys("noise")
  with pytest.raises(ValueError, match="'noise' was already used"):
    keys("noise")
  child = keys.child("train")
  child("noise")  # its own name space
  with pytest.raises(ValueError, match="'train/noise' was already used"):
    child("noise")
  with pytest.raises(ValueError, match="already used"):
    keys.child("train")


def test_order_does_not_matter():
  first, second = KeySeq(3), KeySeq(3)
  x = first("a"), first("b")
  y = second("b"), second("a")
  np.testing.assert_array_equal(x[0], y[1])
  np.testing.assert_array_equal(name_key(jax.random.PRNGKey(3), "b"), x[1])
