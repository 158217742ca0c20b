"""Tests of jhmr.convert.torch_pickle: torch.save files read without torch; foreign globals
refused by name."""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types

import numpy as np
import pytest

from jhmr.convert import torch_io, torch_pickle

torch = pytest.importorskip("torch")


@contextlib.contextmanager
def fake_module(name: str, **attrs):
  """Registers module `name` (and parents) in sys.modules for the duration (to pickle by name)."""
  added = []
  parts = name.split(".")
  for i in range(1, len(parts) + 1):
    mod_name = ".".join(parts[:i])
    if mod_name not in sys.modules:
      sys.modules[mod_name] = types.ModuleType(mod_name)
      added.append(mod_name)
  module = sys.modules[name]
  for key, value in attrs.items():
    value.__module__ = name
    value.__qualname__ = key
    setattr(module, key, value)
  try:
    yield module
  finally:
    for mod_name in added:
      del sys.modules[mod_name]


def _save(obj, path, legacy=False):
  torch.save(obj, str(path), _use_new_zipfile_serialization=not legacy)
  return path


@pytest.mark.parametrize("legacy", [False, True])
def test_tensors_state_dict_and_scalars(tmp_path, legacy):
  torch.manual_seed(0)
  lin = torch.nn.Linear(3, 2)
  big = torch.arange(12, dtype=torch.float64).reshape(3, 4)
  obj = {
    "state_dict": lin.state_dict(),  # an OrderedDict carrying `_metadata`
    "step": 7,
    "lr": 1e-4,
    "name": "x",
    "flags": (True, None),
    "view": big.t(),  # non-contiguous view of a shared storage
    "same": big,
    "ints": torch.tensor([1, -2], dtype=torch.int64),
    "mask": torch.tensor([True, False]),
    "half": torch.tensor([1.5], dtype=torch.bfloat16),
    "param": torch.nn.Parameter(torch.ones(2)),
    "scalar": torch.tensor(3.0),
  }
  got = torch_pickle.load_checkpoint(_save(obj, tmp_path / "a.pt", legacy))
  assert list(got["state_dict"]) == ["weight", "bias"]
  np.testing.assert_array_equal(got["state_dict"]["weight"], lin.weight.detach().numpy())
  assert got["step"] == 7 and got["lr"] == 1e-4 and got["name"] == "x"
  assert got["flags"] == (True, None)
  np.testing.assert_array_equal(got["view"], big.t().numpy())
  np.testing.assert_array_equal(got["same"], big.numpy())
  assert got["ints"].dtype == np.int64 and got["mask"].dtype == np.bool_
  assert float(got["half"][0]) == 1.5 and got["half"].dtype.name == "bfloat16"
  np.testing.assert_array_equal(got["param"], [1.0, 1.0])
  assert got["scalar"].shape == () and float(got["scalar"]) == 3.0
  # the existing entry point goes through the same reader
  np.testing.assert_array_equal(torch_io.load_torch_file(tmp_path / "a.pt")["view"], got["view"])


