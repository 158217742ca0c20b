"""BodyModel forward vs smplx (PyTorch, float32) on a random SMPL-format file with non-zero
pose correctives, and on the tiny Anny asset; pose formats, joints_only, jit/vmap/grad, errors."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.body import io as body_io
from jhmr.body import joints as joints_lib
from jhmr.geometry import rotations

V = 300
BATCH = 5


def _smplx_model(pkl_path):
  smplx = pytest.importorskip("smplx")
  torch = pytest.importorskip("torch")
  torch.set_num_threads(2)
  names = [
    "nose", "reye", "leye", "rear", "lear", "rthumb", "rindex", "rmiddle", "rring", "rpinky",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky", "LBigToe", "LSmallToe", "LHeel",
    "RBigToe", "RSmallToe", "RHeel",
  ]  # fmt: skip
  # smplx's default vertex ids index SMPL-H's 6890 vertices: give small valid ones.
  return smplx.SMPL(model_path=str(pkl_path), vertex_ids={n: i for i, n in enumerate(names)})


@pytest.fixture(scope="module")
def random_asset(tmp_path_factory):
  """(plain pickle path, arrays, jhmr model, smplx model) with non-zero posedirs."""
  arrays = body_io.random_body_model_arrays(0, V, num_betas=10)
  directory = tmp_path_factory.mktemp("smpl")
  pkl = directory / "SMPL_NEUTRAL.pkl"
  plain = {k: v for k, v in arrays.items() if not k.startswith("joint_set.")}
  parents = np.array(joints_lib.SMPL_PARENTS, np.int64)
  parents[0] = body_io.ROOT_PARENT
  plain["kintree_table"] = np.stack([parents, np.arange(24)])
  with open(pkl, "wb") as f:
    pickle.dump(plain, f, protocol=2)
  npz = directory / "asset.npz"
  body_io.save_body_model_npz(arrays, npz)
  model = body_io.load_body_model(pkl, joint_sets=npz)
  return pkl, arrays, model, _smplx_model(pkl)


def _random_params(seed, batch=(BATCH,), num_betas=10, scale=0.5):
  rng = np.random.default_rng(seed)
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(
    betas=f32(rng.normal(0, 1.0, (*batch, num_betas))),
    body_pose=f32(rng.normal(0, scale, (*batch, 23, 3))),
    global_orient=f32(rng.normal(0, 1.0, (*batch, 3))),
    transl=f32(rng.normal(0, 1.0, (*batch, 3))),
  )


def _smplx_forward(smplx_model, params):
  import torch

  t = {
    k: torch.tensor(v.reshape(-1, *v.shape[-1:] if k != "body_pose" else (69,)))
    for k, v in params.items()
  }
  out = smplx_model(
    betas=t["betas"], body_pose=t["body_pose"], global_orient=t["global_orient"], transl=t["transl"]
  )
  return out.vertices.detach().numpy(), out.joints[:, :24].detach().numpy()


@jax.jit
def _forward(model, params):
  out = model(**params, joint_set="coco17")
  return out


@jax.jit
def _joints_only(model, params):
  return model.joints_only(**params, joint_set="coco17")


def test_loaded_model_matches_file(random_asset):
  _, arrays, model, _ = random_asset
  assert model.num_vertices == V and model.num_betas == 10
  assert model.has_posedirs
  assert model.parents == joints_lib.SMPL_PARENTS
  assert model.faces.dtype == jnp.int32 and model.faces.shape == arrays["f"].shape
  np.testing.assert_allclose(model.v_template, arrays["v_template"], rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(model.posedirs).T.reshape(V, 3, 207), arrays["posedirs"], rtol=1e-6
  )
  assert model.available_joint_sets == ("smpl24", "coco17", "h36m17", "lsp14", "openpose25")
  assert model.joint_names("coco17")[0] == "coco17_0"
  assert model.joint_names()[0] == "pelvis"


def test_matches_smplx_batched(reference_asset):
  _, _, model, ref = reference_asset
  params = _random_params(1)
  out = _forward(model, params)
  verts, joints = _smplx_forward(ref, params)
  assert out.vertices.shape == (BATCH, model.num_vertices, 3)
  np.testing.assert_allclose(out.vertices, verts, atol=1e-5)
  np.testing.assert_allclose(out.joints, joints, atol=1e-5)


def test_matches_smplx_unbatched_and_fewer_betas(reference_asset):
  _, _, model, ref = reference_asset
  params = _random_params(2, batch=(), num_betas=4)
  out = _forward(model, params)
  assert out.vertices.shape == (model.num_vertices, 3) and out.joints.shape == (24, 3)
  padded = dict(params, betas=np.pad(params["betas"], (0, 6)))
  verts, joints = _smplx_forward(ref, {k: v[None] for k, v in padded.items()})
  np.testing.assert_allclose(out.vertices, verts[0], atol=1e-5)
  np.testing.assert_allclose(out.joints, joints[0], atol=1e-5)


def test_gradients_match_torch_autograd(reference_asset):
  import torch

  _, _, model, ref = reference_asset
  params = _random_params(3, batch=(2,))
  rng = np.random.default_rng(4)
  wv = rng.normal(size=(2, model.num_vertices, 3)).astype(np.float32)
  wj = rng.normal(size=(2, 24, 3)).astype(np.float32)

  def loss(p, m):
    out = m(**p)
    return jnp.sum(out.vertices * wv) + jnp.sum(out.joints * wj)

  grads = jax.jit(jax.grad(loss))(params, model)
  t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  out = ref(
    betas=t["betas"],
    body_pose=t["body_pose"].reshape(2, 69),
    global_orient=t["global_orient"],
    transl=t["transl"],
  )
  (
    torch.sum(out.vertices * torch.tensor(wv)) + torch.sum(out.joints[:, :24] * torch.tensor(wj))
  ).backward()
  for key in ("betas", "body_pose", "global_orient", "transl"):
    want = t[key].grad.numpy()
    scale = np.abs(want).max()
    np.testing.assert_allclose(grads[key], want, atol=1e-4 * scale, err_msg=key)


def test_pose_formats_agree(random_asset):
  _, _, model, _ = random_asset
  params = _random_params(5)
  # Independent conversions (scipy), so this also checks the rotmat / 6D layouts.
  mats = {
    k: Rotation.from_rotvec(params[k].reshape(-1, 3)).as_matrix().reshape(*params[k].shape, 3)
    for k in ("body_pose", "global_orient")
  }
  six = {k: np.concatenate([v[..., :, 0], v[..., :, 1]], axis=-1) for k, v in mats.items()}
  base = _forward(model, params)

  @jax.jit
  def formats(m, p, mats, six):
    rm = m(**dict(p, **mats), pose_format="rotmat", joint_set="coco17")
    r6 = m(**dict(p, **six), pose_format="rot6d", joint_set="coco17")
    return rm, r6

  for fmt, out in zip(("rotmat", "rot6d"), formats(model, params, mats, six), strict=True):
    np.testing.assert_allclose(out.vertices, base.vertices, atol=1e-5, err_msg=fmt)
    np.testing.assert_allclose(out.keypoints, base.keypoints, atol=1e-5, err_msg=fmt)


def test_keypoints_and_transforms(random_asset):
  _, arrays, model, _ = random_asset
  params = _random_params(6)
  out = _forward(model, params)
  want = np.einsum("kj,njc->nkc", arrays["joint_set.coco17.from_joints"], out.joints)
  want += np.einsum("kv,nvc->nkc", arrays["joint_set.coco17.from_vertices"], out.vertices)
  np.testing.assert_allclose(out.keypoints, want, atol=1e-5)
  np.testing.assert_array_equal(out.keypoints[:, -1], 0.0)  # the invalid row
  tr = np.asarray(out.joint_transforms)
  np.testing.assert_allclose(tr[..., :3, 3], out.joints, atol=1e-6)
  np.testing.assert_array_equal(tr[..., 3, :], np.broadcast_to([0, 0, 0, 1.0], tr[..., 3, :].shape))
  rot = tr[..., :3, :3]
  np.testing.assert_allclose(
    rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5
  )
  np.testing.assert_allclose(
    rot[:, 0], rotations.axis_angle_to_matrix(jnp.asarray(params["global_orient"])), atol=1e-6
  )


def test_joints_only_equals_full_path(random_asset):
  _, _, model, _ = random_asset
  params = _random_params(7)
  full = _forward(model, params)
  fast = _joints_only(model, params)
  assert fast.vertices is None
  np.testing.assert_allclose(fast.joints, full.joints, atol=1e-5)
  np.testing.assert_allclose(fast.joint_transforms, full.joint_transforms, atol=1e-5)
  np.testing.assert_allclose(fast.keypoints, full.keypoints, atol=1e-5)


def test_joints_only_gradient_at_rest_pose_is_finite_and_exact(random_asset):
  """The guidance hot path: d keypoints / d pose at the identity pose (the Taylor branch)."""
  _, _, model, _ = random_asset
  params = dict(_random_params(13, batch=(2,)), body_pose=np.zeros((2, 23, 3), np.float32))

  @jax.jit
  def grads(m, p):
    fast = lambda q: jnp.sum(m.joints_only(**q, joint_set="coco17").keypoints ** 2)
    full = lambda q: jnp.sum(m(**q, joint_set="coco17").keypoints ** 2)
    return jax.grad(fast)(p), jax.grad(full)(p)

  fast, full = grads(model, params)
  for key in params:
    assert np.all(np.isfinite(fast[key])), key
    np.testing.assert_allclose(
      fast[key], full[key], atol=1e-4 * np.abs(full[key]).max(), err_msg=key
    )
  assert np.abs(fast["body_pose"]).max() > 0


def test_float64_matches_smplx_float64_and_joints_only_is_exact(random_asset):
  """In x64 the model agrees with smplx (float64) to its 1e-8 Rodrigues offset, and joints_only
  equals the full path to rounding: the contracted regressor is exact algebra."""
  import torch

  pkl, arrays, _, _ = random_asset
  ref = _smplx_model(pkl).to(torch.float64)
  with jax.enable_x64(True):
    model = body_io.smpl.build_body_model(arrays, dtype=jnp.float64)
    params = {k: v.astype(np.float64) for k, v in _random_params(14, batch=(3,)).items()}

    @jax.jit
    def both(m, p):
      return m(**p, joint_set="h36m17"), m.joints_only(**p, joint_set="h36m17")

    full, fast = both(model, params)
    assert full.vertices.dtype == jnp.float64
    t = {k: torch.tensor(v.reshape(3, -1) if k == "body_pose" else v) for k, v in params.items()}
    out = ref(**t)
    np.testing.assert_allclose(full.vertices, out.vertices.detach().numpy(), atol=1e-7)
    np.testing.assert_allclose(full.joints, out.joints[:, :24].detach().numpy(), atol=1e-7)
    np.testing.assert_allclose(fast.keypoints, full.keypoints, atol=1e-12)
    np.testing.assert_allclose(fast.joints, full.joints, atol=1e-12)


def test_joints_only_equals_full_path_without_posedirs(tmp_path):
  arrays = body_io.random_body_model_arrays(1, 200, num_betas=8, pose_correctives=False)
  body_io.save_body_model_npz(arrays, tmp_path / "m.npz")
  model = body_io.load_body_model(tmp_path / "m.npz")
  assert not model.has_posedirs and model.posedirs is None
  params = _random_params(8, num_betas=8)

  @jax.jit
  def both(m, p):
    names = ("openpose25", "lsp14")
    full = [m(**p, joint_set=n).keypoints for n in names]
    return full, [m.joints_only(**p, joint_set=n).keypoints for n in names]

  full, fast = both(model, params)
  for a, b in zip(full, fast, strict=True):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_vmap_and_broadcasting(random_asset):
  _, _, model, _ = random_asset
  params = _random_params(9)
  batched = _forward(model, params)
  mapped = jax.jit(jax.vmap(lambda p: model(**p, joint_set="coco17")))(params)
  np.testing.assert_allclose(mapped.vertices, batched.vertices, atol=1e-6)
  # One shared betas vector and no transl broadcast over a [2, 5] pose batch.
  pose = params["body_pose"].reshape(1, BATCH, 23, 3).repeat(2, 0)
  out = jax.jit(lambda m, b, p, g: m.joints_only(b, p, g))(
    model, params["betas"][0], pose, params["global_orient"][None].repeat(2, 0)
  )
  assert out.joints.shape == (2, BATCH, 24, 3)


def test_bad_inputs_raise_clear_errors(random_asset):
  _, _, model, _ = random_asset
  p = _random_params(10)
  with pytest.raises(ValueError, match=r"body_pose must have shape \[..., 23, 3, 3\]"):
    model(p["betas"], p["body_pose"], p["global_orient"], pose_format="rotmat")
  with pytest.raises(ValueError, match=r"global_orient must have shape \[..., 6\]"):
    model(p["betas"], np.zeros((BATCH, 23, 6)), p["global_orient"], pose_format="rot6d")
  with pytest.raises(ValueError, match="betas has 11 coefficients but the model has only 10"):
    model(np.zeros((BATCH, 11)), p["body_pose"], p["global_orient"])
  with pytest.raises(ValueError, match="joint set 'foo' is not defined"):
    model(p["betas"], p["body_pose"], p["global_orient"], joint_set="foo")
  with pytest.raises(ValueError, match="batch"):
    model(p["betas"][:2], p["body_pose"], p["global_orient"])
  with pytest.raises(ValueError, match="pose_format must be one of"):
    model(p["betas"], p["body_pose"], p["global_orient"], pose_format="euler")


def test_official_smpl_file_without_joint_sets_has_only_smpl24(random_asset):
  pkl, _, _, _ = random_asset
  model = body_io.load_body_model(pkl)
  assert model.available_joint_sets == ("smpl24",)
  p = _random_params(11)
  with pytest.raises(ValueError, match="official SMPL files carry no keypoint regressors"):
    model.joints_only(**p, joint_set="coco17")
  out = jax.jit(lambda m, q: m.joints_only(**q, joint_set="smpl24"))(model, p)
  np.testing.assert_array_equal(out.keypoints, out.joints)


def _shipped_asset(name, tmp_path_factory):
  """(plain pickle path, arrays, jhmr model, smplx model) of a shipped Anny asset."""
  path = body_io.NAMED_MODELS[name]
  if not path.is_file():
    pytest.skip(f"Anny asset {name!r} not committed yet ({path})")
  arrays = body_io.read_npz(path)
  pkl = tmp_path_factory.mktemp(name) / "SMPL_NEUTRAL.pkl"
  keys = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
  with open(pkl, "wb") as f:
    pickle.dump({k: arrays[k] for k in keys}, f, protocol=2)
  return pkl, arrays, body_io.load_body_model(name), _smplx_model(pkl)


@pytest.fixture(scope="module")
def tiny_anny(tmp_path_factory):
  return _shipped_asset("anny-tiny", tmp_path_factory)


@pytest.fixture(scope="module")
def full_anny(tmp_path_factory):
  return _shipped_asset("anny", tmp_path_factory)


@pytest.fixture(
  scope="module",
  params=["random", "anny-tiny", pytest.param("anny", marks=pytest.mark.slow)],
)
def reference_asset(request):
  """Assets compared against smplx: the random file, the tiny Anny model and (slow) the full one."""
  fixture = {"random": "random_asset", "anny-tiny": "tiny_anny", "anny": "full_anny"}
  return request.getfixturevalue(fixture[request.param])


def test_tiny_anny_asset_is_complete(tiny_anny):
  _, arrays, model, _ = tiny_anny
  assert model.num_vertices == arrays["v_template"].shape[0]
  assert not model.has_posedirs  # Anny has no pose correctives
  assert set(model.joint_sets) == {"openpose25", "coco17", "h36m17", "lsp14"}
  params = _random_params(12, batch=(3,))

  @jax.jit
  def both(m, p):
    names = sorted(m.joint_sets)
    return [m(**p, joint_set=n).keypoints for n in names], [
      m.joints_only(**p, joint_set=n).keypoints for n in names
    ]

  for a, b in zip(*both(model, params), strict=True):
    np.testing.assert_allclose(b, a, atol=1e-5)
