"""diffusers' schedulers from their `scheduler_config.json`, run on diffjax's samplers.

    scheduler = load_scheduler("stable-diffusion-v1-5")  # or scheduler_from_config(dict)
    latents = scheduler.sample(model_fn, noise, num_inference_steps=50, rng=rng)

`model_fn(x_in, t)` is the network (the U-Net, classifier-free guidance applied inside it by the
caller) returning its raw output (eps or v, as the config's prediction_type says); `t` is a [B]
float32 array holding diffusers' timestep exactly (integers, fractional for Euler's linspace and
Karras grids). `noise` is the initial N(0, I) draw (what diffusers' `prepare_latents` draws, or
its `latents=` argument); `sample` multiplies it by `init_noise_sigma` as diffusers does. The
whole loop is one `lax.scan` (jittable, `num_inference_steps` static) with exactly `nfe(n)`
network calls; `trajectory` also returns every call (`Trajectory`) for tests.

    class                          diffjax sampler (diffjax.sampling)            NFE
    DDIMScheduler                  ddim_discrete: DDIM with eta, clip_sample      N
    PNDMScheduler, skip_prk_steps  plms_discrete: PLMS on DDIM's transfer         N + 1 (1 if N = 1)
    EulerDiscreteScheduler         euler_discrete: EDM's Euler in sigma~          N
    DPMSolverMultistepScheduler    dpm_solver_discrete: DPM-Solver++ 1-3M         N

The process is diffjax's discrete DDPM (`DiscreteDDPM`, precision="float32": diffusers'
alphas_cumprod bit for bit). What is a table and what is arithmetic:
- tables, built on the host as diffusers builds them: the timesteps (`spaced_timesteps`, and for
  DDIM/PNDM the "previous" step t - N_train // N whatever the spacing, as diffusers takes it), the
  alphas_cumprod values, and for Euler / DPM-Solver the float32 noise levels
  sigma~ = sqrt((1 - abar) / abar), interpolated or Karras-spaced, with timesteps from
  diffusers' `_sigma_to_t` (rounded for DPM-Solver except with squaredcos_cap_v2);
- arithmetic, in the latents' dtype from the table values: every coefficient and update.
  In float32 that is diffusers' precision. With float64 latents diffusers still computes its
  scalar coefficients in float32 from its float32 tables and rounds the latents to float32
  inside Euler's and DPM-Solver's `step`; diffjax computes all of it in float64 instead, so its
  float64 run is diffusers' algorithm without those roundings (tests/test_schedulers.py compares
  it with diffusers' own step code run on float64 tensors). One more float32 detail: diffusers'
  sigma table comes from torch's float32 sqrt, which on CPU is not always correctly rounded; the
  table here is (numpy's correctly rounded sqrt), so some entries differ by one float32 ulp
  (measured in tests/test_schedulers.py).
Options outside the supported ones (thresholding, rescale_betas_zero_snr, trained_betas, SDE or
noise-prediction DPM-Solver variants, exponential/beta/Lu sigmas, PNDM's Runge-Kutta warm-up,
...) raise one line naming the class, the key and the supported values; keys a class does not
know are ignored, as diffusers ignores them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.processes import DiscreteDDPM
from diffjax.sampling.ddim_sampler import DiscreteSteps, ddim_discrete
from diffjax.sampling.dpm_solver_multistep import MultistepLevels, dpm_solver_discrete
from diffjax.sampling.edm_sampler import NoiseLevels, euler_discrete
from diffjax.sampling.plms_sampler import PLMSCalls, plms_discrete
from diffjax.sampling.result import Trajectory
from diffjax.sampling.time_grids import (karras_sigmas, sigma_of_timestep, spaced_timesteps,
                                         timestep_of_sigma)
from diffjax.storage import filesystem as fs

Array = jax.Array
CONFIG_FILE = "scheduler_config.json"

# diffusers' prediction_type -> diffjax's parameterisation of the network output.
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_NUMBER = (int, float)


def _common(prediction_types: tuple[str, ...], spacing: str) -> dict[str, tuple[Any, Any]]:
    """Options every supported class shares: key -> (diffusers' default, allowed values or a
    type)."""
    return {
        "num_train_timesteps": (1000, int),
        "beta_start": (0.0001, _NUMBER),
        "beta_end": (0.02, _NUMBER),
        "beta_schedule": ("linear", ("linear", "scaled_linear", "squaredcos_cap_v2")),
        "trained_betas": (None, (None,)),
        "prediction_type": ("epsilon", prediction_types),
        "timestep_spacing": (spacing, ("leading", "trailing", "linspace")),
        "steps_offset": (0, int),
    }


@dataclasses.dataclass(frozen=True)
class DiffusersScheduler:
    """A diffusers scheduler's resolved config on diffjax's discrete DDPM process."""

    config: tuple[tuple[str, Any], ...]  # the resolved options, sorted (hashable)
    class_name: ClassVar[str]
    OPTIONS: ClassVar[dict[str, tuple[Any, Any]]]

    @functools.cached_property
    def options(self) -> dict[str, Any]:
        return dict(self.config)

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    @functools.cached_property
    def process(self) -> DiscreteDDPM:
        """diffusers' beta schedule as diffjax's discrete DDPM (float32 table, bit for bit)."""
        return DiscreteDDPM(num_timesteps=self["num_train_timesteps"],
                            beta_schedule=self["beta_schedule"],
                            beta_start=float(self["beta_start"]),
                            beta_end=float(self["beta_end"]), precision="float32")

    @property
    def parameterization(self) -> str:
        return PREDICTIONS[self["prediction_type"]]

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The timesteps the network sees, in call order (diffusers' `scheduler.timesteps`)."""
        return np.asarray(self.schedule(num_inference_steps).timesteps)

    def nfe(self, num_inference_steps: int) -> int:
        """The number of network calls of one `sample`."""
        return len(self.timesteps(num_inference_steps))

    def init_noise_sigma(self, schedule, dtype=jnp.float32) -> Array:
        """What the initial N(0, I) draw is multiplied by (diffusers' `init_noise_sigma`)."""
        del schedule
        return jnp.ones((), dtype)

    def sample(self, model_fn: Callable[[Array, Array], Array], latents: Array,
               num_inference_steps: int, rng: Array | None = None, *,
               eta: float = 0.0) -> Array:
        """The final latents from the initial noise `latents` (see the module docstring).
        `eta` is DDIMScheduler's (diffusers passes it only to a step that takes it; the other
        schedulers ignore it); `rng` draws its noise."""
        schedule = self.schedule(num_inference_steps)
        return self.run(model_fn, latents, schedule, rng=rng, eta=eta)[0]

    def trajectory(self, model_fn, latents: Array, num_inference_steps: int,
                   rng: Array | None = None, *, eta: float = 0.0) -> tuple[Array, Trajectory]:
        """`sample`, and every network call with the latents after its step."""
        schedule = self.schedule(num_inference_steps)
        return self.run(model_fn, latents, schedule, rng=rng, eta=eta, record=True)

    def run(self, model_fn, latents: Array, schedule, *, rng: Array | None = None,
            eta: float = 0.0, noises: Array | None = None,
            record: bool = False) -> tuple[Array, Trajectory | None]:
        """The loop on an explicit `schedule` (`schedule(n)`, or one with a table replaced)."""
        x = latents * self.init_noise_sigma(schedule, latents.dtype)
        return self._loop(model_fn, x, schedule, rng=rng, eta=eta, noises=noises, record=record)

    # --- per class -------------------------------------------------------------------------
    def schedule(self, num_inference_steps: int):
        raise NotImplementedError

    def _loop(self, model_fn, x, schedule, *, rng, eta, noises, record):
        raise NotImplementedError

    # --- shared tables -------------------------------------------------------------------------
    def _spaced(self, num_inference_steps: int, **kwargs) -> np.ndarray:
        steps = spaced_timesteps(self["timestep_spacing"], self["num_train_timesteps"],
                                 num_inference_steps, steps_offset=self["steps_offset"], **kwargs)
        if steps.max() > self["num_train_timesteps"] - 1:
            raise ValueError(
                f"{self.class_name}: timestep {steps.max():g} (steps_offset="
                f"{self['steps_offset']}) is past the last train step "
                f"{self['num_train_timesteps'] - 1}: use fewer inference steps.")
        return steps

    def _final_alphas_cumprod(self) -> float:
        alphas_cumprod = self.process.alphas_cumprod
        return 1.0 if self["set_alpha_to_one"] else float(alphas_cumprod[0])

    def _noise_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """(sigma~, log sigma~) of every train step as diffusers tabulates them: float32 values,
        the log taken in float32 (numpy's, as diffusers does)."""
        table = self.process.step_noise_to_signal().astype(np.float32)
        return table, np.log(table)

    def _last_sigma(self, sigmas: np.ndarray) -> float:
        return 0.0 if self["final_sigmas_type"] == "zero" else float(sigmas[0])


