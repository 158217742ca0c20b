"""Body-model throughput: jhmr (jit) vs smplx (PyTorch CPU) in the same process.

  .venv/bin/python benchmarks/body_forward.py [--batches 1,64,1024] [--repeats 5] [--model anny]

Measures samples/s of the forward pass (vertices + joints) and of forward + gradient of a
scalar of the vertices w.r.t. pose and betas, at each batch size, on the full Anny-derived
asset (`jhmr/body/assets/anny_smpl_neutral.npz`); if that is absent, on a random SMPL-format
file with the same vertex count (13,348) and zero pose correctives, like Anny. smplx reads the
same arrays (a plain pickle written to a temporary directory) and runs with 2 torch threads.
`joints_only` (jhmr's mesh-free path: joints + OpenPose keypoints) is timed against the smplx
full forward, since smplx has no joints-only path. jhmr and smplx are timed in alternation
(median of `--repeats` rounds), so both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, throughput, time_interleaved  # noqa: E402

from jhmr.body import io as body_io  # noqa: E402

FULL_VERTICES = 13348


def _load_arrays(name: str) -> tuple[str, dict[str, np.ndarray]]:
  path = body_io.NAMED_MODELS.get(name)
  if path is not None and path.is_file():
    return f"{name} ({path.name})", body_io.read_npz(path)
  arrays = body_io.random_body_model_arrays(0, FULL_VERTICES, pose_correctives=False)
  return f"random {FULL_VERTICES}-vertex file, zero posedirs ({name} asset absent)", arrays


def _smplx_model(arrays: dict[str, np.ndarray], directory: str):
  import smplx

  keys = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
  plain = {k: arrays[k] for k in keys if k in arrays}
  if "kintree_table" not in plain:
    parents = np.array(body_io.joints_lib.SMPL_PARENTS, np.int64)
    parents[0] = body_io.ROOT_PARENT
    plain["kintree_table"] = np.stack([parents, np.arange(24)])
  path = os.path.join(directory, "SMPL_NEUTRAL.pkl")
  with open(path, "wb") as f:
    pickle.dump(plain, f, protocol=4)
  names = [
    "nose", "reye", "leye", "rear", "lear", "rthumb", "rindex", "rmiddle", "rring", "rpinky",
    "lthumb", "lindex", "lmiddle", "lring", "lpinky", "LBigToe", "LSmallToe", "LHeel",
    "RBigToe", "RSmallToe", "RHeel",
  ]  # fmt: skip
  return smplx.SMPL(model_path=path, vertex_ids={n: i for i, n in enumerate(names)})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="1,64,1024")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--model", default="anny")
  args = parser.parse_args()

  import torch

  torch.set_num_threads(2)
  label, arrays = _load_arrays(args.model)
  with tempfile.TemporaryDirectory() as tmp:
    ref = _smplx_model(arrays, tmp)
  model = body_io.smpl.build_body_model(arrays)
  joint_set = "openpose25" if "openpose25" in model.joint_sets else "smpl24"
  print(f"# body model: {label}; V={model.num_vertices}, posedirs={model.has_posedirs}")
  print(f"# jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}")
  print(f"# load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)

  @jax.jit
  def forward(m, betas, pose, orient):
    out = m(betas, pose, orient)
    return out.vertices, out.joints

  @jax.jit
  def forward_grad(m, betas, pose, orient):
    loss = lambda b, p, o: jnp.sum(m(b, p, o).vertices)
    return jax.grad(loss, argnums=(0, 1, 2))(betas, pose, orient)

  @jax.jit
  def joints_fwd(m, betas, pose, orient):
    out = m.joints_only(betas, pose, orient, joint_set=joint_set)
    return out.joints, out.keypoints

  @jax.jit
  def joints_grad(m, betas, pose, orient):
    loss = lambda b, p, o: jnp.sum(m.joints_only(b, p, o, joint_set=joint_set).keypoints)
    return jax.grad(loss, argnums=(0, 1, 2))(betas, pose, orient)

  def torch_forward(betas, pose, orient):
    with torch.no_grad():
      out = ref(betas=betas, body_pose=pose, global_orient=orient)
    return out.vertices

  def torch_forward_grad(betas, pose, orient):
    b, p, o = (x.detach().requires_grad_(True) for x in (betas, pose, orient))
    ref(betas=b, body_pose=p, global_orient=o).vertices.sum().backward()
    return b.grad, p.grad, o.grad

  rows = []
  for batch in (int(b) for b in args.batches.split(",")):
    rng = np.random.default_rng(batch)
    betas = rng.normal(0, 1, (batch, 10)).astype(np.float32)
    pose = rng.normal(0, 0.3, (batch, 23, 3)).astype(np.float32)
    orient = rng.normal(0, 0.3, (batch, 3)).astype(np.float32)
    jx = tuple(jnp.asarray(x) for x in (betas, pose, orient))
    tt = (torch.tensor(betas), torch.tensor(pose.reshape(batch, 69)), torch.tensor(orient))
    reps = max(1, args.repeats if batch < 1024 else args.repeats // 2)
    fwd = time_interleaved(
      [(torch_forward, tt), (forward, (model, *jx)), (joints_fwd, (model, *jx))], repeats=reps
    )
    grad = time_interleaved(
      [(torch_forward_grad, tt), (forward_grad, (model, *jx)), (joints_grad, (model, *jx))],
      repeats=reps,
    )
    cases = (
      ("forward", fwd[1], fwd[0]),
      ("forward+grad", grad[1], grad[0]),
      (f"joints_only ({joint_set})", fwd[2], fwd[0]),
      (f"joints_only+grad ({joint_set})", grad[2], grad[0]),
    )
    for what, t_jhmr, t_smplx in cases:
      rows.append(
        (
          what,
          batch,
          throughput(t_jhmr, batch),
          throughput(t_smplx, batch),
          f"{t_smplx / t_jhmr:.2f}x",
        )
      )
    print(f"# batch {batch} done (load average {os.getloadavg()[0]:.1f})", flush=True)
  print_table(["pass", "batch", "jhmr samples/s", "smplx samples/s", "ratio"], rows)


if __name__ == "__main__":
  main()
