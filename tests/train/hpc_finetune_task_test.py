"""jhmr.train.hpc_finetune_task: the 1/2-1/2 mixed source, SPIN's four terms by hand on a built
batch (real samples: no SMPL term; synthetic: no keypoint term; the x60), and one step of the
shared trainer with a tiny HMR and the tiny body model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import trainer_config
from jhmr.data import pipeline
from jhmr.data.example import PersonExample, stack
from jhmr.models.hmr import HMR
from jhmr.train import trainer
from jhmr.train.hpc_finetune_task import (
  MixedSource,
  default_config,
  hpc_losses,
  make_hpc_finetune_task,
  total_loss,
)
from tests.guidance.conftest import make_tiny_body

S, F = 32, 60.0


@pytest.fixture(scope="module")
def body():
  return make_tiny_body()


@jax.jit
def _pose(body, betas, body_pose, orient):
  return body(betas, body_pose, orient, joint_set="openpose25")


def _examples(body, n, seed, *, synthetic_labels: bool):
  """n people 3 m in front of a pinhole camera; 2D labels = the projected BODY_25 keypoints.
  Real ones (synthetic_labels False) carry random SMPL labels with has_smpl 0, like SMART rows."""
  rng = np.random.default_rng(seed)
  body_pose = (0.2 * rng.normal(size=(n, 23, 3))).astype(np.float32)
  orient = (np.array([np.pi, 0, 0]) + 0.1 * rng.normal(size=(n, 3))).astype(np.float32)
  betas = (0.5 * rng.normal(size=(n, body.num_betas))).astype(np.float32)
  cam_t = np.stack([0.1 * rng.normal(size=n), 0.2 * np.ones(n), np.full(n, 3.0)], -1)
  out = _pose(body, betas, body_pose, orient)
  joints = np.asarray(out.joints) + cam_t[:, None]
  op = np.asarray(out.keypoints) + cam_t[:, None]
  proj = op[..., :2] / op[..., 2:] * F + S / 2
  kp = np.concatenate([proj, np.ones((n, 25, 1))], -1).astype(np.float32)
  intr = np.array([[F, 0, S / 2], [0, F, S / 2], [0, 0, 1]], np.float32)
  return [
    PersonExample(
      image=rng.integers(0, 256, (S, S, 3), dtype=np.uint8),
      crop_from_image=np.eye(2, 3, dtype=np.float32),
      intrinsics=intr,
      image_size=np.array([S, S], np.float32),
      keypoints_2d={"openpose25": kp[i], "extra": kp[i, :3]},
      global_orient=orient[i],
      body_pose=body_pose[i],
      betas=betas[i],
      cam_t=cam_t[i].astype(np.float32),
      joints_3d=joints[i].astype(np.float32),
      joint_visibility=np.ones(24, np.float32),
      occlusion=np.zeros((S, S), bool),
      has_smpl=np.float32(synthetic_labels),
      has_3d=np.float32(0),
      group=np.int32(i),
      frame=np.int32(0),
    )
    for i in range(n)
  ]


@pytest.fixture(scope="module")
def sources(body):
  return _examples(body, 3, 0, synthetic_labels=False), _examples(body, 5, 1, synthetic_labels=True)


def test_mixed_source_alternates_and_streams_half_and_half(sources):
  real, synth = sources
  source = MixedSource(real, synth)
  assert len(source) == 10  # twice the larger set
  for i in range(len(source)):
    ex = source[i]
    want = (synth[(i // 2) % 5] if i % 2 else real[(i // 2) % 3]).image
    np.testing.assert_array_equal(ex.image, want)
    assert float(ex.synthetic) == i % 2
    assert set(ex.keypoints_2d) == {"openpose25"}  # only the shared set is kept
  # Through the input pipeline (global shuffle): every epoch of the stream is exactly half/half.
  it = pipeline.make_iterator(source, 5, seed=3, num_threads=0)
  flags = np.concatenate([next(it).synthetic for _ in range(6)])  # 3 epochs of 10
  assert flags.reshape(3, 10).sum(1).tolist() == [5, 5, 5]
  assert 0 < flags[:5].sum() < 5 or 0 < flags[5:10].sum() < 5  # shuffled, not alternating


def test_without_a_synthetic_source_every_item_is_real(sources):
  real, _ = sources
  source = MixedSource(real, None)
  assert len(source) == len(real)
  for i in range(len(source)):
    np.testing.assert_array_equal(source[i].image, real[i].image)
    assert float(source[i].synthetic) == 0
  with pytest.raises(ValueError, match="keypoint set 'smpl24'"):
    MixedSource(real, None, keypoint_set="smpl24")


def test_mixed_source_rejects_mismatched_sources(body, sources):
  real, synth = sources
  with pytest.raises(ValueError, match="betas"):
    MixedSource(real, [synth[0].replace(betas=np.zeros(7, np.float32))])
  with pytest.raises(ValueError, match="keypoint set 'smpl24'"):
    MixedSource(real, synth, keypoint_set="smpl24")
  with pytest.raises(ValueError, match="synthetic source is empty"):
    MixedSource(real, [])
  config = default_config()
  config.image_normalisation = "caffe"
  with pytest.raises(ValueError, match="image_normalisation"):
    make_hpc_finetune_task(HMR(depth=18, width=4), real, synth, body, config=config)


def _batch(sources):
  real, synth = sources
  source = MixedSource(real, synth)
  return jax.tree.map(jnp.asarray, stack([source[i] for i in range(4)]))  # real, syn, real, syn


def _outputs(rng, b, nb):
  from jhmr.geometry import rotations

  return {
    "rotmat": rotations.axis_angle_to_matrix(jnp.asarray(0.4 * rng.normal(size=(b, 24, 3)))),
    "betas": jnp.asarray(rng.normal(size=(b, nb)), jnp.float32),
    "cam": jnp.asarray([[0.9, 0.1, 0.2], [0.7, -0.1, 0.0], [1.1, 0.0, 0.1], [0.2, 0.3, -0.2]]),
  }


def _loss_fn(body, config):
  """jit(out, batch -> (total, terms)) for one config (jitted: op-by-op dispatch is slower)."""

  def fn(out, batch):
    terms = hpc_losses(out, batch, body, config)
    return total_loss(terms, config), terms

  return jax.jit(fn)


@pytest.fixture(scope="module")
def default_loss(body):
  return _loss_fn(body, default_config())


def test_terms_by_hand_and_the_x60(body, sources, default_loss):
  batch = _batch(sources)
  out = _outputs(np.random.default_rng(0), 4, body.num_betas)
  config = default_config()
  total, terms = default_loss(out, batch)
  syn = np.array([0, 1, 0, 1], bool)
  # pose / betas: synthetic rows only, 23 body joints, betas[1:].
  gt = np.asarray(batch.rotmat())
  pose = np.mean((np.asarray(out["rotmat"])[syn, 1:] - gt[syn, 1:]) ** 2)
  betas = np.mean((np.asarray(out["betas"])[syn, 1:] - np.asarray(batch.betas)[syn, 1:]) ** 2)
  camera = np.mean(np.exp(-10 * np.asarray(out["cam"])[:, 0]) ** 2)
  np.testing.assert_allclose(terms["pose"], pose, rtol=1e-5)
  np.testing.assert_allclose(terms["betas"], betas, rtol=1e-5)
  np.testing.assert_allclose(terms["camera"], camera, rtol=1e-5)
  # keypoints: real rows only, mean over all [B, K, 2] entries (SPIN's .mean()).
  posed = _posed_rotmat(body, out["betas"], out["rotmat"])
  cam = np.asarray(out["cam"])
  pred = cam[:, None, :1] * (np.asarray(posed.keypoints)[..., :2] + cam[:, None, 1:])
  label = (np.asarray(batch.keypoints_2d["openpose25"])[..., :2] - S / 2) / (S / 2)
  sq = (pred - label) ** 2 * (~syn)[:, None, None]
  np.testing.assert_allclose(terms["keypoints2d"], sq.mean(), rtol=1e-5)
  want = 60 * (5 * sq.mean() + pose + 0.001 * betas + camera)
  np.testing.assert_allclose(total, want, rtol=1e-5)
  config.loss_scale = 1.0
  np.testing.assert_allclose(total_loss(terms, config), want / 60, rtol=1e-5)


@jax.jit
def _posed_rotmat(body, betas, rotmat):
  return body.joints_only(
    betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set="openpose25"
  )


def test_real_rows_get_no_smpl_term_and_synthetic_rows_no_keypoint_term(
  body, sources, default_loss
):
  batch = _batch(sources)
  out = _outputs(np.random.default_rng(1), 4, body.num_betas)
  base = float(default_loss(out, batch)[0])
  # Other SMPL labels (and has_smpl 1) on the real rows: same loss.
  rng = np.random.default_rng(2)
  real = np.array([1, 0, 1, 0], np.float32)[:, None]
  moved = batch.replace(
    body_pose=batch.body_pose + jnp.asarray(real[..., None] * rng.normal(size=(4, 23, 3))),
    betas=batch.betas + jnp.asarray(real * rng.normal(size=batch.betas.shape)),
    has_smpl=jnp.ones(4),
  )
  np.testing.assert_allclose(float(default_loss(out, moved)[0]), base, rtol=1e-6)
  # Other 2D labels on the synthetic rows: same loss; with synthetic_keypoints they count.
  kp = batch.keypoints_2d["openpose25"]
  shift = jnp.asarray((1 - real)[..., None] * np.array([5.0, -3.0, 0.0], np.float32))
  moved = batch.replace(keypoints_2d={"openpose25": kp + shift})
  np.testing.assert_allclose(float(default_loss(out, moved)[0]), base, rtol=1e-6)
  both = default_config()
  both.synthetic_keypoints = True
  both_loss = _loss_fn(body, both)
  assert float(both_loss(out, moved)[0]) > float(both_loss(out, batch)[0]) + 1.0
  # Gradient of each term with respect to every output: the SMPL terms have none on real rows,
  # the keypoint term none on synthetic rows, and each has some on its own rows.
  config = default_config()
  per_term = jax.jit(
    lambda out: {
      name: jax.grad(lambda o, name=name: hpc_losses(o, batch, body, config)[name])(out)
      for name in ("keypoints2d", "pose", "betas")
    }
  )(out)
  size = lambda g: np.abs(np.concatenate([np.asarray(v).reshape(4, -1) for v in g.values()], 1))
  kp_grad, smpl_grad = (
    size(per_term["keypoints2d"]),
    size(per_term["pose"]) + size(per_term["betas"]),
  )
  assert kp_grad[1::2].sum() == 0 and np.all(kp_grad[::2].sum(1) > 0)
  assert smpl_grad[::2].sum() == 0 and np.all(smpl_grad[1::2].sum(1) > 0)


@pytest.mark.slow  # ~20 s of compilation (ResNet-18 + body model + optimiser) on the 2-core CPU
def test_one_trainer_step_with_a_tiny_hmr(body, sources, tmp_path):
  real, synth = sources
  model = HMR(depth=18, width=4, num_betas=body.num_betas, num_iterations=1, hidden=16)
  task = make_hpc_finetune_task(model, real, synth, body)
  # Small random starting weights from the shapes alone (no compiled init: seconds saved).
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0), task.batch_spec(4))
  rng = np.random.default_rng(5)

  def leaf(path, s):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return (np.ones if name.endswith("['var']") else np.zeros)(s.shape, s.dtype)
    return (0.01 * rng.normal(size=s.shape)).astype(s.dtype)

  init = jax.tree_util.tree_map_with_path(leaf, shapes)
  task = make_hpc_finetune_task(model, real, synth, body, initial_variables=init)
  train_config = trainer_config(steps=1, batch_size=4, learning_rate=1e-4)
  train_config.seed = 0
  train_config.train.update(progress=False, tensorboard=False, log_every=1, data_threads=0)
  state = trainer.train(train_config, tmp_path, task)
  before, after = jax.tree.leaves(init["params"]), jax.tree.leaves(state.params)
  assert all(np.all(np.isfinite(np.asarray(b))) for b in after)
  changed = [not np.allclose(a, b) for a, b in zip(before, after)]
  assert sum(changed) > len(changed) // 2
  from jhmr.train.metrics import read_metrics

  rows = read_metrics(tmp_path)
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  assert {"keypoints2d", "pose", "betas", "camera", "synthetic_fraction"} <= set(rows[-1])
