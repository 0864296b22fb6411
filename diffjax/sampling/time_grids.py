"""Time discretisations for the fixed-step samplers.

Every grid is a decreasing array t_0 = start > t_1 > ... > t_N = eps of N + 1 times, so a sampler
with `num_steps = N` takes N steps. Spacings:

- "uniform": uniform in t (score_sde's choice for its SDE samplers; flow matching's Euler/Heun).
- "edm": Karras et al. (2022)'s rho schedule in the noise-to-signal ratio sigma~ = sigma / alpha,
  sigma~_i = (sigma~_max^(1/rho) + i/N (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho, mapped
  back to t through the process (`t_from_noise_to_signal`), which is how one schedule serves every
  process; for EDM's process (sigma~ = t) it is EDM's grid itself.
  (EDM indexes N points with i/(N-1); we index N + 1 points, hence i/N. `edm_heun` uses EDM's.)
- "log_snr": uniform in log-SNR, DPM-Solver's "logSNR", where its exponential integrator's step
  h = lambda_{i+1} - lambda_i is constant.
- "discrete": DDPM only: the steps DiT's `space_timesteps(N_train, N + 1)` keeps, at
  t_n = (n + 1) / N_train, from n = N_train - 1 to n = 0 (so it ends at the process's eps).

Where they start: "uniform" and "discrete" at T; "edm" and "log_snr" at `process.t_max`, the
largest time with a finite log-SNR (T, except flow matching's 0.999). Samplers built on f and g
pass start=t_max for "uniform" too.

Numerics: grids are computed in the working float dtype (float64 under x64) and their end points
pinned to exactly start and eps (the round trip t -> log-SNR -> t loses a few ulps). Every
process's inverse maps are written without cancellation, so every grid is strictly decreasing in
float32 for every process (tests/test_processes.py).

Discrete timesteps as diffusers' schedulers space them (`spaced_timesteps`, numpy, on the host):
the `timestep_spacing` of a `scheduler_config.json` picks num_steps of the N train steps,
decreasing (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Table 2):
- "leading": k (N // num_steps) for k = num_steps-1..0, plus `steps_offset` (SD 1.x/2.x: 1);
- "trailing": round(N - k N / num_steps) - 1 for k = 0..num_steps-1 (starts at N - 1);
- "linspace": linspace(0, N - 1, num_steps) reversed, rounded (DDIM, PNDM, DPM-Solver) or kept
  fractional (Euler).
`DPMSolverMultistepScheduler` spaces num_steps + 1 points for "leading" and "linspace" and drops
the last (`skip_last`). With Karras et al.'s noise levels (`karras_sigmas`) the steps come from
the levels instead: `timestep_of_sigma` is diffusers' inverse (log sigma~ interpolated linearly
between neighbouring steps), `sigma_of_timestep` its forward map (sigma~ itself interpolated).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.processes import DiscreteDDPM, LinearProcess, float_dtype
from diffjax.diffusion.processes.ddpm import space_timesteps

Array = jax.Array


def resolve_eps(process: LinearProcess, eps: float | None) -> float:
    """`eps` itself, or the process's customary end time when None."""
    if eps is None:
        return float(process.default_eps)
    eps = float(eps)
    low_ok = eps >= 0.0 if process.allows_zero_eps else eps > 0.0
    if not (low_ok and eps < process.T):
        interval = "[0" if process.allows_zero_eps else "(0"
        raise ValueError(f"sampling.eps={eps} must lie in {interval}, T={process.T}) for "
                         f"sde.name={process.name}.")
    return eps


def _pin_ends(t: Array, start: float, eps: float) -> Array:
    return t.at[0].set(start).at[-1].set(eps)


def uniform_grid(process, num_steps, eps, *, rho=7.0, start=None) -> Array:
    del rho
    start = process.T if start is None else start
    return jnp.linspace(start, eps, num_steps + 1, dtype=float_dtype())


def _finite(value: float, what: str, eps: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"The {what} grid needs a finite log-SNR at its ends; sampling.eps={eps} "
                         f"gives an infinite one: use eps > 0 or time_grid=uniform.")
    return value


def edm_grid(process, num_steps, eps, *, rho=7.0, start=None) -> Array:
    # Interpolating sigma~^(1/rho) linearly concentrates steps at low noise, where the data's
    # fine structure is resolved; rho = 7 is EDM's choice for image models.
    start = process.t_max if start is None else start
    sigma_tilde = edm_sigmas(process, num_steps + 1, eps, rho=rho, start=start)
    return _pin_ends(process.t_from_noise_to_signal(sigma_tilde), start, eps)


def edm_sigmas(process, num_points, eps, *, rho=7.0, start=None) -> Array:
    """EDM's num_points noise levels sigma~ from sigma~(start) to sigma~(eps), decreasing."""
    start = process.t_max if start is None else start
    with jax.ensure_compile_time_eval():
        s_max = float(process.noise_to_signal(start)) ** (1.0 / rho)
        s_min = float(process.noise_to_signal(eps)) ** (1.0 / rho)
    _finite(s_max, "edm", eps)
    if num_points == 1:
        return jnp.asarray([s_max**rho], float_dtype())
    frac = jnp.arange(num_points, dtype=float_dtype()) / (num_points - 1)
    return (s_max + frac * (s_min - s_max)) ** rho


