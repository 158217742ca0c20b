"""Derive jhmr's free SMPL-format body models from the Apache-2.0 Anny model (NAVER, anny 0.6.2).

    python -m jhmr.body.derive_anny [--out DIR] [--samples N] [--heldout M] [--seed S]
                                    [--only neutral|tiny]

writes `anny_smpl_neutral.npz` (topology `anny-noeyes-notongue`, 13,348 vertices) and
`anny_smpl_tiny.npz` (topology `notoes_collapse10pc`, 1,229 vertices) into DIR (default: the
package's `jhmr/body/assets`) and prints the validation numbers quoted in `assets/README.md`.

Recipe (research/body_model.md section 2): sample adult Anny phenotypes, bake each rest body into
an SMPL-like T-pose with Anny's own 104-bone skinning, convert axes to SMPL's (Y-up, facing +Z),
PCA to 10 unit-variance betas, merge Anny's bones into SMPL's 24 parts, fit a non-negative
J_regressor by NNLS, zero posedirs (Anny has no pose correctives), SMPL's kinematic tree, and the
joint sets `openpose25`, `coco17`, `h36m17`, `lsp14` from SMPL joints and NNLS
regressors fitted to Anny's COCO keypoints. float64 internally, float32 stored; a fixed seed gives
the same arrays.

Needs `pip install jhmr[anny]` (torch==2.13.0, anny==0.6.2, scipy); jhmr's runtime never does.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import tempfile
import time

import numpy as np

from jhmr.body import anny_regressors as regs
from jhmr.body import anny_rig as rig
from jhmr.body import io as body_io

TOPOLOGIES = {"neutral": "anny-noeyes-notongue", "tiny": "notoes_collapse10pc"}
FILE_NAMES = {"neutral": "anny_smpl_neutral.npz", "tiny": "anny_smpl_tiny.npz"}
REFERENCE_TOPOLOGY = "anny"  # has the eyeballs that Anny's COCO eye keypoints rely on
NUM_BETAS = 10
KEYPOINT_FIT_SAMPLES = 300
JOINT_FIT_SAMPLES = 1000
CHUNK = 50
POSED_CHECK_BODIES = 20
ASSET_DIR = pathlib.Path(__file__).resolve().parent / "assets"


# ------------------------------------------------------------------------------------------------
# Reading Anny (torch and anny are imported here only)


class AnnyTopology:
  """One Anny topology as float64 numpy arrays (Anny's frame: Z-up, facing -Y, left = +X)."""

  def __init__(self, topology: str):
    import anny
    import torch
    from anny.skinning.skinning import dense_bone_weights

    self.name = topology
    model = anny.Anny(topology=topology, skinning_method="lbs").double()
    self._model = model
    self.bone_labels = list(model.bone_labels)
    self.parents = [int(p) for p in model.bone_parents]
    self.phenotype_labels = list(model.phenotype_labels)
    with torch.no_grad():
      self.template = model.template_vertices.numpy().astype(np.float64)
      self.blendshapes = model.blendshapes.numpy().astype(np.float64)
      self.template_heads = model.template_bone_heads.numpy().astype(np.float64)
      self.head_blendshapes = model.bone_heads_blendshapes.numpy().astype(np.float64)
      self.weights = dense_bone_weights(
        model.vertex_bone_weights, model.vertex_bone_indices, len(self.bone_labels)
      ).numpy()
      self.faces = model.get_triangular_faces().numpy().astype(np.int32)
    if not np.allclose(self.weights.sum(axis=1), 1.0, atol=1e-6):
      raise ValueError(f"{topology}: Anny skinning weights do not sum to 1")

  @property
  def num_vertices(self) -> int:
    return self.template.shape[0]

  def coefficients(self, phenotypes: np.ndarray) -> np.ndarray:
    """Blendshape coefficients [N, S] of phenotypes [N, P] (order: `phenotype_labels`)."""
    import torch

    model = self._model
    phen = torch.as_tensor(phenotypes, dtype=torch.float64)
    none = torch.zeros((len(phenotypes), 0), dtype=torch.float64)
    local = torch.zeros((len(phenotypes), len(model.local_change_labels)), dtype=torch.float64)
    with torch.no_grad():
      return model._get_phenotype_blendshape_coefficients(phen, local, none).numpy()

  def coco_regressor(self) -> tuple[list[str], np.ndarray]:
    """Anny's COCO-WholeBody keypoint regressor: (23 labels, [23, V])."""
    import anny

    keypoints = anny.KeypointsRegressor.coco(self._model)
    return list(keypoints.labels), keypoints.regression_weights.numpy().astype(np.float64)

  def t_posed(self, phenotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T-posed bodies in SMPL axes: (vertices [N, V, 3], SMPL joints [N, 24, 3])."""
    verts, joints = [], []
    for start in range(0, len(phenotypes), CHUNK):
      c = self.coefficients(phenotypes[start : start + CHUNK])
      rest_v = self.template + _blend(c, self.blendshapes)
      rest_h = self.template_heads + _blend(c, self.head_blendshapes)
      v, j = rig.pose_t(rest_v, rest_h, self.parents, self.bone_labels, self.weights)
      verts.append(rig.anny_to_smpl_axes(v))
      joints.append(rig.anny_to_smpl_axes(j))
    return np.concatenate(verts), np.concatenate(joints)


def _blend(coefficients: np.ndarray, blendshapes: np.ndarray) -> np.ndarray:
  """Blendshape offsets [N, P, 3] of coefficients [N, S] and blendshapes [S, P, 3]."""
  s, p = blendshapes.shape[:2]
  return (coefficients @ blendshapes.reshape(s, p * 3)).reshape(-1, p, 3)


def sample_phenotypes(topology: AnnyTopology, count: int, seed: int) -> np.ndarray:
  """Adult phenotypes [count, P] from Anny's WHO-calibrated sampler, morphological age U(18, 80)."""
  import torch
  from anny.shape_distribution import SimpleShapeDistribution

  age = torch.distributions.Uniform(
    torch.tensor(18.0, dtype=torch.float64), torch.tensor(80.0, dtype=torch.float64)
  )
  sampler = SimpleShapeDistribution(topology._model, morphological_age_distribution=age)
  with torch.random.fork_rng():  # the sampler draws from torch's global generator
    torch.manual_seed(seed)
    _, phen = sampler.sample(count)
  return np.stack([phen[label].numpy() for label in topology.phenotype_labels], axis=1)


# ------------------------------------------------------------------------------------------------
# Derivation


def reference_keypoints(reference: AnnyTopology, phenotypes: np.ndarray) -> dict[str, np.ndarray]:
  """Reference surface points of T-posed bodies in SMPL axes: label -> [N, 3].

  Anny's 23 COCO-WholeBody keypoints (`data/keypoints/coco.pth`) and `head_top`, the vertex of
  the reference mesh that is highest on the first body.
  """
  labels, regressor = reference.coco_regressor()
  verts, _ = reference.t_posed(phenotypes)
  points = np.einsum("kv,nvc->nkc", regressor, verts)
  out = {label: points[:, k] for k, label in enumerate(labels)}
  out["head_top"] = verts[:, np.argmax(verts[0, :, 1])]
  return out


def derive(
  topo: AnnyTopology,
  train: np.ndarray,
  heldout: np.ndarray,
  keypoints: dict[str, np.ndarray],
  keypoints_heldout: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
  """Build the asset arrays (float64) of one topology and its validation report."""
  report: dict[str, object] = {"topology": topo.name}
  verts, joints = topo.t_posed(train)
  verts_h, joints_h = topo.t_posed(heldout)

  space = regs.fit_shape_space(verts, NUM_BETAS)
  report["explained_variance"] = space.explained.tolist()
  for k in (1, 5, NUM_BETAS):
    sub = regs.ShapeSpace(space.mean, space.shapedirs[..., :k], space.explained[:k])
    report[f"pca{k}_heldout_mm"] = _mm(
      regs.per_vertex_errors(sub.reconstruct(sub.project(verts_h)), verts_h)
    )
  betas_h = space.project(verts_h)
  report["heldout_beta_std"] = betas_h.std(axis=0).tolist()

  weights = topo.weights @ rig.merge_matrix(topo.bone_labels)
  # Retopologised weights carry round-off (e.g. -8e-11): drop |w| < 1e-6, renormalise rows.
  report["weights_dropped_max"] = float(np.abs(np.where(weights < 1e-6, weights, 0.0)).max())
  weights = np.where(weights < 1e-6, 0.0, weights)
  weights /= weights.sum(axis=1, keepdims=True)
  n_fit = min(JOINT_FIT_SAMPLES, len(train))
  j_regressor = regs.fit_joint_regressor(verts[:n_fit], joints[:n_fit], weights)
  pred_h = np.einsum("jv,nvc->njc", j_regressor, verts_h)
  report["j_regressor_heldout_mm"] = _mm(regs.per_vertex_errors(pred_h, joints_h))
  per_joint = np.linalg.norm(pred_h - joints_h, axis=-1).mean(axis=0) * 1e3
  report["j_regressor_per_joint_mean_mm"] = dict(
    zip(rig.SMPL_JOINT_NAMES, per_joint.round(2).tolist(), strict=True)
  )
  report["j_regressor_nnz_per_row"] = (j_regressor > 0).sum(axis=1).tolist()

  # Surface keypoints: NNLS regressors over nearby vertices.
  n_kp = min(KEYPOINT_FIT_SAMPLES, len(train))
  names = list(keypoints)
  targets = np.stack([keypoints[n][:n_kp] for n in names], axis=1)
  rows = regs.fit_surface_regressors(verts[:n_kp], targets)
  regressors = dict(zip(names, rows, strict=True))
  targets_h = np.stack([keypoints_heldout[n] for n in names], axis=1)
  errors = np.linalg.norm(np.einsum("kv,nvc->nkc", rows, verts_h) - targets_h, axis=-1) * 1e3
  report["keypoint_regressor_heldout_mm"] = {"mean": round(float(errors.mean()), 3)}
  report["keypoint_regressor_heldout_mm"]["max"] = round(float(errors.max()), 3)
  report["keypoint_regressor_max_mm"] = dict(
    zip(names, errors.max(0).round(2).tolist(), strict=True)
  )
  # Nearest vertices (only smplx's vertex_ids in the check below use them).
  report["nearest_vertex"] = {
    n: int(regs.nearest_vertices(space.mean, rows[i] @ space.mean, 1)[0])
    for i, n in enumerate(names)
  }

  arrays: dict[str, np.ndarray] = {
    "v_template": space.mean,
    "f": topo.faces,
    "shapedirs": space.shapedirs,
    "posedirs": np.zeros((topo.num_vertices, 3, 207)),
    "J_regressor": j_regressor,
    "weights": weights,
    "kintree_table": kintree_table(),
    "joint_names": np.array(rig.SMPL_JOINT_NAMES),
  }
  for set_name in regs.JOINT_SET_DEFINITIONS:
    js = regs.build_joint_set(set_name, topo.num_vertices, regressors)
    for field in ("names", "from_joints", "from_vertices", "valid"):
      arrays[f"joint_set.{set_name}.{field}"] = getattr(js, field)
  return arrays, report


def kintree_table() -> np.ndarray:
  """SMPL's kinematic tree [2, 24] int64, root parent 4294967295 as in the official files."""
  parents = np.array(rig.SMPL_PARENTS, dtype=np.int64)
  parents[0] = 4294967295
  return np.stack([parents, np.arange(24, dtype=np.int64)])


def to_stored(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """float arrays -> float32; integers, bools and strings unchanged."""
  return {
    k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()
  }


def _mm(errors: dict[str, float]) -> dict[str, float]:
  return {k: round(v * 1e3, 3) for k, v in errors.items()}


# ------------------------------------------------------------------------------------------------
# Validation


def numpy_smpl(arrays: dict[str, np.ndarray], betas: np.ndarray, pose: np.ndarray) -> np.ndarray:
  """Reference SMPL forward (no pose blendshapes: posedirs are zero): betas [10], pose [24, 3]."""
  from scipy.spatial.transform import Rotation

  v = arrays["v_template"] + arrays["shapedirs"] @ betas
  j = arrays["J_regressor"] @ v
  rots = Rotation.from_rotvec(pose).as_matrix()
  parents = list(rig.SMPL_PARENTS)
  g_rot, g_pos = rig.forward_kinematics(j[None], parents, rots[None])
  return rig.skin(v[None], arrays["weights"], j[None], g_rot, g_pos)[0]


def check_with_smplx(arrays: dict[str, np.ndarray], picks: dict[str, int], seed: int) -> float:
  """Load a pickle of the stored arrays with `smplx.SMPL` and return the max vertex difference (m)
  to `numpy_smpl` for a random shape and pose (float64)."""
  import smplx
  import torch

  stored = to_stored(arrays)
  smpl_keys = (
    "v_template",
    "f",
    "shapedirs",
    "posedirs",
    "J_regressor",
    "weights",
    "kintree_table",
  )
  tip = int(np.argmax(stored["v_template"][:, 0]))
  vertex_ids = {k: picks[k] for k in ("nose",)}
  vertex_ids |= {"reye": picks["right_eye"], "leye": picks["left_eye"]}
  vertex_ids |= {"rear": picks["right_ear"], "lear": picks["left_ear"]}
  for side, s in (("L", "left"), ("R", "right")):
    vertex_ids[f"{side}BigToe"] = picks[f"{s}_big_toe"]
    vertex_ids[f"{side}SmallToe"] = picks[f"{s}_small_toe"]
    vertex_ids[f"{side}Heel"] = picks[f"{s}_heel"]
  for finger in ("thumb", "index", "middle", "ring", "pinky"):  # not used by the comparison
    vertex_ids["l" + finger] = vertex_ids["r" + finger] = tip
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "SMPL_NEUTRAL.pkl")
    with open(path, "wb") as f:
      pickle.dump({k: stored[k] for k in smpl_keys}, f, protocol=4)
    model = smplx.SMPL(model_path=path, vertex_ids=vertex_ids, dtype=torch.float64)
  rng = np.random.default_rng(seed)
  betas, pose = rng.normal(size=10), rng.normal(scale=0.3, size=(24, 3))
  out = model(
    betas=torch.as_tensor(betas[None]),
    global_orient=torch.as_tensor(pose[None, :1].reshape(1, 3)),
    body_pose=torch.as_tensor(pose[None, 1:].reshape(1, 69)),
  )
  f64 = {k: np.asarray(v, np.float64) for k, v in stored.items() if k in smpl_keys}
  ours = numpy_smpl(f64, betas, pose)
  return float(np.abs(out.vertices[0].detach().numpy() - ours).max())


def check_against_anny_skinning(
  topo: AnnyTopology, phenotypes: np.ndarray, arrays: dict[str, np.ndarray], seed: int
) -> dict[str, dict[str, float]]:
  """Posed vertex error (mm) of the 24-joint model vs Anny's 104-bone skinning, same bodies.

  Each body gets a random SMPL pose (0.3 rad per axis on every joint but the feet and hands,
  whose SMPL pivots are virtual). Anny's side skins the A-pose rest body with its own weights,
  each bone moved by its T-pose transform followed by the SMPL transform of its part; the
  model's side skins the T-posed body with the merged weights. `exact_joints` pivots about
  Anny's T-posed joints (isolates the T-pose bake), `j_regressor` about the regressed joints.
  Shape-space (PCA) error is excluded: both sides use each body's own T-posed vertices.
  """
  from scipy.spatial.transform import Rotation

  c = topo.coefficients(phenotypes)
  rest_v = rig.anny_to_smpl_axes(topo.template + _blend(c, topo.blendshapes))
  rest_h = topo.template_heads + _blend(c, topo.head_blendshapes)
  local = rig.t_pose_rotations(rest_h, topo.parents, topo.bone_labels)
  t_rot, t_heads = rig.forward_kinematics(rest_h, topo.parents, local)
  axes = rig.ANNY_TO_SMPL
  t_rot = axes @ t_rot @ axes.T  # the same rigid motions written in SMPL axes
  rest_h, t_heads = rig.anny_to_smpl_axes(rest_h), rig.anny_to_smpl_axes(t_heads)
  t_verts = rig.skin(rest_v, topo.weights, rest_h, t_rot, t_heads)
  exact = np.einsum("kj,njc->nkc", rig.head_matrix(topo.bone_labels), t_heads)

  n = len(phenotypes)
  rotvecs = np.random.default_rng(seed).normal(scale=0.3, size=(n, 24, 3))
  rotvecs[:, [10, 11, 22, 23]] = 0.0
  pose = Rotation.from_rotvec(rotvecs.reshape(-1, 3)).as_matrix().reshape(n, 24, 3, 3)
  part = np.argmax(rig.merge_matrix(topo.bone_labels), axis=1)  # [104] SMPL part per bone
  weights24 = arrays["weights"]
  out = {}
  # Anny: each bone moved by its T-pose transform, then by its part's SMPL transform.
  g_rot, g_pos = rig.forward_kinematics(exact, rig.SMPL_PARENTS, pose)
  bone_rot = g_rot[:, part] @ t_rot
  bone_pos = np.einsum("nbij,nbj->nbi", g_rot[:, part], t_heads - exact[:, part]) + g_pos[:, part]
  anny = rig.skin(rest_v, topo.weights, rest_h, bone_rot, bone_pos)
  for name, joints in (("exact_joints", exact), ("j_regressor", _regress(arrays, t_verts))):
    g_rot, g_pos = rig.forward_kinematics(joints, rig.SMPL_PARENTS, pose)
    ours = rig.skin(t_verts, weights24, joints, g_rot, g_pos)
    out[name] = _mm(regs.per_vertex_errors(ours, anny))
  return out


def _regress(arrays: dict[str, np.ndarray], verts: np.ndarray) -> np.ndarray:
  return np.einsum("jv,nvc->njc", arrays["J_regressor"], verts)


def summarise(arrays: dict[str, np.ndarray]) -> dict[str, object]:
  """Row sums and T-pose sanity numbers."""
  v = arrays["v_template"]
  j = arrays["J_regressor"] @ v
  return {
    "num_vertices": v.shape[0],
    "num_faces": arrays["f"].shape[0],
    "height_m": round(float(v[:, 1].max() - v[:, 1].min()), 4),
    "pelvis": j[0].round(4).tolist(),
    "weights_row_sum_maxdev": float(np.abs(arrays["weights"].sum(1) - 1).max()),
    "j_regressor_row_sum_maxdev": float(np.abs(arrays["J_regressor"].sum(1) - 1).max()),
    "j_regressor_min": float(arrays["J_regressor"].min()),
  }


# ------------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> dict[str, dict[str, object]]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, default=ASSET_DIR)
  parser.add_argument("--samples", type=int, default=2000, help="training bodies for PCA")
  parser.add_argument("--heldout", type=int, default=300, help="held-out bodies for validation")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--only", choices=sorted(TOPOLOGIES), default=None)
  args = parser.parse_args(argv)
  if args.samples <= NUM_BETAS or args.heldout < 1:
    parser.error(f"--samples must exceed {NUM_BETAS} and --heldout must be positive")

  start = time.perf_counter()
  args.out.mkdir(parents=True, exist_ok=True)
  reference = AnnyTopology(REFERENCE_TOPOLOGY)
  phen = sample_phenotypes(reference, args.samples + args.heldout, args.seed)
  train, heldout = phen[: args.samples], phen[args.samples :]
  n_kp = min(KEYPOINT_FIT_SAMPLES, args.samples)
  keypoints = reference_keypoints(reference, train[:n_kp])
  keypoints_h = reference_keypoints(reference, heldout)
  print(f"[derive_anny] sampled {len(phen)} adult bodies, reference keypoints: {_since(start)}")

  reports = {}
  for key in [args.only] if args.only else ["tiny", "neutral"]:
    topo = AnnyTopology(TOPOLOGIES[key])
    if not np.allclose(topo.template_heads, reference.template_heads, atol=1e-9):
      raise ValueError(f"{topo.name}: bone heads differ from the reference topology")
    arrays, report = derive(topo, train, heldout, keypoints, keypoints_h)
    report |= summarise(arrays)
    report["posed_vs_anny_lbs_mm"] = check_against_anny_skinning(
      topo, heldout[:POSED_CHECK_BODIES], arrays, args.seed
    )
    report["smplx_max_abs_diff_m"] = check_with_smplx(arrays, report["nearest_vertex"], args.seed)
    path = args.out / FILE_NAMES[key]
    body_io.save_body_model_npz(to_stored(arrays), path)  # validates, then savez_compressed
    report["file_bytes"] = path.stat().st_size
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    reports[key] = report
    print(f"[derive_anny] wrote {path} ({report['file_bytes'] / 1e3:.0f} KB)")
    for name, value in report.items():
      print(f"  {name}: {value}")
  if len(reports) == 2:
    reports["agreement"] = compare(args.out)
    print(f"[derive_anny] tiny vs neutral: {reports['agreement']}")
  print(f"[derive_anny] done in {_since(start)}")
  return reports


def compare(out: pathlib.Path) -> dict[str, float]:
  """Joint and keypoint differences (mm) between the tiny and neutral assets at beta = 0."""
  a, b = (np.load(out / FILE_NAMES[k]) for k in ("tiny", "neutral"))
  ja = a["J_regressor"].astype(np.float64) @ a["v_template"]
  jb = b["J_regressor"].astype(np.float64) @ b["v_template"]
  result = {"joints_mean_mm": float(np.linalg.norm(ja - jb, axis=-1).mean() * 1e3)}
  result["joints_max_mm"] = float(np.linalg.norm(ja - jb, axis=-1).max() * 1e3)
  for name in regs.JOINT_SET_DEFINITIONS:
    ka = (
      a[f"joint_set.{name}.from_joints"] @ ja
      + a[f"joint_set.{name}.from_vertices"] @ a["v_template"]
    )
    kb = (
      b[f"joint_set.{name}.from_joints"] @ jb
      + b[f"joint_set.{name}.from_vertices"] @ b["v_template"]
    )
    result[f"{name}_max_mm"] = float(np.linalg.norm(ka - kb, axis=-1).max() * 1e3)
  return {k: round(v, 2) for k, v in result.items()}


def _since(start: float) -> str:
  return f"{time.perf_counter() - start:.1f} s"


if __name__ == "__main__":
  main()
