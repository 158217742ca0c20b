"""Diffusion-HPC generation program: shards, the dataset builder, processes, resume, bad inputs.

Fast tests use stub estimators and a small random VPoser (generation with the rasteriser at
32 px); the SD path runs tiny random diffusers-structured weights, and the whole `:tiny` job
runs end to end (both `slow`).
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.data.diffusion_hpc_synthetic import shards
from jhmr.diffusion import schedulers as S
from jhmr.errors import InputError
from jhmr.geometry import rotations
from jhmr.models import vposer as vposer_lib
from jhmr.models.vposer import VPoser
from jhmr.pipelines import diffusion_hpc as hpc
from jhmr.pipelines import diffusion_hpc_generate as gen
from jhmr.render import inpaint

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from configs import diffusion_hpc as hpc_config  # noqa: E402

G = 32
UPRIGHT = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


def _config(**generate):
  """The tiny config; its guides have no keypoints unless a test gives them, so the keypoint fit
  of the embedded job is off unless asked for."""
  config = hpc_config.get_config("tiny")
  config.generate.update({"fit_keypoints": False, **generate})
  return config


class _StubHMR:
  """Estimator contract: an upright rest pose in front of the camera; an all-black image makes
  it fail (camera scale -1), as an HMR with no person to see."""

  def __call__(self, images):
    n = len(images)
    rotmat = np.tile(np.eye(3, dtype=np.float32), (n, 24, 1, 1))
    rotmat[:, 0] = UPRIGHT
    rotmat[:, 1:, 0, 0] = 1.0
    cam = np.tile(np.asarray([0.8, 0.0, 0.0], np.float32), (n, 1))
    cam[np.asarray(images).reshape(n, -1).max(-1) == 0, 0] = -1.0
    return {"rotmat": rotmat, "betas": np.zeros((n, 10), np.float32), "cam": cam}


@pytest.fixture(scope="module")
def components():
  body_model = load_body_model("anny-tiny")
  vp = VPoser(num_neurons=8)
  variables = vp.init(jax.random.key(0), jnp.zeros((2, 63)), jnp.zeros((2, 32)))
  return gen.Components(_StubHMR(), vp, variables, body_model)


def _guides(n: int, black=()):
  rng = np.random.default_rng(0)
  images = rng.integers(1, 255, (n, G, G, 3), dtype=np.uint8)
  for i in black:
    images[i] = 0
  return gen.Guides(tuple(f"prompt {i}" for i in range(n)), images)


def _write_guides(workdir, guides) -> str:
  path = pathlib.Path(workdir) / "my_guides.npz"
  np.savez(path, images=guides.images, prompts=np.asarray(guides.prompts))
  return str(path)


# -- shard format ------------------------------------------------------------------------------


def _arrays(n: int):
  rng = np.random.default_rng(1)
  out = shards.empty_arrays(G, G // 8)
  out = {k: np.zeros((n, *v.shape[1:]), v.dtype) for k, v in out.items()}
  out["image"] = rng.integers(0, 255, out["image"].shape, dtype=np.uint8)
  out["prompt"] = np.asarray([f"p{i}" for i in range(n)])
  out["box"][:] = (G / 2, G / 2, G)
  return out


def test_paired_change_reads_the_interval_of_the_per_person_difference():
  rng = np.random.default_rng(0)
  reference = rng.uniform(80, 160, 256)
  noise = rng.normal(0, 5, 256)  # per-person noise: 2 standard errors of the mean ~ 0.6 mm
  assert hpc.paired_change(reference - 3 + noise, reference).endswith("(better)")
  assert hpc.paired_change(reference + 3 + noise, reference).endswith("(worse)")
  assert hpc.paired_change(reference + noise - noise.mean(), reference).endswith(
    "(no clear change)"
  )
  # The pairing matters: a shift of 3 mm is clear against 5 mm noise, not against 50 mm noise.
  wide = rng.normal(0, 50, 256)
  assert hpc.paired_change(reference - 3 + wide - wide.mean(), reference).endswith("change)")
  text = hpc.paired_change(np.array([2.0, 4.0]), np.array([1.0, 1.0]))
  assert text.startswith("+2.0 +- 2.0 mm")  # mean 2, sd sqrt(2), se 1
  with pytest.raises(ValueError, match="per-person"):
    hpc.paired_change(np.ones(1), np.ones(1))


def test_error_plot_is_written(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(1)
  per_person = {
    f"{s}/{m}": {"mpjpe": rng.uniform(100, 200, 16), "pa_mpjpe": rng.uniform(60, 120, 16)}
    for s in ("hard_test", "easy_test") for m in ("before", "after", "guides_only")
  }  # fmt: skip
  hpc.plot_errors(per_person, tmp_path / "errors.png")
  with Image.open(tmp_path / "errors.png") as image:
    assert image.size == (1000, 380)
    assert len(np.unique(np.asarray(image.convert("L")))) > 10  # bars, text: not a blank canvas


def test_shard_round_trip_and_corruption_is_detected(tmp_path):
  path = tmp_path / shards.shard_name(0, 2)
  meta = dict(index=0, num_shards=2, generator="render", skipped={})
  shards.write_shard(path, _arrays(3), meta)
  arrays, got = shards.read_shard(path)
  assert got["count"] == 3 and got["format"] == shards.FORMAT
  np.testing.assert_array_equal(arrays["image"], _arrays(3)["image"])
  assert list(arrays["prompt"]) == ["p0", "p1", "p2"]
  with pytest.raises(InputError, match=r"shards \[1\] of 2 are missing"):
    shards.list_shards(tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])  # truncated
  with pytest.raises(shards.ShardError, match="unreadable shard"):
    shards.read_shard(path)
  flipped = bytearray(data)
  flipped[len(data) // 3] ^= 0xFF  # one corrupted byte inside the compressed image
  path.write_bytes(bytes(flipped))
  with pytest.raises(shards.ShardError):
    shards.read_shard(path)
  bad = _arrays(2)
  bad["betas"] = np.zeros((2, 9), np.float32)
  with pytest.raises(shards.ShardError, match="betas"):
    shards.write_shard(tmp_path / shards.shard_name(1, 2), bad, dict(meta, index=1))


def test_shard_indices_of_processes_are_disjoint_and_complete():
  parts = [set(shards.shard_indices(7, p, 3)) for p in range(3)]
  assert set().union(*parts) == set(range(7)) and sum(map(len, parts)) == 7


def test_pndm_strength_07_starts_at_701_with_36_steps():
  sched = S.make_scheduler("pndm", 50)
  start = S.img2img_start(50, 0.7)
  assert int(sched.timesteps[start]) == 701
  assert len(sched.timesteps) - start == 36


# -- bad inputs --------------------------------------------------------------------------------


def test_bad_guides_raise_clear_errors():
  good = _guides(2)
  with pytest.raises(InputError, match="no prompts"):
    gen.check_guides(gen.Guides(()), G)
  with pytest.raises(InputError, match="uint8"):
    gen.check_guides(gen.Guides(good.prompts, good.images.astype(np.float32)), G)
  with pytest.raises(InputError, match=r"\[2, 32, 32, 3\]"):
    gen.check_guides(gen.Guides(good.prompts, good.images[:, :16]), G)
  with pytest.raises(InputError, match="occlusion masks must be"):
    gen.check_guides(gen.Guides(good.prompts, good.images, np.zeros((2, 16, 16), bool)), G)
  with pytest.raises(InputError, match="bool"):
    gen.check_guides(gen.Guides(good.prompts, good.images, np.zeros((2, G, G), np.uint8)), G)


def test_empty_prompt_list_and_missing_sd_files_stop_generation(tmp_path, components):
  config = _config(generator="render", prompts=())
  config.generate.guides = ""
  with pytest.raises(InputError, match="no prompts"):
    gen.run_generation(
      config.generate, components, gen.Guides(()), tmp_path, process_index=0, process_count=1
    )
  config = _config(generator="sd")
  config.paths.spin_checkpoint = str(tmp_path / "model_checkpoint.pt")
  with pytest.raises(InputError, match="model_checkpoint.pt"):
    hpc.sd_components(config)
  (tmp_path / "model_checkpoint.pt").write_bytes(b"x")
  (tmp_path / "sd2" / "unet").mkdir(parents=True)
  config.paths.sd_depth = str(tmp_path / "sd2")
  with pytest.raises(InputError, match="lacks vae, text_encoder, tokenizer"):
    hpc.sd_components(config)


def test_render_generator_without_guide_images_is_refused(components):
  settings = _config().generate
  with pytest.raises(InputError, match="no text-to-image model"):
    gen.generate_batch(settings, components, [0], gen.Guides(("a photo of an athlete",)))


def test_user_real_guides_need_their_keypoints(tmp_path):
  guides = _guides(2)
  path = tmp_path / "g.npz"
  np.savez(path, images=guides.images)
  with pytest.raises(InputError, match="keypoints_openpose25"):
    hpc.user_real_guides(path, 16, 10)
  kp = np.zeros((2, 25, 3), np.float32)
  kp[:, 0] = (G / 2, G / 4, 1.0)  # a nose at (16, 8) px of the 32 px image
  np.savez(path, images=guides.images, keypoints_openpose25=kp)
  real = hpc.user_real_guides(path, 16, 10)
  np.testing.assert_allclose(real.keypoints_2d["openpose25"][:, 0], [[8, 4, 1]] * 2, atol=1e-5)
  assert real.image.shape == (2, 16, 16, 3) and not real.has_smpl.any()


# -- generation: processes, skips, resume --------------------------------------------------------


def test_two_processes_write_disjoint_shards_that_read_back_as_one_dataset(tmp_path, components):
  config = _config()
  guides = _guides(6, black=(3,))  # guide 3: the HMR fails (counted skip)
  config.generate.guides = _write_guides(tmp_path, guides)
  counts = [
    hpc.generate(config, tmp_path, process_index=p, process_count=2, components=components)
    for p in (0, 1)
  ]
  names = sorted(p.name for p in (tmp_path / hpc.GENERATED).glob("shard-*"))
  assert names == [shards.shard_name(i, 2) for i in range(2)]  # 6 guides / shard_size 4
  assert [c["written"] for c in counts] == [1, 1]
  assert counts[0]["skipped"]["no_estimate"] == 1 and counts[1]["skipped"]["no_estimate"] == 0
  body = components.body_model
  builder, source = hpc.synthetic_source(tmp_path, G, body.num_betas)
  assert builder.info.metadata["generator"] == "render"
  assert "rasteriser" in builder.info.metadata["generator_description"]
  k = config.generate.num_augmentations
  assert len(source) == 5 * k
  rows = builder.as_data_source()["train"]
  got = sorted((int(r["guide_index"]), int(r["augmentation_index"])) for r in rows)
  assert got == [(g, a) for g in (0, 1, 2, 4, 5) for a in range(k)]
  example = source[0]
  assert example.image.shape == (G, G, 3) and float(example.synthetic) == 1.0
  assert float(example.has_smpl) == 1.0 and example.betas.shape == (body.num_betas,)
  # the labels are the body's: the projected SMPL joints equal the stored 2D keypoints
  kp = example.keypoints_2d["smpl24"]
  proj = example.intrinsics @ example.joints_3d.T
  xy = (proj[:2] / proj[2]).T
  vis = kp[:, 2] > 0
  assert vis.sum() > 10
  np.testing.assert_allclose(kp[vis, :2], xy[vis], atol=1e-3)
  hardness = np.asarray([float(r["hardness"]) for r in rows])
  assert np.all(np.isfinite(hardness)) and np.all(hardness > 0)


def test_resume_keeps_valid_shards_and_regenerates_a_corrupted_one(tmp_path, components, caplog):
  config = _config()
  config.generate.guides = _write_guides(tmp_path, _guides(6))
  hpc.generate(config, tmp_path, process_index=0, process_count=1, components=components)
  out = tmp_path / hpc.GENERATED
  first, second = out / shards.shard_name(0, 2), out / shards.shard_name(1, 2)
  kept, original = first.stat().st_mtime_ns, second.read_bytes()
  second.write_bytes(original[:100])
  counts = hpc.generate(config, tmp_path, process_index=0, process_count=1, components=components)
  assert counts["reused"] == 1 and counts["regenerated"] == 1
  assert first.stat().st_mtime_ns == kept  # never rewritten
  assert (out / (second.name + ".corrupt")).read_bytes() == original[:100]
  regenerated, _ = shards.read_shard(second)
  before = {k: v for k, v in np.load(_saved(tmp_path, original)).items()}
  np.testing.assert_array_equal(regenerated["image"], before["image"])  # seeded per example
  assert any("corrupted" in r.getMessage() for r in caplog.records)
  config.generate.num_augmentations = 3  # other settings: refused, nothing touched
  with pytest.raises(InputError, match="other settings"):
    hpc.generate(config, tmp_path, process_index=0, process_count=1, components=components)
  assert first.stat().st_mtime_ns == kept
  # with the guides-only fine-tuned estimator its training decides the labels: refused too
  config.generate.num_augmentations = 2
  assert config.generate.estimator == "guides_finetuned"
  config.finetune.trainer.train.steps += 1
  with pytest.raises(InputError, match="other settings"):
    hpc.generate(config, tmp_path, process_index=0, process_count=1, components=components)
  config.generate.estimator = "start"  # the easy HMR's estimates do not depend on it
  other = tmp_path / "start"
  hpc.generate(config, other, process_index=0, process_count=1, components=components)
  config.finetune.trainer.train.steps += 1
  counts = hpc.generate(config, other, process_index=0, process_count=1, components=components)
  assert counts["reused"] == 2


def _saved(tmp_path, data: bytes) -> pathlib.Path:
  path = tmp_path / "copy.npz"
  path.write_bytes(data)
  return path


def test_examples_do_not_depend_on_batching(components):
  guides = _guides(6)
  settings = _config().generate  # batch_size 4: one compiled shape for every call here
  out_a, _ = gen.generate_batch(settings, components, [0, 1, 2, 3], guides)
  out_b, _ = gen.generate_batch(settings, components, [3, 2, 5, 4], guides)
  for g in (2, 3):
    a, b = out_a["guide_index"] == g, out_b["guide_index"] == g
    for name in ("image", "body_pose", "hardness", "depth"):
      np.testing.assert_array_equal(out_a[name][a], out_b[name][b], err_msg=name)


def test_occlusion_mask_removes_depth_under_the_occluder(components):
  guides = _guides(4)
  settings = _config(num_augmentations=1).generate
  plain, _ = gen.generate_batch(settings, components, [0, 1, 2, 3], guides)
  mask = np.zeros((4, G, G), bool)
  mask[:, :, : G // 2] = True  # the left half is covered
  masked, _ = gen.generate_batch(
    settings, components, [0, 1, 2, 3], gen.Guides(guides.prompts, guides.images, mask)
  )
  assert not np.array_equal(plain["depth"], masked["depth"])
  np.testing.assert_array_equal(plain["image"], masked["image"])  # the render ignores the mask
  with pytest.raises(InputError, match="occlusion masks must be"):
    gen.check_guides(gen.Guides(guides.prompts, guides.images, mask[:, :8]), G)


def test_hardness_filter_skips_easy_guides_and_counts_them(components):
  settings = _config(hardness_filter="hard", tau=1e9).generate
  out, skipped = gen.generate_batch(settings, components, [0, 1, 2, 3], _guides(4), num_real=3)
  assert out is None and skipped == {"no_estimate": 0, "easy": 3}


def test_beam_preparation_with_the_direct_runner(tmp_path, components):
  beam = pytest.importorskip(
    "apache_beam",
    reason="apache_beam is not in the venv (the 'beam' extra, kept out of 'test' because it "
    "downgrades pillow, protobuf and pyarrow: pip install -e '.[test,beam]')",
  )
  config = _config()
  config.generate.guides = _write_guides(tmp_path, _guides(3))
  hpc.generate(config, tmp_path, process_index=0, process_count=1, components=components)
  runner = beam.runners.DirectRunner()
  _, source = hpc.synthetic_source(tmp_path, G, 10, beam_runner=runner)
  _, plain = hpc.synthetic_source(tmp_path, G, 10)  # the Python-generator preparation
  assert len(source) == len(plain) == 3 * config.generate.num_augmentations
  for i in range(len(plain)):
    np.testing.assert_array_equal(source[i].image, plain[i].image)
    np.testing.assert_array_equal(source[i].body_pose, plain[i].body_pose)


# -- heavier: the SD path with tiny random weights, and the whole tiny job -------------------------


@pytest.mark.slow
def test_sd_generator_with_tiny_random_diffusers_weights(tmp_path, components):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from jhmr.pipelines import stable_diffusion as SD
  from tests.pipelines.stable_diffusion_test import _components

  folders = {}
  for name, depth in (("sd1", False), ("sd2", True)):
    parts = _components(tmp_path / name, depth=depth)
    if depth:
      pipe = diffusers.StableDiffusionDepth2ImgPipeline(
        **parts, depth_estimator=None, feature_extractor=None
      )
    else:
      pipe = diffusers.StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
      )
    pipe.save_pretrained(tmp_path / name / "pipe")
    folders[name] = SD.load_stable_diffusion(tmp_path / name / "pipe")
  del torch
  # The tiny VAE downsamples by 2: its latents are G / 2; generation asks for the latent side.
  settings = _config(generator="sd", num_steps=6, num_augmentations=2, batch_size=2).generate
  comps = gen.Components(
    components.estimate, components.vposer, components.vposer_variables,
    components.body_model, folders["sd1"], folders["sd2"],
  )  # fmt: skip
  guides = gen.Guides(("an athlete", "a dancer"))  # text guidance: SD 1.x makes the first image
  out, skipped = gen.generate_batch(settings, comps, [0, 1], guides)
  assert skipped["no_estimate"] == 0
  assert out["image"].shape == (4, G, G, 3) and out["image"].dtype == np.uint8
  again, _ = gen.generate_batch(settings, comps, [0, 1], guides)
  np.testing.assert_array_equal(out["image"], again["image"])
  assert len(np.unique(out["image"].reshape(4, -1), axis=0)) == 4


@pytest.mark.slow
def test_tiny_job_end_to_end(tmp_path):
  from jhmr import launch
  from jhmr.pipelines.stages import run_stage

  config = hpc_config.get_config("tiny")
  config.lock()
  run_stage(config.program, launch.PROGRAMS[config.program](), config, str(tmp_path))
  text = (tmp_path / "results.md").read_text()
  assert "rasteriser" in text and "hard_test" in text
  assert "CMU motion capture, subjects 135" in text  # the hard domain of the tiny config
  assert "guides alone" in text  # the baseline that credits the generated pairs
  assert (tmp_path / "errors.png").is_file() and (tmp_path / "generated_grid.png").is_file()
  assert "own images with the same labels" in text  # the control that credits the images
  for folder in hpc.FINETUNE_FOLDERS.values():
    assert (tmp_path / folder / "checkpoints").is_dir()
  results = json.loads((tmp_path / "results.json").read_text())["results"]
  models = ("before", "after", "guides_only", "labelled_guides")
  assert set(results) == {
    f"{name}/{model}" for name in ("hard_test", "easy_test") for model in models
  }  # fmt: skip
  # The fine-tuned models differ from each other and from the start.
  hard = [results[f"hard_test/{m}"]["pa_mpjpe"] for m in models]
  assert len(set(hard)) == 4, hard
  _, source = hpc.synthetic_source(tmp_path, config.data.image_size)
  assert len(source) == config.data.num_guides * config.generate.num_augmentations


def test_render_into_the_guide_keeps_its_scene_and_removes_its_person(components):
  guides = _guides(4)
  person = np.zeros((4, G, G), bool)
  person[:, 2:12, 20:30] = True  # the guide's person (a corner the new bodies do not cover)
  with_masks = gen.Guides(guides.prompts, guides.images, None, person)
  run = lambda kind: gen.generate_batch(
    _config(num_augmentations=2, render_background=kind).generate, components, [0, 1, 2, 3],
    with_masks,
  )[0]  # fmt: skip
  out, gradient = run("guide"), run("gradient")
  grow = lambda m: np.asarray(inpaint.dilate(jnp.asarray(m)[None], 1))[0]
  for row, g in enumerate(out["guide_index"]):
    image, guide = out["image"][row].astype(int), guides.images[g].astype(int)
    scene = np.any(out["image"][row] != gradient["image"][row], -1)  # the same body in both
    kept = scene & ~grow(person[g]) & ~grow(~scene)  # outside the redrawn region
    assert kept.mean() > 0.3
    assert np.abs(image[kept] - guide[kept]).max() <= 1  # the guide's scene, up to rounding
    filled = scene & person[g]  # the guide's person, where no new body covers it
    assert filled.sum() > 20
    assert np.abs(image[filled] - guide[filled]).mean() > 20  # redrawn (the guide is noise)
  with pytest.raises(InputError, match="render_background"):
    gen.generate_batch(_config(render_background="photo").generate, components, [0], guides)


def test_bad_person_masks_raise_clear_errors():
  good = _guides(2)
  with pytest.raises(InputError, match="person masks must be"):
    gen.check_guides(gen.Guides(good.prompts, good.images, None, np.zeros((2, 8, 8), bool)), G)
  with pytest.raises(InputError, match="person masks must be bool"):
    gen.check_guides(gen.Guides(good.prompts, good.images, None, np.zeros((2, G, G), int)), G)
  with pytest.raises(InputError, match="need guide images"):
    gen.check_guides(gen.Guides(good.prompts, None, None, np.zeros((2, G, G), bool)), G)


def test_fit_keypoints_moves_the_estimate_onto_the_guides_keypoints(components):
  guides = _guides(2)
  settings = _config(num_augmentations=1).generate
  plain, _ = gen.generate_batch(settings, components, [0, 1], guides)
  # keypoints of another pose: the estimate's own projections, arms and legs shifted
  target = plain["keypoints_openpose25"].copy()
  target[:, 2:8, 0] += 3.0  # arms (BODY_25 2-7) 3 px to the right
  target[:, 9:15, 1] -= 2.0  # legs (9-14) 2 px up
  with_kp = gen.Guides(guides.prompts, guides.images, keypoints=target)
  fitted, _ = gen.generate_batch(
    _config(num_augmentations=1, fit_keypoints=True).generate, components, [0, 1], with_kp
  )
  seen = target[..., 2] > 0
  error = lambda out: np.linalg.norm(
    out["keypoints_openpose25"][..., :2] - target[..., :2], axis=-1
  )
  assert error(fitted)[seen].mean() < 0.6 * error(plain)[seen].mean()
  assert not np.allclose(fitted["body_pose"], plain["body_pose"])
  # with the VPoser prior the fit ends at poses VPoser finds more plausible (smaller ||mu||^2)
  prior = vposer_lib.VPoserPrior(components.vposer_variables, 1.0, components.vposer)

  def prior_of(out):
    aa = np.concatenate([out["global_orient"][:, None], out["body_pose"]], 1)
    return np.asarray(prior(rotations.axis_angle_to_matrix(jnp.asarray(aa))))

  held, _ = gen.generate_batch(
    _config(num_augmentations=1, fit_keypoints=True, fit_vposer_weight=1e4).generate,
    components, [0, 1], with_kp,
  )  # fmt: skip
  assert np.all(prior_of(held) < 0.5 * prior_of(fitted))
  with pytest.raises(InputError, match="needs the guides' 2D keypoints"):
    gen.generate_batch(
      _config(num_augmentations=1, fit_keypoints=True).generate, components, [0, 1], guides
    )


def test_generation_estimator_can_be_the_guides_only_fine_tuned_hmr(tmp_path, monkeypatch):
  start = gen.Estimator("hmr", {"params": "easy"}, G, "jhmr")
  calls = []

  def guides_only(ctx, workdir, *, synthetic_half="generated"):
    calls.append((synthetic_half, pathlib.Path(workdir)))
    return "hmr", {"params": "guides"}

  monkeypatch.setattr(hpc, "finetune", guides_only)
  ctx = hpc._context(_config(estimator="start"), tmp_path)
  assert hpc._adapted_estimator(ctx, start) is start and not calls
  assert hpc_config.get_config().generate.estimator == "guides_finetuned"  # the default
  assert hpc_config.get_config("paper").generate.estimator == "start"  # the paper's SPIN
  ctx = hpc._context(_config(estimator="guides_finetuned"), tmp_path)
  adapted = hpc._adapted_estimator(ctx, start)
  assert calls == [("guides_only", tmp_path)]  # the job's own baseline run (restored if done)
  assert adapted.variables == {"params": "guides"}
  assert (adapted.model, adapted.input_size, adapted.normalisation) == ("hmr", G, "jhmr")
  with pytest.raises(InputError, match="generate.estimator must be one of"):
    hpc._adapted_estimator(hpc._context(_config(estimator="best"), tmp_path), start)


def test_bad_guide_keypoints_raise_clear_errors():
  good = _guides(2)
  kp = np.zeros((2, 25, 3), np.float32)
  with pytest.raises(InputError, match=r"\[2, 25, 3\]"):
    gen.check_guides(gen.Guides(good.prompts, good.images, keypoints=kp[:, :17]), G)
  bad = kp.copy()
  bad[0, 3] = (np.nan, 1.0, 0.9)
  with pytest.raises(InputError, match="finite"):
    gen.check_guides(gen.Guides(good.prompts, good.images, keypoints=bad), G)
  bad[0, 3, 2] = 0.0  # a missing keypoint may hold NaN
  gen.check_guides(gen.Guides(good.prompts, good.images, keypoints=bad), G)


def test_labelled_guides_pair_each_guide_image_with_its_first_label(tmp_path, components):
  config = _config()
  guides = _guides(4)
  config.generate.guides = _write_guides(tmp_path, guides)
  hpc.generate(config, tmp_path, process_index=0, process_count=1, components=components)
  ctx = hpc._context(config, tmp_path)
  source = hpc.labelled_guides_source(ctx)
  builder, generated = hpc.synthetic_source(tmp_path, G, ctx.body_model.num_betas)
  rows = builder.as_data_source()["train"]
  first = {
    int(r["guide_index"]): i for i, r in enumerate(rows) if int(r["augmentation_index"]) == 0
  }
  assert len(source) == len(first) == 4
  for i in range(len(source)):
    example = source[i]
    g = int(rows[source.indices[i]]["guide_index"])
    label = generated[first[g]]
    np.testing.assert_array_equal(example.image, guides.images[g])  # the guide's own image
    assert not np.array_equal(example.image, label.image)
    np.testing.assert_array_equal(example.body_pose, label.body_pose)  # the pair's label
    np.testing.assert_array_equal(example.keypoints_2d["smpl24"], label.keypoints_2d["smpl24"])
    assert float(example.has_smpl) == 1.0
  with pytest.raises(InputError, match="synthetic_half"):
    hpc.finetune(ctx, tmp_path, synthetic_half="everything")
