"""Randomness split by name: `keys = KeySeq(seed)`, then `keys("camera/yaw")`.

Each purpose gets its own key, `jax.random.fold_in(root, crc32(name))`: stable across runs and
Python versions (no `hash()`), independent of the order in which purposes ask, and never handed
out twice: asking for the same name again raises, so no key is reused by accident. `child(name)`
gives a sub-sequence whose names live in their own space (`keys.child("train")("poses")`).

It sits below every floor of the house (it imports only jax), so any module may use it.
"""

from __future__ import annotations

import zlib

import jax


def name_key(key: jax.Array, name: str) -> jax.Array:
  """`key` folded with the stable 32-bit hash of `name` (pure; the same name gives the same key)."""
  return jax.random.fold_in(key, zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF)


class KeySeq:
  """Hands out one key per name from a root (a seed or a key); each name at most once."""

  def __init__(self, seed_or_key: int | jax.Array, *, path: str = ""):
    if isinstance(seed_or_key, int):
      seed_or_key = jax.random.PRNGKey(seed_or_key)
    self._root = seed_or_key
    self._path = path
    self._used: set[str] = set()

  def __call__(self, name: str) -> jax.Array:
    """The key of `name`; raises ValueError if `name` was already handed out."""
    if not name:
      raise ValueError("a key needs a non-empty name")
    if name in self._used:
      raise ValueError(f"key {self._path + name!r} was already used; give each purpose its name")
    self._used.add(name)
    return name_key(self._root, name)

  def child(self, name: str) -> KeySeq:
    """A `KeySeq` rooted at the key of `name` (which counts as used here)."""
    return KeySeq(self(name), path=f"{self._path}{name}/")
