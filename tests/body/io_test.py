"""Body-model files: the restricted SMPL unpickler, official-layout pickles, npz assets, lookup."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from jhmr.body import io as body_io
from jhmr.body import joints as joints_lib

V = 120


class _Exploit:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
  target = tmp_path / "pwned"
  payload = pickle.dumps({"v_template": _Exploit(target)}, protocol=2)
  with pytest.raises(body_io.UnsafePickleError, match=r"refusing to load global posix\.system"):
    body_io.read_smpl_pickle(payload)
  assert not target.exists()
  path = tmp_path / "SMPL_NEUTRAL.pkl"
  path.write_bytes(payload)
  with pytest.raises(body_io.UnsafePickleError):
    body_io.load_body_model(path)
  assert not target.exists()


@pytest.mark.parametrize(
  "global_name", [("builtins", "eval"), ("numpy", "load"), ("chumpy.ch_ops", "add")]
)
def test_other_globals_are_refused(global_name):
  module, name = global_name
  # A hand-written protocol-0 pickle: GLOBAL module name, then STOP.
  payload = f"c{module}\n{name}\n.".encode()
  with pytest.raises(body_io.UnsafePickleError, match=f"{module}.{name}"):
    body_io.read_smpl_pickle(payload)


def test_reconstructor_only_builds_stand_ins():
  # copy_reg._reconstructor(numpy.ndarray, object, None), as protocol 0 would write it.
  payload = b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\nc__builtin__\nobject\nNtR."
  with pytest.raises(body_io.UnsafePickleError, match="_reconstructor of <class 'numpy.ndarray'>"):
    body_io.read_smpl_pickle(payload)


def test_codecs_encode_only_latin1():
  payload = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
  with pytest.raises(body_io.UnsafePickleError, match="codec 'rot13'"):
    body_io.read_smpl_pickle(payload)


@pytest.fixture
def fake_chumpy(monkeypatch):
  """A class registered as `chumpy.ch.Ch` that pickles like the real one: default object
  reduction (NEWOBJ / copyreg._reconstructor) with a state dict holding the array under 'x'
  next to chumpy's bookkeeping (a set, None, dicts)."""
  module = types.ModuleType("chumpy.ch")

  class Ch:
    def __init__(self, x):
      self.x = np.asarray(x, np.float64)
      self._dirty_vars = {"x"}
      self._itr = None
      self._depends_on_deps = {}
      self._make_dense = False
      self._make_sparse = False

  Ch.__module__ = "chumpy.ch"
  Ch.__qualname__ = "Ch"
  module.Ch = Ch
  package = types.ModuleType("chumpy")
  package.ch = module
  monkeypatch.setitem(sys.modules, "chumpy", package)
  monkeypatch.setitem(sys.modules, "chumpy.ch", module)
  return Ch


@pytest.mark.parametrize("protocol", [0, 2])
def test_official_layout_pickle_loads(fake_chumpy, protocol, tmp_path):
  arrays = body_io.random_body_model_arrays(3, V, keypoints=False)
  parents = np.array(joints_lib.SMPL_PARENTS, np.int64).astype(np.uint32)  # root -> 2**32 - 1
  official = {
    "J_regressor_prior": scipy.sparse.csc_matrix(arrays["J_regressor"]),
    "f": arrays["f"].astype(np.uint32),
    "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
    "kintree_table": np.stack([parents, np.arange(24, dtype=np.uint32)]),
    "J": np.zeros((24, 3)),
    "weights_prior": arrays["weights"],
    "weights": arrays["weights"],
    "vert_sym_idxs": np.arange(V),
    "posedirs": arrays["posedirs"],
    "pose_training_info": {"num_iters": 3, "subjects": ["a", "b"]},
    "bs_style": "lbs",
    "v_template": arrays["v_template"],
    "shapedirs": fake_chumpy(arrays["shapedirs"]),
    "bs_type": "lrotmin",
  }
  payload = pickle.dumps(official, protocol=protocol)
  assert b"chumpy.ch" in payload and b"scipy.sparse" in payload
  loaded = body_io.read_smpl_pickle(payload)
  for key in ("v_template", "posedirs", "weights", "shapedirs", "J_regressor"):
    assert isinstance(loaded[key], np.ndarray), key
    np.testing.assert_array_equal(loaded[key], arrays[key], err_msg=key)
  assert loaded["bs_style"] == "lbs"
  path = tmp_path / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"
  path.write_bytes(payload)
  model = body_io.load_body_model(tmp_path)  # directory lookup by the official file name
  np.testing.assert_allclose(model.shapedirs, arrays["shapedirs"], rtol=1e-6)
  np.testing.assert_allclose(model.J_regressor, arrays["J_regressor"], rtol=1e-6)