class DDIMScheduler(DiffusersScheduler):
    class_name = "DDIMScheduler"
    OPTIONS = {
        **_common(("epsilon", "v_prediction", "sample"), "leading"),
        "rescale_betas_zero_snr": (False, (False,)),
        "clip_sample": (True, (True, False)),
        "clip_sample_range": (1.0, _NUMBER),
        "set_alpha_to_one": (True, (True, False)),
        "thresholding": (False, (False,)),
        "dynamic_thresholding_ratio": (0.995, _NUMBER),
        "sample_max_value": (1.0, _NUMBER),
    }

    def schedule(self, num_inference_steps: int) -> DiscreteSteps:
        steps = self._spaced(num_inference_steps).astype(np.int64)
        alphas_cumprod = self.process.alphas_cumprod
        # diffusers' "previous" step is t - N_train // N for every spacing.
        prev = steps - self["num_train_timesteps"] // num_inference_steps
        prev_abar = np.where(prev >= 0, alphas_cumprod[np.maximum(prev, 0)],
                             self._final_alphas_cumprod())
        return DiscreteSteps(steps.astype(np.float64), alphas_cumprod[steps], prev_abar)

    def _loop(self, model_fn, x, schedule, *, rng, eta, noises, record):
        if eta and rng is None and noises is None:
            raise ValueError(f"DDIMScheduler with eta={eta} adds noise: pass rng.")
        clip = float(self["clip_sample_range"]) if self["clip_sample"] else None
        return ddim_discrete(model_fn, x, schedule, parameterization=self.parameterization,
                             eta=float(eta), clip_sample=clip, noises=noises, rng=rng,
                             record=record)