def test_lightning_checkpoint_with_stand_ins(tmp_path):
  class CfgNode(dict):
    def __init__(self, init=None):
      super().__init__(init or {})
      self.__dict__["__immutable__"] = False

  class ModelCheckpoint:
    pass

  class DictConfig:  # pickles like omegaconf: __dict__ with _content of nodes
    def __init__(self, content):
      self._metadata, self._parent, self._content = None, None, content

  class AnyNode:
    def __init__(self, val, parent):
      self._val, self._parent = val, parent

  path = tmp_path / "pare_like.ckpt"
  with (
    fake_module("yacs.config", CfgNode=CfgNode),
    fake_module("pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint),
    fake_module("omegaconf.dictconfig", DictConfig=DictConfig),
    fake_module("omegaconf.nodes", AnyNode=AnyNode),
  ):
    cfg = DictConfig({})
    cfg._content = {"lr": AnyNode(0.5, cfg), "sub": DictConfig({"n": AnyNode(3, None)})}
    ckpt = {
      "epoch": 3,
      "pytorch-lightning_version": "1.1.8",
      "state_dict": torch.nn.Linear(2, 2).state_dict(),
      "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.25), "monitor": "loss"}},
      "optimizer_states": [{"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": []}],
      "lr_schedulers": [{"milestones": collections.Counter([10, 20])}],
      "hparams_name": "hparams",
      "hyper_parameters": {"MODEL": CfgNode({"BACKBONE": "hrnet_w32-conv", "N": 2})},
      "hmr2_like": {"cfg": cfg},
    }
    _save(ckpt, path)
  assert "yacs.config" not in sys.modules  # the loader must not need the real classes

  allowed = {**torch_pickle.LIGHTNING_PARE, **torch_pickle.LIGHTNING_HMR2}
  got = torch_pickle.load_checkpoint(path, allowed)
  assert got["hyper_parameters"] == {"MODEL": {"BACKBONE": "hrnet_w32-conv", "N": 2}}
  assert type(got["hyper_parameters"]["MODEL"]) is dict
  (key,) = got["callbacks"]
  assert key == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
  assert float(got["callbacks"][key]["best_model_score"]) == 0.25
  assert got["hmr2_like"]["cfg"] == {"lr": 0.5, "sub": {"n": 3}}
  assert got["lr_schedulers"][0]["milestones"] == {10: 1, 20: 1}
  assert set(got["state_dict"]) == {"weight", "bias"}
  raw = torch_pickle.load_checkpoint(path, allowed, plain=False)
  assert isinstance(raw["hyper_parameters"]["MODEL"], torch_pickle.DictStandIn)

  # the plain tensor allow-list refuses the same file, naming the first foreign global
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"pare_like\.ckpt.*[a-z_.]+\.[A-Za-z]+"):
    torch_pickle.load_checkpoint(path)
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"omegaconf\.dictconfig\.DictConfig"):
    torch_pickle.load_checkpoint(path, "pare")


_SIDE_EFFECT: list[str] = []


def _boom(*args):
  _SIDE_EFFECT.append("ran")


class _Reduce:
  def __init__(self, fn, args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
  ("fn", "args", "name"),
  [
    (_boom, (), r"evil_mod\._boom"),
    (sys.modules["os"].system, ("true",), r"(posix|os)\.system"),
    (eval, ("1",), r"builtins\.eval"),
  ],
)
def test_foreign_global_refused_by_name(tmp_path, legacy, fn, args, name):
  path = tmp_path / "evil.pt"
  if fn is _boom:
    with fake_module("evil_mod", _boom=lambda *a: _SIDE_EFFECT.append("ran")):
      fn = sys.modules["evil_mod"]._boom
      _save({"w": torch.zeros(2), "x": _Reduce(fn, args)}, path, legacy)
  else:
    _save({"w": torch.zeros(2), "x": _Reduce(fn, args)}, path, legacy)
  for kind in torch_pickle.CHECKPOINT_KINDS:
    with pytest.raises(torch_pickle.UnsafePickleError, match=f"evil.pt.*{name}"):
      torch_pickle.load_checkpoint(path, kind)
  with pytest.raises(ValueError, match=name):  # load_torch_file: UnsafePickleError is a ValueError
    torch_io.load_torch_file(path)
  assert not _SIDE_EFFECT


def test_plain_pickle_and_errors(tmp_path):
  groups = [{"imgname": np.array(["a.jpg"]), "center": np.zeros((1, 2), np.float32)}]
  path = tmp_path / "groups.pkl"
  path.write_bytes(pickle.dumps(groups, protocol=2))
  got = torch_pickle.load_pickle(path)
  assert got[0]["imgname"][0] == "a.jpg" and got[0]["center"].shape == (1, 2)
  path.write_bytes(pickle.dumps([_Reduce(_boom, ())]))
  with pytest.raises(
    torch_pickle.UnsafePickleError, match=r"groups\.pkl.*torch_pickle_test\._boom"
  ):
    torch_pickle.load_pickle(path)
  bad = tmp_path / "bad.pt"
  bad.write_bytes(b"not a checkpoint")
  with pytest.raises(torch_pickle.CheckpointError, match=r"bad\.pt"):
    torch_pickle.load_checkpoint(bad)
  with pytest.raises(FileNotFoundError, match="missing.pt"):
    torch_pickle.load_checkpoint(tmp_path / "missing.pt")
  assert not _SIDE_EFFECT
