"""Stable Diffusion samplers: DDIM (+ inversion), PNDM (PLMS, `skip_prk_steps`), DPM-Solver++ 2M.

Each scheduler is a `flax.struct` dataclass holding its precomputed tables (a pytree, so it passes
through `jit`), with pure methods:

  state = sched.init_state(sample)
  prev_sample, state = sched.step(state, model_output, i, sample)

`i` is the (traced) index into `sched.timesteps`, so a denoising loop is one `lax.scan` over
`jnp.arange(start, len(sched.timesteps))`; `start > 0` gives image-to-image. The step maths follow
diffusers' `DDIMScheduler`, `DDIMInverseScheduler`, `PNDMScheduler(skip_prk_steps=True)` and
`DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)` for the same
timestep spacing; tests check them step for step against those classes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jhmr.diffusion import ddim
from jhmr.diffusion.schedules import make_alphas_cumprod

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoiseConfig:
  """The training noise process of a model (diffusers `scheduler_config.json` fields).

  Defaults are Stable Diffusion 1.x/2-depth: scaled-linear betas 0.00085..0.012, T = 1000,
  epsilon prediction, `steps_offset=1`, `set_alpha_to_one=False`, "leading" spacing.
  """

  num_train_timesteps: int = 1000
  beta_schedule: str = "scaled_linear"
  beta_start: float = 0.00085
  beta_end: float = 0.012
  prediction_type: str = "epsilon"
  set_alpha_to_one: bool = False
  steps_offset: int = 1
  timestep_spacing: str = "leading"

  def __post_init__(self):
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"prediction_type {self.prediction_type!r}; valid: {PREDICTION_TYPES}")
    if self.timestep_spacing not in SPACINGS:
      raise ValueError(f"timestep_spacing {self.timestep_spacing!r}; valid: {SPACINGS}")

  def alphas_cumprod(self) -> np.ndarray:
    """[T] float32 cumulative alphas of the training schedule."""
    kwargs = {}
    if self.beta_schedule in ("linear", "scaled_linear"):
      kwargs = dict(beta_start=self.beta_start, beta_end=self.beta_end)
    return make_alphas_cumprod(self.beta_schedule, self.num_train_timesteps, **kwargs)


SD_NOISE = NoiseConfig()
# diffusers' DPMSolverMultistepScheduler defaults: the same noise process, "linspace" spacing.
DPM_NOISE = NoiseConfig(timestep_spacing="linspace", steps_offset=0)


def spaced_timesteps(config: NoiseConfig, num_inference_steps: int) -> np.ndarray:
  """Descending inference timesteps [N] int, as diffusers' DDIM/PNDM `set_timesteps`."""
  t_train = config.num_train_timesteps
  if not 0 < num_inference_steps <= t_train:
    raise ValueError(f"num_inference_steps must be in [1, {t_train}], got {num_inference_steps}")
  if config.timestep_spacing == "leading":
    ratio = t_train // num_inference_steps
    return (np.arange(num_inference_steps) * ratio)[::-1] + config.steps_offset
  if config.timestep_spacing == "trailing":
    ratio = t_train / num_inference_steps
    return np.round(np.arange(t_train, 0, -ratio)).astype(np.int64) - 1
  return np.linspace(0, t_train - 1, num_inference_steps).round()[::-1].astype(np.int64)


def _tables(config: NoiseConfig, alphas_cumprod):
  ac = config.alphas_cumprod() if alphas_cumprod is None else np.asarray(alphas_cumprod, np.float32)
  if ac.shape != (config.num_train_timesteps,):
    raise ValueError(
      f"alphas_cumprod must have shape ({config.num_train_timesteps},), got {ac.shape}"
    )
  final = np.float32(1.0) if config.set_alpha_to_one else ac[0]
  return jnp.asarray(ac), jnp.asarray(final, jnp.float32)


def _alpha_at(alphas_cumprod, final, t):
  """alphas_cumprod[t] for t >= 0, else the final ("t = -1") value. t: int scalar (traced)."""
  return jnp.where(t >= 0, alphas_cumprod[jnp.maximum(t, 0)], final)


def _x0_eps(prediction_type, model_output, sample, alpha_bar):
  """(x0, eps) from a model output of the given parameterisation at level alpha_bar."""
  if prediction_type == "epsilon":
    return ddim.predict_x0(sample, model_output, alpha_bar), model_output
  if prediction_type == "v_prediction":
    a, s = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
    return a * sample - s * model_output, a * model_output + s * sample
  return model_output, ddim.predict_eps(sample, model_output, alpha_bar)


def add_noise(alphas_cumprod, x0, noise, t):
  """Forward process q(x_t | x0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise. t: int [] or [B]."""
  ab = jnp.asarray(alphas_cumprod)[t]
  ab = jnp.reshape(ab, ab.shape + (1,) * (x0.ndim - ab.ndim))
  return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def classifier_free_guidance(uncond, cond, scale):
  """uncond + scale * (cond - uncond): Ho & Salimans' guided model output (any shape)."""
  return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------------------------