class PNDMScheduler(DiffusersScheduler):
    class_name = "PNDMScheduler"
    OPTIONS = {
        **_common(("epsilon", "v_prediction"), "leading"),
        "skip_prk_steps": (False, (True,)),
        "set_alpha_to_one": (False, (True, False)),
    }

    def schedule(self, num_inference_steps: int) -> PLMSCalls:
        increasing = self._spaced(num_inference_steps)[::-1].astype(np.int64)
        plms = np.concatenate([increasing[:-1], increasing[-2:-1], increasing[-1:]])[::-1]
        stride = self["num_train_timesteps"] // num_inference_steps
        alphas_cumprod = self.process.alphas_cumprod
        start, end = plms.copy(), plms - stride
        if len(plms) > 1:  # the second call redoes the first step (see plms_sampler)
            start[1], end[1] = plms[1] + stride, plms[1]
        if start.max() > self["num_train_timesteps"] - 1:
            raise ValueError(f"PNDMScheduler: timestep {start.max()} is past the last train "
                             f"step; use another timestep_spacing or more steps.")
        end_abar = np.where(end >= 0, alphas_cumprod[np.maximum(end, 0)],
                            self._final_alphas_cumprod())
        return PLMSCalls(plms.astype(np.float64), alphas_cumprod[start], end_abar)

    def _loop(self, model_fn, x, schedule, *, rng, eta, noises, record):
        return plms_discrete(model_fn, x, schedule, parameterization=self.parameterization,
                             record=record)