def test_csr_matrix_stand_in():
  dense = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
  loaded = body_io.read_smpl_pickle(pickle.dumps({"m": scipy.sparse.csr_matrix(dense)}))
  np.testing.assert_array_equal(loaded["m"], dense)


def test_npz_round_trip_and_schema(tmp_path):
  arrays = body_io.random_body_model_arrays(4, V)
  path = tmp_path / "asset.npz"
  body_io.save_body_model_npz(arrays, path)
  stored = body_io.read_npz(path)
  assert stored["f"].dtype == np.int32 and stored["kintree_table"].dtype == np.int64
  assert stored["kintree_table"][0, 0] == 4294967295
  assert stored["v_template"].dtype == np.float32
  assert stored["joint_set.coco17.valid"].dtype == bool
  assert stored["joint_names"][0] == "pelvis"
  model = body_io.load_body_model(path)
  assert set(model.joint_sets) == {"openpose25", "coco17", "h36m17", "lsp14"}
  js = model.joint_sets["coco17"]
  np.testing.assert_array_equal(js.valid, arrays["joint_set.coco17.valid"])
  dense = np.zeros((17, V), np.float32)
  np.add.at(dense, (np.arange(17)[:, None], np.asarray(js.vertex_ids)), js.vertex_weights)
  np.testing.assert_allclose(dense, arrays["joint_set.coco17.from_vertices"], rtol=1e-6)


def test_bad_assets_raise(tmp_path):
  arrays = body_io.random_body_model_arrays(5, V, keypoints=False)
  with pytest.raises(ValueError, match="unknown key 'vertex_ids'"):
    body_io.save_body_model_npz(dict(arrays, vertex_ids=np.arange(3)), tmp_path / "a.npz")
  with pytest.raises(ValueError, match="missing 'weights'"):
    body_io.save_body_model_npz(
      {k: v for k, v in arrays.items() if k != "weights"}, tmp_path / "b.npz"
    )
  with pytest.raises(ValueError, match=r"'shapedirs' must have shape"):
    body_io.save_body_model_npz(
      dict(arrays, shapedirs=arrays["shapedirs"][:-1]), tmp_path / "c.npz"
    )
  with pytest.raises(ValueError, match="differ from the SMPL tree"):
    table = np.stack([np.zeros(24, np.int64), np.arange(24)])
    body_io.save_body_model_npz(dict(arrays, kintree_table=table), tmp_path / "d.npz")


def test_lookup_by_directory_env_var_and_names(tmp_path, monkeypatch):
  arrays = body_io.random_body_model_arrays(6, V, keypoints=False)
  models = tmp_path / "models"
  (models / "smpl").mkdir(parents=True)
  body_io.save_body_model_npz(arrays, models / "smpl" / "SMPL_FEMALE.npz")
  model = body_io.load_body_model(models, gender="female")
  np.testing.assert_allclose(model.v_template, arrays["v_template"], rtol=1e-6)
  with pytest.raises(FileNotFoundError, match="no male SMPL model"):
    body_io.load_body_model(models, gender="male")
  monkeypatch.setenv(body_io.ENV_VAR, str(models))
  assert body_io.resolve_body_model_path("smpl", "female") == models / "smpl" / "SMPL_FEMALE.npz"
  assert (
    body_io.resolve_body_model_path("smpl/SMPL_FEMALE.npz") == models / "smpl" / "SMPL_FEMALE.npz"
  )
  monkeypatch.delenv(body_io.ENV_VAR)
  with pytest.raises(FileNotFoundError, match="needs the JHMR_BODY_MODELS"):
    body_io.resolve_body_model_path("smpl")
  with pytest.raises(ValueError, match="gender must be one of"):
    body_io.resolve_body_model_path(None, "other")
  for name, default in (("anny", None), ("anny-tiny", "anny-tiny")):
    if body_io.NAMED_MODELS[name].is_file():
      assert body_io.resolve_body_model_path(default) == body_io.NAMED_MODELS[name]
    else:
      with pytest.raises(FileNotFoundError, match=f"shipped body model '{name}' not found"):
        body_io.resolve_body_model_path(default)
  with pytest.raises(ValueError, match="gender-neutral only"):
    body_io.resolve_body_model_path("anny-tiny", "male")


