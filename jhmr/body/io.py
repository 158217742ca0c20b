"""Loading and saving SMPL-format body models: official `.pkl` files (safely) and `.npz` assets.

`.npz` asset schema (float32 unless noted):
  v_template (V,3), f (F,3) int32, shapedirs (V,3,NB), posedirs (V,3,207), J_regressor (24,V),
  weights (V,24), kintree_table (2,24) int64 (root parent 4294967295), joint_names (24,) str,
  and per joint set <name> in {openpose25, coco17, h36m17, lsp14}:
  joint_set.<name>.names (K,) str, joint_set.<name>.from_joints (K,24),
  joint_set.<name>.from_vertices (K,V), joint_set.<name>.valid (K,) bool.

Official SMPL pickles (Python 2, chumpy arrays, scipy-sparse J_regressor) are read with a
restricted unpickler (`SafeSmplUnpickler`): it resolves only numpy's array reconstruction and
inert stand-ins for chumpy `Ch` and scipy CSC/CSR matrices; any other global raises
`UnsafePickleError` before anything is constructed. Neither chumpy nor scipy is imported.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jhmr.body import joints as joints_lib
from jhmr.body import smpl
from jhmr.errors import InputError

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"
NAMED_MODELS = {
  "anny": ASSETS_DIR / "anny_smpl_neutral.npz",
  "anny-tiny": ASSETS_DIR / "anny_smpl_tiny.npz",
}
"""Names accepted by `load_body_model` for the shipped free models (Anny-derived, Apache-2.0)."""
ENV_VAR = "JHMR_BODY_MODELS"
GENDERS = {"neutral": ("NEUTRAL", "neutral"), "male": ("MALE", "m"), "female": ("FEMALE", "f")}
ROOT_PARENT = 4294967295


class UnsafePickleError(pickle.UnpicklingError, InputError):
  """A pickle references a global outside the SMPL allow-list."""


# -- restricted unpickling -------------------------------------------------------------------


class ChumpyArray:
  """Inert stand-in for `chumpy.ch.Ch`: keeps the wrapped array (state key 'x') and nothing else."""

  def __init__(self, *args, **kwargs):
    self.x = None

  def __setstate__(self, state):
    if not isinstance(state, dict) or "x" not in state:
      raise UnsafePickleError("chumpy Ch state without the array 'x' (not a plain Ch array)")
    self.x = np.asarray(state["x"])

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self.x, dtype=dtype)


class SparseMatrix:
  """Inert stand-in for scipy CSC/CSR matrices: rebuilt densely from data/indices/indptr/shape."""

  format = ""

  def __init__(self, *args, **kwargs):
    self.dense = None

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise UnsafePickleError(f"unexpected scipy.sparse state of type {type(state).__name__}")
    shape = state.get("_shape", state.get("shape"))
    try:
      data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
      n_rows, n_cols = (int(s) for s in shape)
    except (KeyError, TypeError, ValueError) as e:
      raise UnsafePickleError(f"malformed scipy.sparse {self.format} state: {e}") from None
    major, minor = (n_cols, n_rows) if self.format == "csc" else (n_rows, n_cols)
    if indptr.shape != (major + 1,) or (indices.size and indices.max() >= minor):
      raise UnsafePickleError(f"inconsistent scipy.sparse {self.format} matrix of shape {shape}")
    dense = np.zeros((major, minor), data.dtype)
    for i in range(major):
      sl = slice(int(indptr[i]), int(indptr[i + 1]))
      np.add.at(dense[i], indices[sl], data[sl])
    self.dense = dense.T if self.format == "csc" else dense

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self.dense, dtype=dtype)


class CscMatrix(SparseMatrix):
  format = "csc"


class CsrMatrix(SparseMatrix):
  format = "csr"


def _reconstructor(cls, base, state):
  """Stand-in for `copyreg._reconstructor` (protocol 0/1 objects): only for our stand-ins."""
  if not (isinstance(cls, type) and issubclass(cls, (ChumpyArray, SparseMatrix))):
    raise UnsafePickleError(f"copyreg._reconstructor of {cls!r} is not allowed")
  if base is not object or state is not None:
    raise UnsafePickleError("copyreg._reconstructor with a non-object base is not allowed")
  return cls.__new__(cls)


def _latin1_encode(text, encoding="latin1"):
  """Stand-in for `_codecs.encode`, which protocol-2 pickles written by Python 3 use for bytes;
  only the latin-1 codec is accepted."""
  if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
    raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} is not allowed")
  return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
  core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
  reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
  allowed = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("chumpy.ch", "Ch"): ChumpyArray,
  }
  for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(mod, "_reconstruct")] = reconstruct
    allowed[(mod, "scalar")] = scalar
  for mod in ("scipy.sparse.csc", "scipy.sparse._csc"):
    allowed[(mod, "csc_matrix")] = CscMatrix
  for mod in ("scipy.sparse.csr", "scipy.sparse._csr"):
    allowed[(mod, "csr_matrix")] = CsrMatrix
  return allowed


_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class SafeSmplUnpickler(pickle.Unpickler):
  """Unpickler for SMPL model files: numpy arrays, chumpy `Ch`, scipy CSC/CSR; nothing else.

  Python 2 module names (`copy_reg`, `__builtin__`) are mapped to their Python 3 names first.
  """

  _ALLOWED: dict[tuple[str, str], Any] | None = None

  def find_class(self, module: str, name: str) -> Any:
    module = _PY2_MODULES.get(module, module)
    if SafeSmplUnpickler._ALLOWED is None:
      SafeSmplUnpickler._ALLOWED = _allowed_globals()
    try:
      return SafeSmplUnpickler._ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f"refusing to load global {module}.{name} from an SMPL pickle (only numpy arrays, "
        "chumpy.ch.Ch and scipy.sparse csc/csr matrices are allowed)"
      ) from None


def _plain(value: Any) -> Any:
  if isinstance(value, ChumpyArray):
    return np.asarray(value.x)
  if isinstance(value, SparseMatrix):
    return np.asarray(value.dense)
  return value


def read_smpl_pickle(path_or_bytes: str | os.PathLike | bytes) -> dict[str, Any]:
  """Reads an SMPL-format pickle safely -> dict with chumpy/sparse values as dense numpy arrays."""
  if isinstance(path_or_bytes, bytes):
    stream = io.BytesIO(path_or_bytes)
  else:
    stream = open(path_or_bytes, "rb")  # noqa: SIM115
  with stream:
    data = SafeSmplUnpickler(stream, encoding="latin1").load()
  if not isinstance(data, dict):
    raise InputError(f"an SMPL pickle holds a dict, got {type(data).__name__}")
  return {str(k): _plain(v) for k, v in data.items()}


# -- npz ---------------------------------------------------------------------------------------


def save_body_model_npz(model_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
  """Writes a model dict in the asset schema (compressed npz, float32 / int32 / int64 / str).

  `model_dict` needs the arrays listed in the module docstring; `kintree_table` and
  `joint_names` default to SMPL's. Unknown keys raise (so typos do not silently vanish).
  """
  out: dict[str, np.ndarray] = {}
  for key in smpl.REQUIRED_KEYS:
    if key not in model_dict:
      raise InputError(f"model_dict is missing {key!r}")
  for key, value in model_dict.items():
    value = np.asarray(value)
    if key == "f":
      out[key] = value.astype(np.int32)
    elif key == "kintree_table":
      out[key] = value.astype(np.int64)
    elif key == "joint_names" or key.endswith(".names"):
      out[key] = value.astype(str)
    elif key.endswith(".valid"):
      out[key] = value.astype(bool)
    elif key in smpl.REQUIRED_KEYS or key.startswith("joint_set."):
      out[key] = value.astype(np.float32)
    else:
      raise InputError(f"unknown key {key!r} for a body model asset")
  if "kintree_table" not in out:
    parents = np.array(joints_lib.SMPL_PARENTS, np.int64)
    parents[0] = ROOT_PARENT
    out["kintree_table"] = np.stack([parents, np.arange(joints_lib.NUM_JOINTS)])
  out.setdefault("joint_names", np.array(joints_lib.SMPL_JOINT_NAMES))
  smpl.build_body_model(out)  # validate before writing
  np.savez_compressed(path, **out)


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All arrays of an npz asset (no pickled objects are allowed).

  A file that is not a readable npz raises ValueError naming the file and the problem (not a zip
  archive, truncated, corrupt member, pickled object arrays).
  """
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic not in _ZIP_MAGICS:
    what = "an empty file" if not magic else "no zip header"
    raise InputError(f"{path}: not a valid .npz archive ({what})")
  key = None
  try:
    with np.load(path, allow_pickle=False) as data:
      out = {}
      for key in data.files:
        out[key] = data[key]
      return out
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise InputError(
        f"{path}: array {key!r} holds pickled Python objects, which are not loaded"
      ) from None
    raise InputError(f"{path}: corrupt array {key!r} in the .npz archive: {e}") from None
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    where = "" if key is None else f" (reading array {key!r})"
    raise InputError(
      f"{path}: not a valid .npz archive, truncated or corrupt{where}: {type(e).__name__}: {e}"
    ) from None


