"""jhmr.train.dpmesh_task: NT-Xent against a PyTorch SimCLR oracle, each loss term against a
numpy hand computation, the automatic weighting, the 30-joint input, the parameter groups, and
two steps of the shared trainer on a tiny synthetic `PersonExample` source (with the NKR
teacher): loss finite, parameters change only where `param_labels` says trainable.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.common import trainer_config
from jhmr.data.example import PersonExample, stack
from jhmr.data.pipeline import apply_transforms
from jhmr.models.compile_options import sd_compiler_options
from jhmr.models.dpmesh import DPMESH15_FROM_SMPL24, DPMesh, DPMeshOutput, random_variables
from jhmr.train import trainer
from jhmr.train.dpmesh_task import (
  CLEAN_SET,
  INPUT_SET,
  PAPER_WEIGHTS,
  RELEASED_WEIGHTS,
  TEACHER,
  TERMS,
  dpmesh_keypoint_transform,
  dpmesh_keypoints,
  dpmesh_losses,
  make_dpmesh_task,
  nkr_loss,
  nt_xent,
  param_labels,
)
from jhmr.train.metrics import read_metrics
from tests.guidance.conftest import make_tiny_body
from tests.models.dpmesh_test import light_config

torch = pytest.importorskip("torch")

S, F = 64, 100.0
IDX = np.asarray(DPMESH15_FROM_SMPL24)


def _torch_nt_xent(a, b, tau):
  """SimCLR's NT_Xent (Spijkervet/SimCLR `nt_xent.py`): 2N views, positives i <-> i + N."""
  n = a.shape[0]
  z = torch.cat([torch.from_numpy(a).reshape(n, -1), torch.from_numpy(b).reshape(n, -1)])
  sim = torch.nn.CosineSimilarity(dim=2)(z.unsqueeze(1), z.unsqueeze(0)) / tau
  pos = torch.cat([torch.diag(sim, n), torch.diag(sim, -n)]).reshape(2 * n, 1)
  mask = torch.ones((2 * n, 2 * n), dtype=bool)
  mask.fill_diagonal_(0)
  for i in range(n):
    mask[i, n + i] = mask[n + i, i] = 0
  neg = sim[mask].reshape(2 * n, -1)
  logits = torch.cat([pos, neg], 1)
  labels = torch.zeros(2 * n, dtype=torch.long)
  return torch.nn.CrossEntropyLoss(reduction="sum")(logits, labels).item() / (2 * n)


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_nt_xent_matches_torch_simclr(tau):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
  b = (a + 0.5 * rng.normal(size=a.shape)).astype(np.float32)
  got = float(nt_xent(jnp.asarray(a), jnp.asarray(b), tau))
  np.testing.assert_allclose(got, _torch_nt_xent(a, b, tau), rtol=1e-5, atol=1e-5)
  value, m = nkr_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), tau, 0.1)
  np.testing.assert_allclose(m["nkr_mse"], np.mean((a - b) ** 2), rtol=1e-5)
  np.testing.assert_allclose(value, 0.1 * (m["nkr_simclr"] + m["nkr_mse"]), rtol=1e-6)
  # Gradient reaches the student only.
  g_s, g_t = jax.grad(lambda s, t: nkr_loss(s, t)[0], argnums=(0, 1))(
    jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  )
  assert np.abs(g_s).sum() > 0 and np.abs(g_t).sum() == 0


# ----------------------------------------------------------------------------------------------
# A tiny source