# DDIM


@struct.dataclass
class DDIM:
  """DDIM sampler (Song et al. 2021); `eta > 0` adds DDPM-like noise (needs a key per step).

  Attributes:
    alphas_cumprod: [T] training cumulative alphas.
    final_alpha_cumprod: [] the value used for the step past t = 0.
    timesteps: [N] int32 descending model timesteps.
  """

  alphas_cumprod: jax.Array
  final_alpha_cumprod: jax.Array
  timesteps: jax.Array
  step_ratio: int = struct.field(pytree_node=False)
  prediction_type: str = struct.field(pytree_node=False, default="epsilon")
  clip_sample: float | None = struct.field(pytree_node=False, default=None)
  init_noise_sigma: float = struct.field(pytree_node=False, default=1.0)

  def init_state(self, sample):
    del sample
    return ()

  def step(self, state, model_output, i, sample, *, eta=0.0, key=None):
    """x_t -> x_{t - T/N}. Returns (prev_sample, state). `key` is required when eta > 0."""
    t = self.timesteps[i]
    prev_t = t - self.step_ratio
    ab_t = self.alphas_cumprod[t]
    ab_prev = _alpha_at(self.alphas_cumprod, self.final_alpha_cumprod, prev_t)
    x0, eps = _x0_eps(self.prediction_type, model_output, sample, ab_t)
    if self.clip_sample is not None:
      x0 = jnp.clip(x0, -self.clip_sample, self.clip_sample)
    if isinstance(eta, int | float) and eta == 0.0:
      return ddim.ddim_step(x0, eps, ab_prev), state
    if key is None:
      raise ValueError("DDIM.step with eta > 0 needs a jax.random key")
    variance = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)
    std = eta * jnp.sqrt(variance)
    prev = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1.0 - ab_prev - std**2) * eps
    return prev + std * jax.random.normal(key, sample.shape, sample.dtype), state


def make_ddim(
  num_inference_steps: int,
  config: NoiseConfig = SD_NOISE,
  *,
  clip_sample: float | None = None,
  alphas_cumprod=None,
) -> DDIM:
  """A DDIM sampler with `num_inference_steps` steps (alphas_cumprod overrides the config's)."""
  ac, final = _tables(config, alphas_cumprod)
  return DDIM(
    alphas_cumprod=ac,
    final_alpha_cumprod=final,
    timesteps=jnp.asarray(spaced_timesteps(config, num_inference_steps), jnp.int32),
    step_ratio=config.num_train_timesteps // num_inference_steps,
    prediction_type=config.prediction_type,
    clip_sample=clip_sample,
  )


@struct.dataclass
class DDIMInverse:
  """Deterministic DDIM inversion (data -> noise), diffusers' `DDIMInverseScheduler`.

  `timesteps` ascend; step i maps x at level timesteps[i] - T/N (or alpha = initial value below
  zero) to level timesteps[i].
  """

  alphas_cumprod: jax.Array
  initial_alpha_cumprod: jax.Array
  timesteps: jax.Array
  step_ratio: int = struct.field(pytree_node=False)
  num_train_timesteps: int = struct.field(pytree_node=False)
  prediction_type: str = struct.field(pytree_node=False, default="epsilon")

  def init_state(self, sample):
    del sample
    return ()

  def step(self, state, model_output, i, sample):
    target_t = self.timesteps[i]
    t = jnp.minimum(target_t - self.step_ratio, self.num_train_timesteps - 1)
    ab_t = _alpha_at(self.alphas_cumprod, self.initial_alpha_cumprod, t)
    x0, eps = _x0_eps(self.prediction_type, model_output, sample, ab_t)
    return ddim.ddim_step(x0, eps, self.alphas_cumprod[target_t]), state


def make_ddim_inverse(
  num_inference_steps: int,
  config: NoiseConfig = SD_NOISE,
  *,
  set_alpha_to_one: bool = True,
  alphas_cumprod=None,
) -> DDIMInverse:
  """Inversion with ascending timesteps ("leading"/"trailing" spacing as diffusers)."""
  if config.timestep_spacing == "linspace":
    raise ValueError("DDIM inversion supports 'leading' and 'trailing' spacing only")
  ac, _ = _tables(config, alphas_cumprod)
  return DDIMInverse(
    alphas_cumprod=ac,
    initial_alpha_cumprod=jnp.float32(1.0) if set_alpha_to_one else ac[0],
    timesteps=jnp.asarray(spaced_timesteps(config, num_inference_steps)[::-1].copy(), jnp.int32),
    step_ratio=config.num_train_timesteps // num_inference_steps,
    num_train_timesteps=config.num_train_timesteps,
    prediction_type=config.prediction_type,
  )