# -- resolution and loading --------------------------------------------------------------------


def _find_in_directory(directory: pathlib.Path, gender: str) -> pathlib.Path:
  upper, short = GENDERS[gender]
  candidates = []
  for sub in (directory, directory / "smpl"):
    candidates += [sub / f"SMPL_{upper}.pkl", sub / f"SMPL_{upper}.npz"]
    if sub.is_dir():
      candidates += sorted(
        p for p in sub.iterdir() if p.name.lower().startswith(f"basicmodel_{short}_")
      )
  for path in candidates:
    if path.is_file():
      return path
  raise FileNotFoundError(
    f"no {gender} SMPL model in {directory} (looked for SMPL_{upper}.pkl/.npz and "
    f"basicmodel_{short}_* there and in smpl/)"
  )


def resolve_body_model_path(
  path: str | os.PathLike | None, gender: str = "neutral"
) -> pathlib.Path:
  """The model file for `path` (see `load_body_model`)."""
  if gender not in GENDERS:
    raise InputError(f"gender must be one of {sorted(GENDERS)}, got {gender!r}")
  if path is None:
    path = "anny"
  if isinstance(path, str) and path in NAMED_MODELS:
    if gender != "neutral":
      raise InputError(f"the {path!r} model is gender-neutral only, got gender={gender!r}")
    if not NAMED_MODELS[path].is_file():
      raise FileNotFoundError(f"shipped body model {path!r} not found at {NAMED_MODELS[path]}")
    return NAMED_MODELS[path]
  candidate = pathlib.Path(path).expanduser()
  if not candidate.exists() and not candidate.is_absolute() and os.environ.get(ENV_VAR):
    candidate = pathlib.Path(os.environ[ENV_VAR]).expanduser() / candidate
  if str(path) == "smpl" and not candidate.exists():
    if not os.environ.get(ENV_VAR):
      raise FileNotFoundError(f"path='smpl' needs the {ENV_VAR} environment variable (a directory)")
    candidate = pathlib.Path(os.environ[ENV_VAR]).expanduser()
  if candidate.is_dir():
    return _find_in_directory(candidate, gender)
  if candidate.is_file():
    return candidate
  raise FileNotFoundError(
    f"body model {str(path)!r} not found (not a file, a directory, one of {sorted(NAMED_MODELS)}"
    f", or relative to ${ENV_VAR})"
  )


