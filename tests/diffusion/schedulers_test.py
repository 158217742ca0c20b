"""SD schedulers vs diffusers' PyTorch schedulers: same inputs, whole loops, step for step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.diffusion import schedulers as S

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 4, 8, 8)
SD_KW = dict(
  beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000
)


def _fake_model(x, t):
  """A deterministic, nonlinear stand-in for a U-Net: eps(x, t) (numpy, x's dtype)."""
  return (np.tanh(0.7 * x) * np.cos(t / 97.0) + 0.1 * np.sin(0.01 * t)).astype(x.dtype)


def _fake_model_jax(x, t):
  return jnp.tanh(0.7 * x) * jnp.cos(t / 97.0) + 0.1 * jnp.sin(0.01 * t)


def _start(seed=0):
  return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _run_torch(sched, x, start=0):
  xs = []
  xt = torch.from_numpy(x)
  for t in sched.timesteps[start:]:
    eps = torch.from_numpy(_fake_model(xt.numpy(), int(t)))
    xt = sched.step(eps, t, xt).prev_sample
    xs.append(xt.numpy())
  return np.stack(xs)


def _compare(ours, ref, x, start=0, *, precision="float32", tol=None):
  """Runs both loops from x; float64 proves the algebra (1e-10), float32 the f32 rounding."""
  if precision == "float64":
    # Tables in float64 on both sides (diffusers keeps them float32 and computes the step
    # coefficients in float32), so the remaining difference is the algebra alone.
    fields = ("alphas_cumprod", "final_alpha_cumprod", "initial_alpha_cumprod", "sigmas")
    for name in fields:
      if hasattr(ref, name) and hasattr(ours, name):
        setattr(ref, name, torch.as_tensor(getattr(ref, name), dtype=torch.float64))
    with jax.enable_x64(True):
      ours = ours.replace(
        **{n: jnp.asarray(getattr(ref, n).numpy()) for n in fields if hasattr(ours, n)}
      )
      got = _run_jax(ours, x.astype(np.float64), start)
    want = _run_torch(ref, x.astype(np.float64), start)
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=1e-10, rtol=1e-10)
  else:
    got, want = _run_jax(ours, x, start), _run_torch(ref, x, start)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, **(tol or dict(atol=1e-6, rtol=2e-6)))


PRECISIONS = pytest.mark.parametrize("precision", ["float32", "float64"])


def _run_jax(sched, x, start=0):
  @jax.jit
  def loop(x):
    def body(carry, i):
      x, state = carry
      t = sched.timesteps[i]
      x, state = sched.step(state, _fake_model_jax(x, t.astype(x.dtype)), i, x)
      return (x, state), x

    n = sched.timesteps.shape[0]
    _, xs = jax.lax.scan(body, (x, sched.init_state(x)), jnp.arange(start, n))
    return xs

  return np.asarray(loop(jnp.asarray(x)))


def _ac(torch_sched):
  return torch_sched.alphas_cumprod.numpy()


def test_alphas_cumprod_matches_diffusers():
  ref = diffusers.DDIMScheduler(**SD_KW).alphas_cumprod.numpy()
  np.testing.assert_allclose(S.SD_NOISE.alphas_cumprod(), ref, rtol=2e-6)
  ref = diffusers.DDIMScheduler(beta_schedule="linear").alphas_cumprod.numpy()
  linear = S.NoiseConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
  np.testing.assert_allclose(linear.alphas_cumprod(), ref, rtol=2e-6)
  assert S.NoiseConfig(beta_schedule="cosine").alphas_cumprod().shape == (1000,)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spaced_timesteps_match_diffusers(spacing):
  ref = diffusers.DDIMScheduler(**SD_KW, steps_offset=1, timestep_spacing=spacing)
  ref.set_timesteps(25)
  cfg = dataclasses.replace(S.SD_NOISE, timestep_spacing=spacing)
  np.testing.assert_array_equal(S.spaced_timesteps(cfg, 25), ref.timesteps.numpy())


@pytest.mark.parametrize(
  "prediction_type, precision",
  [("epsilon", "float32"), ("epsilon", "float64"), ("v_prediction", "float64")],
)
def test_ddim_loop_matches_diffusers(prediction_type, precision):
  ref = diffusers.DDIMScheduler(
    **SD_KW, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    prediction_type=prediction_type,
  )  # fmt: skip
  ref.set_timesteps(20)
  cfg = dataclasses.replace(S.SD_NOISE, prediction_type=prediction_type)
  ours = S.make_ddim(20, cfg, alphas_cumprod=_ac(ref))
  np.testing.assert_array_equal(np.asarray(ours.timesteps), ref.timesteps.numpy())
  _compare(ours, ref, _start(), precision=precision)