def _examples(body, n=2, seed=0):
  rng = np.random.default_rng(seed)
  body_pose = (0.2 * rng.normal(size=(n, 23, 3))).astype(np.float32)
  orient = (np.array([np.pi, 0, 0]) + 0.1 * rng.normal(size=(n, 3))).astype(np.float32)
  betas = (0.5 * rng.normal(size=(n, body.num_betas))).astype(np.float32)
  cam_t = np.stack([0.1 * rng.normal(size=n), 0.2 + 0.1 * rng.normal(size=n), np.full(n, 3.0)], -1)
  out = body(
    jnp.asarray(betas), jnp.asarray(body_pose), jnp.asarray(orient), joint_set="openpose25"
  )
  joints = np.asarray(out.joints) + cam_t[:, None]
  op = np.asarray(out.keypoints) + cam_t[:, None]
  proj = lambda p: p[..., :2] / p[..., 2:] * F + S / 2
  kp = lambda p: np.concatenate([proj(p), np.ones((*p.shape[:-1], 1))], -1).astype(np.float32)
  intr = np.array([[F, 0, S / 2], [0, F, S / 2], [0, 0, 1]], np.float32)
  return [
    PersonExample(
      image=rng.integers(0, 256, (S, S, 3), dtype=np.uint8),
      crop_from_image=np.eye(2, 3, dtype=np.float32),
      intrinsics=intr,
      image_size=np.array([S, S], np.float32),
      keypoints_2d={"smpl24": kp(joints[i]), "openpose25": kp(op[i])},
      global_orient=orient[i],
      body_pose=body_pose[i],
      betas=betas[i],
      cam_t=cam_t[i].astype(np.float32),
      joints_3d=joints[i].astype(np.float32),
      joint_visibility=np.ones(24, np.float32),
      occlusion=np.zeros((S, S), bool),
      has_smpl=np.float32(1),
      has_3d=np.float32(i % 2),  # one example without 3D labels
      group=np.int32(i),
      frame=np.int32(0),
    )
    for i in range(n)
  ]


@pytest.fixture(scope="module")
def body():
  return make_tiny_body()


def test_dpmesh_keypoints_and_transform(body):
  ex = _examples(body, 1)[0]
  kp = dpmesh_keypoints(ex.keypoints_2d)
  assert kp.shape == (30, 3)
  np.testing.assert_array_equal(kp[:24], ex.keypoints_2d["smpl24"])
  # nose, left eye, right eye, left ear, right ear = OpenPose 0, 16, 15, 18, 17; no head top.
  np.testing.assert_array_equal(kp[24:29], ex.keypoints_2d["openpose25"][[0, 16, 15, 18, 17]])
  assert kp[29, 2] == 0
  out = dpmesh_keypoint_transform()(ex, np.random.default_rng(0))
  np.testing.assert_array_equal(out.keypoints_2d[CLEAN_SET], kp)
  assert not np.allclose(out.keypoints_2d[INPUT_SET][:, :2], kp[:, :2])  # PoseFix moved joints
  np.testing.assert_array_equal(out.keypoints_2d[INPUT_SET][:, 2], kp[:, 2])


def _fake_output(rng, b):
  return DPMeshOutput(
    global_orient=jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
    body_pose=jnp.asarray(0.3 * rng.normal(size=(b, 23, 3)), jnp.float32),
    body_rotmat=None,
    betas=jnp.asarray(rng.normal(size=(b, 10)), jnp.float32),
    translation=jnp.asarray([[0.1, 0.2, 3.0], [-0.1, 0.3, 2.5]][:b], jnp.float32),
    joint_img=jnp.asarray(rng.uniform(size=(b, 15, 3)), jnp.float32),
    backbone=None,
    regressor=None,
  )


