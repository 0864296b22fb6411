"""Discrete-time DDPM (Ho et al., 2020; Nichol & Dhariwal, 2021), the objective DiT/ADM train.

N = 1000 integer steps n = 0..N-1 with betas beta_n, alphas_cumprod[n] = prod_{i<=n} (1 - beta_i),
    x_n = sqrt(alphas_cumprod[n]) x0 + sqrt(1 - alphas_cumprod[n]) eps,
and the network is conditioned on the integer n itself (DiT's and ADM's convention). Schedules,
exactly as DiT's `gaussian_diffusion.get_named_beta_schedule` (in float64):
- "linear": beta_n = linspace(1e-4, 0.02, N) scaled by 1000 / N (Ho et al.);
- "cosine": beta_n = min(1 - abar((n+1)/N) / abar(n/N), 0.999), abar(u) = cos((u + 0.008) /
  1.008 pi/2)^2 (Nichol & Dhariwal's "squaredcos_cap_v2").

A continuous-time view lets every diffjax sampler run on it: step n sits at t_n = (n + 1) / N
(DPM-Solver's convention for discrete models) and log alpha is interpolated linearly in t between
the steps, with the extra knot (t = 0, alpha = 1) for the clean data. Between knots the network
sees the fractional step N t - 1 (DPM-Solver feeds 1000 (t - 1/N), the same for N = 1000); on a
knot it sees exactly n. Training draws n uniformly (`sample_uniform_time`). The DDPM ancestral
sampler and DDIM on the "discrete" time grid (DiT's `space_timesteps` respacing) only evaluate the
network on knots, so they reproduce DiT's samplers exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.processes.base import (LinearProcess, as_time, float_dtype,
                                              variance_preserving_coeffs,
                                              variance_preserving_log_snr)

Array = jax.Array

BETA_SCHEDULES = ("linear", "cosine")


def named_betas(schedule: str, num_timesteps: int) -> np.ndarray:
    """DiT's/ADM's named beta schedules, float64."""
    if schedule == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if schedule == "cosine":
        def alpha_bar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps),
                             0.999) for i in range(num_timesteps)], dtype=np.float64)
    raise ValueError(f"Unknown sde.beta_schedule={schedule!r}; choose one of {BETA_SCHEDULES}.")


def space_timesteps(num_timesteps: int, count: int) -> np.ndarray:
    """The steps DiT's `space_timesteps(num_timesteps, str(count))` keeps, increasing.

    One section: `count` steps at fractional stride (N - 1) / (count - 1), each rounded to the
    nearest integer (Python's round, half to even), so 0 and N - 1 are always kept.
    """
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"Cannot respace {num_timesteps} DDPM steps into {count}; "
                         f"use 1 <= sampling.num_steps <= {num_timesteps}.")
    stride = 1.0 if count <= 1 else (num_timesteps - 1) / (count - 1)
    steps, position = [], 0.0
    for _ in range(count):
        steps.append(round(position))
        position += stride
    return np.array(sorted(set(steps)), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class DiscreteDDPM(LinearProcess):
    """DDPM with N integer steps and a piecewise log-linear continuous-time view."""

    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    T: float = 1.0
    name: ClassVar[str] = "ddpm"

    def __post_init__(self):
        object.__setattr__(self, "num_timesteps", int(self.num_timesteps))
        named_betas(self.beta_schedule, 2)  # validates the name early

    # --- the discrete schedule, float64 --------------------------------------------------------
    @functools.cached_property
    def betas(self) -> np.ndarray:
        return named_betas(self.beta_schedule, self.num_timesteps)

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @functools.cached_property
    def _knots(self) -> tuple[np.ndarray, np.ndarray]:
        """(t_k, log alpha_k), k = 0..N: t_k = k / N, step n = k - 1, and (0, 0) for clean data."""
        t = np.arange(self.num_timesteps + 1, dtype=np.float64) / self.num_timesteps
        log_alpha = np.concatenate([[0.0], 0.5 * np.log(self.alphas_cumprod)])
        return t, log_alpha

    def step_time(self, n) -> Array:
        """t_n = (n + 1) / N of integer step n."""
        return (jnp.asarray(n, float_dtype()) + 1.0) / self.num_timesteps

    def timestep(self, t) -> Array:
        """The (fractional) step N t - 1 the network is conditioned on; exact integers on knots."""
        n = as_time(t) * self.num_timesteps - 1.0
        nearest = jnp.round(n)
        return jnp.where(jnp.abs(n - nearest) < 1e-3, nearest, n)

    @property
    def likelihood_eps(self) -> float:
        return 1.0 / self.num_timesteps

    @property
    def default_eps(self) -> float:
        return 1.0 / self.num_timesteps  # step n = 0

    # --- the continuous-time view --------------------------------------------------------------
    def log_mean_coeff(self, t):
        t = as_time(t)
        knots_t, knots_log_alpha = self._knots
        return jnp.interp(t, jnp.asarray(knots_t, t.dtype), jnp.asarray(knots_log_alpha, t.dtype))

    def marginal_coeffs(self, t):
        return variance_preserving_coeffs(self.log_mean_coeff(t))

    def log_snr(self, t):
        return variance_preserving_log_snr(self.log_mean_coeff(t))

    def t_from_log_snr(self, log_snr):
        log_snr = as_time(log_snr)
        m = 0.5 * jax.nn.log_sigmoid(log_snr)
        knots_t, knots_log_alpha = self._knots
        # jnp.interp wants increasing abscissae: log alpha decreases in t.
        return jnp.interp(m, jnp.asarray(knots_log_alpha[::-1].copy(), log_snr.dtype),
                          jnp.asarray(knots_t[::-1].copy(), log_snr.dtype))

    def sample_uniform_time(self, rng, batch: int, eps: float):
        del eps  # the smallest step is n = 0
        n = jax.random.randint(rng, (batch,), 0, self.num_timesteps)
        return self.step_time(n)

    def prior_std(self):
        return 1.0