def read_body_model_arrays(path: str | os.PathLike) -> dict[str, Any]:
  """Arrays of a `.pkl` (official or plain) or `.npz` model file."""
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic.startswith(b"PK") or (path.suffix.lower() == ".npz" and magic[:1] != b"\x80"):
    return read_npz(path)
  if not magic:
    raise InputError(f"{path}: empty file (expected an SMPL .pkl or .npz body model)")
  try:
    return read_smpl_pickle(path)
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except EOFError:
    raise InputError(f"{path}: not a valid SMPL pickle (truncated)") from None
  except pickle.UnpicklingError as e:
    if "truncated" in str(e):
      raise InputError(f"{path}: not a valid SMPL pickle (truncated)") from None
    raise InputError(f"{path}: not a valid SMPL pickle ({e})") from None
  except MemoryError:
    raise
  except Exception as e:  # garbage bytes can fail inside any opcode: ValueError, TypeError, ...
    raise ValueError(f"{path}: not a valid SMPL pickle ({type(e).__name__}: {e})") from None


def load_body_model(
  path: str | os.PathLike | None = None,
  gender: str = "neutral",
  *,
  joint_sets: str | os.PathLike | None = None,
  dtype=np.float32,
) -> smpl.BodyModel:
  """Loads a body model.

  Args:
    path: None or 'anny' -> the free Anny-derived model shipped in `jhmr/body/assets`;
      'anny-tiny' -> its 1.2k-vertex version; a `.pkl`/`.npz` file; a directory holding
      `SMPL_{GENDER}.pkl|.npz` or `basicmodel_{neutral,m,f}_*`; a relative path is also tried
      under the `$JHMR_BODY_MODELS` directory (read at call time), and 'smpl' means that
      directory itself.
    gender: 'neutral', 'male' or 'female' (for directories).
    joint_sets: an `.npz` with `joint_set.<name>.*` keys to attach to the model (official SMPL
      files carry none); its sets replace those of the model file.
    dtype: float dtype of the model arrays (np.float64 needs x64 enabled).
  """
  model_path = resolve_body_model_path(path, gender)
  arrays = dict(read_body_model_arrays(model_path))
  missing = [k for k in smpl.REQUIRED_KEYS if k not in arrays]
  if missing:
    raise ValueError(
      f"{model_path}: not an SMPL-format body model, missing key(s) "
      f"{', '.join(repr(k) for k in missing)}"
    )
  if joint_sets is not None:
    extra = read_npz(joint_sets)
    keys = [k for k in extra if k.startswith("joint_set.")]
    if not keys:
      raise ValueError(f"{joint_sets} holds no joint_set.* arrays")
    arrays = {k: v for k, v in arrays.items() if not k.startswith("joint_set.")}
    arrays.update({k: extra[k] for k in keys})
  try:
    return smpl.build_body_model(arrays, dtype=dtype)
  except (ValueError, TypeError, IndexError) as e:
    raise ValueError(f"{model_path}: invalid body model: {e}") from e


