"""ScoreHMR on CMU motion capture: accuracy of keypoint / multi-view / video refinement + speed.

  .venv/bin/python benchmarks/scorehmr.py                 # train (or load) the prior, then all
  .venv/bin/python benchmarks/scorehmr.py --skip-train    # reuse the cached prior (error if none)
  .venv/bin/python benchmarks/scorehmr.py --only speed --frames 256 --batch 256   # CPU or GPU

1. Prior: an unconditional ScoreNet (ScoreHMR's architecture, cond_dim=0) trained with the
   official loss/optimiser/EMA on CMU poses of the training subjects (`cmu_subject_split`). Each
   pose is seen from a random camera (`jhmr.data.observations.random_camera`), so the global
   orientation follows the camera-frame distribution the evaluation uses. Params are cached as
   `.npz` under --cache-dir (rerun with --retrain to train again).
2. Evaluation on the held-out subjects with synthetic observations: random cameras, OpenPose-25
   keypoints projected from the true pose with detector-like noise, outliers and missing joints
   (`synthesize_keypoints`), initial estimates = truth corrupted like a regressor
   (`corrupt_pose`). Keypoint fitting compares the initial estimate, a SMPLify-style baseline
   (`jhmr.guidance.smplify`) and ScoreHMR; multi-view uses 4 cameras per person; video uses
   clips of consecutive frames with one camera each. Joints: the 24 SMPL joints, mm, pelvis
   centred (MPJPE) or Procrustes aligned (PA-MPJPE); acceleration error in mm/frame^2.
3. Speed: `refine` with the full-size network (11.3M parameters, 3072-D features, random weights
   like the anchor) and the default body model, official keypoint-fitting settings, early
   stopping off; frames/s over --batch frames. Anchor: the official PyTorch code on the 2-core CI
   CPU, 2.2 frames/s at batch 64-256 (shared/research/official_scorehmr_cpu_bench.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
from common import print_table, time_call  # noqa: E402

from jhmr.body import load_body_model  # noqa: E402
from jhmr.data import mocap  # noqa: E402
from jhmr.data import observations as obs_lib  # noqa: E402
from jhmr.diffusion.schedules import make_alphas_cumprod  # noqa: E402
from jhmr.diffusion.training import EMAConfig, diffusion_loss, ema_init, ema_update  # noqa: E402
from jhmr.eval import metrics  # noqa: E402
from jhmr.geometry import rotations  # noqa: E402
from jhmr.guidance import Observation, refine, smplify, task_config  # noqa: E402
from jhmr.models.score_net import ScoreNet, count_params  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = obs_lib.CameraSpec(image_size=(1000, 1000), focal_range=(1.2, 2.0), distance_range=(3, 6))
NOISE = obs_lib.KeypointNoise()
ANCHOR_FPS = 2.2  # official PyTorch, 2 CPU threads, B = 64..256


# -- data ---------------------------------------------------------------------------------------


def load_poses(root, subjects, body_model, cache: pathlib.Path, name: str, fps: float):
  """{'orient' [N,3], 'body' [N,23,3], 'transl' [N,3], 'clip' [N]} of the subjects' motions."""
  path = cache / f"cmu_{name}_{int(fps)}fps.npz"
  if path.is_file():
    return dict(np.load(path))
  motions = mocap.load_cmu(root, subjects=subjects, body_model=body_model, fps=fps)
  parts = {"orient": [], "body": [], "transl": [], "clip": []}
  for i, m in enumerate(motions.values()):
    parts["orient"].append(np.asarray(m.global_orient, np.float32))
    parts["body"].append(np.asarray(m.body_pose, np.float32))
    parts["transl"].append(np.asarray(m.transl, np.float32))
    parts["clip"].append(np.full((m.num_frames,), i, np.int32))
  data = {k: np.concatenate(v) for k, v in parts.items()}
  cache.mkdir(parents=True, exist_ok=True)
  np.savez(path, **data)
  return data