def test_joint_sets_attach_to_a_model_without_them(tmp_path):
  arrays = body_io.random_body_model_arrays(7, V)
  with_sets = tmp_path / "sets.npz"
  body_io.save_body_model_npz(arrays, with_sets)
  plain = {k: v for k, v in arrays.items() if not k.startswith("joint_set.")}
  pkl = tmp_path / "SMPL_NEUTRAL.pkl"
  pkl.write_bytes(pickle.dumps(plain, protocol=4))
  assert body_io.load_body_model(pkl).joint_sets == {}
  model = body_io.load_body_model(pkl, joint_sets=with_sets)
  assert sorted(model.joint_sets) == ["coco17", "h36m17", "lsp14", "openpose25"]
  with pytest.raises(ValueError, match="holds no joint_set"):
    body_io.load_body_model(pkl, joint_sets=_save_plain(tmp_path, plain))


def _save_plain(tmp_path, plain):
  path = tmp_path / "plain.npz"
  body_io.save_body_model_npz(plain, path)
  return path


# -- bad inputs: a clear ValueError naming the file and the problem -------------------------------


def _valid_npz_bytes(tmp_path):
  path = tmp_path / "valid.npz"
  body_io.save_body_model_npz(body_io.random_body_model_arrays(0, V), path)
  return path.read_bytes()


@pytest.mark.parametrize(
  ("name", "content", "problem"),
  [
    ("x.npz", "random", "not a valid .npz archive"),
    ("x.npz", b"Invalid model file\n", "not a valid .npz archive"),
    ("x.npz", b"", "not a valid .npz archive"),
    ("x.npz", b"PK" + bytes(range(200)), "not a valid .npz archive"),
    ("x.npz", "half", "truncated"),
    ("x.pkl", "random", "not a valid SMPL pickle"),
    ("x.pkl", b"Invalid model file\n", "not a valid SMPL pickle"),  # was int() ValueError
    ("x.pkl", b"hello world\n", "not a valid SMPL pickle"),
    ("x.pkl", b"", "empty file"),
    ("x.pkl", pickle.dumps({"v_template": np.zeros((300, 3))}, protocol=2)[:500], "truncated"),
    ("x.pkl", pickle.dumps([1, 2], protocol=2), "holds a dict"),
  ],
)
def test_garbage_files_raise_clear_value_errors(tmp_path, name, content, problem):
  if content == "random":
    content = np.random.default_rng(1).bytes(3000)
  elif content == "half":
    raw = _valid_npz_bytes(tmp_path)
    content = raw[: len(raw) // 2]
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match=problem) as err:
    body_io.load_body_model(path)
  assert str(path) in str(err.value)


def test_missing_key_is_named(tmp_path):
  arrays = body_io.random_body_model_arrays(0, V)
  for suffix in ("npz", "pkl"):
    path = tmp_path / f"x.{suffix}"
    partial = {k: v for k, v in arrays.items() if k != "v_template"}
    if suffix == "npz":
      np.savez(path, **partial)
    else:
      path.write_bytes(pickle.dumps(partial, protocol=2))
    with pytest.raises(ValueError, match="missing key\\(s\\) 'v_template'") as err:
      body_io.load_body_model(path)
    assert str(path) in str(err.value)


def test_object_arrays_and_bad_shapes_in_npz(tmp_path):
  path = tmp_path / "objects.npz"
  np.savez(path, v_template=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match="'v_template' holds pickled Python objects"):
    body_io.load_body_model(path)
  arrays = body_io.random_body_model_arrays(0, V)
  arrays["weights"] = arrays["weights"][:, :5]
  path = tmp_path / "shapes.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="shapes.npz: invalid body model: .*'weights'"):
    body_io.load_body_model(path)


def test_corrupt_npz_member_is_reported(tmp_path):
  raw = bytearray(_valid_npz_bytes(tmp_path))
  start = raw.index(b"v_template.npy") + 40  # inside the first compressed member
  raw[start : start + 64] = bytes(64)
  path = tmp_path / "x.npz"
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="x.npz"):
    body_io.load_body_model(path)


def test_valid_files_still_load_after_checks(tmp_path):
  raw = _valid_npz_bytes(tmp_path)
  model = body_io.load_body_model(tmp_path / "valid.npz")
  assert model.num_vertices == V and raw
  pkl = tmp_path / "SMPL_NEUTRAL.pkl"
  pkl.write_bytes(pickle.dumps(body_io.random_body_model_arrays(0, V), protocol=2))
  assert body_io.load_body_model(pkl).num_vertices == V


def test_unsafe_pickle_error_names_the_file(tmp_path):
  path = tmp_path / "evil.pkl"
  path.write_bytes(b"cbuiltins\neval\n.")
  with pytest.raises(body_io.UnsafePickleError, match="evil.pkl: refusing"):
    body_io.load_body_model(path)
