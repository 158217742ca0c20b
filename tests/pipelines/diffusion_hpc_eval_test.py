"""Diffusion-HPC's SMART / Ski-Pose evaluation of an HMR on the builders' dummy data."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import diffusion_hpc as hpc_config
from jhmr.body import load_body_model
from jhmr.data.ski_pose import dummy_data_generator as ski_dummy
from jhmr.data.smart import dummy_data_generator as smart_dummy
from jhmr.errors import InputError
from jhmr.eval import hpc_protocol
from jhmr.models.hmr import HMR
from jhmr.pipelines import diffusion_hpc as hpc
from jhmr.pipelines import diffusion_hpc_eval as ev

ACTIONS = ("polevault", "vault")  # dummy test splits: 6 and 2 images (tests/data/smart_test.py)


@pytest.fixture(scope="module")
def body():
  return load_body_model("anny-tiny")


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  section = ml_collections.ConfigDict({
    "smart": {"manual_dir": str(smart_dummy.DUMMY_DIR), "data_dir": str(root), "actions": ACTIONS},
    "ski_pose": {"manual_dir": str(ski_dummy.DUMMY_DIR), "data_dir": ""},
  })  # fmt: skip
  return ev.load_benchmarks(section, root / "work")  # ski_pose: workdir/tfds_eval


def _tiny_hmr(body):
  model = HMR(depth=18, width=4, num_betas=body.num_betas, num_iterations=1, hidden=16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  return model, variables


@pytest.mark.slow  # compiles a 224 px HMR with the body model (about 15-25 s on the 2-core CPU)
def test_evaluate_models_on_dummy_data(benchmarks, body):
  assert set(benchmarks["smart"]) == set(ACTIONS)
  model, variables = _tiny_hmr(body)
  other = jax.tree.map(lambda x: x * 1.01, variables)
  results = ev.evaluate_models(
    {"before": (model, variables), "after": (model, other)}, benchmarks, body, batch_size=4
  )  # batch 4: polevault's 6 test images take a padded second chunk
  for label in ("before", "after"):
    smart = results["smart"][label]
    assert set(smart) == set(ACTIONS)
    assert {a: v["count"] for a, v in smart.items()} == {"polevault": 6, "vault": 2}
    assert all(0.0 <= v["pck"] <= 100.0 for v in smart.values())
    ski = results["ski_pose"][label]
    assert ski["count"] == 2
    assert np.isfinite([ski["mpjpe"], ski["pa_mpjpe"]]).all()
    assert 0 < ski["pa_mpjpe"] and 0 < ski["mpjpe"]
  p = ev.smart_predictions(model, variables, benchmarks["smart"]["polevault"], body, batch_size=4)
  assert p["pred_2d"].shape == (6, 24, 2) and p["gt_2d"].shape == (6, 24, 3)
  assert np.isfinite(p["pred_2d"]).all() and set(p["action"]) == {"polevault"}
  report = ev.report(results, "anny-tiny")
  assert "reference: released checkpoint (not measured here) | 77.70 | - |" in report
  assert "111.67 | 81.76" in report and "not comparable" in report


def test_ground_truth_in_the_crop_and_perfect_predictions(benchmarks):
  source = benchmarks["smart"]["polevault"]
  rows = [source[i] for i in range(len(source))]
  gt = ev.smart_ground_truth(
    np.stack([r["part"] for r in rows]), np.stack([r["center"] for r in rows]),
    np.stack([r["scale"] for r in rows]),
  )  # fmt: skip
  # the builder's own crop keypoints, SPIN row 0 = OpenPose 11 (R ankle), row 19 = 0 (nose)
  crop = np.stack([r["keypoints2d_crop"] for r in rows])
  np.testing.assert_allclose(gt[:, 0, :2], crop[:, 11, :2], atol=1e-3)
  np.testing.assert_allclose(gt[:, 19, :2], crop[:, 0, :2], atol=1e-3)
  actions = ["polevault"] * 4 + ["vault"] * 2
  perfect = ev.smart_pck(gt[..., :2], gt, actions)
  assert perfect == {"polevault": {"pck": 100.0, "count": 4}, "vault": {"pck": 100.0, "count": 2}}
  off = gt[..., :2] + np.array([22.5, 0.0], np.float32)  # every joint just outside 22.4 px
  assert ev.smart_pck(off, gt, actions)["vault"]["pck"] == 0.0


def test_body_joints_and_h36m_regressor(body):
  # SPIN's rows 14-18 and 19-23 (module docstring) by the sets' names
  assert [body.joint_names("h36m17")[i] for i in ev.H36M_ROWS] == [
    "Pelvis", "Thorax", "Spine", "NeckNose", "Head"]  # fmt: skip
  assert [body.joint_names("openpose25")[i] for i in ev.OPENPOSE_ROWS] == [
    "Nose", "LEye", "REye", "LEar", "REar"]  # fmt: skip
  assert body.joint_names("lsp14")[:3] == ("RAnkle", "RKnee", "RHip")
  rng = np.random.default_rng(0)
  betas = jnp.asarray(rng.normal(size=(2, body.num_betas)), jnp.float32)
  rotmat = jnp.tile(jnp.eye(3), (2, 24, 1, 1))
  joints = ev.spin24_joints(body, betas, rotmat)
  assert joints.shape == (2, 24, 3)
  lsp = body.joints_only(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat",
                         joint_set="lsp14").keypoints  # fmt: skip
  np.testing.assert_allclose(joints[:, :14], lsp, atol=1e-6)
  # rest pose: posed joints = J_regressor @ mesh, so the vertex regressor gives the set exactly
  reg = ev.h36m_regressor(body)
  assert reg.shape == (17, body.num_vertices)
  out = body(betas, rotmat[:, 1:], rotmat[:, 0], pose_format="rotmat", joint_set="h36m17")
  np.testing.assert_allclose(np.einsum("jv,nvc->njc", reg, out.vertices), out.keypoints,
                             atol=1e-5)  # fmt: skip
  errors = hpc_protocol.ski_errors(out.vertices, out.keypoints, reg)
  np.testing.assert_allclose(errors["mpjpe"], 0.0, atol=1e-2)
  np.testing.assert_allclose(errors["pa_mpjpe"], 0.0, atol=1e-2)


def test_errors(tmp_path, body):
  def section(**smart):
    return ml_collections.ConfigDict({"smart": {"manual_dir": "", "data_dir": "", **smart}})

  assert ev.load_benchmarks(section(), tmp_path) == {}  # nothing named: skipped
  with pytest.raises(InputError, match=r"config\.evaluate\.smart\.manual_dir"):
    ev.load_benchmarks(section(manual_dir=str(tmp_path / "absent")), tmp_path)
  with pytest.raises(InputError, match=r"config\.evaluate\.smart\.data_dir"):
    ev.load_benchmarks(section(data_dir=str(tmp_path / "absent")), tmp_path)
  with pytest.raises(InputError, match=r"config\.evaluate\.smart: .*Table_VideoInfo"):
    ev.load_benchmarks(section(manual_dir=str(tmp_path), actions=("vault",)), tmp_path)
  with pytest.raises(InputError, match="actions"):
    ev.load_benchmarks(section(manual_dir=str(tmp_path), actions=("skating",)), tmp_path)
  bare = body.replace(joint_sets={})
  with pytest.raises(InputError, match="lsp14, h36m17, openpose25"):
    ev.smart_predictions(None, None, [], bare)
  with pytest.raises(InputError, match="h36m17"):
    ev.h36m_regressor(bare)
  with pytest.raises(InputError, match="Ski-Pose evaluation needs .* h36m17"):
    ev.check_body_model({"ski_pose": []}, bare)
  ev.check_body_model({"smart": {}, "ski_pose": []}, body)
  with pytest.raises(InputError, match="image_normalisation"):
    ev.evaluate_ski(None, None, [], body, normalisation="caffe")


def _user_config(tmp_path):
  """The tiny variant on "user" guides (the non-embedded path) with the dummy benchmarks."""
  config = hpc_config.get_config("tiny")
  config.body_model = "anny-tiny"
  config.generate.guides = str(tmp_path / "guides.npz")
  config.evaluate.smart.update(manual_dir=str(smart_dummy.DUMMY_DIR), actions=("polevault",))
  config.evaluate.ski_pose.manual_dir = str(ski_dummy.DUMMY_DIR)
  config.evaluate.batch_size = 4
  config.finetune.image_normalisation = "imagenet"
  return config


def _no_training(monkeypatch, body, start=None, after=None):
  def refuse(*args, **kwargs):
    raise AssertionError("must not be reached")

  stats = {"examples": 3, "grid": np.zeros((1, 4, 4, 3), np.uint8)}
  monkeypatch.setattr(hpc, "_generation_stats", lambda d: dict(stats))
  monkeypatch.setattr(hpc, "finetune", refuse if after is None else lambda ctx, w: after)
  monkeypatch.setattr(hpc, "_start_hmr", refuse if start is None else lambda ctx: start)


def test_stage_checks_the_benchmark_folders_before_training(tmp_path, monkeypatch, body):
  _no_training(monkeypatch, body)
  config = _user_config(tmp_path)
  config.evaluate.ski_pose.manual_dir = str(tmp_path / "no_ski")
  with pytest.raises(InputError, match=r"config\.evaluate\.ski_pose\.manual_dir"):
    hpc.evaluate(config, tmp_path / "work")


@pytest.mark.slow  # the 224 px HMR as above
def test_stage_writes_the_tables(tmp_path, monkeypatch, body):
  model, variables = _tiny_hmr(body)
  after = jax.tree.map(lambda x: x * 1.01, variables)
  _no_training(monkeypatch, body, start=(model, variables), after=(model, after))
  summary = hpc.evaluate(_user_config(tmp_path), tmp_path)
  assert set(summary["results"]) == {"smart", "ski_pose"}
  assert set(summary["results"]["smart"]) == {"before", "after"}
  assert summary["results"]["smart"]["after"]["polevault"]["count"] == 6
  assert summary["reference"] == hpc_protocol.REFERENCE
  md = (tmp_path / "results.md").read_text()
  assert "## SMART" in md and "## Ski-Pose" in md and "released checkpoint" in md
  assert "+ Diffusion-HPC fine-tuning" in md
  assert (tmp_path / "results.json").is_file() and (tmp_path / "generated_grid.png").is_file()


def test_config_sections():
  paper = hpc_config.get_config("paper")
  assert tuple(paper.evaluate.smart.actions) == ev.SMART_ACTIONS
  assert not ev.enabled(paper.evaluate.smart) and not ev.enabled(paper.evaluate.ski_pose)
  assert paper.evaluate.guides_only_baseline and paper.finetune.image_normalisation == "imagenet"