class EulerDiscreteScheduler(DiffusersScheduler):
    class_name = "EulerDiscreteScheduler"
    OPTIONS = {
        **_common(("epsilon", "v_prediction", "sample"), "linspace"),
        "rescale_betas_zero_snr": (False, (False,)),
        "interpolation_type": ("linear", ("linear",)),
        "use_karras_sigmas": (False, (False, True, None)),
        "use_exponential_sigmas": (False, (False, None)),
        "use_beta_sigmas": (False, (False, None)),
        "sigma_min": (None, (None, float, int)),
        "sigma_max": (None, (None, float, int)),
        "timestep_type": ("discrete", ("discrete",)),
        "final_sigmas_type": ("zero", ("zero", "sigma_min")),
    }

    def schedule(self, num_inference_steps: int) -> NoiseLevels:
        steps = self._spaced(num_inference_steps, rounded=False).astype(np.float32)
        table, log_table = self._noise_levels()
        sigmas = sigma_of_timestep(steps, table)
        if self["use_karras_sigmas"]:
            sigma_min = sigmas[-1] if self["sigma_min"] is None else self["sigma_min"]
            sigma_max = sigmas[0] if self["sigma_max"] is None else self["sigma_max"]
            sigmas = karras_sigmas(float(sigma_min), float(sigma_max), num_inference_steps)
            steps = timestep_of_sigma(sigmas, log_table).astype(np.float32)
        sigmas = np.append(sigmas, self._last_sigma(table)).astype(np.float32)
        return NoiseLevels(steps.astype(np.float64), sigmas.astype(np.float64))

    def init_noise_sigma(self, schedule: NoiseLevels, dtype=jnp.float32) -> Array:
        largest = jnp.asarray(np.max(schedule.sigmas), dtype)
        if self["timestep_spacing"] in ("linspace", "trailing"):
            return largest
        return jnp.sqrt(largest**2 + 1)

    def _loop(self, model_fn, x, schedule, *, rng, eta, noises, record):
        return euler_discrete(model_fn, x, schedule, parameterization=self.parameterization,
                              record=record)


class DPMSolverMultistepScheduler(DiffusersScheduler):
    class_name = "DPMSolverMultistepScheduler"
    OPTIONS = {
        **_common(("epsilon", "v_prediction", "sample"), "linspace"),
        "rescale_betas_zero_snr": (False, (False,)),
        "solver_order": (2, (1, 2, 3)),
        "thresholding": (False, (False,)),
        "dynamic_thresholding_ratio": (0.995, _NUMBER),
        "sample_max_value": (1.0, _NUMBER),
        "algorithm_type": ("dpmsolver++", ("dpmsolver++",)),
        "solver_type": ("midpoint", ("midpoint", "heun")),
        "lower_order_final": (True, (True, False)),
        "euler_at_final": (False, (True, False)),
        "use_karras_sigmas": (False, (False, True, None)),
        "use_exponential_sigmas": (False, (False, None)),
        "use_beta_sigmas": (False, (False, None)),
        "use_lu_lambdas": (False, (False, None)),
        "use_flow_sigmas": (False, (False, None)),
        "flow_shift": (1.0, _NUMBER),
        "final_sigmas_type": ("zero", ("zero", "sigma_min")),
        "lambda_min_clipped": (-math.inf, (-math.inf,)),
        "variance_type": (None, (None,)),
        "use_dynamic_shifting": (False, (False,)),
        "time_shift_type": ("exponential", ("exponential",)),
    }

    def schedule(self, num_inference_steps: int) -> MultistepLevels:
        steps = self._spaced(num_inference_steps, skip_last=True)
        table, log_table = self._noise_levels()
        if self["use_karras_sigmas"]:
            sigmas = karras_sigmas(float(table[0]), float(table[-1]), num_inference_steps)
            steps = timestep_of_sigma(sigmas, log_table)
            if self["beta_schedule"] != "squaredcos_cap_v2":
                steps = steps.round()
        else:
            sigmas = sigma_of_timestep(steps, table)
        sigmas = np.append(sigmas, self._last_sigma(table)).astype(np.float32)
        steps = steps.astype(np.int64)  # diffusers stores int64 timesteps (truncating)
        return MultistepLevels(steps.astype(np.float64), sigmas.astype(np.float64),
                               self._orders(len(steps)))

    def _orders(self, num_steps: int) -> np.ndarray:
        """diffusers' order of each step: warm-up 1, 2, ...; the last step first order with
        euler_at_final, with final_sigmas_type="zero", or with lower_order_final below 15 steps;
        the one before at most second order with lower_order_final below 15 steps."""
        solver_order, few = self["solver_order"], self["lower_order_final"] and num_steps < 15
        orders = []
        for i in range(num_steps):
            history = min(i, solver_order)
            last = i == num_steps - 1 and (self["euler_at_final"] or few
                                            or self["final_sigmas_type"] == "zero")
            second_last = i == num_steps - 2 and few
            if solver_order == 1 or history < 1 or last:
                orders.append(1)
            elif solver_order == 2 or history < 2 or second_last:
                orders.append(2)
            else:
                orders.append(3)
        return np.asarray(orders, np.int64)

    def _loop(self, model_fn, x, schedule, *, rng, eta, noises, record):
        solver_type = {"midpoint": "dpmsolver", "heun": "taylor"}[self["solver_type"]]
        return dpm_solver_discrete(model_fn, x, schedule, parameterization=self.parameterization,
                                   solver_type=solver_type, record=record)