def camera_frame_6d(key, orient_aa, body_aa):
  """6D poses [B, 144] with the global orientation seen from random cameras."""
  b = orient_aa.shape[0]
  cams = jax.vmap(lambda k: obs_lib.random_camera(k, jnp.zeros(3), SPEC))(jax.random.split(key, b))
  orient = cams.rotation @ rotations.axis_angle_to_matrix(orient_aa)
  pose = jnp.concatenate([orient[:, None], rotations.axis_angle_to_matrix(body_aa)], axis=1)
  return jnp.reshape(rotations.matrix_to_rot6d(pose), (b, 144))


# -- prior --------------------------------------------------------------------------------------


def train_prior(data, net: ScoreNet, steps: int, batch: int, lr: float, seed: int = 0):
  """Official recipe (eps-L2, Adam b2=0.99, clip 1.0, EMA 0.995/10), returns EMA params."""
  ab = jnp.asarray(make_alphas_cumprod("cosine"))
  orient, body = jnp.asarray(data["orient"]), jnp.asarray(data["body"])
  n = orient.shape[0]
  params = jax.jit(net.init)(jax.random.key(seed), jnp.zeros((1, 144)), jnp.zeros((1,), jnp.int32))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr, b1=0.9, b2=0.99))
  ema_cfg = EMAConfig()

  @jax.jit
  def step(params, opt_state, ema, key):
    k_idx, k_cam, k_loss = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (batch,), 0, n)
    x0 = camera_frame_6d(k_cam, orient[idx], body[idx])
    loss_fn = lambda p: diffusion_loss(functools.partial(net.apply, p), k_loss, x0, ab)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, ema_update(ema, params, ema_cfg), loss

  opt_state, ema = opt.init(params), ema_init(params)
  key, losses, t0 = jax.random.key(seed + 1), [], time.time()
  for i in range(steps):
    key, sub = jax.random.split(key)
    params, opt_state, ema, loss = step(params, opt_state, ema, sub)
    losses.append(loss)
    if (i + 1) % max(steps // 10, 1) == 0:
      recent = float(jnp.mean(jnp.stack(losses[-100:])))
      print(f"  step {i + 1}/{steps}: loss {recent:.4f} ({time.time() - t0:.0f} s)", flush=True)
  return ema.params


def save_params(path: pathlib.Path, params, meta: dict):
  flat = {
    "/".join(k.key for k in p): np.asarray(v)
    for p, v in jax.tree_util.tree_leaves_with_path(params)
  }
  np.savez(path, **flat)
  path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def load_params(path: pathlib.Path, net: ScoreNet):
  target = jax.eval_shape(
    net.init, jax.random.key(0), jnp.zeros((1, 144)), jnp.zeros((1,), jnp.int32)
  )
  stored = np.load(path)
  return jax.tree_util.tree_map_with_path(
    lambda p, t: jnp.asarray(stored["/".join(k.key for k in p)], t.dtype), target
  )


# -- scenes -------------------------------------------------------------------------------------


def scene(key, body_model, orient, body, cameras, *, temporal=False, level=1.0):
  """Truth + observations for poses [N] seen by cameras [N]: (Observation kwargs, truth dict)."""
  n = orient.shape[0]
  pelvis = body_model.J_template[0]
  transl_world = -pelvis[None].repeat(n, 0)  # pelvis at the world origin (cameras look there)
  orient_c, transl_c = obs_lib.to_camera_frame(cameras, orient, transl_world, pelvis)
  betas = jnp.zeros((n, body_model.num_betas))
  kp3d = body_model.joints_only(
    betas, body, orient_c, transl_c, joint_set="openpose25"
  ).keypoints  # camera frame
  k_kp, k_init = jax.random.split(key)
  ident = obs_lib.Camera(
    jnp.eye(3)[None].repeat(n, 0),
    jnp.zeros((n, 3)),
    cameras.focal_length,
    cameras.principal_point,
    SPEC.image_size,
  )
  names = body_model.joint_names("openpose25")
  kp2d, conf = obs_lib.synthesize_keypoints(
    k_kp, kp3d, ident, NOISE, obs_lib.left_right_pairs(names), temporal=temporal
  )
  init = obs_lib.corrupt_pose(
    k_init,
    {"global_orient": orient_c, "body_pose": body, "betas": betas, "transl": transl_c},
    level,
  )
  kwargs = dict(
    init_pose=jnp.concatenate([init["global_orient"][:, None], init["body_pose"]], axis=1),
    init_betas=init["betas"],
    init_cam_t=init["transl"],
    keypoints_2d=kp2d,
    confidence=conf,
    image_size=(SPEC.image_size[1], SPEC.image_size[0]),
    focal_length=cameras.focal_length,
    camera_center=cameras.principal_point,
    pose_format="axis_angle",
    body_model=body_model,
  )
  truth = {"orient": orient_c, "body": body, "betas": betas}
  return kwargs, truth


def joints_mm(body_model, pose_mat, betas):
  out = body_model.joints_only(betas, pose_mat[:, 1:], pose_mat[:, 0], pose_format="rotmat")
  return 1000.0 * out.joints


def errors(body_model, truth, pose_mat, betas):
  gt = 1000.0 * body_model.joints_only(truth["betas"], truth["body"], truth["orient"]).joints
  pred = joints_mm(body_model, pose_mat, betas)
  return (
    gt,
    pred,
    {
      "MPJPE": float(jnp.mean(metrics.mpjpe(pred, gt, root=0))),
      "PA-MPJPE": float(jnp.mean(metrics.pa_mpjpe(pred, gt))),
    },
  )


def eval_keypoints(key, params, bm, test, frames):
  k_idx, k_cam, k_scene = jax.random.split(key, 3)
  idx = jax.random.choice(k_idx, test["orient"].shape[0], (frames,), replace=False)
  cams = jax.vmap(lambda k: obs_lib.random_camera(k, jnp.zeros(3), SPEC))(
    jax.random.split(k_cam, frames)
  )
  kwargs, truth = scene(k_scene, bm, test["orient"][idx], test["body"][idx], cams)
  obs = Observation.create(**kwargs)
  rows = [("initial", *errors(bm, truth, obs.init_pose, obs.init_betas)[2].values())]
  t = time.time()
  base = smplify.fit(obs)
  base.pose.block_until_ready()
  rows.append(("SMPLify baseline", *errors(bm, truth, base.pose, base.betas)[2].values()))
  t_base, t = time.time() - t, time.time()
  res = refine(params, obs, task="keypoints")
  res.pose.block_until_ready()
  rows.append(("ScoreHMR", *errors(bm, truth, res.pose, res.betas)[2].values()))
  print(
    f"  (baseline {t_base:.1f} s, ScoreHMR {time.time() - t:.1f} s incl. compile; "
    f"mean steps used {float(jnp.mean(res.steps_used)):.0f}/250)"
  )
  return rows


def eval_multiview(key, params, bm, test, people, views=4):
  k_idx, k_cam, k_scene = jax.random.split(key, 3)
  idx = jax.random.choice(k_idx, test["orient"].shape[0], (people,), replace=False)
  rigs = jax.vmap(lambda k: obs_lib.multiview_rig(k, jnp.zeros(3), views, SPEC))(
    jax.random.split(k_cam, people)
  )
  flat_cams = jax.tree.map(lambda x: jnp.reshape(x, (people * views, *x.shape[2:])), rigs)
  rep = lambda x: jnp.repeat(x[idx], views, axis=0)
  kwargs, truth = scene(k_scene, bm, rep(test["orient"]), rep(test["body"]), flat_cams)
  kwargs.update(group=np.repeat(np.arange(people), views), keypoints_2d=None, confidence=None)
  obs = Observation.create(**kwargs)
  res = refine(params, obs, task="multiview")
  return [
    ("initial", *errors(bm, truth, obs.init_pose, obs.init_betas)[2].values()),
    ("ScoreHMR", *errors(bm, truth, res.pose, res.betas)[2].values()),
  ]


def eval_video(key, params, bm, test, clips, length):
  starts = [
    s
    for s in range(0, test["orient"].shape[0] - length)
    if test["clip"][s] == test["clip"][s + length - 1]
  ][:: max(length // 2, 1)]
  k_sel, k_cam, k_scene = jax.random.split(key, 3)
  chosen = np.asarray(jax.random.choice(k_sel, len(starts), (clips,), replace=False))
  idx = np.concatenate([np.arange(starts[c], starts[c] + length) for c in chosen])
  cams = jax.vmap(lambda k: obs_lib.random_camera(k, jnp.zeros(3), SPEC))(
    jax.random.split(k_cam, clips)
  )
  cams = jax.tree.map(lambda x: jnp.repeat(x, length, axis=0), cams)
  kw, tr = [], []
  for c in range(clips):
    sl = slice(c * length, (c + 1) * length)
    cam_c = jax.tree.map(lambda x, sl=sl: x[sl], cams)
    a, b = scene(
      jax.random.fold_in(k_scene, c),
      bm,
      test["orient"][idx[sl]],
      test["body"][idx[sl]],
      cam_c,
      temporal=True,
    )
    kw.append(a)
    tr.append(b)
  kwargs = {
    k: (jnp.concatenate([d[k] for d in kw]) if isinstance(kw[0][k], jax.Array) else kw[0][k])
    for k in kw[0]
  }
  truth = {k: jnp.concatenate([d[k] for d in tr]) for k in tr[0]}
  kwargs["group"] = np.repeat(np.arange(clips), length)
  obs = Observation.create(**kwargs)
  res = refine(params, obs, task="video")
  rows = []
  for name, pose, betas in (
    ("initial", obs.init_pose, obs.init_betas),
    ("ScoreHMR", res.pose, res.betas),
  ):
    gt, pred, err = errors(bm, truth, pose, betas)
    centre = lambda j: jnp.reshape(j - j[:, :1], (clips, length, 24, 3))
    accel = metrics.acceleration_error(centre(pred), centre(gt))
    rows.append((name, err["MPJPE"], err["PA-MPJPE"], float(jnp.mean(accel))))
  return rows


# -- speed --------------------------------------------------------------------------------------


def speed(bm, frames: int, batch: int, repeats: int):
  net = ScoreNet()  # released configuration: 3072-D PARE features, 11,307,024 parameters
  x = jnp.zeros((1, 144))
  params = jax.jit(net.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32), jnp.zeros((1, 3072)))
  config = task_config("keypoints").replace(early_stopping=False, net=net)
  k = jax.random.split(jax.random.key(7), 6)
  aa = 0.3 * jax.random.normal(k[0], (batch, 24, 3))
  betas = 0.5 * jax.random.normal(k[1], (batch, bm.num_betas))
  cam_t = jnp.concatenate(
    [0.1 * jax.random.normal(k[2], (batch, 2)), 20 + jax.random.uniform(k[3], (batch, 1)) * 5], -1
  )
  pts = bm.joints_only(betas, aa[:, 1:], aa[:, 0], cam_t, joint_set="openpose25").keypoints
  kp = 5000 * pts[..., :2] / pts[..., 2:] + 500 + 15 * jax.random.normal(k[4], pts[..., :2].shape)
  obs = Observation.create(
    aa,
    betas,
    cam_t,
    kp,
    jax.random.uniform(k[5], kp.shape[:2]),
    image_size=(1000, 1000),
    features=jax.random.normal(k[0], (batch, 3072)),
    pose_format="axis_angle",
    body_model=bm,
  )
  t0 = time.time()
  jax.block_until_ready(refine(params, obs, config=config))
  compile_s = time.time() - t0
  per_call = time_call(lambda: refine(params, obs, config=config), repeats=repeats, warmup=0)
  calls = -(-frames // batch)
  fps = batch / per_call
  return {
    "device": jax.devices()[0].device_kind,
    "batch": batch,
    "frames": calls * batch,
    "s_per_batch": per_call,
    "frames_per_s": fps,
    "first_call_s": compile_s,
    "total_s": calls * per_call,
    "params": count_params(params),
    "net_evals_per_frame": 2 * config.num_iters * config.steps_per_iter,
    "body_passes_per_frame": config.num_iters * config.steps_per_iter,
  }


# -- main ---------------------------------------------------------------------------------------


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmu_mocap"))
  p.add_argument(
    "--cache-dir",
    default=os.environ.get("JHMR_CACHE", str(pathlib.Path.home() / ".cache" / "jhmr" / "scorehmr")),
  )
  p.add_argument("--body-model", default=None, help="None: the default Anny model; 'anny-tiny'")
  p.add_argument("--only", choices=("all", "accuracy", "speed"), default="all")
  p.add_argument("--retrain", action="store_true")
  p.add_argument("--prior", default=None, help="a saved prior .npz to use instead of the cache")
  p.add_argument("--skip-train", action="store_true", help="require a cached prior")
  p.add_argument("--train-steps", type=int, default=12000)
  p.add_argument("--train-batch", type=int, default=128)
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--prior-hidden", type=int, default=512)
  p.add_argument("--frames", type=int, default=256, help="frames per accuracy task / speed run")
  p.add_argument("--batch", type=int, default=256, help="speed batch size")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--clip-length", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  bm = load_body_model(a.body_model)
  print(f"device: {jax.devices()[0].device_kind}; body model: {bm.num_vertices} vertices")

  if a.only in ("all", "accuracy"):
    cache = pathlib.Path(a.cache_dir)
    train_subj, test_subj = mocap.cmu_subject_split(a.data)
    tag = f"{a.body_model or 'anny'}"
    t = time.time()
    train = load_poses(a.data, train_subj, bm, cache, f"train_{tag}", 30)
    test = load_poses(a.data, test_subj, bm, cache, f"test_{tag}", 30)
    print(
      f"CMU: {len(train_subj)} train subjects ({len(train['orient'])} frames), "
      f"{len(test_subj)} test subjects {test_subj} ({len(test['orient'])} frames) "
      f"[{time.time() - t:.0f} s]"
    )
    net = ScoreNet(cond_dim=0, hidden=a.prior_hidden)
    path = pathlib.Path(a.prior or cache / f"prior_{tag}_h{a.prior_hidden}_s{a.train_steps}.npz")
    if path.is_file() and not a.retrain:
      params = load_params(path, net)
      print(f"prior: loaded {path}")
    elif a.skip_train:
      raise SystemExit(f"--skip-train but no cached prior at {path}")
    else:
      shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 144)), jnp.zeros(1, int))
      print(f"prior: training {count_params(shapes)} parameters for {a.train_steps} steps")
      t = time.time()
      params = train_prior(train, net, a.train_steps, a.train_batch, a.lr, a.seed)
      save_params(
        path,
        params,
        {
          "steps": a.train_steps,
          "hidden": a.prior_hidden,
          "lr": a.lr,
          "train_s": time.time() - t,
          "subjects": train_subj,
        },
      )
      print(f"prior: trained in {time.time() - t:.0f} s -> {path}")
    test = {k: jnp.asarray(v) for k, v in test.items()}
    key = jax.random.key(a.seed + 100)
    k1, k2, k3 = jax.random.split(key, 3)
    print("\nKeypoint fitting (single view), mm")
    print_table(["method", "MPJPE", "PA-MPJPE"], eval_keypoints(k1, params, bm, test, a.frames))
    print("\nMulti-view (4 views), mm")
    print_table(
      ["method", "MPJPE", "PA-MPJPE"], eval_multiview(k2, params, bm, test, a.frames // 4)
    )
    print(f"\nVideo ({a.clip_length}-frame clips), mm and mm/frame^2")
    print_table(
      ["method", "MPJPE", "PA-MPJPE", "accel"],
      eval_video(k3, params, bm, test, max(a.frames // a.clip_length, 1), a.clip_length),
    )

  if a.only in ("all", "speed"):
    r = speed(bm, a.frames, a.batch, a.repeats)
    print("\nSpeed: refine, keypoint fitting, official settings, early stopping off")
    print_table(
      [
        "device",
        "batch",
        "s/batch",
        "frames/s",
        "vs official CPU (2.2/s)",
        "first call s",
        "net evals/frame",
        "body passes/frame",
      ],
      [
        (
          r["device"],
          r["batch"],
          r["s_per_batch"],
          r["frames_per_s"],
          r["frames_per_s"] / ANCHOR_FPS,
          r["first_call_s"],
          r["net_evals_per_frame"],
          r["body_passes_per_frame"],
        )
      ],
    )
    print(f"{r['frames']} frames: {r['total_s']:.1f} s ({r['params']} network parameters)")


if __name__ == "__main__":
  main()
