"""Discrete-time DDPM (Ho et al., 2020; Nichol & Dhariwal, 2021), the objective DiT/ADM/SD train.

N = 1000 integer steps n = 0..N-1 with betas beta_n, alphas_cumprod[n] = prod_{i<=n} (1 - beta_i),
    x_n = sqrt(alphas_cumprod[n]) x0 + sqrt(1 - alphas_cumprod[n]) eps,
and the network is conditioned on the integer n itself (DiT's and ADM's convention). Schedules
(`beta_schedule`; `beta_start`/`beta_end` override the defaults):
- "linear": beta_n = linspace(beta_start, beta_end, N); by default 1e-4..0.02 scaled by 1000 / N
  (Ho et al.; DiT's `get_named_beta_schedule`);
- "scaled_linear": beta_n = linspace(sqrt(beta_start), sqrt(beta_end), N)^2, by default
  0.00085..0.012 (Stable Diffusion 1.x/2.x/XL; LDM's "linear");
- "cosine" (= diffusers' "squaredcos_cap_v2"): beta_n = min(1 - abar((n+1)/N) / abar(n/N), 0.999),
  abar(u) = cos((u + 0.008) / 1.008 pi/2)^2 (Nichol & Dhariwal).
`precision` says in which arithmetic the table is built, because samplers that must agree with a
published implementation step for step need its table to the last bit:
- "float64" (default): numpy float64 throughout, exactly DiT's `gaussian_diffusion` (and LDM's
  float64 `make_beta_schedule`);
- "float32": exactly diffusers' schedulers (`DDIMScheduler`, `EulerDiscreteScheduler`, ... all
  build the same table): betas in float32 from torch.linspace(float32), whose CPU kernel rounds
  the step to float32 and computes each point as one fused multiply-add from the nearer end
  (start + step i below N/2, end - step (N-1-i) above), squared in float32 for "scaled_linear";
  cosine betas computed in float64 and rounded to float32; 1 - beta in float32; the cumulative
  product kept in float64 with each output rounded to float32 (torch.cumprod on CPU). Bit for bit
  against torch 2.14 for N = 500, 1000, 2000 and several beta ranges; tests/test_schedulers.py
  pins N = 1000 for all three schedules against diffusers 0.42.1.
`betas` and `alphas_cumprod` are float64 arrays either way (with "float32" they hold float32
values exactly), so code that computes with them keeps float64 arithmetic.

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

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2")
PRECISIONS = ("float64", "float32")
_ALIASES = {"squaredcos_cap_v2": "cosine"}


def _torch_linspace_float32(start: float, end: float, num: int) -> np.ndarray:
    """torch.linspace(start, end, num, dtype=torch.float32) as PyTorch's CPU kernel computes it.

    The step is rounded to float32 and each point is a single rounding of start + step i (below
    num // 2) or end - step (num - 1 - i) (from there on): in float64 the product is exact and
    the sum is rounded once before the rounding to float32.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([start32], np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(num - 1)))
    i = np.arange(num, dtype=np.float64)
    forward = np.float64(start32) + step * i
    backward = np.float64(end32) - step * (num - 1 - i)
    return np.where(i < num // 2, forward, backward).astype(np.float32)


def _cosine_betas(num_timesteps: int) -> np.ndarray:
    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps),
                         0.999) for i in range(num_timesteps)], dtype=np.float64)


# (beta_start, beta_end) of the schedules that have them, for N = 1000 steps.
DEFAULT_BETA_RANGES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def default_beta_range(schedule: str, num_timesteps: int) -> tuple[float, float]:
    """The schedule's own end points: Ho et al.'s linear range scaled by 1000 / N (DiT's
    `get_named_beta_schedule`); Stable Diffusion's scaled_linear range for any N."""
    start, end = DEFAULT_BETA_RANGES[schedule]
    scale = 1000.0 / num_timesteps if schedule == "linear" else 1.0
    return scale * start, scale * end


def named_betas(schedule: str, num_timesteps: int, *, beta_start: float | None = None,
                beta_end: float | None = None, precision: str = "float64") -> np.ndarray:
    """The named beta schedule as a float64 array (float32 values with precision="float32")."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown sde.precision={precision!r}; choose one of {PRECISIONS}.")
    schedule = _ALIASES.get(schedule, schedule)
    float32 = precision == "float32"
    if schedule == "cosine":
        betas = _cosine_betas(num_timesteps)
        return betas.astype(np.float32).astype(np.float64) if float32 else betas
    if schedule in DEFAULT_BETA_RANGES:
        default_start, default_end = default_beta_range(schedule, num_timesteps)
        start = default_start if beta_start is None else float(beta_start)
        end = default_end if beta_end is None else float(beta_end)
    if schedule == "linear":
        if float32:
            return _torch_linspace_float32(start, end, num_timesteps).astype(np.float64)
        return np.linspace(start, end, num_timesteps, dtype=np.float64)
    if schedule == "scaled_linear":
        if float32:
            roots = _torch_linspace_float32(start**0.5, end**0.5, num_timesteps)
            return (roots * roots).astype(np.float64)
        return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2
    raise ValueError(f"Unknown sde.beta_schedule={schedule!r}; choose one of {BETA_SCHEDULES}.")


def cumulative_alphas(betas: np.ndarray, precision: str = "float64") -> np.ndarray:
    """prod_{i<=n} (1 - beta_i): float64, or diffusers' float32 (1 - beta in float32, the running
    product kept in float64 and each output rounded to float32, as torch.cumprod does on CPU)."""
    if precision == "float32":
        alphas = np.float32(1.0) - betas.astype(np.float32)
        return np.cumprod(alphas.astype(np.float64)).astype(np.float32).astype(np.float64)
    return np.cumprod(1.0 - betas)


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
    beta_start: float | None = None
    beta_end: float | None = None
    precision: str = "float64"
    T: float = 1.0
    name: ClassVar[str] = "ddpm"

    def __post_init__(self):
        object.__setattr__(self, "num_timesteps", int(self.num_timesteps))
        self._named_betas(2)  # validates the names early

    def _named_betas(self, num_timesteps: int) -> np.ndarray:
        return named_betas(self.beta_schedule, num_timesteps, beta_start=self.beta_start,
                           beta_end=self.beta_end, precision=self.precision)

    # --- the discrete schedule (float64 arrays; see `precision`) -------------------------------
    @functools.cached_property
    def betas(self) -> np.ndarray:
        return self._named_betas(self.num_timesteps)

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return cumulative_alphas(self.betas, self.precision)

    def step_noise_to_signal(self) -> np.ndarray:
        """sigma~_n = sqrt((1 - abar_n) / abar_n) of every step (EDM's noise level on the knots),
        float64; with precision="float32" computed in float32 as diffusers' Euler and
        DPM-Solver schedulers tabulate it (numpy's float32 sqrt is correctly rounded; torch's
        on CPU is not always: some entries differ from diffusers' by one float32 ulp)."""
        if self.precision == "float32":
            abar = self.alphas_cumprod.astype(np.float32)
            return np.sqrt((np.float32(1.0) - abar) / abar).astype(np.float64)
        return np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

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