SCHEDULERS: dict[str, type[DiffusersScheduler]] = {
    cls.class_name: cls for cls in (DDIMScheduler, PNDMScheduler, EulerDiscreteScheduler,
                                    DPMSolverMultistepScheduler)
}


def _allowed(value: Any, allowed: Any) -> bool:
    """Whether `value` is one of the allowed literals or of an allowed type (bools only match
    the literals True and False)."""
    for choice in allowed if isinstance(allowed, tuple) else (allowed,):
        if isinstance(choice, type):
            if isinstance(value, choice) and not isinstance(value, bool):
                return True
        elif value is choice or (type(value) is type(choice) and value == choice):
            return True
    return False


def _describe(allowed: Any) -> str:
    types = allowed if isinstance(allowed, tuple) else (allowed,)
    return " | ".join(a.__name__ if isinstance(a, type) else repr(a) for a in types)


def scheduler_from_config(config: dict[str, Any]) -> DiffusersScheduler:
    """The scheduler a diffusers `scheduler_config.json` (as a dict) describes.

    Missing keys take the class's own diffusers default (they differ between classes: DDIM
    clips x0 by default, Euler and DPM-Solver space timesteps by "linspace"); keys the class does
    not know, and private keys such as `_class_name`, are ignored.
    """
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"{CONFIG_FILE}: _class_name={name!r} is not supported; supported: "
                         f"{', '.join(sorted(SCHEDULERS))}.")
    cls = SCHEDULERS[name]
    resolved = {}
    for key, (default, allowed) in cls.OPTIONS.items():
        value = config.get(key, default)
        if isinstance(value, list):
            value = tuple(value)
        if not _allowed(value, allowed):
            raise ValueError(f"{name}.{key}={value!r} is not supported; supported: "
                             f"{_describe(allowed)}.")
        resolved[key] = bool(value) if value is None and key.startswith("use_") else value
    return cls(config=tuple(sorted(resolved.items())))


def load_scheduler(folder: str) -> DiffusersScheduler:
    """The scheduler of a diffusers pipeline folder (`folder/scheduler/scheduler_config.json`) or
    of a scheduler folder itself."""
    for path in (fs.join(folder, "scheduler", CONFIG_FILE), fs.join(folder, CONFIG_FILE)):
        if fs.exists(path):
            try:
                return scheduler_from_config(json.loads(fs.read_text(path)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}).") from None
    raise FileNotFoundError(f"No scheduler/{CONFIG_FILE} in {folder}: point at a diffusers "
                            f"pipeline folder (the one holding model_index.json).")