# ---------------------------------------------------------------------------------------------
# PNDM (PLMS with the skip_prk warm-up)


@struct.dataclass
class PNDMState:
  """ets: [4, *sample] last model outputs, newest last; cur_sample: x held across the warm-up."""

  ets: jax.Array
  cur_sample: jax.Array
  counter: jax.Array


@struct.dataclass
class PNDM:
  """Pseudo numerical methods (Liu et al. 2022), as SD runs it (`skip_prk_steps=True`).

  The N+1 timesteps repeat the second one: step 0 is an Euler-like step, step 1 re-evaluates at
  the new point and averages both outputs from the original sample (a 2nd-order warm-up), then
  steps use 2-, 3- and finally 4-term Adams-Bashforth combinations of past outputs.
  """

  alphas_cumprod: jax.Array
  final_alpha_cumprod: jax.Array
  timesteps: jax.Array
  step_ratio: int = struct.field(pytree_node=False)
  prediction_type: str = struct.field(pytree_node=False, default="epsilon")
  init_noise_sigma: float = struct.field(pytree_node=False, default=1.0)

  def init_state(self, sample):
    zeros = jnp.zeros_like(sample)
    return PNDMState(
      ets=jnp.zeros((4, *sample.shape), sample.dtype), cur_sample=zeros, counter=jnp.int32(0)
    )

  def step(self, state: PNDMState, model_output, i, sample):
    c = state.counter
    warm = c == 1  # the re-evaluation step: average with the first output, restart from x_prev
    t = jnp.where(warm, self.timesteps[i] + self.step_ratio, self.timesteps[i])
    prev_t = jnp.where(warm, self.timesteps[i], self.timesteps[i] - self.step_ratio)
    ets = jnp.where(warm, state.ets, jnp.concatenate([state.ets[1:], model_output[None]]))
    e1, e2, e3, e4 = ets[3], ets[2], ets[1], ets[0]
    combined = jnp.select(
      [c == 0, warm, c == 2, c == 3],
      [e1, (model_output + e1) / 2, (3 * e1 - e2) / 2, (23 * e1 - 16 * e2 + 5 * e3) / 12],
      (55 * e1 - 59 * e2 + 37 * e3 - 9 * e4) / 24,
    )
    x = jnp.where(warm, state.cur_sample, sample)
    cur_sample = jnp.where(c == 0, sample, state.cur_sample)
    prev = self._prev_sample(x, t, prev_t, combined)
    return prev, PNDMState(ets=ets, cur_sample=cur_sample, counter=c + 1)

  def _prev_sample(self, x, t, prev_t, model_output):
    """PNDM's transfer x_t -> x_{prev_t} (Liu et al., eq. 9)."""
    ab_t = self.alphas_cumprod[t]
    ab_prev = _alpha_at(self.alphas_cumprod, self.final_alpha_cumprod, prev_t)
    if self.prediction_type == "v_prediction":
      model_output = jnp.sqrt(ab_t) * model_output + jnp.sqrt(1.0 - ab_t) * x
    denom = ab_t * jnp.sqrt(1.0 - ab_prev) + jnp.sqrt(ab_t * (1.0 - ab_t) * ab_prev)
    return jnp.sqrt(ab_prev / ab_t) * x - (ab_prev - ab_t) * model_output / denom


def make_pndm(num_inference_steps: int, config: NoiseConfig = SD_NOISE, *, alphas_cumprod=None):
  """PNDM with N + 1 model evaluations (timesteps [t0, t1, t1, t2, ..., t_{N-1}])."""
  if config.prediction_type == "sample":
    raise ValueError("PNDM supports 'epsilon' and 'v_prediction' only")
  ac, final = _tables(config, alphas_cumprod)
  ts = spaced_timesteps(config, num_inference_steps)[::-1]  # ascending
  plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
  return PNDM(
    alphas_cumprod=ac,
    final_alpha_cumprod=final,
    timesteps=jnp.asarray(plms.copy(), jnp.int32),
    step_ratio=config.num_train_timesteps // num_inference_steps,
    prediction_type=config.prediction_type,
  )


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ (2M)


@struct.dataclass
class DPMSolverState:
  """prev_x0: the previous data prediction; lower_order_nums: steps taken so far (capped)."""

  prev_x0: jax.Array
  lower_order_nums: jax.Array