def random_body_model_arrays(
  seed: int,
  num_vertices: int,
  *,
  num_betas: int = 10,
  pose_correctives: bool = True,
  keypoints: bool = True,
) -> dict[str, np.ndarray]:
  """A random but well-formed model dict in the asset schema (for tests and benchmarks).

  Vertices cluster around a random SMPL-like skeleton; every vertex is skinned to its joint and
  that joint's parent (rows sum to 1); the joint regressor averages a few vertices of each part;
  the pose correctives are small random values (or zeros); faces are random triangles. With
  `keypoints`, every joint set gets random rows mixing joints and a few vertices, with the last
  keypoint of each set marked invalid (a zero row).
  """
  if num_vertices < 4 * joints_lib.NUM_JOINTS:
    raise ValueError(f"num_vertices must be >= {4 * joints_lib.NUM_JOINTS}, got {num_vertices}")
  rng = np.random.default_rng(seed)
  parents = joints_lib.SMPL_PARENTS
  rest = np.zeros((joints_lib.NUM_JOINTS, 3))
  for i in range(1, joints_lib.NUM_JOINTS):
    rest[i] = rest[parents[i]] + rng.normal(0.0, 0.12, 3)
  part = rng.integers(0, joints_lib.NUM_JOINTS, num_vertices)
  part[: joints_lib.NUM_JOINTS * 4] = np.repeat(np.arange(joints_lib.NUM_JOINTS), 4)
  v_template = rest[part] + rng.normal(0.0, 0.04, (num_vertices, 3))
  weights = np.zeros((num_vertices, joints_lib.NUM_JOINTS))
  own = rng.uniform(0.5, 1.0, num_vertices)
  weights[np.arange(num_vertices), part] = own
  parent_of_part = np.array([max(p, 0) for p in parents])[part]
  weights[np.arange(num_vertices), parent_of_part] += 1.0 - own
  j_regressor = np.zeros((joints_lib.NUM_JOINTS, num_vertices))
  for j in range(joints_lib.NUM_JOINTS):
    members = np.flatnonzero(part == j)[:6]
    j_regressor[j, members] = rng.dirichlet(np.ones(len(members)))
  shapedirs = rng.normal(0.0, 0.01, (num_vertices, 3, num_betas))
  posedirs = rng.normal(0.0, 0.003, (num_vertices, 3, 207)) if pose_correctives else None
  out = {
    "v_template": v_template,
    "f": rng.integers(0, num_vertices, (2 * num_vertices, 3)).astype(np.int32),
    "shapedirs": shapedirs,
    "posedirs": posedirs if posedirs is not None else np.zeros((num_vertices, 3, 207)),
    "J_regressor": j_regressor,
    "weights": weights,
  }
  if keypoints:
    sizes = {"openpose25": 25, "coco17": 17, "h36m17": 17, "lsp14": 14}
    for name, k in sizes.items():
      from_joints = np.zeros((k, joints_lib.NUM_JOINTS))
      from_vertices = np.zeros((k, num_vertices))
      for row in range(k - 1):
        if row % 2 == 0:
          from_joints[row, rng.integers(0, joints_lib.NUM_JOINTS)] = 1.0
        else:
          ids = rng.choice(num_vertices, size=rng.integers(1, 5), replace=False)
          from_vertices[row, ids] = rng.dirichlet(np.ones(len(ids)))
      valid = np.ones(k, bool)
      valid[-1] = False
      prefix = f"joint_set.{name}."
      out[prefix + "names"] = np.array([f"{name}_{i}" for i in range(k)])
      out[prefix + "from_joints"] = from_joints
      out[prefix + "from_vertices"] = from_vertices
      out[prefix + "valid"] = valid
  return out