def test_ddim_eta_matches_diffusers_with_same_noise():
  ref = diffusers.DDIMScheduler(**SD_KW, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
  ref.set_timesteps(10)
  ours = S.make_ddim(10, alphas_cumprod=_ac(ref))
  x = _start(1)
  eps = _fake_model(x, 501)
  key = jax.random.key(3)
  noise = np.asarray(jax.random.normal(key, SHAPE))
  i = 4
  t = ref.timesteps[i]
  want = ref.step(
    torch.from_numpy(eps), t, torch.from_numpy(x), eta=0.5, variance_noise=torch.tensor(noise)
  ).prev_sample.numpy()
  step = jax.jit(lambda eps, x, key: ours.step((), eps, i, x, eta=0.5, key=key)[0])
  got = step(jnp.asarray(eps), jnp.asarray(x), key)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  with pytest.raises(ValueError, match="key"):
    ours.step((), jnp.asarray(eps), i, jnp.asarray(x), eta=0.5)


@PRECISIONS
def test_ddim_inverse_matches_diffusers(precision):
  ref = diffusers.DDIMInverseScheduler(**SD_KW, clip_sample=False, steps_offset=1)
  ref.set_timesteps(20)
  ours = S.make_ddim_inverse(20, alphas_cumprod=_ac(ref))
  np.testing.assert_array_equal(np.asarray(ours.timesteps), ref.timesteps.numpy())
  _compare(ours, ref, _start(2) * 0.5, precision=precision)


def test_ddim_inversion_then_sampling_round_trips_exact_model():
  """With an x-independent eps model, inversion followed by DDIM sampling returns to x0."""
  inv = S.make_ddim_inverse(25)
  fwd = S.make_ddim(25, dataclasses.replace(S.SD_NOISE, set_alpha_to_one=True))
  eps = jnp.asarray(_start(5))
  x0 = jnp.asarray(_start(6))

  def run(sched, x):
    def body(x, i):
      x, _ = sched.step((), eps, i, x)
      return x, None

    return jax.lax.scan(body, x, jnp.arange(sched.timesteps.shape[0]))[0]

  xt = run(inv, x0)
  assert float(jnp.abs(xt - x0).max()) > 0.1
  np.testing.assert_allclose(np.asarray(run(fwd, xt)), np.asarray(x0), atol=2e-5)


@pytest.mark.parametrize(
  "prediction_type, steps, precision",
  [("epsilon", 50, "float32"), ("epsilon", 50, "float64"), ("v_prediction", 7, "float64")],
)
def test_pndm_loop_matches_diffusers(prediction_type, steps, precision):
  ref = diffusers.PNDMScheduler(
    **SD_KW, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    prediction_type=prediction_type,
  )  # fmt: skip
  ref.set_timesteps(steps)
  cfg = dataclasses.replace(S.SD_NOISE, prediction_type=prediction_type)
  ours = S.make_pndm(steps, cfg, alphas_cumprod=_ac(ref))
  np.testing.assert_array_equal(np.asarray(ours.timesteps), ref.timesteps.numpy())
  _compare(ours, ref, _start(3), precision=precision)


def test_pndm_img2img_suffix_matches_diffusers():
  """Strength 0.7 with 50 steps: diffusers keeps timesteps[15:] (36 evaluations from t=701)."""
  ref = diffusers.PNDMScheduler(
    **SD_KW, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
  )
  ref.set_timesteps(50)
  start = S.img2img_start(50, 0.7)
  assert start == 15 and int(ref.timesteps[start]) == 701
  assert len(ref.timesteps[start:]) == 36
  ours = S.make_pndm(50, alphas_cumprod=_ac(ref))
  _compare(ours, ref, _start(4), start, precision="float64")


@pytest.mark.parametrize("prediction_type, steps", [("epsilon", 20), ("v_prediction", 8)])
def test_dpm_solver_pp_2m_loop_matches_diffusers(prediction_type, steps):
  """float32 only: diffusers' DPM-Solver casts the sample to float32 inside `step`."""
  ref = diffusers.DPMSolverMultistepScheduler(**SD_KW, prediction_type=prediction_type)
  assert ref.config.algorithm_type == "dpmsolver++" and ref.config.solver_order == 2
  ref.set_timesteps(steps)
  cfg = dataclasses.replace(
    S.SD_NOISE, prediction_type=prediction_type, timestep_spacing="linspace", steps_offset=0
  )
  ours = S.make_dpm_solver_pp_2m(steps, cfg, alphas_cumprod=_ac(ref))
  np.testing.assert_array_equal(np.asarray(ours.timesteps), ref.timesteps.numpy())
  np.testing.assert_allclose(np.asarray(ours.sigmas), ref.sigmas.numpy(), rtol=1e-6)
  _compare(ours, ref, _start(7))


def test_add_noise_and_cfg():
  ref = diffusers.DDIMScheduler(**SD_KW)
  x0, noise = _start(8), _start(9)
  t = np.array([10, 900])
  want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
  got = S.add_noise(_ac(ref), jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
  u, c = jnp.ones(3), jnp.arange(3.0)
  np.testing.assert_allclose(np.asarray(S.classifier_free_guidance(u, c, 7.5)), 1 + 7.5 * (c - 1))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="unknown scheduler"):
    S.make_scheduler("euler", 10)
  with pytest.raises(ValueError, match="prediction_type"):
    S.NoiseConfig(prediction_type="x0")
  with pytest.raises(ValueError, match="num_inference_steps"):
    S.make_ddim(0)
  with pytest.raises(ValueError, match="strength"):
    S.img2img_start(50, 0.0)
  with pytest.raises(ValueError, match="alphas_cumprod"):
    S.make_pndm(10, alphas_cumprod=np.ones(10))
