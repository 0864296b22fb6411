"""Time discretisations of [eps, T] for the fixed-step samplers.

Every grid is a decreasing array t_0 = T > t_1 > ... > t_N = eps of N + 1 times, so a sampler with
`num_steps = N` takes N steps. Three spacings:

- "uniform": uniform in t (score_sde's choice for its SDE samplers).
- "edm": Karras et al. (2022)'s rho schedule in the noise-to-signal ratio sigma~ = sigma / alpha,
  sigma~_i = (sigma~_max^(1/rho) + i/N (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho, mapped
  back to t through the SDE. For VE sigma~ is sigma itself; for the VP family
  sigma~ = exp(-log_snr / 2), so the mapping goes through `sde.t_from_log_snr`, which is how one
  schedule serves all three SDEs.
  (EDM indexes N points with i/(N-1); we index N + 1 points, hence i/N.)
- "log_snr": uniform in log-SNR, DPM-Solver's default, where its exponential integrator's step
  h = lambda_{i+1} - lambda_i is constant.

The end points are pinned to exactly T and eps: the round trip t -> log_snr -> t loses a few ulps,
and eps matters (it is where the samples are read off and where Tweedie denoising happens).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.sde import LinearSDE

Array = jax.Array

# score_sde ends the reverse process at 1e-3 for the VP family and 1e-5 for VE: the VP-family
# kernels make sigma(t) ~ sqrt(beta_min t), which is already tiny at 1e-3, while VE has sigma_min.
DEFAULT_EPS: dict[str, float] = {"vp": 1e-3, "subvp": 1e-3, "ve": 1e-5}


def resolve_eps(sde: LinearSDE, eps: float | None) -> float:
    """`eps` itself, or the SDE's customary end time when None."""
    if eps is not None:
        eps = float(eps)
        if not 0.0 < eps < sde.T:
            raise ValueError(f"sampling.eps={eps} must lie in (0, T={sde.T}).")
        return eps
    try:
        return DEFAULT_EPS[sde.name]
    except KeyError:
        raise ValueError(
            f"No default end time for SDE {sde.name!r}; set sampling.eps explicitly "
            f"(known defaults: {DEFAULT_EPS})."
        ) from None


def _pin_ends(t: Array, sde: LinearSDE, eps: float) -> Array:
    return t.at[0].set(sde.T).at[-1].set(eps)


def uniform_grid(sde: LinearSDE, num_steps: int, eps: float, *, rho: float = 7.0) -> Array:
    del rho
    return jnp.linspace(sde.T, eps, num_steps + 1, dtype=jnp.float32)


def noise_to_signal(sde: LinearSDE, t) -> Array:
    """sigma~(t) = sigma(t) / alpha(t) = exp(-log_snr / 2), EDM's noise level."""
    return jnp.exp(-0.5 * sde.log_snr(jnp.asarray(t, jnp.float32)))


def edm_grid(sde: LinearSDE, num_steps: int, eps: float, *, rho: float = 7.0) -> Array:
    # Interpolating sigma~^(1/rho) linearly concentrates steps at low noise, where the data's
    # fine structure is resolved; rho = 7 is EDM's choice for image models.
    s_max = noise_to_signal(sde, sde.T) ** (1.0 / rho)
    s_min = noise_to_signal(sde, eps) ** (1.0 / rho)
    frac = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=jnp.float32)
    sigma = (s_max + frac * (s_min - s_max)) ** rho
    return _pin_ends(sde.t_from_log_snr(-2.0 * jnp.log(sigma)), sde, eps)


def log_snr_grid(sde: LinearSDE, num_steps: int, eps: float, *, rho: float = 7.0) -> Array:
    del rho
    lam = jnp.linspace(
        sde.log_snr(jnp.float32(sde.T)), sde.log_snr(jnp.float32(eps)), num_steps + 1
    )
    return _pin_ends(sde.t_from_log_snr(lam), sde, eps)


TIME_GRIDS: dict[str, Callable[..., Array]] = {
    "uniform": uniform_grid,
    "edm": edm_grid,
    "log_snr": log_snr_grid,
}


def time_grid(
    name: str, sde: LinearSDE, num_steps: int, eps: float, *, rho: float = 7.0
) -> Array:
    """The named grid: float32 times [T, ..., eps] of length num_steps + 1."""
    if int(num_steps) < 1:
        raise ValueError(f"sampling.num_steps={num_steps} must be at least 1.")
    try:
        grid_fn = TIME_GRIDS[name]
    except KeyError:
        raise ValueError(
            f"Unknown sampling.time_grid={name!r}; choose one of {sorted(TIME_GRIDS)}."
        ) from None
    return grid_fn(sde, int(num_steps), float(eps), rho=float(rho))