def log_snr_grid(process, num_steps, eps, *, rho=7.0, start=None) -> Array:
    del rho
    start = process.t_max if start is None else start
    dtype = float_dtype()
    with jax.ensure_compile_time_eval():
        lam_start = float(process.log_snr(jnp.asarray(start, dtype)))
        lam_end = float(process.log_snr(jnp.asarray(eps, dtype)))
    _finite(lam_start, "log_snr", eps)
    _finite(lam_end, "log_snr", eps)
    lam = jnp.linspace(lam_start, lam_end, num_steps + 1, dtype=dtype)
    return _pin_ends(process.t_from_log_snr(lam), start, eps)


def discrete_steps(process: LinearProcess, num_points: int):
    """The DDPM steps DiT keeps when respacing to `num_points`, decreasing (numpy int64)."""
    if not isinstance(process, DiscreteDDPM):
        raise ValueError(f"time_grid=discrete respaces the DDPM steps; sde.name={process.name!r} "
                         f"has none: set --config.sde.name=ddpm or another time_grid.")
    return space_timesteps(process.num_timesteps, num_points)[::-1]


def discrete_grid(process, num_steps, eps, *, rho=7.0, start=None) -> Array:
    del rho, eps, start
    steps = discrete_steps(process, num_steps + 1)
    return (jnp.asarray(steps, float_dtype()) + 1.0) / process.num_timesteps


TIME_GRIDS: dict[str, Callable[..., Array]] = {
    "uniform": uniform_grid,
    "edm": edm_grid,
    "log_snr": log_snr_grid,
    "discrete": discrete_grid,
}


def time_grid(name: str, process: LinearProcess, num_steps: int, eps: float, *,
              rho: float = 7.0, start: float | None = None) -> Array:
    """The named grid: times [start, ..., eps] of length num_steps + 1, in the float dtype."""
    if int(num_steps) < 1:
        raise ValueError(f"sampling.num_steps={num_steps} must be at least 1.")
    try:
        grid_fn = TIME_GRIDS[name]
    except KeyError:
        raise ValueError(
            f"Unknown sampling.time_grid={name!r}; choose one of {sorted(TIME_GRIDS)}."
        ) from None
    return grid_fn(process, int(num_steps), float(eps), rho=float(rho),
                   start=None if start is None else float(start))


def noise_to_signal(process: LinearProcess, t) -> Array:
    """sigma~(t) = sigma(t) / alpha(t) = exp(-log_snr / 2), EDM's noise level."""
    return process.noise_to_signal(t)


# --- diffusers' discrete timesteps (numpy, host side) ------------------------------------------

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(spacing: str, num_train_timesteps: int, num_steps: int, *,
                     steps_offset: int = 0, rounded: bool = True,
                     skip_last: bool = False) -> np.ndarray:
    """num_steps train timesteps, decreasing, as diffusers' `set_timesteps` spaces them (float64;
    integers unless rounded=False with "linspace"). `skip_last`: space one point more and drop the
    smallest ("leading" and "linspace" of DPMSolverMultistepScheduler; "trailing" is unchanged).
    """
    n_train, num_steps = int(num_train_timesteps), int(num_steps)
    if not 1 <= num_steps <= n_train:
        raise ValueError(f"num_inference_steps={num_steps} must lie in [1, {n_train}] "
                         f"(num_train_timesteps).")
    points = num_steps + 1 if skip_last and spacing != "trailing" else num_steps
    if spacing == "linspace":
        steps = np.linspace(0, n_train - 1, points)
        steps = steps.round() if rounded else steps
    elif spacing == "leading":
        steps = (np.arange(0, points) * (n_train // points)).round() + steps_offset
    elif spacing == "trailing":
        # np.arange with diffusers' float stride, so that its rounding is theirs.
        steps = np.round(np.arange(n_train, 0, -n_train / num_steps))[::-1] - 1
        if len(steps) != num_steps:
            raise ValueError(
                f"timestep_spacing='trailing' with num_inference_steps={num_steps}: diffusers' "
                f"float stride gives {len(steps)} steps, the last at t = {steps[0]:g} (an "
                f"np.arange rounding artefact diffusers runs with); use another step count.")
    else:
        raise ValueError(f"Unknown timestep_spacing={spacing!r}; choose one of "
                         f"{TIMESTEP_SPACINGS}.")
    steps = np.asarray(steps, np.float64)[::-1]
    return steps[:num_steps].copy()


def sigma_of_timestep(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """sigma~ at (fractional) train timesteps, interpolated linearly in sigma~ between steps
    (diffusers' interpolation_type="linear"); exact table entries on integer timesteps."""
    return np.interp(timesteps, np.arange(len(sigmas)), sigmas)


def timestep_of_sigma(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional train timestep of each noise level sigma~: log sigma~ interpolated linearly
    between the two neighbouring steps of the increasing table `log_sigmas` (diffusers'
    `_sigma_to_t`, same float64 arithmetic), clamped to [0, N - 1]."""
    sigma = np.asarray(sigma, np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    low_idx = np.searchsorted(log_sigmas, log_sigma, side="right") - 1
    low_idx = np.clip(low_idx, 0, len(log_sigmas) - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return (1 - w) * low_idx + w * high_idx


def karras_sigmas(sigma_min: float, sigma_max: float, num_points: int,
                  rho: float = 7.0) -> np.ndarray:
    """Karras et al.'s num_points noise levels from sigma_max down to sigma_min, numpy float64
    in diffusers' arithmetic (`_convert_to_karras`); `edm_sigmas` is the in-graph version."""
    ramp = np.linspace(0, 1, num_points)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