def test_loss_terms_by_hand(body):
  batch = jax.tree.map(np.asarray, stack(_examples(body, 2, seed=1)))
  rng = np.random.default_rng(2)
  out = _fake_output(rng, 2)
  total, terms = dpmesh_losses(out, batch, body, PAPER_WEIGHTS)
  nb = body.num_betas
  g = 64 / S

  def grid(points):  # camera-frame joints -> 64-grid (x, y, binned pelvis-relative z)
    xy = points[..., :2] / points[..., 2:] * F + S / 2
    z = ((points[..., 2] - points[:, :1, 2]) / 1.0 + 1) / 2 * 64
    return np.concatenate([xy * g, z[..., None]], -1)

  pred = np.asarray(out.joint_img) * 64
  gt_cam = batch.joints_3d[:, IDX]
  kp = batch.keypoints_2d["smpl24"][:, IDX]
  target = np.concatenate([kp[..., :2] * g, grid(gt_cam)[..., 2:]], -1)
  inside = np.all((grid(gt_cam) >= 0) & (grid(gt_cam) < 64), -1, keepdims=True)
  # labelled joints inside the crop count in x, y; z also needs 3D labels and the depth inside
  seen = np.all((kp[..., :2] >= 0) & (kp[..., :2] < S), -1, keepdims=True) & (kp[..., 2:] > 0)
  assert 0 < seen.sum() < seen.size  # some joints fall outside the crop
  mask = np.ones_like(target) * seen
  mask[..., 2:] *= inside * batch.has_3d[:, None, None]
  np.testing.assert_allclose(
    terms["body_joint_img"], np.mean(np.abs(pred - target) * mask), rtol=1e-4
  )

  fit = np.asarray(body(batch.betas, batch.body_pose, batch.global_orient).joints)[:, IDX]
  fit_img = grid(fit + batch.cam_t[:, None])
  trunc = np.all((fit_img >= 0) & (fit_img < 64), -1, keepdims=True)
  np.testing.assert_allclose(
    terms["smpl_joint_img"], np.mean(np.abs(pred - fit_img) * trunc), rtol=1e-4
  )

  pose = np.concatenate([np.asarray(out.global_orient)[:, None], np.asarray(out.body_pose)], 1)
  from scipy.spatial.transform import Rotation

  root = Rotation.from_rotvec(batch.global_orient.astype(np.float64)).as_rotvec()  # angle <= pi
  gt_pose = np.concatenate([root[:, None], batch.body_pose], 1)
  ref_pose = np.mean(np.abs(pose - gt_pose))
  np.testing.assert_allclose(terms["smpl_pose"], ref_pose, rtol=1e-4)
  np.testing.assert_allclose(
    terms["smpl_shape"], np.mean(np.abs(np.asarray(out.betas)[:, :nb] - batch.betas)), rtol=1e-5
  )

  joints = np.asarray(body(out.betas[:, :nb], out.body_pose, out.global_orient).joints)[:, IDX]
  cam = joints + np.asarray(out.translation)[:, None]
  proj = (cam[..., :2] / (cam[..., 2:] + 1e-4) * F + S / 2) * g
  np.testing.assert_allclose(
    terms["body_joint_proj"], np.mean(np.abs(proj - kp[..., :2] * g) * seen), rtol=1e-4
  )
  rel = (joints - joints[:, :1]) - (gt_cam - gt_cam[:, :1])
  np.testing.assert_allclose(
    terms["body_joint_cam"],
    np.mean(np.abs(rel) * batch.has_3d[:, None, None]),
    rtol=1e-4,
  )
  w = PAPER_WEIGHTS
  expected = sum(getattr(w, k) * float(terms[k]) for k in TERMS)
  np.testing.assert_allclose(total, expected, rtol=1e-5)

  # The released automatic weighting: sum 0.5 / p^2 w L + log(1 + p^2).
  p = jnp.asarray([1.0, 2.0, 0.5, 1.5, 1.0, 3.0])
  auto, _ = dpmesh_losses(out, batch, body, RELEASED_WEIGHTS, p)
  ref = sum(
    0.5 / float(p[i]) ** 2 * getattr(RELEASED_WEIGHTS, k) * float(terms[k])
    + np.log(1 + float(p[i]) ** 2)
    for i, k in enumerate(TERMS)
  )
  np.testing.assert_allclose(auto, ref, rtol=1e-5)
  with pytest.raises(ValueError, match="loss_weights"):
    dpmesh_losses(out, batch, body, RELEASED_WEIGHTS)