@struct.dataclass
class DPMSolverPP2M:
  """Multistep DPM-Solver++ of order 2, midpoint variant (Lu et al. 2022), diffusers' defaults.

  Attributes:
    sigmas: [N + 1] float32 sqrt((1 - ab) / ab) at the timesteps, then 0 (final step -> x0).
    timesteps: [N] int32 descending ("linspace" spacing by default, as diffusers).
  """

  sigmas: jax.Array
  timesteps: jax.Array
  prediction_type: str = struct.field(pytree_node=False, default="epsilon")
  lower_order_final: bool = struct.field(pytree_node=False, default=True)
  init_noise_sigma: float = struct.field(pytree_node=False, default=1.0)

  def init_state(self, sample):
    return DPMSolverState(prev_x0=jnp.zeros_like(sample), lower_order_nums=jnp.int32(0))

  def step(self, state: DPMSolverState, model_output, i, sample):
    n = self.timesteps.shape[0]
    alpha_s0, sigma_s0 = _alpha_sigma(self.sigmas[i])
    alpha_t, sigma_t = _alpha_sigma(self.sigmas[i + 1])
    alpha_s1, sigma_s1 = _alpha_sigma(self.sigmas[jnp.maximum(i - 1, 0)])
    if self.prediction_type == "epsilon":
      x0 = (sample - sigma_s0 * model_output) / alpha_s0
    else:  # v_prediction
      x0 = alpha_s0 * sample - sigma_s0 * model_output
    lam_t = jnp.log(alpha_t) - jnp.log(sigma_t)
    lam_s0 = jnp.log(alpha_s0) - jnp.log(sigma_s0)
    lam_s1 = jnp.log(alpha_s1) - jnp.log(sigma_s1)
    h, h0 = lam_t - lam_s0, lam_s0 - lam_s1
    first = (sigma_t / sigma_s0) * sample - (alpha_t * (jnp.exp(-h) - 1.0)) * x0
    d1 = (x0 - state.prev_x0) / (h0 / h)
    second = first - 0.5 * (alpha_t * (jnp.exp(-h) - 1.0)) * d1
    # The final step always lands on sigma = 0 with a first-order update (final_sigmas "zero").
    use_first = (state.lower_order_nums < 1) | (i == n - 1)
    prev = jnp.where(use_first, first, second)
    new_state = DPMSolverState(
      prev_x0=x0, lower_order_nums=jnp.minimum(state.lower_order_nums + 1, 2)
    )
    return prev, new_state


def _alpha_sigma(sigma):
  alpha = 1.0 / jnp.sqrt(sigma**2 + 1.0)
  return alpha, sigma * alpha


def make_dpm_solver_pp_2m(
  num_inference_steps: int,
  config: NoiseConfig = DPM_NOISE,
  *,
  alphas_cumprod=None,
) -> DPMSolverPP2M:
  """DPM-Solver++ 2M with diffusers' `DPMSolverMultistepScheduler` defaults (linspace spacing)."""
  if config.prediction_type == "sample":
    raise ValueError("DPMSolverPP2M supports 'epsilon' and 'v_prediction' only")
  ac, _ = _tables(config, alphas_cumprod)
  ac = np.asarray(ac)
  t_train = config.num_train_timesteps
  if config.timestep_spacing == "linspace":
    ts = np.linspace(0, t_train - 1, num_inference_steps + 1).round()[::-1][:-1].astype(np.int64)
  elif config.timestep_spacing == "leading":
    ratio = t_train // (num_inference_steps + 1)
    ts = (np.arange(num_inference_steps + 1) * ratio)[::-1][:-1] + config.steps_offset
  else:
    ts = np.arange(t_train, 0, -t_train / num_inference_steps).round().astype(np.int64) - 1
  sigmas = ((1 - ac) / ac) ** 0.5
  sigmas = np.interp(ts, np.arange(len(sigmas)), sigmas)
  sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
  return DPMSolverPP2M(
    sigmas=jnp.asarray(sigmas),
    timesteps=jnp.asarray(ts.copy(), jnp.int32),
    prediction_type=config.prediction_type,
  )


SCHEDULERS = {
  "ddim": make_ddim,
  "pndm": make_pndm,
  "dpm_solver_pp_2m": make_dpm_solver_pp_2m,
}


def make_scheduler(name: str, num_inference_steps: int, config: NoiseConfig | None = None, **kw):
  """`SCHEDULERS[name](num_inference_steps, config, **kw)`; raises on unknown names."""
  if name not in SCHEDULERS:
    raise ValueError(f"unknown scheduler {name!r}; valid: {sorted(SCHEDULERS)}")
  if config is None:
    return SCHEDULERS[name](num_inference_steps, **kw)
  return SCHEDULERS[name](num_inference_steps, config, **kw)


def img2img_start(num_steps: int, strength: float) -> int:
  """Index of the first step kept for strength in (0, 1] (diffusers' `get_timesteps`, order 1).

  `num_steps` is the number of inference steps N (not PNDM's N + 1 model evaluations).
  """
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must be in (0, 1], got {strength}")
  init = min(int(num_steps * strength), num_steps)
  return max(num_steps - init, 0)
