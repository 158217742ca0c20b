"""Tests of jhmr.io.estimates: WHAM / GVHMR outputs (fixtures written here in the documented
layout, without joblib or torch)."""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np
import pytest

from jhmr.io import estimates
from tests.io.tracks_test import joblib_bytes


def _wham_tracks(rng):
  out = collections.defaultdict(dict)
  for tid, t in ((3, 4), (1, 2)):
    out[tid]["pose"] = rng.normal(size=(t, 72)).astype(np.float32)
    out[tid]["trans"] = rng.normal(size=(t, 3)).astype(np.float32)
    out[tid]["pose_world"] = rng.normal(size=(t, 72)).astype(np.float32)
    out[tid]["trans_world"] = rng.normal(size=(t, 3)).astype(np.float32)
    out[tid]["betas"] = rng.normal(size=(t, 10)).astype(np.float32)
    out[tid]["verts"] = np.zeros((t, 6890, 3), np.float32)
    out[tid]["frame_ids"] = np.arange(5, 5 + t)[::-1].copy()
  return out


def test_read_wham(tmp_path):
  data = _wham_tracks(np.random.default_rng(0))
  path = tmp_path / "wham_output.pkl"
  path.write_bytes(joblib_bytes(data, compress=False))  # WHAM: uncompressed joblib.dump
  got = estimates.read_wham(path, image_size=(480, 640))
  assert got.ids == (1, 3) and got.source == "wham"
  assert got.focal_length == pytest.approx(800.0) and got.image_size == (480, 640)
  tr = got[3]
  order = np.argsort(data[3]["frame_ids"])
  np.testing.assert_array_equal(tr.frames, [5, 6, 7, 8])
  pose = data[3]["pose"][order].reshape(4, 24, 3)
  np.testing.assert_allclose(tr.global_orient, pose[:, 0])
  np.testing.assert_allclose(tr.body_pose, pose[:, 1:])
  np.testing.assert_allclose(tr.betas, data[3]["betas"][order])
  np.testing.assert_allclose(tr.translation, data[3]["trans"][order])
  assert np.isnan(tr.boxes).all() and tr.observed.all()


def test_read_wham_missing_key(tmp_path):
  data = _wham_tracks(np.random.default_rng(1))
  del data[1]["trans"]
  path = tmp_path / "wham_output.pkl"
  path.write_bytes(joblib_bytes(data, compress=False))
  with pytest.raises(estimates.EstimateFileError, match=r"wham_output\.pkl.*'trans'.*track 1"):
    estimates.read_wham(path)


def test_read_wham_refuses_unsafe_global(tmp_path):
  path = tmp_path / "wham_output.pkl"
  path.write_bytes(pickle.dumps({0: {"pose": collections.Counter()}}, protocol=2))
  with pytest.raises(estimates.UnsafePickleError, match="Counter"):
    estimates.read_wham(path)


# torch.save zip layout: <archive>/data.pkl whose tensors are
# torch._utils._rebuild_tensor_v2(persistent ('storage', torch.FloatStorage, key, 'cpu', n), ...)
# and <archive>/data/<key> holding the raw little-endian bytes.


class _Global:
  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # only so that pickle's save_reduce accepts it
    raise NotImplementedError


class _Tensor:
  def __init__(self, array, key):
    self.array, self.key = array, key

  def __reduce__(self):
    a = self.array
    stride = tuple(s // a.itemsize for s in a.strides)
    return (
      _Global("torch._utils", "_rebuild_tensor_v2"),
      (_Storage(self), 0, a.shape, stride, False, collections.OrderedDict()),
    )


class _Storage:
  def __init__(self, tensor):
    self.tensor = tensor


class _TorchPicklerPy(pickle._Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      a = obj.tensor.array
      return ("storage", _Global("torch", "FloatStorage"), obj.tensor.key, "cpu", a.size)
    return None

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      return
    super().save(obj, save_persistent_id)


def _torch_zip(path, obj):
  storages = {}

  def wrap(x):
    if isinstance(x, dict):
      return {k: wrap(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
      key = str(len(storages))
      storages[key] = np.ascontiguousarray(x, np.float32)
      return _Tensor(storages[key], key)
    return x

  stream = io.BytesIO()
  _TorchPicklerPy(stream, protocol=2).dump(wrap(obj))
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", stream.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, a in storages.items():
      z.writestr(f"archive/data/{key}", a.astype("<f4").tobytes())


def _gvhmr(rng, f=3):
  def params():
    return {
      "body_pose": rng.normal(size=(f, 63)),
      "betas": rng.normal(size=(f, 10)),
      "global_orient": rng.normal(size=(f, 3)),
      "transl": rng.normal(size=(f, 3)),
    }

  k = np.tile(np.array([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]]), (f, 1, 1))
  return {
    "smpl_params_global": params(),
    "smpl_params_incam": params(),
    "K_fullimg": k,
    "net_outputs": {},
  }


def test_read_gvhmr(tmp_path):
  data = _gvhmr(np.random.default_rng(2))
  path = tmp_path / "hmr4d_results.pt"
  _torch_zip(path, data)
  got = estimates.read_gvhmr(path)
  assert got.ids == (0,) and got.source == "gvhmr_smplx"
  assert got.focal_length == pytest.approx(800.0) and got.image_size == (480, 640)
  tr = got[0]
  inc = data["smpl_params_incam"]
  np.testing.assert_array_equal(tr.frames, [0, 1, 2])
  np.testing.assert_allclose(tr.global_orient, inc["global_orient"], rtol=1e-6)
  np.testing.assert_allclose(tr.body_pose[:, :21], inc["body_pose"].reshape(3, 21, 3), rtol=1e-6)
  np.testing.assert_array_equal(tr.body_pose[:, 21:], 0)
  np.testing.assert_allclose(tr.betas, inc["betas"], rtol=1e-6)
  np.testing.assert_allclose(tr.translation, inc["transl"], rtol=1e-6)


def test_read_gvhmr_missing_key(tmp_path):
  data = _gvhmr(np.random.default_rng(3))
  del data["smpl_params_incam"]["transl"]
  path = tmp_path / "hmr4d_results.pt"
  _torch_zip(path, data)
  with pytest.raises(estimates.EstimateFileError, match=r"hmr4d_results\.pt.*'transl'"):
    estimates.read_gvhmr(path)


def test_read_gvhmr_refuses_legacy_and_unsafe(tmp_path):
  path = tmp_path / "legacy.pt"
  path.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(estimates.EstimateFileError, match="legacy"):
    estimates.read_gvhmr(path)
  path = tmp_path / "evil.pt"
  stream = io.BytesIO()
  _TorchPicklerPy(stream, protocol=2).dump({"x": _Global("os", "system")})
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", stream.getvalue())
  with pytest.raises(estimates.UnsafePickleError, match="os.system"):
    estimates.read_gvhmr(path)