@pytest.mark.slow  # ~3 min on the loaded 2-core box: compiles the tiny model's gradient
def test_two_trainer_steps_with_nkr(body, tmp_path):
  model = DPMesh(light_config())
  init = random_variables(model, seed=0)
  teacher = random_variables(model, seed=1)
  source = _examples(body, 2)
  task = make_dpmesh_task(
    model,
    source,
    body,
    init_variables=init,
    teacher_variables=teacher,
    weights=RELEASED_WEIGHTS,
  )
  config = trainer_config(steps=2, batch_size=2, learning_rate=1e-3)
  config.seed = 0
  config.train.progress = False
  config.train.tensorboard = False
  config.ema.beta = 0.0
  config.train.checkpoint_every = 10**6
  state = trainer.train(config, str(tmp_path), task)
  labels = traverse_util.flatten_dict(param_labels(state.params), sep="/")
  before = traverse_util.flatten_dict({**init["params"], "loss_weights": np.ones(6)}, sep="/")
  after = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  assert set(labels) == set(before) == set(after)
  changed = {k: not np.array_equal(np.asarray(before[k]), np.asarray(after[k])) for k in before}
  for k, label in labels.items():
    if label == "frozen":
      assert not changed[k], k
  for label in ("backbone", "head"):
    keys = [k for k in labels if labels[k] == label]
    assert np.mean([changed[k] for k in keys]) > 0.9, label
  assert {"vae", "unet"} <= {k.split("/")[1] for k in labels if labels[k] == "frozen"}
  assert all(labels[k] == "frozen" for k in labels if k.startswith("pose_codebook/"))
  rows = read_metrics(str(tmp_path))
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  assert {"nkr_simclr", "nkr_mse", *TERMS} <= set(rows[-1])


def test_vposer_decoder_is_frozen():
  """The released model's VPoser v1 decoder group (`params/vposer`) is labelled frozen."""
  params = {
    "regressor": {"cascade_pose_out_0": {"kernel": np.zeros((4, 32))}},
    "vposer": {"dec_fc1": {"kernel": np.zeros((32, 16)), "bias": np.zeros(16)}},
  }
  labels = traverse_util.flatten_dict(param_labels(params), sep="/")
  assert labels == {
    "regressor/cascade_pose_out_0/kernel": "head",
    "vposer/dec_fc1/kernel": "frozen",
    "vposer/dec_fc1/bias": "frozen",
  }


def _nkr_task(body):
  model = DPMesh(light_config())
  init = random_variables(model, seed=0)
  teacher = random_variables(model, seed=1)
  task = make_dpmesh_task(
    model, _examples(body, 2), body, init_variables=init, teacher_variables=teacher
  )
  return task, teacher["params"]["backbone"]


def test_teacher_is_a_non_trained_collection(body):
  """The NKR teacher's backbone params are the task's `teacher` collection (the trainer's
  model_state, the loss's `state`); the starting variables and the labels are the task's."""
  task, teacher = _nkr_task(body)
  variables = task.initial_variables
  assert set(variables) == {"params", TEACHER} and task.param_labels is param_labels
  assert task.compiler_options == sd_compiler_options()  # the SD stack's XLA options
  got = variables[TEACHER]["backbone"]
  assert jax.tree.structure(got) == jax.tree.structure(teacher)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(teacher)))


@pytest.mark.slow  # ~30 s idle, minutes under load: traces the tiny model and its teacher
def test_teacher_is_not_a_constant_of_the_loss(body):
  """The traced loss reads the teacher from its `state` argument and holds none of its arrays as
  a constant (a closure constant would be baked into the jitted program)."""
  task, teacher = _nkr_task(body)
  variables = task.initial_variables
  batch = stack([apply_transforms(e, task.transforms, 0, i) for i, e in enumerate(task.source)])
  state = {TEACHER: variables[TEACHER]}
  closed = jax.make_jaxpr(task.loss)(variables["params"], state, batch, jax.random.key(0))
  leaves = [np.asarray(x) for x in jax.tree.leaves(teacher) if x.size > 16]
  for c in closed.consts:
    c = np.asarray(c)
    assert not any(c.shape == t.shape and np.array_equal(c, t) for t in leaves), c.shape
  # Its leaves are arguments the traced loss uses.
  n_params = len(jax.tree.leaves(variables["params"]))
  inputs = closed.jaxpr.invars[n_params : n_params + len(jax.tree.leaves(state))]
  used = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars}
  assert np.mean([id(v) in used for v in inputs]) > 0.9
